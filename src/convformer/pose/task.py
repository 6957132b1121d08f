"""3-D pose lifting in the training engine: data, loss, metrics, flip test-time augmentation, and the
per-action evaluation tables papers print (protocol 1 = MPJPE, protocol 2 = P-MPJPE, in mm).

Training goes through the one loop of :mod:`.train` (run folders, DDP, exact resume); this module is
the :class:`PoseLifting` task it is given, plus the inference helpers `pose eval` and `pose lift` use.
The loss is MPJPE in metres (the papers' loss); flip augmentation is drawn per sample inside the data
set under the engine's per-sample seed, so resumed runs replay it exactly.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from convformer.progress import progress_bar

from convformer.errors import ConvformerError
from convformer.pose.metrics import PoseErrorTable, action_group, mpjpe, mpjve, p_mpjpe
from convformer.engine.tasks import Task, TaskData


def _names(text) -> tuple | None:
    if text is None or text == "":
        return None
    if isinstance(text, (list, tuple)):
        return tuple(str(t) for t in text)
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def _cameras(text) -> set | None:
    names = _names(text)
    if names is None:
        return None
    try:
        return {int(n) for n in names}
    except ValueError:
        raise ConvformerError(f"cameras are given as indices 0-3, e.g. '0,1,2'; got {text!r}") from None


def pose_files(cfg, workdir: str | None = None) -> tuple[Path, Path]:
    """(3-D file, 2-D file) for ``cfg.data``: generated into ``workdir`` for "synthetic", else the
    folder's ``data_3d_h36m.npz`` and ``data_2d_h36m_<keypoints>.npz``."""
    if cfg.data == "synthetic":
        from convformer.pose.synth import generate_h36m_like
        return tuple(Path(p) for p in generate_h36m_like(workdir, frames=cfg.synthetic_frames,
                                                         noise_px=cfg.synthetic_noise, seed=0, compress=False))
    folder = Path(cfg.data)
    if not folder.is_dir():
        raise ConvformerError(f"pose data folder not found: {folder} (pass a folder with data_3d_h36m.npz and "
                              "data_2d_h36m_<keypoints>.npz, or 'synthetic')")
    path_3d, path_2d = folder / "data_3d_h36m.npz", folder / f"data_2d_h36m_{cfg.keypoints}.npz"
    if not path_2d.exists():
        found = sorted(p.name[len("data_2d_h36m_"):-4] for p in folder.glob("data_2d_h36m_*.npz"))
        raise ConvformerError(f"{path_2d} not found; --keypoints names the 2-D file data_2d_h36m_<keypoints>.npz"
                              + (f" (this folder has: {', '.join(found)})" if found else ""))
    return path_3d, path_2d


def load_split(cfg, subjects: str, cameras: str | None):
    """Sequences of the given subjects and cameras (and cfg.actions) from ``cfg.data``."""
    return load_splits(cfg, [(subjects, cameras)])[0]


def load_splits(cfg, splits: list[tuple]) -> list:
    """One PoseData per (subjects, cameras) pair; the files are read (or generated) once."""
    from convformer.pose.data import load_h36m, split_subjects
    wanted = [_names(s) for s, _ in splits]
    with tempfile.TemporaryDirectory(prefix="convformer-pose-") as tmp:
        path_3d, path_2d = pose_files(cfg, tmp)
        every = tuple(dict.fromkeys(s for names in wanted for s in names))
        data = load_h36m(path_3d, path_2d, subjects=every, actions=_names(cfg.actions))
    out = []
    for names, (subjects, cameras) in zip(wanted, splits):
        part, _ = split_subjects(data, train=names, test=())
        keep = _cameras(cameras)
        if keep is not None:
            part.sequences = [s for s in part.sequences if s.camera in keep]
            if not part.sequences:
                raise ConvformerError(f"no sequences left for cameras {sorted(keep)} of subjects {subjects}")
        out.append(part)
    return out


def receptive_field(model_name: str) -> int:
    from convformer.registry import model_card
    card = model_card(model_name)
    if card.task != "pose":
        raise ConvformerError(f"{model_name!r} is not a pose lifter; `convformer models` lists them "
                              "(convformer_pose_t*, poseformer_t*, martinez_mlp)")
    return card.input_size[0]


def architecture_options(cfg) -> dict:
    """The lifter architecture overrides set in a training config ({} for the registered model as is),
    checked here so that a bad value is a one-line error before any data is read."""
    from convformer.pose.lifter import ARCH_OPTIONS
    arch = {k: getattr(cfg, k) for k in ARCH_OPTIONS if getattr(cfg, k, None) not in (None, "")}
    if not arch:
        return {}
    if not cfg.model.startswith(("convformer_pose", "poseformer")):
        raise ConvformerError(f"--{'/--'.join(k.replace('_', '-') for k in arch)} appl"
                              f"{'ies' if len(arch) == 1 else 'y'} to the transformer lifters "
                              f"(convformer_pose_t*, poseformer_t*), not {cfg.model}")
    if "kernel_sizes" in arch:
        arch["kernel_sizes"] = _kernel_sizes(arch["kernel_sizes"])
    for key in ("embed_dim", "spatial_depth", "temporal_depth", "num_heads"):
        if key in arch and (not isinstance(arch[key], int) or arch[key] < (1 if key in ("embed_dim", "num_heads")
                                                                            else 0)):
            raise ConvformerError(f"--{key.replace('_', '-')} must be a {'positive' if key in ('embed_dim', 'num_heads') else 'non-negative'} "
                                  f"integer, got {arch[key]!r}")
    if "mlp_ratio" in arch and not float(arch["mlp_ratio"]) > 0:
        raise ConvformerError(f"--mlp-ratio must be positive, got {arch['mlp_ratio']!r}")
    from convformer.pose.lifter import FLATTEN_ORDERS
    if "flatten" in arch and arch["flatten"] not in FLATTEN_ORDERS:
        raise ConvformerError(f"--flatten must be one of {', '.join(FLATTEN_ORDERS)}, got {arch['flatten']!r}")
    if "attention" in arch and arch["attention"] not in ("conv", "linear"):
        raise ConvformerError(f"--attention must be conv or linear, got {arch['attention']!r}")
    return arch


def _kernel_sizes(value) -> list[int]:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        sizes = [int(v) for v in items if str(v).strip()]
    except ValueError:
        raise ConvformerError(f"--kernel-sizes takes comma-separated odd numbers, e.g. 3,5,7; got {value!r}") from None
    if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
        raise ConvformerError(f"--kernel-sizes must be odd and positive, e.g. 3,5,7; got {value!r}")
    return sizes


class PoseLifting(Task):
    name = "pose"
    train_stat = "mpjpe"
    val_metrics = ("mpjpe", "p_mpjpe")
    best_metric = "mpjpe"
    higher_is_better = False
    curve = ("mpjpe", "MPJPE", "MPJPE (mm)")

    def build(self, cfg, progress: bool) -> TaskData:
        from convformer.pose.data import PoseWindows
        frames = receptive_field(cfg.model)
        arch = architecture_options(cfg)
        if cfg.seq2seq and frames == 1:
            raise ConvformerError(f"--seq2seq needs a temporal model; {cfg.model} sees one frame")
        train, test = load_splits(cfg, [(cfg.train_subjects, cfg.train_cameras),
                                        (cfg.test_subjects, cfg.test_cameras)])
        self.test_flip, self.left, self.right = cfg.test_flip, train.left, train.right
        train_set = PoseWindows(train, frames, stride=cfg.stride, flip=cfg.flip, seq2seq=cfg.seq2seq,
                                left=train.left, right=train.right)
        val_set = PoseWindows(test, frames, stride=cfg.val_stride, left=test.left, right=test.right)
        kwargs = {"drop_path_rate": cfg.drop_path_rate} if frames > 1 else {}
        if cfg.seq2seq:
            kwargs["seq2seq"] = True
        kwargs.update(arch)
        resolved = {"receptive_field": frames, "train_windows": len(train_set), "val_windows": len(val_set),
                    "train_sequences": len(train.sequences), "val_sequences": len(test.sequences)}
        meta = {"receptive_field": str(frames), "seq2seq": str(cfg.seq2seq), "keypoints": cfg.keypoints,
                "attention": cfg.attention or "", "lifter": json.dumps(arch, sort_keys=True),
                "left": ",".join(map(str, train.left)), "right": ",".join(map(str, train.right))}
        return TaskData(train_set, val_set, kwargs, resolved, meta)

    def prepare(self, batch, cfg, device, seed_parts: tuple):
        keypoints, target = batch[0].to(device), batch[1].to(device)
        return keypoints, target, target

    def loss(self, output, target):
        return mpjpe(output.float(), target)

    def statistic(self, output, target) -> float:
        per_pose = mpjpe(output.float(), target, reduction="none")   # (B, frames)
        return 1000.0 * float(per_pose.reshape(len(output), -1).mean(1).sum())

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict:
        model.eval()
        n, sums = 0, [0.0, 0.0]
        for batch in loader:
            keypoints, target = batch[0].to(device), batch[1].to(device)
            pred = predict(model, keypoints, self.test_flip, self.left, self.right)
            sums[0] += float(mpjpe(pred, target, reduction="none").sum())
            sums[1] += float(p_mpjpe(pred, target, reduction="none").sum())
            n += len(target)
        n_ = max(n, 1)
        return {"loss": sums[0] / n_, "mpjpe": 1000 * sums[0] / n_, "p_mpjpe": 1000 * sums[1] / n_, "count": n}

    def summary(self, row: dict) -> str:
        ema = f"  EMA {row['ema_val_mpjpe']:.1f}" if "ema_val_mpjpe" in row else ""
        return (f"train MPJPE {row['train_mpjpe']:.1f} mm  val MPJPE {row['val_mpjpe']:.1f} mm  "
                f"P-MPJPE {row['val_p_mpjpe']:.1f} mm{ema}")


def predict(model, keypoints: torch.Tensor, flip_tta: bool = False, left=None, right=None) -> torch.Tensor:
    """The centre-frame prediction (B, 1, J, 3) for windows (B, T, J, 2); with ``flip_tta`` the mean of the
    prediction and the un-flipped prediction of the flipped input (VideoPose3D's test-time augmentation).
    The root joint is set to exactly 0, as the targets are root-relative (PoseFormer's evaluation does the
    same); the network's own root output is trained towards 0 but never exactly 0."""
    from convformer.pose.data import H36M_LEFT, H36M_RIGHT, flip_pose
    left, right = left or H36M_LEFT, right or H36M_RIGHT
    pred = model(keypoints)
    if flip_tta:
        pred = (pred + flip_pose(model(flip_pose(keypoints, left, right)), left, right)) / 2
    if pred.shape[1] > 1:  # seq2seq output: the centre frame
        c = pred.shape[1] // 2
        pred = pred[:, c:c + 1]
    pred = pred.clone()
    pred[..., 0, :] = 0
    return pred


@torch.no_grad()
def lift_sequence(model, keypoints: torch.Tensor, flip_tta: bool = True, batch_size: int = 1024,
                  progress: bool = False, left=None, right=None) -> torch.Tensor:
    """(N, J, 2) normalised keypoints of one sequence -> (N, J, 3) root-relative 3-D poses, every frame
    lifted from the window centred on it (edge padding at both ends)."""
    frames = model.receptive_field
    pad = (frames - 1) // 2
    padded = torch.cat([keypoints[:1].expand(pad, -1, -1), keypoints, keypoints[-1:].expand(pad, -1, -1)])
    windows = padded.unfold(0, frames, 1).permute(0, 3, 1, 2)  # (N, T, J, 2)
    out = []
    for start in progress_bar(range(0, len(windows), batch_size), desc="lifting", disable=not progress, leave=False):
        out.append(predict(model, windows[start:start + batch_size].contiguous(), flip_tta, left, right)[:, 0])
    return torch.cat(out)


@torch.no_grad()
def evaluate_sequences(model, sequences, flip_tta: bool = True, batch_size: int = 1024, progress: bool = True,
                       left=None, right=None):
    """Per-action protocol 1/2 table and MPJVE over whole sequences: returns (PoseErrorTable, {action: mpjve_mm})."""
    model.eval()
    table, velocity = PoseErrorTable(), {}
    for seq in progress_bar(sequences, desc="evaluating", disable=not progress, unit="seq"):
        pred = lift_sequence(model, torch.from_numpy(seq.keypoints).float(), flip_tta, batch_size, left=left,
                             right=right)
        target = torch.from_numpy(seq.poses).float()
        table.update(seq.action, pred, target, subject=seq.subject)
        if len(pred) > 1:
            velocity.setdefault(action_group(seq.action), []).append(
                (float(mpjve(pred, target)) * 1000, len(pred) - 1))
    mpjve_mm = {a: sum(v * n for v, n in vals) / sum(n for _, n in vals) for a, vals in velocity.items()}
    if mpjve_mm:
        mpjve_mm["Average"] = sum(mpjve_mm.values()) / len(mpjve_mm)
    return table, mpjve_mm


def load_lifter(weights: str, model: str | None = None, fast: bool = False, loaded: tuple | None = None,
                runtime: str = "torch"):
    """The lifter a weight file was saved from (its metadata names it), with the weights loaded; ``loaded``
    is the file's (state dict, metadata) where the caller has read it already. Returns (model, metadata)."""
    from convformer.registry import create_model
    from convformer.weights import load_weights, read_state_dict
    state, meta = loaded or read_state_dict(weights)
    name = model or meta.get("architecture")
    if not name:
        raise ConvformerError(f"{weights} does not say which model it holds; pass --model NAME")
    receptive_field(name)  # a clear error for a non-pose model
    kwargs = {"seq2seq": True} if meta.get("seq2seq") == "True" else {}
    if meta.get("attention"):
        kwargs["attention"] = meta["attention"]
    if meta.get("lifter"):
        try:
            arch = json.loads(meta["lifter"])
        except ValueError:
            raise ConvformerError(f"{weights}: its 'lifter' metadata is not JSON; the file is damaged") from None
        kwargs.update(arch)
    net = create_model(name, **kwargs)
    load_weights(net, state, metadata=meta, source_name=weights)
    net.eval()
    from convformer.optimize import for_inference
    return for_inference(net, fast, runtime), meta
