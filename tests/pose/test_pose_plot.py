"""COCO -> Human3.6M keypoint mapping, keypoint file loading and its errors, and the skeleton pictures."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from convformer.pose.keypoints import H36M_BONES, H36M_PARENTS, coco_to_h36m, load_keypoints, read_keypoints
from convformer.pose import plot as pose_plot
from convformer.pose.plot import animate_poses, plot_pose_frames, plot_pose_pair
from convformer.errors import ConvformerError

# COCO indices spelled out here, independently of the module's own table.
NOSE, L_EYE, R_EYE, L_SHO, R_SHO, L_ELB, R_ELB, L_WRI, R_WRI = 0, 1, 2, 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANK, R_ANK = 11, 12, 13, 14, 15, 16


def coco_frame() -> np.ndarray:
    """Joint i at (10 i, 10 i + 1) with score 0.05 (i + 1): every joint distinct, scores all different."""
    i = np.arange(17, dtype=np.float64)
    return np.stack([10 * i, 10 * i + 1, 0.05 * (i + 1)], -1)


def standing_person(frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A person 4 m in front of the camera (camera coordinates, y down), walking right, and its 2-D view."""
    pose = np.array([[0, 0, 4], [-.12, 0, 4], [-.12, .45, 4], [-.12, .9, 4], [.12, 0, 4], [.12, .45, 4],
                     [.12, .9, 4], [0, -.25, 4], [0, -.5, 4], [0, -.6, 3.95], [0, -.72, 4], [.18, -.5, 4],
                     [.2, -.22, 4], [.22, .02, 4], [-.18, -.5, 4], [-.35, -.6, 4], [-.5, -.75, 4]])
    poses = pose + np.linspace(0, 0.4, frames)[:, None, None] * np.array([1.0, 0, 0])
    kp = poses[..., :2] / poses[..., 2:] * 1000 + 500  # pinhole, f = 1000 px, centre (500, 500)
    return kp, poses


def test_skeleton_constants_agree():
    assert H36M_PARENTS == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
    assert sorted(child for _, child in H36M_BONES) == list(range(1, 17))


def test_coco_to_h36m_takes_each_joint_from_its_source():
    coco = coco_frame()
    h36m = coco_to_h36m(coco)
    assert h36m.shape == (17, 3)
    copies = {1: R_HIP, 2: R_KNEE, 3: R_ANK, 4: L_HIP, 5: L_KNEE, 6: L_ANK, 9: NOSE,
              11: L_SHO, 12: L_ELB, 13: L_WRI, 14: R_SHO, 15: R_ELB, 16: R_WRI}
    for h, c in copies.items():
        np.testing.assert_array_equal(h36m[h], coco[c])
    mid = lambda a, b: (coco[a, :2] + coco[b, :2]) / 2  # noqa: E731
    np.testing.assert_allclose(h36m[0, :2], mid(L_HIP, R_HIP))
    np.testing.assert_allclose(h36m[8, :2], mid(L_SHO, R_SHO))
    np.testing.assert_allclose(h36m[7, :2], (mid(L_HIP, R_HIP) + mid(L_SHO, R_SHO)) / 2)
    np.testing.assert_allclose(h36m[10, :2], mid(L_EYE, R_EYE))
    # A synthesised joint is only as confident as its weakest source.
    assert h36m[0, 2] == pytest.approx(coco[L_HIP, 2])
    assert h36m[8, 2] == pytest.approx(coco[L_SHO, 2])
    assert h36m[7, 2] == pytest.approx(coco[L_SHO, 2])
    assert h36m[10, 2] == pytest.approx(coco[L_EYE, 2])


def test_coco_to_h36m_batches_and_accepts_torch():
    coco = np.stack([coco_frame(), coco_frame() + 3.0])[None]  # (1, 2, 17, 3)
    expected = np.stack([coco_to_h36m(f) for f in coco[0]])[None]
    np.testing.assert_allclose(coco_to_h36m(coco), expected)
    np.testing.assert_allclose(coco_to_h36m(torch.as_tensor(coco)).numpy(), expected)
    xy = coco_to_h36m(coco[..., :2])
    np.testing.assert_allclose(xy, expected[..., :2])  # no score channel: plain means everywhere
    with pytest.raises(ConvformerError, match="17 joints"):
        coco_to_h36m(np.zeros((18, 2)))


def test_load_npy_single_frame_and_sequence_with_scores(tmp_path):
    frame = np.random.default_rng(0).random((17, 2)) * 100
    np.save(tmp_path / "one.npy", frame)
    kp, layout, scores = load_keypoints(tmp_path / "one.npy")
    assert kp.shape == (1, 17, 2) and kp.dtype == np.float32 and layout == "h36m" and scores is None
    np.testing.assert_allclose(kp[0], frame, rtol=1e-6)

    seq = np.concatenate([np.random.default_rng(1).random((4, 17, 2)) * 100, np.full((4, 17, 1), 0.7)], -1)
    np.save(tmp_path / "seq.npy", seq)
    kp, layout, scores = load_keypoints(tmp_path / "seq.npy")
    assert kp.shape == (4, 17, 2) and scores.shape == (4, 17) and layout == "h36m"
    np.testing.assert_allclose(kp, seq[..., :2], rtol=1e-6)
    np.testing.assert_allclose(scores, 0.7, rtol=1e-6)
    kp, layout, _ = load_keypoints(tmp_path / "seq.npy", layout="coco")
    assert layout == "coco"
    np.testing.assert_allclose(kp, coco_to_h36m(seq)[..., :2], rtol=1e-6)


def test_load_coco_results_picks_the_best_person_and_sorts_frames(tmp_path):
    a, b, c = coco_frame(), coco_frame() + 50, coco_frame() + 100
    results = [
        {"image_id": 5, "category_id": 1, "keypoints": a.ravel().tolist(), "score": 0.8},
        {"image_id": 2, "category_id": 1, "keypoints": b.ravel().tolist(), "score": 0.3},
        {"image_id": 2, "category_id": 1, "keypoints": c.ravel().tolist(), "score": 0.9},
    ]
    (tmp_path / "res.json").write_text(json.dumps(results))
    got = read_keypoints(tmp_path / "res.json")
    kp, layout, scores = got.keypoints, got.layout, got.scores
    # frames 2..5 by id: 3 and 4 have no detection and are interpolated between 2 and 5 (score 0)
    assert layout == "coco" and kp.shape == (4, 17, 2) and scores.shape == (4, 17)
    assert got.frame_ids.tolist() == [2, 3, 4, 5] and got.filled_frames == [3, 4]
    np.testing.assert_allclose(kp[0], coco_to_h36m(c)[:, :2], rtol=1e-6)  # frame 2, its 0.9 person
    np.testing.assert_allclose(kp[3], coco_to_h36m(a)[:, :2], rtol=1e-6)  # frame 5
    np.testing.assert_allclose(kp[1], (2 * kp[0] + kp[3]) / 3, rtol=1e-5)
    np.testing.assert_allclose(scores[3], coco_to_h36m(a)[:, 2], rtol=1e-6)
    assert (scores[1:3] == 0).all()


def test_load_plain_json_list(tmp_path):
    frames = np.random.default_rng(2).random((3, 17, 2)).round(3)
    (tmp_path / "kp.json").write_text(json.dumps(frames.tolist()))
    kp, layout, scores = load_keypoints(tmp_path / "kp.json")
    assert layout == "h36m" and scores is None
    np.testing.assert_allclose(kp, frames, rtol=1e-6)


@pytest.mark.parametrize("name, content, message", [
    ("keypoints.npy", np.zeros((3, 25, 2)),
     "keypoints.npy has 25 joints per frame; expected 17 (Human3.6M or COCO order, see --layout)"),
    ("empty.npy", np.zeros((0, 17, 2)), "holds no keypoints"),
    ("bad.json", "{[not json", "not valid JSON"),
    ("empty.json", "[]", "holds no keypoints"),
    ("coco25.json", json.dumps([{"image_id": 0, "keypoints": [0.0] * 75}]), "25 joints per frame"),
    ("wide.npy", np.zeros((2, 17, 4)), "4 values per joint"),
])
def test_bad_keypoint_files_give_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    np.save(path, content) if isinstance(content, np.ndarray) else path.write_text(content)
    with pytest.raises(ConvformerError) as err:
        load_keypoints(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_nan_frames_missing_files_and_pickles_are_refused(tmp_path):
    seq = np.zeros((5, 17, 2))
    seq[3, 4, 1] = np.nan
    np.save(tmp_path / "nan.npy", seq)
    with pytest.raises(ConvformerError, match="frame 3"):
        load_keypoints(tmp_path / "nan.npy")
    with pytest.raises(ConvformerError, match="not found"):
        load_keypoints(tmp_path / "nowhere.npy")
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConvformerError, match="pickled data is refused"):
        load_keypoints(tmp_path / "obj.npy")
    with pytest.raises(ConvformerError, match="unknown keypoint layout"):
        load_keypoints(tmp_path / "nan.npy", layout="openpose")


def test_upright_view_puts_the_head_above_the_feet():
    _, poses = standing_person()
    up = pose_plot._upright(poses[0])
    assert up[10, 2] > up[0, 2] > up[3, 2]  # head above hip above foot
    assert up[0, 1] == pytest.approx(4.0)  # depth is the second plot axis


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def test_plot_pose_pair_writes_a_real_png(tmp_path):
    kp, poses = standing_person()
    out = plot_pose_pair(kp[0], torch.as_tensor(poses[0]), tmp_path / "pair.png", title="S9 Walking",
                         image_size=(1000, 1000))
    assert out == tmp_path / "pair.png"
    assert _png(out).std() > 0  # something was drawn
    assert os.listdir(tmp_path) == ["pair.png"]  # no temp file left


def test_plot_into_a_missing_folder_fails_cleanly(tmp_path):
    kp, poses = standing_person()
    with pytest.raises(ConvformerError, match="does not exist"):
        plot_pose_pair(kp[0], poses[0], tmp_path / "no" / "pair.png")
    assert os.listdir(tmp_path) == []


def test_plot_pose_frames_has_a_row_per_frame(tmp_path):
    kp, poses = standing_person(6)
    one = _png(plot_pose_frames(kp, poses, [0], tmp_path / "one.png"))
    three = _png(plot_pose_frames(kp, poses, [0, 2, 5], tmp_path / "three.png"))
    assert three.shape[0] == 3 * one.shape[0] and three.shape[1] == one.shape[1]
    with pytest.raises(ConvformerError, match="frame 9 is out of range"):
        plot_pose_frames(kp, poses, [0, 9], tmp_path / "bad.png")


def test_animate_poses_writes_one_gif_frame_per_pose(tmp_path, monkeypatch):
    kp, poses = standing_person(5)
    animate_poses(kp, poses, tmp_path / "walk.gif", fps=10)
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 5
    assert os.listdir(tmp_path) == ["walk.gif"]

    from matplotlib import animation
    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(ConvformerError, match=r"ffmpeg is not installed; use a \.gif"):
        animate_poses(kp, poses, tmp_path / "walk.mp4")
    assert os.listdir(tmp_path) == ["walk.gif"]
