"""3-D human pose errors in the Human3.6M protocols, and the per-action table the papers print.

The protocols follow the monocular 3-D pose literature as evaluated in VideoPose3D (Pavllo et al.,
"3D human pose estimation in video with temporal convolutions and semi-supervised training", CVPR 2019)
and used by the pose-lifting papers this library reproduces:

* ``mpjpe``   protocol 1: mean Euclidean distance between predicted and true joints;
* ``p_mpjpe`` protocol 2: the same after aligning each predicted pose to its target with the best
  similarity transform (rotation, uniform scale, translation; Umeyama, IEEE TPAMI 1991);
* ``n_mpjpe`` only the best uniform scale is fitted per pose (VideoPose3D's scale-normalised MPJPE);
* ``mpjve``   mean per-joint velocity error: the same distance between first differences over time.

Poses are ``(..., J, 3)`` tensors (numpy arrays are accepted too). Errors come out in the inputs' unit
(metres in the data); ``PoseErrorTable`` converts to millimetres, as the papers report.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from convformer.errors import ConvformerError
from convformer.fileio import atomic_write

PROTOCOLS = ("mpjpe", "p_mpjpe", "n_mpjpe")
_LABELS = {"mpjpe": "MPJPE", "p_mpjpe": "P-MPJPE", "n_mpjpe": "N-MPJPE"}


def _pair(pred, target, min_dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ConvformerError(f"prediction and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim < min_dims:
        raise ConvformerError(f"expected poses shaped (..., joints, coords), got {tuple(pred.shape)}")
    if not pred.is_floating_point():
        pred = pred.double()
    return pred, target.to(pred.dtype)


def _reduce(per_pose: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_pose.mean()
    if reduction == "none":
        return per_pose
    if reduction == "sum":
        return per_pose.sum()
    raise ConvformerError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


def mpjpe(pred, target, reduction: str = "mean") -> torch.Tensor:
    """Protocol 1. ``reduction="none"`` gives one error per pose, shape ``pred.shape[:-2]``."""
    pred, target = _pair(pred, target)
    return _reduce((pred - target).norm(dim=-1).mean(dim=-1), reduction)


def procrustes_align(pred, target) -> torch.Tensor:
    """Each pose of ``pred`` moved onto ``target`` by its best rotation, uniform scale and translation.

    The rotation is proper (det = +1): a mirror image cannot be undone by it, which is why protocol 2
    still penalises a left/right flip. Solved in float64 via the SVD of the cross-covariance; the
    result has ``pred``'s dtype.
    """
    pred, target = _pair(pred, target)
    p, t = pred.double(), target.double()
    mu_p, mu_t = p.mean(dim=-2, keepdim=True), t.mean(dim=-2, keepdim=True)
    x, y = p - mu_p, t - mu_t
    u, sigma, vh = torch.linalg.svd(y.transpose(-1, -2) @ x)
    # If U V^T is a reflection, flip the axis of the smallest singular value: the closest proper rotation.
    sign = torch.where(torch.linalg.det(u @ vh) < 0, -1.0, 1.0).to(p)
    fix = torch.ones_like(sigma)
    fix[..., -1] = sign
    rot = u @ torch.diag_embed(fix) @ vh
    # A pose with all joints in one place has no scale to fit; clamping makes it collapse onto the centre.
    scale = (sigma * fix).sum(-1) / x.square().sum(dim=(-1, -2)).clamp_min(torch.finfo(p.dtype).tiny)
    aligned = scale[..., None, None] * (x @ rot.transpose(-1, -2)) + mu_t
    return aligned.to(pred.dtype)


def p_mpjpe(pred, target, reduction: str = "mean") -> torch.Tensor:
    """Protocol 2: MPJPE after ``procrustes_align``, computed in float64, returned in ``pred``'s dtype."""
    pred, target = _pair(pred, target)
    aligned = procrustes_align(pred.double(), target.double())
    per_pose = (aligned - target.double()).norm(dim=-1).mean(dim=-1)
    return _reduce(per_pose.to(pred.dtype), reduction)


def n_mpjpe(pred, target, reduction: str = "mean") -> torch.Tensor:
    """MPJPE after scaling each pose by s = <pred, target> / <pred, pred> (no rotation, no shift).

    Meant for root-relative poses, where only the overall size is ambiguous (as in VideoPose3D).
    """
    pred, target = _pair(pred, target)
    dot = (pred * target).sum(dim=(-1, -2), keepdim=True)
    norm = pred.square().sum(dim=(-1, -2), keepdim=True).clamp_min(torch.finfo(pred.dtype).tiny)
    return mpjpe(dot / norm * pred, target, reduction)


def mpjve(pred, target, reduction: str = "mean") -> torch.Tensor:
    """Mean per-joint velocity error over time; sequences are ``(T, J, 3)`` or ``(B, T, J, 3)``.

    Velocities are first differences along dim -3 (per frame, not per second), so a constant offset
    costs nothing and a drift of d per frame costs |d|. ``reduction="none"`` gives ``(..., T - 1)``.
    """
    pred, target = _pair(pred, target, min_dims=3)
    if pred.shape[-3] < 2:
        raise ConvformerError(f"velocity error needs at least 2 frames along dim -3, got {tuple(pred.shape)}")
    return mpjpe(pred.diff(dim=-3), target.diff(dim=-3), reduction)


def action_group(name: str) -> str:
    """Human3.6M action of a sequence name: the part before the first space ("Walking 1" -> "Walking")."""
    return name.strip().split(" ", 1)[0]


_PER_POSE = {"mpjpe": mpjpe, "p_mpjpe": p_mpjpe, "n_mpjpe": n_mpjpe}


class PoseErrorTable:
    """Per-pose errors collected over an evaluation, summarised per action as in the papers' tables.

    ``update`` takes a batch of poses and their labels; ``table()`` returns, for each action group
    (see ``action_group``), the mean of each protocol in millimetres (``unit_scale`` converts from the
    poses' unit; 1000 for metres) and the pose count. Its "Average" row is the mean over actions of
    the per-action means, which is what the Human3.6M tables print: every action weighs the same,
    however many frames it has. ``pose_weighted()`` gives the plain mean over all poses instead.
    """

    def __init__(self, unit_scale: float = 1000.0):
        self.unit_scale = unit_scale
        self._errors: dict[tuple[str, str | None], dict[str, list[torch.Tensor]]] = {}  # (action, subject)

    def update(self, action: list[str] | str, pred, target, subject: list[str] | str | None = None) -> None:
        """Add poses ``(..., J, 3)``. ``action`` (and optional ``subject``) is one label for the whole
        batch or a list with one label per entry of dim 0 (e.g. per clip of a (B, T, J, 3) batch)."""
        pred, target = _pair(pred, target)
        per_pose = {p: _PER_POSE[p](pred, target, reduction="none").detach().double().cpu() for p in PROTOCOLS}
        keys = _combine(_labels(action, per_pose["mpjpe"].shape, "action"),
                        None if subject is None else _labels(subject, per_pose["mpjpe"].shape, "subject"))
        rows = {p: err.reshape(len(keys), -1) for p, err in per_pose.items()}
        where: dict[tuple, list[int]] = {}
        for i, key in enumerate(keys):
            where.setdefault(key, []).append(i)
        for key, index in where.items():  # one tensor per label per batch, not one per pose
            slot = self._errors.setdefault(key, {p: [] for p in PROTOCOLS})
            for p in PROTOCOLS:
                slot[p].append(rows[p][index].reshape(-1))

    def _means(self, by: str) -> dict[str, dict]:
        if not self._errors:
            raise ConvformerError("the pose error table is empty: no poses were added")
        if by not in ("action", "subject"):
            raise ConvformerError(f"cannot group by {by!r}; use 'action' or 'subject'")
        groups: dict[str, dict[str, list[torch.Tensor]]] = {}
        for (action, subject), errs in self._errors.items():
            name = action if by == "action" else subject
            if name is None:
                raise ConvformerError("cannot group by subject: some poses were added without one")
            slot = groups.setdefault(name, {p: [] for p in PROTOCOLS})
            for p in PROTOCOLS:
                slot[p] += errs[p]
        out = {}
        for name in sorted(groups):
            values = {p: torch.cat(groups[name][p]) for p in PROTOCOLS}
            out[name] = {p: float(v.mean()) * self.unit_scale for p, v in values.items()}
            out[name]["count"] = int(values["mpjpe"].numel())
        return out

    def table(self, by: str = "action") -> dict[str, dict]:
        """``{action: {"mpjpe", "p_mpjpe", "n_mpjpe" (mm), "count"}}``, sorted, plus "Average"
        (the unweighted mean of the rows above; its count is the total number of poses)."""
        rows = self._means(by)
        rows["Average"] = {p: sum(r[p] for r in rows.values()) / len(rows) for p in PROTOCOLS}
        rows["Average"]["count"] = sum(r["count"] for name, r in rows.items() if name != "Average")
        return rows

    def pose_weighted(self) -> dict[str, float]:
        """Every protocol's mean over all poses (mm), plus "count": frequent actions weigh more."""
        rows = self._means("action")
        total = sum(r["count"] for r in rows.values())
        out = {p: sum(r[p] * r["count"] for r in rows.values()) / total for p in PROTOCOLS}
        out["count"] = total
        return out

    def to_markdown(self, protocols=("mpjpe", "p_mpjpe"), by: str = "action") -> str:
        """The papers' layout: one row per protocol, one column per action, then Avg; mm, 1 decimal."""
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise ConvformerError(f"unknown protocol {unknown[0]!r}; choose from {', '.join(PROTOCOLS)}")
        rows = self.table(by)
        names = [n for n in rows if n != "Average"]
        lines = ["| Protocol (mm) | " + " | ".join(names) + " | Avg |",
                 "|---|" + "---:|" * (len(names) + 1)]
        for p in protocols:
            cells = [f"{rows[n][p]:.1f}" for n in names + ["Average"]]
            lines.append(f"| {_LABELS[p]} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def _rows_with_pose_weighted(self, by: str) -> dict[str, dict]:
        rows = self.table(by)
        rows["Pose-weighted"] = self.pose_weighted()
        return rows

    def to_csv(self, path, by: str = "action") -> Path:
        """One line per action, then Average and Pose-weighted; written to a temp file, then renamed."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([by, *(f"{p}_mm" for p in PROTOCOLS), "count"])
        for name, row in self._rows_with_pose_weighted(by).items():
            writer.writerow([name, *(f"{row[p]:.4f}" for p in PROTOCOLS), row["count"]])
        text = buf.getvalue()
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def to_json(self, path, by: str = "action") -> Path:
        """The CSV's rows as ``{name: {protocol: mm, "count": n}}``; written to a temp file, then renamed."""
        text = json.dumps(self._rows_with_pose_weighted(by), indent=1)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))



def _labels(labels: list[str] | str, batch_shape: torch.Size, what: str) -> list[str] | str:
    if isinstance(labels, str):
        return labels
    labels = list(labels)
    if not batch_shape or len(labels) != batch_shape[0]:
        raise ConvformerError(f"got {len(labels)} {what} labels for a batch of poses shaped {tuple(batch_shape)} "
                              f"(give one label, or one per entry of dim 0)")
    return labels


def _combine(actions: list[str] | str, subjects: list[str] | str | None) -> list[tuple[str, str | None]]:
    """(action group, subject) per entry of dim 0; a single key in a one-element list if both are scalars."""
    if isinstance(actions, str) and (subjects is None or isinstance(subjects, str)):
        return [(action_group(actions), subjects)]
    n = len(actions) if not isinstance(actions, str) else len(subjects)
    acts = [actions] * n if isinstance(actions, str) else actions
    subs = [subjects] * n if subjects is None or isinstance(subjects, str) else subjects
    return [(action_group(a), s) for a, s in zip(acts, subs)]
