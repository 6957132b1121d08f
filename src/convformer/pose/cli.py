"""`convformer pose`: train and evaluate 3-D pose lifters, and lift 2-D keypoint files to 3-D.

    convformer pose train --model convformer_pose_t27 [--data synthetic|FOLDER] [--keypoints cpn_ft_h36m_dbb]
    convformer pose eval runs/<run>/best.safetensors [--data FOLDER] [--output report/]
    convformer pose lift keypoints.json --weights best.safetensors --image-size 1000x1002 --png pose.png
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from convformer.pose.config import PoseTrainConfig
from convformer.errors import ConvformerError
from convformer.engine import options
from convformer.optimize import RUNTIME_HELP, check_runtime
from convformer.pose.task import load_lifter

app = typer.Typer(no_args_is_help=True, help="3-D human pose: train/evaluate lifters, lift 2-D keypoints.")


@app.command("train")
@options.uses_config(PoseTrainConfig)
def train_cmd(
    model: Optional[str] = typer.Option(None, help="Lifter [default: convformer_pose_t27]; see `convformer models`."),
    data: Optional[str] = typer.Option(None, help="'synthetic' or a folder with data_3d_h36m.npz and "
                                                  "data_2d_h36m_<keypoints>.npz (VideoPose3D's files)."),
    keypoints: Optional[str] = typer.Option(None, help="2-D file suffix: gt, cpn_ft_h36m_dbb, ... [default: gt]."),
    train_subjects: Optional[str] = typer.Option(None, help="Training subjects [default: S1,S5,S6,S7,S8]."),
    test_subjects: Optional[str] = typer.Option(None, help="Validation subjects [default: S9,S11]."),
    train_cameras: Optional[str] = typer.Option(None, help="Camera indices to train on, e.g. 0,1,2 [default: all]."),
    test_cameras: Optional[str] = typer.Option(None, help="Camera indices to validate on [default: all]."),
    actions: Optional[str] = typer.Option(None, help="Comma-separated actions to keep [default: all]."),
    stride: Optional[int] = typer.Option(None, help="Training windows every N frames [default: 1]."),
    val_stride: Optional[int] = typer.Option(None, help="Validation windows every N frames [default: 1]."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Flip augmentation [default: on]."),
    test_flip: Optional[bool] = typer.Option(None, "--test-flip/--no-test-flip", help="Flip TTA in validation."),
    seq2seq: Optional[bool] = typer.Option(None, "--seq2seq", help="Predict and supervise every frame."),
    attention: Optional[str] = typer.Option(None, help="conv or linear: override the lifter's attention "
                                                       "(ablation: plain linear-projection attention)."),
    embed_dim: Optional[int] = typer.Option(None, help="Per-joint embedding width d [default: the model's, 32]."),
    spatial_depth: Optional[int] = typer.Option(None, help="Spatial blocks [default: the model's]."),
    temporal_depth: Optional[int] = typer.Option(None, help="Temporal blocks [default: the model's]."),
    num_heads: Optional[int] = typer.Option(None, help="Attention heads [default: 8]."),
    mlp_ratio: Optional[float] = typer.Option(None, help="MLP hidden width / features [default: 2]."),
    kernel_sizes: Optional[str] = typer.Option(None, help="Q/K/V kernels of the convolutional attention, e.g. "
                                                          "3,5,7 [default: 7,7,7]."),
    flatten: Optional[str] = typer.Option(None, help="Order of a frame's J x d features on the temporal axis: "
                                                     "joint (joint-major) or feature (feature-major); docs/pose.md."),
    synthetic_frames: Optional[int] = typer.Option(None, help="Frames per synthetic sequence [default: 600]."),
    synthetic_noise: Optional[float] = typer.Option(None, help="2-D noise (pixels) on synthetic keypoints."),
    epochs: Optional[int] = typer.Option(None, help="Epochs [default: 20]."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process [default: 256]."),
    accum_steps: options.AccumSteps = None,
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: 1e-3]."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay [default: 0.01]."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up epochs [default: 1]."),
    min_lr: options.MinLr = None,
    lr_schedule: Optional[str] = typer.Option(None, help="cosine, exponential (x --lr-decay per epoch, the "
                                                         "paper's recipe) or constant."),
    lr_decay: Optional[float] = typer.Option(None, help="Per-epoch factor of the exponential schedule."),
    drop_path_rate: Optional[float] = typer.Option(None, help="Stochastic depth [default: 0.1; paper 0.2]."),
    ema_decay: Optional[float] = typer.Option(None, help="Keep an EMA of the weights (e.g. 0.999)."),
    grad_clip: options.GradClip = None,
    precision: options.Precision = None,
    pretrained: Optional[str] = typer.Option(None, help="Weight file to start from."),
    checkpoint_every: options.CheckpointEvery = None,
    resume: options.Resume = None,
    skip_nonfinite: options.SkipNonfinite = None,
    deterministic: options.Deterministic = None,
    tensorboard: options.Tensorboard = None,
    seed: options.Seed = None,
    workers: options.Workers = None,
    threads: options.Threads = None,
    device: options.Device = None,
    output: options.Output = None,
    name: options.Name = None,
    config: options.Config = None,
    quiet: options.Quiet = False,
):
    """Train a lifter (MPJPE loss, AdamW, cosine); run folder, resume and torchrun DDP as `convformer train`."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    cfg, result = options.run_training_command(PoseTrainConfig, config, flags, quiet)
    if not result["main"] or result.get("val_mpjpe") is None:
        return
    typer.echo(f"{cfg.model} on {cfg.data}: val MPJPE {result['val_mpjpe']:.1f} mm, P-MPJPE "
               f"{result['val_p_mpjpe']:.1f} mm (best MPJPE {result['best_mpjpe']:.1f} mm, {result['val_count']} "
               f"windows) after {result['epochs']} epochs in {result['seconds']:.0f}s")
    typer.echo(f"run folder: {result['folder']}")


@app.command("prepare")
def prepare_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write data_3d_h36m.npz, "
                                                            "data_2d_h36m_<keypoints>.npz and cameras.json into."),
    mocap: Optional[Path] = typer.Option(None, help="3-D motion in VideoPose3D's layout (positions_3d[subject][action], "
                                                    "metres, z up), e.g. ../shared/data/hdm05/data_3d_hdm05.npz."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Write the synthetic Human3.6M stand-in instead."),
    cameras: Optional[Path] = typer.Option(None, help="Cameras json with extrinsics per subject (the layout of "
                                                      "pose/h36m_cameras.json) [default: Human3.6M's intrinsics, "
                                                      "four views on a ring]."),
    keypoints: str = typer.Option("gt", help="Name of the 2-D file: data_2d_h36m_<keypoints>.npz (--mocap)."),
    noise: float = typer.Option(0.0, help="Gaussian 2-D noise, pixels (a detector's error)."),
    drop: float = typer.Option(0.0, help="Chance that a keypoint is missed in a frame (it holds its last value)."),
    distance: float = typer.Option(6.0, help="Radius of the default camera ring, metres (--mocap)."),
    distortion: bool = typer.Option(True, "--distortion/--no-distortion",
                                    help="Apply the cameras' lens distortion (--mocap)."),
    frames: int = typer.Option(600, help="Frames per synthetic sequence (--synthetic)."),
    seed: int = typer.Option(0, help="Seed of the camera jitter, noise and drops."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files already in --output."),
):
    """Film 3-D motion with cameras into 2-D + 3-D files that `pose train/eval --data FOLDER` read."""
    from convformer.pose.prepare import prepare_mocap, prepare_synthetic
    if (mocap is None) == (not synthetic):
        raise ConvformerError("pass exactly one of --mocap FILE (project real 3-D motion) or --synthetic")
    if synthetic:
        if cameras is not None or keypoints != "gt":
            raise ConvformerError("--cameras and --keypoints apply to --mocap; the synthetic set has its own rig "
                                  "and names its 2-D file 'synth'")
        if frames < 1:
            raise ConvformerError(f"--frames must be at least 1, got {frames}")
        info = prepare_synthetic(output, frames=frames, noise_px=noise, drop_prob=drop, seed=seed, overwrite=overwrite)
        typer.echo(f"wrote the synthetic set ({len(info['subjects'])} subjects, {info['clips']} sequences, "
                   f"4 cameras) to {output}: train with `convformer pose train --data {output} --keypoints synth`")
        return
    info = prepare_mocap(mocap, output, cameras=cameras, keypoints=keypoints, noise_px=noise, drop_prob=drop,
                         distance=distance, distortion=distortion, seed=seed, overwrite=overwrite)
    typer.echo(f"filmed {info['clips']} clips ({info['frames']} frames) of {', '.join(info['subjects'])} with "
               f"{info['cameras']} cameras into {output}")
    typer.echo(f"train with `convformer pose train --data {output} --keypoints {keypoints} --train-subjects ... "
               "--test-subjects ...` (docs/pose.md gives HDM05's actor split)")


@app.command("eval")
def eval_cmd(
    weights: str = typer.Argument(..., help="Weight file (e.g. runs/<run>/best.safetensors)."),
    model: Optional[str] = typer.Option(None, help="Model name [default: from the weight file]."),
    data: str = typer.Option("synthetic", help="'synthetic' or a folder of VideoPose3D files."),
    keypoints: str = typer.Option("gt", help="2-D file suffix (data_2d_h36m_<keypoints>.npz)."),
    subjects: str = typer.Option("S9,S11", help="Subjects to evaluate."),
    cameras: Optional[str] = typer.Option(None, help="Camera indices to evaluate [default: all]."),
    actions: Optional[str] = typer.Option(None, help="Comma-separated actions [default: all]."),
    synthetic_frames: int = typer.Option(600, help="Frames per synthetic sequence (data=synthetic)."),
    synthetic_noise: float = typer.Option(0.0, help="2-D noise in pixels (data=synthetic)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Flip test-time augmentation."),
    output: Optional[Path] = typer.Option(None, help="Folder for per_action.csv/.json and table.md."),
    fast: bool = typer.Option(False, "--fast", help="Use the fast inference path (convformer.optimize)."),
    runtime: str = typer.Option("torch", help=RUNTIME_HELP),
    threads: options.Threads = None,
):
    """Per-action MPJPE (protocol 1), P-MPJPE (protocol 2), N-MPJPE and MPJVE over whole sequences."""
    from convformer.pose.task import evaluate_sequences, load_split
    from convformer.fileio import atomic_write
    check_runtime(runtime)
    if threads is not None:
        if threads < 1:
            raise ConvformerError(f"--threads must be at least 1, got {threads}")
        import torch
        torch.set_num_threads(threads)
    net, _ = load_lifter(weights, model, fast, runtime=runtime)
    cfg = PoseTrainConfig(data=data, keypoints=keypoints, actions=actions, synthetic_frames=synthetic_frames,
                          synthetic_noise=synthetic_noise)
    split = load_split(cfg, subjects, cameras)
    table, velocity = evaluate_sequences(net, split.sequences, flip_tta=flip, left=split.left, right=split.right)
    text = table.to_markdown(("mpjpe", "p_mpjpe", "n_mpjpe"))
    rows = table.table()
    mpjve_row = "| MPJVE | " + " | ".join(f"{velocity.get(a, float('nan')):.1f}" for a in rows if a != "Average") \
        + f" | {velocity.get('Average', float('nan')):.1f} |"
    text = text.rstrip("\n") + "\n" + mpjve_row + "\n"
    typer.echo(text)
    avg = rows["Average"]
    typer.echo(f"{len(split.sequences)} sequences of {', '.join(split.subjects)}: MPJPE {avg['mpjpe']:.1f} mm, "
               f"P-MPJPE {avg['p_mpjpe']:.1f} mm, MPJVE {velocity.get('Average', float('nan')):.2f} mm (flip TTA "
               f"{'on' if flip else 'off'})")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        table.to_csv(output / "per_action.csv")
        table.to_json(output / "per_action.json")
        atomic_write(output / "mpjve.json", lambda tmp: Path(tmp).write_text(json.dumps(velocity, indent=1)))
        atomic_write(output / "table.md", lambda tmp: Path(tmp).write_text(text))
        typer.echo(f"wrote {output}/per_action.csv, per_action.json, mpjve.json, table.md")


def _size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConvformerError(f"--image-size must be WIDTHxHEIGHT in pixels, e.g. 1920x1080; got {text!r}") from None
    if w < 1 or h < 1:
        raise ConvformerError(f"--image-size must be positive, got {text!r}")
    return w, h


def _frames(text: Optional[str], ids: np.ndarray) -> list[int]:
    """--frames (frame ids, as in the input file) -> row indices of the sequence; checked before any work."""
    if not text:
        return [len(ids) // 2]
    try:
        frames = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConvformerError(f"--frames takes comma-separated frame numbers, got {text!r}") from None
    first, last = int(ids[0]), int(ids[-1])
    bad = [f for f in frames if not first <= f <= last]
    if bad or not frames:
        raise ConvformerError(f"--frames {bad or text!r} outside the sequence (frames {first}-{last})")
    return [f - first for f in frames]


def _video_path(video: Optional[Path]) -> None:
    if video is None:
        return
    suffix = video.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ConvformerError(f"--video {video.name}: use a .gif or .mp4 path")
    if suffix == ".mp4":
        import shutil
        if shutil.which("ffmpeg") is None:
            raise ConvformerError(f"cannot write {video.name}: ffmpeg is not installed; use a .gif path instead")


@app.command("lift")
def lift_cmd(
    keypoints: Path = typer.Argument(..., help="2-D keypoints: .npy (N, 17, 2|3) or .json (nested list or "
                                               "COCO-style results), Human3.6M or COCO-17 joint order."),
    weights: str = typer.Option(..., help="Weight file of a trained lifter."),
    model: Optional[str] = typer.Option(None, help="Model name [default: from the weight file]."),
    layout: str = typer.Option("auto", help="Joint order: auto, h36m or coco (mapped to Human3.6M)."),
    image_size: Optional[str] = typer.Option(None, help="WIDTHxHEIGHT of the frames the keypoints are in "
                                                        "(pixels); omit if already normalised to [-1, 1]."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="3-D poses .npy [default: <input>_3d.npy]."),
    png: Optional[Path] = typer.Option(None, help="Also draw the chosen frames (2-D input | lifted 3-D) here."),
    frames: Optional[str] = typer.Option(None, help="Frames to draw, e.g. 0,50,100 [default: the middle one]."),
    video: Optional[Path] = typer.Option(None, help="Also write an animation (.gif, or .mp4 with ffmpeg)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Flip test-time augmentation."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    runtime: str = typer.Option("torch", help=RUNTIME_HELP),
):
    """Lift every frame to root-relative 3-D joints (metres, camera axes: x right, y down, z forward).

    Every argument is checked before anything is written. COCO-style results keep their frame ids: frames
    with no detection, and joints with score 0, are interpolated from their neighbours (the count is
    printed), and <output>_frames.json lists the frame id of every row."""
    import torch

    from convformer.pose.keypoints import read_keypoints
    from convformer.pose.data import normalize_screen
    from convformer.pose.task import lift_sequence
    from convformer.fileio import atomic_write
    check_runtime(runtime)
    output = output or keypoints.with_name(keypoints.stem + "_3d.npy")
    if output.suffix != ".npy":
        raise ConvformerError(f"--output must be a .npy file, got {output}")
    ids_path = output.with_name(output.stem + "_frames.json")
    _video_path(video)
    size = _size(image_size)
    got = read_keypoints(keypoints, layout)
    kp, layout_used = got.keypoints, got.layout
    has_ids = got.has_frame_ids
    for target in (output, png, video, ids_path if has_ids else None):
        if target is not None and target.exists() and not overwrite:
            raise ConvformerError(f"{target} already exists; pass --overwrite or choose another path")
    rows = _frames(frames, got.frame_ids) if png is not None else []
    if size is None:
        if np.abs(kp).max() > 1.5:
            raise ConvformerError(f"{keypoints.name} holds pixel coordinates (up to {np.abs(kp).max():.0f}); pass "
                                  "--image-size WIDTHxHEIGHT of the frames they were detected in")
        norm = kp
    else:
        norm = normalize_screen(kp, *size)
    net, _ = load_lifter(weights, model, runtime=runtime)
    if len(kp) < net.receptive_field:
        typer.echo(f"warning: {keypoints.name} has {len(kp)} frame(s), fewer than the {net.receptive_field} "
                   f"frames {net.model_card.name} looks at; the missing frames are filled by repeating the "
                   "first and last frame, which makes the motion look frozen to the model", err=True)
    if got.filled_frames or got.filled_joints:
        typer.echo(f"note: {len(got.filled_frames)} frame(s) without a detection and {got.filled_joints} "
                   "joint(s) with score 0 were interpolated from their neighbours", err=True)
    poses = lift_sequence(net, torch.from_numpy(np.ascontiguousarray(norm, dtype=np.float32)), flip_tta=flip,
                          progress=len(kp) > 2048).numpy()
    output.parent.mkdir(parents=True, exist_ok=True)
    def save(tmp):
        with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a temporary name
            np.save(fh, poses.astype(np.float32))

    atomic_write(output, save)
    if has_ids:
        doc = {"frame_ids": got.frame_ids.tolist(), "filled_frames": got.filled_frames,
               "filled_joints": got.filled_joints}
        atomic_write(ids_path, lambda tmp: Path(tmp).write_text(json.dumps(doc) + "\n"))
    typer.echo(f"lifted {len(kp)} frame(s) ({layout_used} order"
               + (", mapped to Human3.6M" if layout_used == "coco" else "") + f") with {net.model_card.name}: {output}"
               + (f" (frames {got.frame_ids[0]}-{got.frame_ids[-1]}, ids in {ids_path.name})" if has_ids else ""))
    if png is not None:
        from convformer.pose.plot import plot_pose_frames
        plot_pose_frames(kp, poses, rows, png, image_size=size)
        typer.echo(f"picture: {png}")
    if video is not None:
        from convformer.pose.plot import animate_poses
        animate_poses(kp, poses, video, image_size=size)
        typer.echo(f"animation: {video}")
