"""Pose data: VideoPose3D file layout, cameras, windows, flip, the synthetic Human3.6M-like generator."""
import os
import zipfile

import numpy as np
import pytest
import torch

from convformer.pose.data import (H36M_32_TO_17, H36M_LEFT, H36M_PARENTS, H36M_RIGHT, Camera, PoseSequence,
                                  PoseWindows, camera_to_world, flip_pose, load_cameras, load_h36m,
                                  normalize_screen, project, read_npz, split_subjects, unnormalize_screen,
                                  world_to_camera)
from convformer.pose.synth import generate_h36m_like, subject_body
from convformer.errors import ConvformerError

SUBJECTS = ("S1", "S5", "S9")
ACTIONS = ("Walking", "Walking 1", "Squat", "Sitting", "Boxing", "Waving")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    path_3d, path_2d = generate_h36m_like(folder, subjects=SUBJECTS, actions=ACTIONS, frames=150,
                                          extra_2d_frames=2, compress=False, seed=3)
    world = {s: {a: x[:, list(H36M_32_TO_17)].astype(np.float64) for a, x in acts.items()}
             for s, acts in read_npz(path_3d, ["positions_3d"])["positions_3d"].items()}
    return path_3d, path_2d, world


def _resave(src, dst, edit):
    """Copy a VideoPose3D file with ``edit`` applied to its dict (as a user's bad file would be)."""
    key = "positions_3d" if "3d" in src.name else "positions_2d"
    members = read_npz(src, [key], optional=["metadata"])
    edit(members[key])
    np.savez(dst, **members)
    return dst


# ------------------------------------------------------------------------------------- generator + loader
def test_loader_matches_projection_of_generated_world(synth):
    path_3d, path_2d, world = synth
    data = load_h36m(path_3d, path_2d)  # picks up cameras.json beside the 3-D file
    cams = load_cameras(path_3d.with_name("cameras.json"))
    assert len(data.sequences) == len(SUBJECTS) * len(ACTIONS) * 4
    raw_2d = read_npz(path_2d, ["positions_2d"])["positions_2d"]
    for q in data.sequences:
        x = world[q.subject][q.action]
        cam = cams[q.subject][q.camera]
        assert len(raw_2d[q.subject][q.action][q.camera]) == len(x) + 2  # 2-D ran longer and was trimmed
        expected = normalize_screen(project(world_to_camera(x, cam), cam), cam.res_w, cam.res_h)
        np.testing.assert_allclose(q.keypoints, expected, atol=1e-5)
        assert np.all(q.poses[:, 0] == 0)
        np.testing.assert_allclose(q.poses + q.trajectory[:, None], world_to_camera(x, cam), atol=1e-5)
        assert np.abs(q.keypoints[..., 0]).max() < 1  # the subject stays inside every view


def test_bone_lengths_constant_and_subject_specific(synth):
    child = [j for j, p in enumerate(H36M_PARENTS) if p >= 0]
    bones = {}
    for s, acts in synth[2].items():
        x = np.concatenate(list(acts.values()))
        lengths = np.linalg.norm(x[:, child] - x[:, [H36M_PARENTS[j] for j in child]], axis=-1)
        assert np.ptp(lengths, axis=0).max() < 1e-5
        bones[s] = lengths[0]
    assert 0.35 < bones["S1"][child.index(2)] < 0.55  # thigh (right hip -> right knee), about 0.45 m
    for a, b in (("S1", "S5"), ("S1", "S9"), ("S5", "S9")):
        assert np.abs(bones[a] - bones[b]).max() > 2e-3
    assert subject_body("S1", seed=3) == subject_body("S1", seed=3) != subject_body("S1", seed=4)


def test_motion_is_smooth_grounded_and_knees_bend_one_way(synth):
    for s, acts in synth[2].items():
        for a, x in acts.items():
            assert np.linalg.norm(np.diff(x, axis=0), axis=-1).max() < 0.1, f"{s}/{a}"  # < 5 m/s at 50 fps
            lowest = np.minimum(x[:, 3, 2], x[:, 6, 2])
            assert np.all((lowest > 0.05) & (lowest < 0.1)), f"{s}/{a}"  # an ankle on the ground
            lateral = x[:, 4] - x[:, 1]  # right hip -> left hip
            for hip, knee, foot in ((1, 2, 3), (4, 5, 6)):
                thigh, shin = x[:, knee] - x[:, hip], x[:, foot] - x[:, knee]
                # signed knee flexion about the pelvis' left axis: positive = shin swings backward
                flexion = np.arctan2(-np.sum(np.cross(thigh, shin) * lateral, -1) / np.linalg.norm(lateral, axis=-1),
                                     np.sum(thigh * shin, -1))
                assert flexion.min() > -1e-4, f"{s}/{a} knee bends forward"
                if a == "Squat":
                    assert flexion.max() > 1.5  # deep knee bend actually happens


def test_generator_is_deterministic(tmp_path):
    a = generate_h36m_like(tmp_path / "a", subjects=("S1",), actions=("Boxing",), frames=30, noise_px=2, drop_prob=0.2)
    b = generate_h36m_like(tmp_path / "b", subjects=("S1",), actions=("Boxing",), frames=30, noise_px=2, drop_prob=0.2)
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()


def test_dropped_keypoints_repeat_previous_frame(tmp_path):
    kw = dict(subjects=("S1",), actions=("Waving",), frames=60, compress=False)
    clean = read_npz(generate_h36m_like(tmp_path / "c", **kw)[1], ["positions_2d"])["positions_2d"]
    dropped = read_npz(generate_h36m_like(tmp_path / "d", drop_prob=0.3, **kw)[1], ["positions_2d"])["positions_2d"]
    c, d = clean["S1"]["Waving"][0], dropped["S1"]["Waving"][0]
    differs = np.any(c != d, axis=-1)
    assert 0.15 < differs.mean() < 0.4 and not differs[0].any()
    held = np.nonzero(differs)
    np.testing.assert_array_equal(d[held], d[held[0] - 1, held[1]])


def test_actions_filter_takes_and_split(synth):
    path_3d, path_2d, _ = synth
    walking = load_h36m(path_3d, path_2d, subjects=["S1"], actions=["Walking"])
    assert {q.action for q in walking.sequences} == {"Walking", "Walking 1"}
    train, test = split_subjects(load_h36m(path_3d, path_2d), train=("S1", "S5"), test=("S9",))
    assert {q.subject for q in train.sequences} == {"S1", "S5"} and {q.subject for q in test.sequences} == {"S9"}
    with pytest.raises(ConvformerError, match="S6, S7, S8 not in the loaded data"):
        split_subjects(load_h36m(path_3d, path_2d))


# ---------------------------------------------------------------------------------------------- cameras
def test_builtin_cameras_see_the_capture_volume():
    cams = load_cameras()
    assert sorted(cams) == sorted(["S1", "S5", "S6", "S7", "S8", "S9", "S11"])
    assert [c.id for c in cams["S9"]] == ["54138969", "55011271", "58860488", "60457274"]
    for cs in cams.values():
        for c in cs:
            centre = world_to_camera(np.array([0.0, 0.0, 1.0]), c)  # a point 1 m above the floor's centre
            assert 3 < centre[2] < 7
            u, v = project(centre, c, distortion=True)
            assert 0.25 * c.res_w < u < 0.75 * c.res_w and 0.25 * c.res_h < v < 0.75 * c.res_h


def _rotate(q, v):
    """Rotate v by unit quaternion q (w, x, y, z): v + 2w (u x v) + 2 u x (u x v)."""
    w, u = q[0], q[1:]
    uv = np.cross(u, v)
    return v + 2 * w * uv + 2 * np.cross(u, uv)


def test_world_camera_conventions_and_round_trip():
    q = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])  # 90 degrees about z: camera x = world y
    cam = Camera("t", 1000, 1000, np.array([500.0, 500]), np.array([1000.0, 1000]), np.zeros(3), np.zeros(2),
                 q, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(world_to_camera(np.array([1.0, 3.0, 3.0]), cam), [1, 0, 0], atol=1e-12)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 17, 3))
    for c in load_cameras()["S11"]:
        qn = c.orientation / np.linalg.norm(c.orientation)
        q_inv = qn * [1, -1, -1, -1]
        np.testing.assert_allclose(world_to_camera(x, c), _rotate(q_inv, x - c.translation), atol=1e-12)
        np.testing.assert_allclose(camera_to_world(world_to_camera(x, c), c), x, atol=1e-12)
        on_axis = camera_to_world(np.array([0.0, 0.0, 4.0]), c)
        np.testing.assert_allclose(project(world_to_camera(on_axis, c), c), c.center, atol=1e-9)
        np.testing.assert_allclose(project(world_to_camera(on_axis, c), c, distortion=True), c.center, atol=1e-9)
    assert world_to_camera(x.astype(np.float32), cam).dtype == np.float32


def test_screen_normalisation():
    w, h = 1000, 1002
    px = np.random.default_rng(1).uniform([0, 0], [w, h], size=(100, 2))
    n = normalize_screen(px, w, h)
    assert np.abs(n[:, 0]).max() <= 1 and np.abs(n[:, 1]).max() <= h / w
    np.testing.assert_allclose(normalize_screen(np.array([[0.0, 0], [w, h]]), w, h), [[-1, -h / w], [1, h / w]])
    np.testing.assert_allclose(unnormalize_screen(n, w, h), px, atol=1e-9)
    t = torch.from_numpy(px).float()
    torch.testing.assert_close(unnormalize_screen(normalize_screen(t, w, h), w, h), t)


# ---------------------------------------------------------------------------------------- windows + flip
def _sequence(n, offset=0.0):
    frames = np.arange(n, dtype=np.float32)[:, None, None] + offset
    kp = np.broadcast_to(frames, (n, 17, 2)) + np.arange(17, dtype=np.float32)[None, :, None] / 100
    poses = np.broadcast_to(frames, (n, 17, 3)) * 2 + np.arange(17, dtype=np.float32)[None, :, None] / 100
    return PoseSequence("S1", "A", 0, kp.copy(), poses.copy(), np.zeros((n, 3), np.float32))


def test_windows_edge_padding_count_and_centre():
    seqs = [_sequence(12), _sequence(8, offset=100)]
    win = PoseWindows(seqs, receptive_field=7)
    assert len(win) == 20
    kp, target, i = win[0]
    assert kp.shape == (7, 17, 2) and target.shape == (1, 17, 3) and i == 0
    assert torch.equal(kp[:4], torch.from_numpy(seqs[0].keypoints[[0, 0, 0, 0]]))  # 3 padded + the frame
    assert torch.equal(kp[4:], torch.from_numpy(seqs[0].keypoints[1:4]))
    kp, target, _ = win[19]  # last frame of the second sequence
    assert win.sequence_of(19) is seqs[1] and win.locate(19) == (1, 7)
    assert torch.equal(kp[3:], torch.from_numpy(seqs[1].keypoints[[7, 7, 7, 7]]))
    assert torch.equal(target[0], torch.from_numpy(seqs[1].poses[7]))
    for j in range(len(win)):  # the centre of every window is the target frame
        k, f = win.locate(j)
        assert torch.equal(win[j][0][3], torch.from_numpy(seqs[k].keypoints[f]))
        assert torch.equal(win[j][1][0], torch.from_numpy(seqs[k].poses[f]))
    strided = PoseWindows(seqs, receptive_field=3, stride=4)
    assert len(strided) == 20 // 4 and strided.locate(3) == (1, 0)
    assert len(PoseWindows([_sequence(13)], receptive_field=1, stride=4)) == 4  # ceil(13 / 4)
    s2s = PoseWindows(seqs, receptive_field=5, seq2seq=True)
    assert torch.equal(s2s[0][1], torch.from_numpy(seqs[0].poses[[0, 0, 0, 1, 2]]))
    with pytest.raises(ConvformerError, match="odd"):
        PoseWindows(seqs, receptive_field=4)


def test_flip_is_exact_involution_and_swaps_sides():
    x = np.random.default_rng(2).normal(size=(4, 17, 3)).astype(np.float32)
    f = flip_pose(x)
    assert np.array_equal(flip_pose(f), x)
    left, right = list(H36M_LEFT), list(H36M_RIGHT)
    assert np.array_equal(f[:, left, 0], -x[:, right, 0]) and np.array_equal(f[:, right, 1:], x[:, left, 1:])
    assert np.array_equal(f[:, [0, 7, 8, 9, 10], 0], -x[:, [0, 7, 8, 9, 10], 0])
    t = torch.from_numpy(x)
    assert torch.equal(flip_pose(flip_pose(t)), t) and torch.equal(flip_pose(t), torch.from_numpy(f))


def test_windows_flip_uses_torch_rng(synth):
    seqs = load_h36m(synth[0], synth[1], subjects=["S1"], actions=["Squat"]).sequences[:1]
    plain, flipping = PoseWindows(seqs, 9), PoseWindows(seqs, 9, flip=True)
    seen = set()
    for i in range(0, len(plain), 7):
        torch.manual_seed(i)
        kp, target, _ = flipping[i]
        torch.manual_seed(i)
        assert torch.equal(flipping[i][0], kp)  # same seed, same decision
        kp0, target0, _ = plain[i]
        flipped = torch.equal(kp, flip_pose(kp0))
        assert flipped or torch.equal(kp, kp0)
        assert torch.equal(target, flip_pose(target0) if flipped else target0)
        seen.add(flipped)
    assert seen == {True, False}


# ----------------------------------------------------------------------------------------------- errors
def test_missing_subject_and_file(synth, tmp_path):
    path_3d, path_2d, _ = synth
    no_s9 = _resave(path_2d, tmp_path / "data_2d_h36m_no_s9.npz", lambda d: d.pop("S9"))
    with pytest.raises(ConvformerError, match=r"S9 is not in data_2d_h36m_no_s9.npz \(it has S1, S5\)"):
        load_h36m(path_3d, no_s9, cameras=path_3d.with_name("cameras.json"))
    with pytest.raises(ConvformerError, match="S7 is not in data_3d_h36m.npz"):
        load_h36m(path_3d, path_2d, subjects=["S7"])
    with pytest.raises(ConvformerError, match="nothere.npz"):
        load_h36m(tmp_path / "nothere.npz", path_2d)
    np.savez(tmp_path / "other.npz", poses=np.zeros(3))
    with pytest.raises(ConvformerError, match="other.npz has no 'positions_3d'"):
        load_h36m(tmp_path / "other.npz", path_2d, cameras=path_3d.with_name("cameras.json"))


@pytest.mark.parametrize("which, edit, message", [
    ("3d", lambda d: d["S1"].__setitem__("Walking", d["S1"]["Walking"][:, :25]),
     "S1/Walking: 3-D poses have 25 joints; expected 17 or 32"),
    ("3d", lambda d: d["S5"]["Squat"].__setitem__((4, 7, 1), np.nan), "S5/Squat .3-D. contains NaN"),
    ("2d", lambda d: d["S1"]["Boxing"][2].__setitem__((9, 3, 0), np.inf), "S1/Boxing camera 2 .2-D. contains NaN or Inf"),
    ("2d", lambda d: d["S9"]["Sitting"].__setitem__(1, d["S9"]["Sitting"][1][:-20]),
     "S9/Sitting camera 1: .* 2-D frames but .* 3-D frames"),
    ("2d", lambda d: d["S1"]["Waving"].__setitem__(0, np.concatenate([d["S1"]["Waving"][0]] * 2)),
     "S1/Waving camera 0: .* 2-D frames but"),
    ("2d", lambda d: d["S5"]["Walking"].pop(), "S5/Walking in .* has 3 camera views; expected 4"),
])
def test_bad_files(synth, tmp_path, which, edit, message):
    path_3d, path_2d, _ = synth
    if which == "3d":
        path_3d = _resave(path_3d, tmp_path / "data_3d_h36m.npz", edit)
        (tmp_path / "cameras.json").write_bytes(synth[0].with_name("cameras.json").read_bytes())
    else:
        path_2d = _resave(path_2d, tmp_path / "data_2d_h36m_bad.npz", edit)
    with pytest.raises(ConvformerError, match=message):
        load_h36m(path_3d, path_2d)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_3d_h36m.npz"
    np.savez(path, positions_3d=np.array([_Exploit(marker)], dtype=object))
    with zipfile.ZipFile(path) as z:
        assert b"system" in z.read("positions_3d.npy")  # the file really holds the reference
    with pytest.raises(ConvformerError, match=r"data_3d_h36m.npz:positions_3d contains a pickled reference to .*system"):
        read_npz(path, ["positions_3d"])
    assert not marker.exists()
