"""`convformer pose train | eval | lift` on one small trained lifter, and their one-line errors."""
import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import convformer
from convformer.cli import main
from convformer.pose.keypoints import COCO_JOINTS, H36M_JOINTS, coco_to_h36m
from convformer.pose.data import load_h36m, normalize_screen, read_npz
from convformer.pose.synth import ACTIONS, generate_h36m_like
from convformer.pose.task import lift_sequence

N_FRAMES = 6
SIZE = (1000, 1002)  # the synthetic cameras' resolution


@pytest.fixture(scope="module")
def pose_run(tmp_path_factory):
    """One short `pose train` run of convformer_pose_t9 on a sliver of synthetic data, its stdout, and a
    short clip of pixel keypoints (S9 Walking, camera 0) from the same synthetic world."""
    root = tmp_path_factory.mktemp("pose")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["pose", "train", "--model", "convformer_pose_t9", "--train-subjects", "S1",
                     "--synthetic-frames", "60", "--stride", "5", "--val-stride", "10", "--batch-size", "32",
                     "--epochs", "1", "--threads", "1", "--quiet", "--output", str(root / "runs"), "--name", "r"])
    _, path_2d = generate_h36m_like(root / "synth", subjects=("S9",), actions=("Walking",), frames=40,
                                    compress=False)
    pixels = read_npz(path_2d, ["positions_2d"])["positions_2d"]["S9"]["Walking"][0][:N_FRAMES]
    return {"code": code, "stdout": out.getvalue(), "run": root / "runs" / "r",
            "weights": str(root / "runs" / "r" / "best.safetensors"), "pixels": pixels.astype(np.float64)}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


def _lifter(weights):
    model = convformer.create_model("convformer_pose_t9")
    convformer.load_weights(model, weights)
    return model.eval()


def test_train_prints_the_val_mpjpe_of_its_run_folder(pose_run):
    assert pose_run["code"] == 0
    row = json.loads((pose_run["run"] / "metrics.json").read_text())[-1]
    assert f"val MPJPE {row['val_mpjpe']:.1f} mm" in pose_run["stdout"]
    assert f"P-MPJPE {row['val_p_mpjpe']:.1f} mm" in pose_run["stdout"]
    assert f"run folder: {pose_run['run']}" in pose_run["stdout"]


def test_eval_writes_per_action_tables_that_match_a_direct_computation(pose_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["pose", "eval", pose_run["weights"], "--synthetic-frames", "40", "--cameras", "0",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"per_action.csv", "per_action.json", "mpjve.json", "table.md"}
    per_action = json.loads((out / "per_action.json").read_text())
    mpjve = json.loads((out / "mpjve.json").read_text())
    actions = sorted(ACTIONS)
    assert set(per_action) == {*actions, "Average", "Pose-weighted"}
    assert set(mpjve) == {*actions, "Average"}

    lines = (out / "table.md").read_text().strip().splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Protocol (mm)", *actions, "Avg"]
    rows = {line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in lines[2:]}
    assert list(rows) == ["MPJPE", "P-MPJPE", "N-MPJPE", "MPJVE"]
    for label, key in (("MPJPE", "mpjpe"), ("P-MPJPE", "p_mpjpe"), ("N-MPJPE", "n_mpjpe")):
        assert rows[label] == [f"{per_action[a][key]:.1f}" for a in actions + ["Average"]]
    assert rows["MPJVE"] == [f"{mpjve[a]:.1f}" for a in actions + ["Average"]]
    # the printed summary's average is the file's
    summary = re.search(r"sequences of S9, S11: MPJPE (\d+\.\d) mm", printed)
    assert summary and summary.group(1) == f"{per_action['Average']['mpjpe']:.1f}"
    assert per_action["Average"]["mpjpe"] == pytest.approx(np.mean([per_action[a]["mpjpe"] for a in actions]))

    # one action recomputed without the engine's evaluation code: lift each whole sequence, mean joint error
    folder = tmp_path / "data"
    path_3d, path_2d = generate_h36m_like(folder, frames=40, compress=False)
    data = load_h36m(path_3d, path_2d, subjects=("S9", "S11"), actions="Walking")
    model = _lifter(pose_run["weights"])
    errors = []
    for seq in (s for s in data.sequences if s.camera == 0):
        pred = lift_sequence(model, torch.from_numpy(seq.keypoints), flip_tta=True).numpy()
        errors.append(np.linalg.norm(pred - seq.poses, axis=-1).mean(axis=-1))
    assert len(errors) == 2
    assert per_action["Walking"]["mpjpe"] == pytest.approx(1000 * np.concatenate(errors).mean(), rel=1e-4)
    assert per_action["Walking"]["count"] == sum(len(e) for e in errors)


def test_lift_pixels_to_root_relative_poses_png_and_no_overwrite(pose_run, tmp_path, capsys):
    clip = tmp_path / "clip.npy"
    np.save(clip, pose_run["pixels"])
    png = tmp_path / "pose.png"
    assert main(["pose", "lift", str(clip), "--weights", pose_run["weights"], "--image-size", "1000x1002",
                 "--png", str(png)]) == 0
    result = tmp_path / "clip_3d.npy"
    poses = np.load(result)
    assert poses.shape == (N_FRAMES, 17, 3) and poses.dtype == np.float32
    norm = normalize_screen(pose_run["pixels"], *SIZE).astype(np.float32)
    expected = lift_sequence(_lifter(pose_run["weights"]), torch.from_numpy(norm), flip_tta=True).numpy()
    np.testing.assert_allclose(poses, expected, atol=1e-6)
    # root-relative: the pelvis stays near the origin while the other joints are spread out around it
    spread = np.linalg.norm(poses, axis=-1)
    assert spread[:, 0].mean() < 0.25 * spread[:, 1:].mean()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    # ONNX Runtime runs the same lifter: the same poses within float rounding
    ort_out = tmp_path / "clip_ort.npy"
    assert main(["pose", "lift", str(clip), "--weights", pose_run["weights"], "--image-size", "1000x1002",
                 "--runtime", "onnxruntime", "-o", str(ort_out)]) == 0
    np.testing.assert_allclose(np.load(ort_out), poses, atol=1e-4)
    capsys.readouterr()

    before = result.read_bytes()
    assert main(["pose", "lift", str(clip), "--weights", pose_run["weights"], "--image-size", "1000x1002"]) == 2
    err = _one_line_error(capsys)
    assert "already exists" in err and "--overwrite" in err
    assert result.read_bytes() == before

    assert main(["pose", "lift", str(clip), "--weights", pose_run["weights"], "-o", str(tmp_path / "x.npy")]) == 2
    assert "--image-size" in _one_line_error(capsys)
    assert not (tmp_path / "x.npy").exists()


def _coco_from_h36m(kp):
    """A COCO-17 frame sequence whose Human3.6M-mapped hips, limbs, nose, shoulders agree with ``kp``."""
    h = {name: kp[:, i] for i, name in enumerate(H36M_JOINTS)}
    side = np.array([6.0, 0.0])
    coco = {"nose": h["neck_nose"], "left_eye": h["head"] + side, "right_eye": h["head"] - side,
            "left_ear": h["head"] + 2 * side, "right_ear": h["head"] - 2 * side}
    for part, h36m in (("shoulder", "shoulder"), ("elbow", "elbow"), ("wrist", "wrist"), ("hip", "hip"),
                       ("knee", "knee"), ("ankle", "foot")):
        for s in ("left", "right"):
            coco[f"{s}_{part}"] = h[f"{s}_{h36m}"]
    return np.stack([coco[name] for name in COCO_JOINTS], 1)


def test_lift_coco_json_equals_the_mapped_h36m_npy(pose_run, tmp_path, capsys):
    coco = _coco_from_h36m(pose_run["pixels"])
    results = [{"image_id": i, "score": 0.9,
                "keypoints": [float(v) for xy in frame for v in (*xy, 1.0)]} for i, frame in enumerate(coco)]
    (tmp_path / "dets.json").write_text(json.dumps(results[::-1]))  # frame order comes from image_id
    np.save(tmp_path / "mapped.npy", coco_to_h36m(coco))
    args = ["--weights", pose_run["weights"], "--image-size", "1000x1002"]
    assert main(["pose", "lift", str(tmp_path / "dets.json"), *args]) == 0
    assert "coco order, mapped to Human3.6M" in capsys.readouterr().out
    assert main(["pose", "lift", str(tmp_path / "mapped.npy"), *args]) == 0
    assert "h36m order" in capsys.readouterr().out
    a, b = np.load(tmp_path / "dets_3d.npy"), np.load(tmp_path / "mapped_3d.npy")
    assert a.shape == (N_FRAMES, 17, 3)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # and the mapping mattered: the same numbers read as Human3.6M order lift to something else
    np.save(tmp_path / "unmapped.npy", coco)
    assert main(["pose", "lift", str(tmp_path / "unmapped.npy"), *args]) == 0
    assert np.abs(np.load(tmp_path / "unmapped_3d.npy") - a).max() > 1e-3


def test_lift_writes_a_gif_with_one_frame_per_pose(pose_run, tmp_path):
    clip = tmp_path / "clip.npy"
    np.save(clip, pose_run["pixels"])
    gif = tmp_path / "out.gif"
    assert main(["pose", "lift", str(clip), "--weights", pose_run["weights"], "--image-size", "1000x1002",
                 "--video", str(gif)]) == 0
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == N_FRAMES


def test_bad_inputs_give_one_line_errors(pose_run, tmp_path, capsys):
    clip = tmp_path / "clip.npy"
    np.save(clip, pose_run["pixels"])
    image_model = convformer.create_model("convformer_nano", num_classes=10, img_size=32)
    convformer.save_weights(image_model, tmp_path / "nano.safetensors")
    assert main(["pose", "lift", str(clip), "--weights", str(tmp_path / "nano.safetensors"), "--image-size",
                 "1000x1002"]) == 2
    assert "'convformer_nano' is not a pose lifter" in _one_line_error(capsys)
    assert not (tmp_path / "clip_3d.npy").exists()

    assert main(["pose", "lift", str(tmp_path / "missing.npy"), "--weights", pose_run["weights"]]) == 2
    assert "keypoint file not found" in _one_line_error(capsys)

    runs = tmp_path / "runs"
    assert main(["pose", "train", "--model", "martinez_mlp", "--data", str(tmp_path / "nowhere"), "--output",
                 str(runs), "--name", "x", "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "pose data folder not found" in err and "nowhere" in err
    assert not (runs / "x").exists()


def test_image_commands_refuse_pose_models_with_the_right_command(pose_run, capsys):
    assert main(["train", "--model", "convformer_pose_t9", "--epochs", "1"]) == 2
    assert "train it with `convformer pose train`" in _one_line_error(capsys)
    assert main(["eval", pose_run["weights"]]) == 2
    assert "a pose model; use convformer pose eval" in _one_line_error(capsys)
