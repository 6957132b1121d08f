"""`convformer pose prepare` on real motion (HDM05, ../shared/data) and on the synthetic set; the lifter's
architecture options through training, weights and the CLI; both flatten orders; the mended input checks
of `pose lift`."""
import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import convformer
from convformer.cli import main
from convformer.errors import ConvformerError
from convformer.pose.data import load_cameras, load_h36m, project, read_npz, world_to_camera
from convformer.pose.keypoints import COCO_JOINTS, read_keypoints
from convformer.pose.prepare import prepare_mocap
from convformer.pose.synth import generate_h36m_like

HDM05 = Path(__file__).parents[2] / ".." / "shared" / "data" / "hdm05" / "hdm05_17joints.npz"
needs_hdm05 = pytest.mark.skipif(not HDM05.is_file(), reason=f"HDM05 not found at {HDM05} (../shared/data)")
ARCH = {"embed_dim": 8, "spatial_depth": 1, "temporal_depth": 1, "num_heads": 4, "mlp_ratio": 1.5,
        "kernel_sizes": [3, 5], "flatten": "feature"}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def mocap(tmp_path_factory):
    """A small VideoPose3D-layout 3-D file cut from real HDM05 clips: 3 actors x 2 motions, 90 frames each."""
    root = tmp_path_factory.mktemp("mocap")
    clips = np.load(HDM05)
    positions = {}
    for actor in ("bd", "mm", "tr"):
        for motion in ("squat1Reps", "kickLFront1Reps"):
            key = next(k for k in clips.files if k.startswith(f"{actor}/{motion} "))
            positions.setdefault(actor, {})[key.split("/", 1)[1]] = clips[key][:90]
    path = root / "motion_3d.npz"
    np.savez(path, positions_3d=positions)
    return path, positions


@needs_hdm05
def test_prepare_mocap_projects_real_motion_through_the_written_cameras(mocap, tmp_path, capsys):
    path, positions = mocap
    out = tmp_path / "hdm"
    assert main(["pose", "prepare", "--mocap", str(path), "-o", str(out)]) == 0
    frames = sum(len(w) for clips in positions.values() for w in clips.values())
    assert f"filmed 6 clips ({frames} frames) of bd, mm, tr with 4 cameras" in capsys.readouterr().out
    cams = load_cameras(out / "cameras.json")
    pos2d = read_npz(out / "data_2d_h36m_gt.npz", ["positions_2d"])["positions_2d"]
    intrinsics = json.loads((Path(convformer.__file__).parent / "pose" / "h36m_cameras.json").read_text())
    assert [c.id for c in cams["bd"]] == [k["id"] for k in intrinsics["intrinsics"]]  # Human3.6M's cameras
    for actor, clips in positions.items():
        centres = []
        for action, world in clips.items():
            views = pos2d[actor][action]
            assert len(views) == 4
            for cam, kp in zip(cams[actor], views):
                expected = project(world_to_camera(world.astype(np.float64), cam), cam, distortion=True)
                np.testing.assert_allclose(kp, expected, atol=1e-3)
                # the subject is in the picture: every joint inside the 1000 x 1000 frame
                assert kp.min() > 0 and kp[..., 0].max() < cam.res_w and kp[..., 1].max() < cam.res_h
            centres.append([c.translation for c in cams[actor]])
        # four viewpoints around the subject, 6 m out
        eyes = np.array(centres[0])
        assert np.allclose(np.linalg.norm(eyes[:, :2], axis=1), 6.0, atol=1e-6)
        angles = np.sort(np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0])) % 360)
        assert np.all(np.abs(np.diff(angles) - 90) < 17)
    # and `pose train/eval` read the folder unchanged: 3-D targets are the camera-space motion
    data = load_h36m(out / "data_3d_h36m.npz", out / "data_2d_h36m_gt.npz", subjects=["mm"])
    seq = data.sequences[0]
    world = positions["mm"][seq.action]
    xc = world_to_camera(world.astype(np.float64), cams["mm"][seq.camera])
    np.testing.assert_allclose(seq.poses, xc - xc[:, :1], atol=1e-5)


@needs_hdm05
def test_prepare_mocap_noise_drops_seed_and_camera_file(mocap, tmp_path):
    path, positions = mocap
    clean = prepare_mocap(path, tmp_path / "a", distortion=False)
    noisy = prepare_mocap(path, tmp_path / "b", noise_px=3.0, drop_prob=0.2, distortion=False, keypoints="det",
                          seed=0)
    assert noisy["files"][1].endswith("data_2d_h36m_det.npz")
    a = read_npz(clean["files"][1], ["positions_2d"])["positions_2d"]
    b = read_npz(noisy["files"][1], ["positions_2d"])["positions_2d"]
    kp_a = np.concatenate([v for s in a.values() for views in s.values() for v in views])
    kp_b = np.concatenate([v for s in b.values() for views in s.values() for v in views])
    # dropped keypoints repeat the previous frame's value; the rest carry ~3 px Gaussian noise
    held = np.all(kp_b[1:] == kp_b[:-1], axis=-1)
    assert 0.12 < held.mean() < 0.28
    assert 2.6 < np.std((kp_b - kp_a)[1:][~held]) < 3.6
    again = prepare_mocap(path, tmp_path / "c", noise_px=3.0, drop_prob=0.2, distortion=False, keypoints="det")
    c = read_npz(again["files"][1], ["positions_2d"])["positions_2d"]
    assert all(np.array_equal(x, y) for s in b for k in b[s] for x, y in zip(b[s][k], c[s][k]))
    # a camera file of the user's: its cameras are the ones used
    prepare_mocap(path, tmp_path / "d", cameras=tmp_path / "a" / "cameras.json", distortion=False)
    d = read_npz(tmp_path / "d" / "data_2d_h36m_gt.npz", ["positions_2d"])["positions_2d"]
    assert all(np.array_equal(x, y) for s in a for k in a[s] for x, y in zip(a[s][k], d[s][k]))


@needs_hdm05
def test_prepare_refuses_bad_input_and_writes_nothing(mocap, tmp_path, capsys):
    path, positions = mocap
    out = tmp_path / "out"
    assert main(["pose", "prepare", "--mocap", str(tmp_path / "none.npz"), "-o", str(out)]) == 2
    assert "file not found" in _one_line_error(capsys)
    (tmp_path / "text.npz").write_text("not a zip")
    assert main(["pose", "prepare", "--mocap", str(tmp_path / "text.npz"), "-o", str(out)]) == 2
    assert "not an .npz archive" in _one_line_error(capsys)
    np.savez(tmp_path / "joints25.npz", positions_3d={"x": {"walk": np.zeros((5, 25, 3))}})
    assert main(["pose", "prepare", "--mocap", str(tmp_path / "joints25.npz"), "-o", str(out)]) == 2
    assert "x/walk has 25 joints; expected 17" in _one_line_error(capsys)
    bad = {"x": {"walk": np.full((5, 17, 3), np.nan)}}
    np.savez(tmp_path / "nan.npz", positions_3d=bad)
    assert main(["pose", "prepare", "--mocap", str(tmp_path / "nan.npz"), "-o", str(out)]) == 2
    assert "NaN" in _one_line_error(capsys)
    assert main(["pose", "prepare", "--mocap", str(path), "-o", str(out), "--distance", "1.0"]) == 2
    assert "--distance" in _one_line_error(capsys)
    cams = json.loads((Path(convformer.__file__).parent / "pose" / "h36m_cameras.json").read_text())
    (tmp_path / "cams.json").write_text(json.dumps(cams))
    assert main(["pose", "prepare", "--mocap", str(path), "-o", str(out), "--cameras", str(tmp_path / "cams.json")]) == 2
    assert "has no cameras for bd, mm, tr" in _one_line_error(capsys)
    assert main(["pose", "prepare", "-o", str(out)]) == 2
    assert "exactly one of --mocap" in _one_line_error(capsys)
    assert main(["pose", "prepare", "--mocap", str(path), "--synthetic", "-o", str(out)]) == 2
    assert "exactly one of --mocap" in _one_line_error(capsys)
    assert not out.exists()
    # an existing folder is never overwritten without --overwrite
    assert main(["pose", "prepare", "--mocap", str(path), "-o", str(out)]) == 0
    before = (out / "data_3d_h36m.npz").read_bytes()
    capsys.readouterr()
    assert main(["pose", "prepare", "--mocap", str(path), "-o", str(out), "--noise", "5"]) == 2
    assert "already has" in _one_line_error(capsys)
    assert (out / "data_3d_h36m.npz").read_bytes() == before
    assert not list(out.glob(".*"))  # no staged or temporary file left behind


def test_prepare_synthetic_is_the_generator(tmp_path, capsys):
    assert main(["pose", "prepare", "--synthetic", "-o", str(tmp_path / "s"), "--frames", "30", "--noise", "1"]) == 0
    assert "--keypoints synth" in capsys.readouterr().out
    generate_h36m_like(tmp_path / "g", frames=30, noise_px=1.0)
    for name, key in (("data_3d_h36m.npz", "positions_3d"), ("data_2d_h36m_synth.npz", "positions_2d")):
        a = read_npz(tmp_path / "s" / name, [key])[key]
        b = read_npz(tmp_path / "g" / name, [key])[key]
        assert a.keys() == b.keys()
        for s in a:
            for act in a[s]:
                np.testing.assert_array_equal(np.asarray(a[s][act]), np.asarray(b[s][act]))
    assert (tmp_path / "s" / "cameras.json").read_text() == (tmp_path / "g" / "cameras.json").read_text()


# ------------------------------------------------------------------------ architecture options, end to end
@needs_hdm05
def test_architecture_options_round_trip_through_training_weights_and_cli(mocap, tmp_path, capsys):
    path, _ = mocap
    data = tmp_path / "data"
    prepare_mocap(path, data, noise_px=1.0)
    out = io.StringIO()
    args = ["pose", "train", "--model", "convformer_pose_t9", "--data", str(data), "--train-subjects", "bd,mm",
            "--test-subjects", "tr", "--stride", "9", "--val-stride", "20", "--batch-size", "32", "--epochs", "1",
            "--threads", "1", "--quiet", "--output", str(tmp_path / "runs"), "--name", "r",
            "--embed-dim", "8", "--spatial-depth", "1", "--temporal-depth", "1", "--num-heads", "4",
            "--mlp-ratio", "1.5", "--kernel-sizes", "3,5", "--flatten", "feature"]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    assert "val MPJPE" in out.getvalue()
    weights = tmp_path / "runs" / "r" / "last.safetensors"
    from convformer.pose.task import load_lifter
    net, meta = load_lifter(str(weights))
    for key, value in ARCH.items():
        got = getattr(net.cfg, key)
        assert (list(got) if key == "kernel_sizes" else got) == value, key
    direct = convformer.create_model("convformer_pose_t9", **ARCH)
    assert sum(p.numel() for p in direct.parameters()) == sum(p.numel() for p in net.parameters())
    convformer.load_weights(direct, weights)
    x = torch.randn(2, 9, 17, 2)
    torch.testing.assert_close(net(x), direct.eval()(x), rtol=0, atol=0)
    # `pose eval` and `pose lift` rebuild the same network from the file alone
    capsys.readouterr()
    try:
        assert main(["pose", "eval", str(weights), "--data", str(data), "--subjects", "tr", "--threads", "2",
                     "--no-flip"]) == 0
        assert torch.get_num_threads() == 2          # --threads took effect
    finally:
        torch.set_num_threads(1)
    assert "sequences of tr: MPJPE" in capsys.readouterr().out
    assert main(["pose", "eval", str(weights), "--data", str(data), "--subjects", "tr", "--threads", "0"]) == 2
    assert "--threads must be at least 1" in _one_line_error(capsys)
    # bad options: one-line errors before any data is read
    for flag, value, message in (("--flatten", "diagonal", "--flatten must be one of joint, feature"),
                                 ("--kernel-sizes", "4,6", "--kernel-sizes must be odd"),
                                 ("--embed-dim", "0", "--embed-dim must be a positive integer")):
        assert main(args[:-16] + ["--name", "bad", flag, value]) == 2
        assert message in _one_line_error(capsys)
    assert main(["pose", "train", "--model", "martinez_mlp", "--embed-dim", "8", "--quiet",
                 "--output", str(tmp_path / "runs"), "--name", "m"]) == 2
    assert "applies to the transformer lifters" in _one_line_error(capsys)
    assert not (tmp_path / "runs" / "bad").exists() and not (tmp_path / "runs" / "m").exists()


# ----------------------------------------------------------------------------------------- flatten orders
def _temporal_input(model, x):
    seen = {}
    hook = model.temporal_blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("z", a[0].clone()))
    model(x)
    hook.remove()
    return seen["z"]


def test_flatten_orders_lay_out_the_same_features_differently():
    torch.manual_seed(0)
    joint = convformer.create_model("convformer_pose_t9", embed_dim=16).eval()
    feature = convformer.create_model("convformer_pose_t9", embed_dim=16, flatten="feature").eval()
    feature.load_state_dict(joint.state_dict())
    with torch.no_grad():
        joint.temporal_pos.zero_()
        feature.temporal_pos.zero_()
    x = torch.randn(2, 9, 17, 2)
    zj, zf = _temporal_input(joint, x), _temporal_input(feature, x)    # (B, T, 17 * 16)
    j, c = 5, 11
    # joint-major: joint j's channels are contiguous; feature-major: channel c's 17 joints are contiguous
    torch.testing.assert_close(zf[..., c * 17 + j], zj[..., j * 16 + c], rtol=0, atol=0)
    torch.testing.assert_close(zf.reshape(2, 9, 16, 17).transpose(2, 3), zj.reshape(2, 9, 17, 16), rtol=0, atol=0)
    assert not torch.equal(zf, zj)
    # a 3-wide temporal kernel centred on feature (joint 5, channel 11) reaches joints 4 and 6 in the
    # feature-major order, and only channels 10 and 12 of joint 5 in the joint-major one
    assert [(i % 17, i // 17) for i in (c * 17 + j - 1, c * 17 + j + 1)] == [(4, 11), (6, 11)]
    with pytest.raises(ConvformerError, match="flatten must be one of"):
        convformer.create_model("convformer_pose_t9", flatten="diagonal")


# -------------------------------------------------------------------------- the K-convolution biases
def test_only_the_spatial_key_biases_and_the_temporal_projection_bias_have_zero_gradient():
    torch.manual_seed(0)
    model = convformer.create_model("convformer_pose_t9", embed_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model(torch.randn(4, 9, 17, 2)).square().sum().backward()

    def size(name):
        return float(torch.cat([p.grad.flatten() for n, p in model.named_parameters() if name(n)]).abs().max())

    scale = size(lambda n: "weight" in n)
    spatial_k = size(lambda n: n.startswith("spatial_blocks") and ".attn.k.convs" in n and n.endswith("bias"))
    temporal_k = size(lambda n: n.startswith("temporal_blocks") and ".attn.k.convs" in n and n.endswith("bias"))
    temporal_proj = size(lambda n: n.startswith("temporal_blocks") and n.endswith("attn.proj.bias"))
    spatial_proj = size(lambda n: n.startswith("spatial_blocks") and n.endswith("attn.proj.bias"))
    assert spatial_k < 1e-6 * scale and temporal_proj < 1e-6 * scale        # zero up to rounding
    assert temporal_k > 1e-4 * scale and spatial_proj > 1e-4 * scale        # these learn


# ------------------------------------------------------------------------------------ mended input checks
def test_truncated_npy_and_flattened_frames(tmp_path):
    seq = np.random.default_rng(0).random((10, 17, 2)) * 100
    np.save(tmp_path / "full.npy", seq)
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:len(data) - 50])
    with pytest.raises(ConvformerError) as err:
        read_keypoints(tmp_path / "cut.npy")
    assert "is truncated" in str(err.value) and "pickled" not in str(err.value)
    (tmp_path / "flat.json").write_text(json.dumps(seq.reshape(10, 34).tolist()))
    np.testing.assert_allclose(read_keypoints(tmp_path / "flat.json").keypoints, seq, rtol=1e-6)
    np.save(tmp_path / "flat51.npy", np.concatenate([seq, np.ones((10, 17, 1))], -1).reshape(10, 51))
    got = read_keypoints(tmp_path / "flat51.npy")
    np.testing.assert_allclose(got.keypoints, seq, rtol=1e-6)
    assert got.scores.shape == (10, 17)
    (tmp_path / "wide.json").write_text(json.dumps(np.zeros((189, 30)).tolist()))
    with pytest.raises(ConvformerError, match=r"shape \(189, 30\); expected frames of 17 joints"):
        read_keypoints(tmp_path / "wide.json")


def test_coco_joints_with_score_zero_are_interpolated_not_taken_at_the_origin(tmp_path):
    frames = np.stack([np.stack([np.arange(17) * 10.0 + t, np.arange(17) * 5.0 + 2 * t, np.full(17, 0.9)], -1)
                       for t in range(5)])
    frames[2, COCO_JOINTS.index("left_wrist")] = (0, 0, 0)       # not detected in frame 2
    results = [{"image_id": t, "keypoints": f.ravel().tolist(), "score": 0.9} for t, f in enumerate(frames)]
    (tmp_path / "dets.json").write_text(json.dumps(results))
    got = read_keypoints(tmp_path / "dets.json", to_h36m=False)
    wrist = COCO_JOINTS.index("left_wrist")
    np.testing.assert_allclose(got.keypoints[2, wrist], (frames[1, wrist, :2] + frames[3, wrist, :2]) / 2)
    assert got.filled_joints == 1 and got.scores[2, wrist] == 0
    frames[:, wrist, 2] = 0
    results = [{"image_id": t, "keypoints": f.ravel().tolist(), "score": 0.9} for t, f in enumerate(frames)]
    (tmp_path / "never.json").write_text(json.dumps(results))
    with pytest.raises(ConvformerError, match="left_wrist are never detected"):
        read_keypoints(tmp_path / "never.json")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "t9.safetensors"
    model = convformer.create_model("convformer_pose_t9", embed_dim=8, spatial_depth=1, temporal_depth=1)
    convformer.save_weights(model, path, metadata={"lifter": json.dumps({"embed_dim": 8, "spatial_depth": 1,
                                                                          "temporal_depth": 1})})
    return str(path)


def test_lift_checks_every_argument_before_writing(tiny_weights, tmp_path, capsys):
    clip = tmp_path / "clip.npy"
    np.save(clip, np.random.default_rng(0).random((20, 17, 2)) * 0.5)
    for extra, message in ((["--png", str(tmp_path / "p.png"), "--frames", "0,99"], "outside the sequence"),
                           (["--video", str(tmp_path / "v.avi")], "use a .gif or .mp4"),
                           (["--image-size", "wide"], "WIDTHxHEIGHT")):
        assert main(["pose", "lift", str(clip), "--weights", tiny_weights, *extra]) == 2
        assert message in _one_line_error(capsys)
        assert not (tmp_path / "clip_3d.npy").exists() and not (tmp_path / "p.png").exists()


def test_lift_keeps_coco_frame_ids_fills_gaps_and_warns_on_short_input(tiny_weights, tmp_path, capsys):
    rng = np.random.default_rng(1)
    ids = [3, 4, 7]          # frames 5 and 6 have no detection
    results = [{"image_id": f"{i:06d}.jpg", "score": 0.9,
                "keypoints": np.concatenate([rng.random((17, 2)) * 500 + 200, np.ones((17, 1))], -1).ravel().tolist()}
               for i in ids]
    (tmp_path / "dets.json").write_text(json.dumps(results))
    assert main(["pose", "lift", str(tmp_path / "dets.json"), "--weights", tiny_weights, "--image-size",
                 "1000x1000", "--png", str(tmp_path / "p.png"), "--frames", "5"]) == 0
    captured = capsys.readouterr()
    assert "2 frame(s) without a detection" in captured.err
    assert "5 frame(s), fewer than the 9 frames" in captured.err          # short input: padded, and said
    poses = np.load(tmp_path / "dets_3d.npy")
    assert poses.shape == (5, 17, 3)
    doc = json.loads((tmp_path / "dets_3d_frames.json").read_text())
    assert doc["frame_ids"] == [3, 4, 5, 6, 7] and doc["filled_frames"] == [5, 6]
    assert "frames 3-7" in captured.out


def test_parameter_study_benchmark_sweeps_then_seeds_the_best_rate(tmp_path):
    from conftest import load_benchmark
    study = load_benchmark("pose_study")
    out = tmp_path / "study.json"
    study.main(["--datasets", "synthetic", "--points", "single", "mlp", "--epochs", "1", "--stride", "400",
                "--val-stride", "800", "--batch", "32", "--lrs", "1e-3", "3e-3", "--seeds", "0", "1", "--jobs", "1",
                "--data-dir", str(tmp_path / "data"), "--output", str(out)])
    report = json.loads(out.read_text())
    runs = {(r["point"], r["lr"], r["seed"]): r for r in report["runs"]}
    for row in report["summary"]:
        sweep = {lr: runs[(row["point"], lr, 0)]["mpjpe"] for lr in (1e-3, 3e-3)}
        assert row["lr"] == min(sweep, key=sweep.get)            # the better rate of seed 0 ...
        assert (row["point"], row["lr"], 1) in runs                # ... is the one seed 1 ran at
        assert (row["point"], max(sweep, key=sweep.get), 1) not in runs
        m = [runs[(row["point"], row["lr"], s)]["mpjpe"] for s in (0, 1)]
        assert row["mpjpe"] == pytest.approx(sum(m) / 2) and row["seeds"] == 2
    assert {r["point"] for r in report["summary"]} == {"single", "mlp"}
    params = {r["point"]: r["params"] for r in report["summary"]}
    assert params["mlp"] == sum(p.numel() for p in convformer.create_model("martinez_mlp").parameters())
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" and "| synthetic |" in out.with_suffix(".md").read_text()
