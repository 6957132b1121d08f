"""Pictures of 2-D -> 3-D pose lifting: the input skeleton beside the lifted one, as PNG, GIF or MP4.

Skeletons are the 17 Human3.6M joints (``data.keypoints.H36M_BONES``); left limbs, right limbs and the
trunk get one colour each, so a left/right swap by the lifter is visible at a glance. Figures are
drawn on matplotlib's Agg canvas without pyplot (no global backend switch, nothing to close), and every
file is written to a temporary name in the target folder and then renamed, so no half file is left.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from convformer.pose.keypoints import H36M_BONES, H36M_LEFT, H36M_RIGHT
from convformer.errors import ConvformerError
from convformer.fileio import atomic_write

LEFT, RIGHT, CENTRE = "tab:blue", "tab:red", "0.25"


def _side_colour(joint: int) -> str:
    return LEFT if joint in H36M_LEFT else RIGHT if joint in H36M_RIGHT else CENTRE


def _array(x, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-len(shape_tail):] != shape_tail:
        raise ConvformerError(f"{what} should end in shape {shape_tail}, got {x.shape}")
    return x


def _sequence(kp2d, poses) -> tuple[np.ndarray, np.ndarray]:
    kp2d, poses = _array(kp2d, (17, 2), "2-D keypoints"), _array(poses, (17, 3), "3-D poses")
    if kp2d.ndim != 3 or poses.ndim != 3 or len(kp2d) != len(poses) or len(kp2d) == 0:
        raise ConvformerError(f"expected matching sequences (N, 17, 2) and (N, 17, 3), got {kp2d.shape} "
                              f"and {poses.shape}")
    return kp2d, poses


def _upright(pose: np.ndarray) -> np.ndarray:
    """Camera coordinates (x right, y down, z forward) -> plot axes (x, depth, up)."""
    return np.stack([pose[..., 0], pose[..., 2], -pose[..., 1]], -1)


def _limits_2d(kp2d: np.ndarray, image_size) -> tuple[tuple, tuple]:
    """x and y limits; y runs downwards as in the image."""
    if image_size is not None:
        width, height = image_size
        return (0, width), (height, 0)
    lo, hi = kp2d.reshape(-1, 2).min(0), kp2d.reshape(-1, 2).max(0)
    pad = 0.1 * max(float((hi - lo).max()), 1e-6)
    return (lo[0] - pad, hi[0] + pad), (hi[1] + pad, lo[1] - pad)


def _limits_3d(poses: np.ndarray) -> np.ndarray:
    """Equal-sized ranges around the centre of all poses, so bone lengths are not distorted."""
    pts = _upright(poses).reshape(-1, 3)
    centre = (pts.min(0) + pts.max(0)) / 2
    half = max(float((pts.max(0) - pts.min(0)).max()) / 2, 1e-6) * 1.1
    return np.stack([centre - half, centre + half], -1)


def _draw_2d(ax, kp: np.ndarray, limits) -> None:
    for parent, child in H36M_BONES:
        ax.plot(kp[[parent, child], 0], kp[[parent, child], 1], color=_side_colour(child), lw=2)
    ax.scatter(kp[:, 0], kp[:, 1], s=8, color="k", zorder=3)
    ax.set_xlim(*limits[0]), ax.set_ylim(*limits[1])
    ax.set_aspect("equal")
    ax.set_title("2-D input", fontsize=9)


def _draw_3d(ax, pose: np.ndarray, limits: np.ndarray) -> None:
    pts = _upright(pose)
    for parent, child in H36M_BONES:
        ax.plot(*pts[[parent, child]].T, color=_side_colour(child), lw=2)
    ax.scatter(*pts.T, s=6, color="k")
    for i, set_lim in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        set_lim(*limits[i])
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=15, azim=-70)
    ax.set_xlabel("x"), ax.set_ylabel("z (depth)"), ax.set_zlabel("-y (up)")
    ax.tick_params(labelsize=6)
    ax.locator_params(nbins=4)  # metre ticks crowd the small 3-D panel otherwise
    ax.set_title("3-D lifted", fontsize=9)


def _figure(rows: int):
    """A figure with ``rows`` (2-D, 3-D) axis pairs on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4 * rows))
    FigureCanvasAgg(fig)
    pairs = [(fig.add_subplot(rows, 2, 2 * r + 1), fig.add_subplot(rows, 2, 2 * r + 2, projection="3d"))
             for r in range(rows)]
    return fig, pairs


def _save_atomically(path, save: Callable[[str], None]) -> Path:
    """``save(name)`` into a temp file beside ``path`` (keeping its suffix: writers pick the format from
    it), then rename over ``path``. The folder must exist: a typo should not create a new tree."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConvformerError(f"cannot write {path}: folder {path.parent} does not exist")

    def write(tmp: str) -> None:
        named = tmp + path.suffix
        try:
            save(named)
            os.replace(named, tmp)
        finally:
            if os.path.exists(named):
                os.remove(named)

    return atomic_write(path, write)


def plot_pose_pair(keypoints_2d, pose_3d, path, title: str | None = None, image_size=None) -> Path:
    """PNG of one frame: 2-D keypoints (17, 2) in image coordinates left, lifted pose (17, 3) right.

    ``image_size`` (width, height) frames the 2-D plot as the whole image; otherwise it fits the joints.
    """
    kp, pose = _array(keypoints_2d, (17, 2), "2-D keypoints"), _array(pose_3d, (17, 3), "3-D pose")
    if kp.ndim != 2 or pose.ndim != 2:
        raise ConvformerError(f"plot_pose_pair takes one frame, (17, 2) and (17, 3); got {kp.shape} and {pose.shape}")
    fig, [(ax2d, ax3d)] = _figure(1)
    _draw_2d(ax2d, kp, _limits_2d(kp, image_size))
    _draw_3d(ax3d, pose, _limits_3d(pose))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_atomically(path, lambda name: fig.savefig(name, format="png", dpi=100))


def plot_pose_frames(kp2d, poses, frames: list[int], path, image_size=None) -> Path:
    """One PNG with a (2-D | 3-D) row for each of ``frames`` of the sequences (N, 17, 2) and (N, 17, 3)."""
    kp2d, poses = _sequence(kp2d, poses)
    frames = list(frames)
    if not frames:
        raise ConvformerError("choose at least one frame to plot")
    bad = [f for f in frames if not -len(kp2d) <= f < len(kp2d)]
    if bad:
        raise ConvformerError(f"frame {bad[0]} is out of range: the sequence has {len(kp2d)} frames")
    fig, pairs = _figure(len(frames))
    lim2d, lim3d = _limits_2d(kp2d[frames], image_size), _limits_3d(poses[frames])
    for frame, (ax2d, ax3d) in zip(frames, pairs):
        _draw_2d(ax2d, kp2d[frame], lim2d)
        _draw_3d(ax3d, poses[frame], lim3d)
        ax2d.set_title(f"frame {frame}: 2-D input", fontsize=9)
    fig.tight_layout()
    return _save_atomically(path, lambda name: fig.savefig(name, format="png", dpi=80))


def animate_poses(kp2d, poses, path, fps: float = 25, image_size=None) -> Path:
    """Animated (2-D | 3-D) sequence: ``.gif`` via Pillow, ``.mp4`` via ffmpeg, chosen by the suffix.

    Axis limits are fixed over the whole sequence so the camera does not jump between frames.
    """
    from matplotlib import animation
    kp2d, poses = _sequence(kp2d, poses)
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        writer = animation.PillowWriter(fps=fps)
    elif suffix == ".mp4":
        if not animation.writers.is_available("ffmpeg"):
            raise ConvformerError(f"cannot write {Path(path).name}: ffmpeg is not installed; use a .gif path instead")
        writer = animation.FFMpegWriter(fps=fps)
    else:
        raise ConvformerError(f"cannot animate to {Path(path).name}: use a .gif or .mp4 path")
    fig, [(ax2d, ax3d)] = _figure(1)
    lim2d, lim3d = _limits_2d(kp2d, image_size), _limits_3d(poses)

    def save(name: str) -> None:
        with writer.saving(fig, name, dpi=72):
            for frame in range(len(kp2d)):
                ax2d.cla(), ax3d.cla()  # redrawing from scratch is simple and fast enough at this size
                _draw_2d(ax2d, kp2d[frame], lim2d)
                _draw_3d(ax3d, poses[frame], lim3d)
                fig.suptitle(f"frame {frame}")
                writer.grab_frame()

    return _save_atomically(path, save)
