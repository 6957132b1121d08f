"""2-D keypoint files for the pose lifter, and the COCO-17 -> Human3.6M-17 joint mapping.

The lifter (a 2-D -> 3-D model trained on Human3.6M, Ionescu et al., TPAMI 2014) expects the 17 joints
in Human3.6M order. Off-the-shelf 2-D detectors (HRNet, ViTPose, YOLO-pose, ...) write the 17 COCO
keypoints (Lin et al., ECCV 2014) instead; ``coco_to_h36m`` rebuilds the Human3.6M skeleton from them,
and ``load_keypoints`` reads the common file forms (.npy arrays, plain JSON lists, COCO-style results).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convformer.errors import ConvformerError

H36M_JOINTS = ("hip", "right_hip", "right_knee", "right_foot", "left_hip", "left_knee", "left_foot", "spine",
               "thorax", "neck_nose", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
               "right_elbow", "right_wrist")
H36M_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
H36M_BONES = tuple((parent, child) for child, parent in enumerate(H36M_PARENTS) if parent >= 0)
H36M_LEFT = (4, 5, 6, 11, 12, 13)
H36M_RIGHT = (1, 2, 3, 14, 15, 16)

COCO_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle")

# Human3.6M joint -> the COCO joints it is the mean of ("spine" is handled apart: it needs hip and thorax).
_FROM_COCO = {
    "hip": ("left_hip", "right_hip"), "right_hip": ("right_hip",), "right_knee": ("right_knee",),
    "right_foot": ("right_ankle",), "left_hip": ("left_hip",), "left_knee": ("left_knee",),
    "left_foot": ("left_ankle",), "thorax": ("left_shoulder", "right_shoulder"), "neck_nose": ("nose",),
    "head": ("left_eye", "right_eye"), "left_shoulder": ("left_shoulder",), "left_elbow": ("left_elbow",),
    "left_wrist": ("left_wrist",), "right_shoulder": ("right_shoulder",), "right_elbow": ("right_elbow",),
    "right_wrist": ("right_wrist",),
}
LAYOUTS = ("auto", "h36m", "coco")


def coco_to_h36m(kp):
    """COCO-ordered keypoints ``(..., 17, C)`` -> Human3.6M order ``(..., 17, C)`` (numpy or torch).

    ====  ==============  =============================================
    H36M  joint           from COCO
    ====  ==============  =============================================
    0     hip (root)      mean(left_hip, right_hip)
    1-3   right hip/knee  right_hip, right_knee, right_ankle
          /foot
    4-6   left hip/knee   left_hip, left_knee, left_ankle
          /foot
    7     spine           mean(hip, thorax) = mean of both hips and
                          both shoulders
    8     thorax          mean(left_shoulder, right_shoulder)
    9     neck/nose       nose
    10    head            mean(left_eye, right_eye)
    11-13 left arm        left_shoulder, left_elbow, left_wrist
    14-16 right arm       right_shoulder, right_elbow, right_wrist
    ====  ==============  =============================================

    Human3.6M's head joint is the top of the head; COCO has nothing there, and the eyes are the most
    reliably detected points near it (ears vanish in profile), so the head sits a little low.
    With C == 3 the last channel is a detection score: a synthesised joint gets the lowest score of
    the joints it is made from (it is only as good as its weakest source); other channels are averaged.
    """
    if kp.shape[-2:-1] != (17,):
        raise ConvformerError(f"COCO keypoints need 17 joints, got shape {tuple(kp.shape)}")
    lib = torch if isinstance(kp, torch.Tensor) else np
    has_score = kp.shape[-1] == 3

    def joint(sources: tuple[str, ...]):
        parts = [kp[..., COCO_JOINTS.index(name), :] for name in sources]
        out = sum(parts[1:], parts[0]) / len(parts)
        if has_score and len(parts) > 1:
            score = parts[0][..., 2]
            for part in parts[1:]:
                score = lib.minimum(score, part[..., 2])
            out = lib.concatenate([out[..., :2], score[..., None]], -1)
        return out

    joints = {name: joint(sources) for name, sources in _FROM_COCO.items()}
    joints["spine"] = joint(("left_hip", "right_hip", "left_shoulder", "right_shoulder"))
    return lib.stack([joints[name] for name in H36M_JOINTS], -2)


@dataclass
class KeypointFile:
    """What :func:`read_keypoints` found in a file."""
    keypoints: np.ndarray     # (N, 17, 2) float32, Human3.6M order unless to_h36m=False; gaps filled
    layout: str               # "h36m" or "coco": the joint order the file was read as
    scores: np.ndarray | None  # (N, 17) float32 detection scores (0 where a joint was filled), or None
    frame_ids: np.ndarray     # (N,) int64: the frame each row is (contiguous; COCO ids are kept)
    filled_frames: list = field(default_factory=list)  # frame ids absent from the file, interpolated
    filled_joints: int = 0    # joints with score <= 0 in frames that were present, interpolated
    has_frame_ids: bool = False  # the file named its frames (COCO-style results)


def read_keypoints(path, layout: str = "auto", to_h36m: bool = True) -> KeypointFile:
    """Read 2-D keypoints of one person from ``.npy`` or ``.json``.

    Accepted: ``.npy`` of shape (N, 17, 2), (N, 17, 3) with a score channel, a single frame (17, 2|3), or
    flattened frames (N, 34) / (N, 51); ``.json`` holding the same as nested lists, or COCO-style results
    (a list, or a dict with "annotations", of ``{"image_id" or "frame": int, "keypoints": [x1, y1, v1, ...
    51 numbers], "score": float}``). With COCO-style results, where several people share a frame the
    highest-scoring one is kept, and the frame ids are kept: frames between the first and the last id
    that have no detection are filled by interpolating their neighbours (``filled_frames`` lists them).

    A joint whose score is 0 or less (COCO's "not detected", usually written at (0, 0)) is missing: it
    is interpolated in time from the frames where that joint was seen (held at the ends). A joint never
    seen in any frame is an error.

    ``layout`` is the joint order of the file: "h36m", "coco", or "auto" (COCO-style JSON is COCO,
    everything else is taken as Human3.6M). With ``to_h36m`` (default) COCO input is converted with
    ``coco_to_h36m``, so keypoints are in Human3.6M order whatever the file held.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise ConvformerError(f"unknown keypoint layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if not path.is_file():
        raise ConvformerError(f"keypoint file not found: {path}")
    suffix = path.suffix.lower()
    ids = None
    if suffix == ".npy":
        array = _read_npy(path)
        coco_style = False
    elif suffix == ".json":
        array, coco_style, ids = _read_json(path)
    else:
        raise ConvformerError(f"{path.name}: keypoint files must be .npy or .json, not {suffix or 'no suffix'}")

    kp = _check_array(array, path.name)
    present = np.ones(len(kp), bool)
    if ids is not None:  # COCO results: place each detected frame at its id, the gaps are missing
        full = np.arange(ids[0], ids[-1] + 1)
        grid = np.zeros((len(full), 17, kp.shape[2]))
        grid[ids - ids[0]] = kp
        present = np.zeros(len(full), bool)
        present[ids - ids[0]] = True
        kp, frame_ids = grid, full
    else:
        frame_ids = np.arange(len(kp))
    seen = present[:, None] & ((kp[..., 2] > 0) if kp.shape[2] == 3 else True)
    filled_joints = int((present[:, None] & ~seen).sum())
    kp = _fill_missing(kp, seen, path.name, layout if layout != "auto" else ("coco" if coco_style else "h36m"))
    used = layout if layout != "auto" else ("coco" if coco_style else "h36m")
    if kp.shape[-1] == 3:
        kp[..., 2] = np.where(seen, kp[..., 2], 0.0)
    if used == "coco" and to_h36m:
        kp = coco_to_h36m(kp)
    scores = kp[..., 2].astype(np.float32) if kp.shape[-1] == 3 else None
    return KeypointFile(np.ascontiguousarray(kp[..., :2], dtype=np.float32), used, scores,
                        frame_ids.astype(np.int64), [int(f) for f in frame_ids[~present]], filled_joints,
                        ids is not None)


def load_keypoints(path, layout: str = "auto", to_h36m: bool = True):
    """:func:`read_keypoints` as ``(keypoints (N, 17, 2) float32, layout_used, scores (N, 17) or None)``."""
    got = read_keypoints(path, layout, to_h36m)
    return got.keypoints, got.layout, got.scores


def _fill_missing(kp: np.ndarray, seen: np.ndarray, name: str, layout: str) -> np.ndarray:
    """Linear interpolation over frames of every (frame, joint) not ``seen``; held at both ends."""
    if seen.all():
        return kp
    names = COCO_JOINTS if layout == "coco" else H36M_JOINTS
    never = [names[j] for j in range(kp.shape[1]) if not seen[:, j].any()]
    if never:
        raise ConvformerError(f"{name}: joint(s) {', '.join(never)} are never detected (score 0 in every frame); "
                              "the lifter needs all 17 joints: fill them or use another detector")
    out = kp.copy()
    frames = np.arange(len(kp))
    for j in range(kp.shape[1]):
        ok = seen[:, j]
        if ok.all():
            continue
        for c in range(2):
            out[~ok, j, c] = np.interp(frames[~ok], frames[ok], kp[ok, j, c])
    return out


def _read_npy(path: Path) -> np.ndarray:
    fmt = np.lib.format
    with open(path, "rb") as fh:
        try:
            version = fmt.read_magic(fh)
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(fh)
        except (ValueError, EOFError, OSError):
            raise ConvformerError(f"{path.name} is not a .npy array; save a plain numeric array with np.save") from None
        if dtype.hasobject:
            raise ConvformerError(f"{path.name} is an object array (pickled data is refused); save a plain numeric "
                                  "array with np.save")
        expected = int(np.prod(shape)) * dtype.itemsize
        available = path.stat().st_size - fh.tell()
    if available < expected:
        raise ConvformerError(f"{path.name} is truncated: its header says {shape} {dtype} ({expected} bytes) but "
                              f"only {available} bytes follow; re-create the file")
    try:
        return np.load(path, allow_pickle=False)  # pickles can run code: never load them
    except (ValueError, EOFError, OSError) as err:
        raise ConvformerError(f"{path.name} is unreadable ({err}); re-create it with np.save") from None


def _check_array(array, name: str) -> np.ndarray:
    try:
        array = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as err:  # ragged lists, strings, object arrays
        raise ConvformerError(f"{name} is not a numeric array of keypoints (frames of different shapes?)") from err
    if array.ndim == 2 and array.shape[1] in (34, 51):
        array = array.reshape(len(array), 17, array.shape[1] // 17)  # flattened frames: x1, y1, [s1,] x2, ...
    if array.ndim == 2:
        if array.shape[0] != 17 or array.shape[1] not in (2, 3):
            raise ConvformerError(f"{name} has shape {array.shape}; expected frames of 17 joints: (frames, 17, 2), "
                                  "(frames, 17, 3), a single frame (17, 2), or flattened frames (frames, 34) / "
                                  "(frames, 51)")
        array = array[None]  # a single frame
    if array.size == 0:
        raise ConvformerError(f"{name} holds no keypoints")
    if array.ndim != 3:
        raise ConvformerError(f"{name} has shape {array.shape}; expected (frames, 17, 2) or (frames, 17, 3)")
    if array.shape[1] != 17:
        raise ConvformerError(f"{name} has {array.shape[1]} joints per frame; expected 17 "
                              "(Human3.6M or COCO order, see --layout)")
    if array.shape[2] not in (2, 3):
        raise ConvformerError(f"{name} has {array.shape[2]} values per joint; expected 2 (x, y) or 3 (x, y, score)")
    bad = ~np.isfinite(array).all(axis=(1, 2))
    if bad.any():
        raise ConvformerError(f"{name} has NaN or infinite values in frame {int(np.argmax(bad))} "
                              f"({int(bad.sum())} frames in all); fill or drop missing detections first")
    return array


def _read_json(path: Path) -> tuple[object, bool, np.ndarray | None]:
    """The keypoints as nested lists (frames, 17, C), whether the file was COCO-style results, and then
    the sorted frame ids of the rows (None otherwise)."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConvformerError(f"could not read {path.name}: not valid JSON ({err})") from err
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise ConvformerError(f"{path.name}: expected a list of frames or of COCO-style results")
    if not data:
        raise ConvformerError(f"{path.name} holds no keypoints")
    if not all(isinstance(item, dict) for item in data):
        return data, False, None

    best: dict[int, tuple[float, list]] = {}  # frame -> (score, keypoints) of its best person
    for item in data:
        values = item.get("keypoints")
        if not isinstance(values, list) or len(values) % 3:
            raise ConvformerError(f"{path.name}: a result has no 'keypoints' list of x, y, score triples")
        if len(values) != 51:
            raise ConvformerError(f"{path.name} has {len(values) // 3} joints per frame; expected 17 "
                                  "(Human3.6M or COCO order, see --layout)")
        frame = _frame_id(item, path.name)
        score = item.get("score")
        score = float(score) if score is not None else float(sum(values[2::3]))
        if frame not in best or score > best[frame][0]:
            best[frame] = (score, [values[i:i + 3] for i in range(0, 51, 3)])
    order = sorted(best)
    return [best[frame][1] for frame in order], True, np.array(order, np.int64)


def _frame_id(item: dict, name: str) -> int:
    frame = item.get("frame", item.get("image_id"))
    if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool):
        return int(frame)
    if isinstance(frame, str):
        digits = re.findall(r"\d+", Path(frame).stem)  # detectors often write the image name, "000123.jpg"
        if digits:
            return int(digits[-1])
    raise ConvformerError(f"{name}: a result has no integer 'image_id' or 'frame' (got {frame!r})")
