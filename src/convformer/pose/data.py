"""3-D human pose data in VideoPose3D's file layout (Human3.6M), for 2-D -> 3-D pose lifting.

Follows the data conventions of VideoPose3D (Pavllo et al., "3D human pose estimation in video with
temporal convolutions and semi-supervised training", CVPR 2019), which the pose-lifting papers reuse:
17 Human3.6M joints, cameras from the published calibration, 2-D inputs normalised to [-1, 1] keeping
the aspect ratio, 3-D targets in camera coordinates relative to the pelvis (joint 0), receptive-field
windows with edge padding, and horizontal-flip augmentation.

Files: ``data_3d_h36m.npz`` ({subject: {action: (N, 32 or 17, 3) world metres}}) and
``data_2d_h36m_<name>.npz`` ({subject: {action: [4 x (N, 17, 2) pixels]}} plus metadata). Both hold
pickled dicts, so they are read with a restricted unpickler that only rebuilds numpy arrays and plain
containers: a file naming any other Python object is refused.
"""
from __future__ import annotations

import importlib
import io
import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from convformer.errors import ConvformerError

H36M_JOINTS = ("hip", "right_hip", "right_knee", "right_foot", "left_hip", "left_knee", "left_foot", "spine",
               "thorax", "neck_nose", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
               "right_elbow", "right_wrist")
H36M_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
H36M_LEFT = (4, 5, 6, 11, 12, 13)
H36M_RIGHT = (1, 2, 3, 14, 15, 16)
#: which of the 32 recorded Human3.6M joints make the 17-joint skeleton (the others are static or duplicates)
H36M_32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
#: detected 2-D sequences may run this many frames past the motion capture (VideoPose3D trims them)
MAX_EXTRA_2D_FRAMES = 10
BUILTIN_CAMERAS = Path(__file__).with_name("h36m_cameras.json")


# ---------------------------------------------------------------------------------------------- cameras
@dataclass
class Camera:
    id: str
    res_w: int
    res_h: int
    center: np.ndarray        # (2,) principal point, pixels
    focal: np.ndarray         # (2,) pixels
    radial: np.ndarray        # (3,) k1 k2 k3
    tangential: np.ndarray    # (2,) p1 p2
    orientation: np.ndarray   # (4,) quaternion w x y z of the camera-to-world rotation
    translation: np.ndarray   # (3,) camera centre in world coordinates, metres


def load_cameras(path=None) -> dict[str, list[Camera]]:
    """Subject -> its cameras, from a cameras json (see ``h36m_cameras.json``); None = Human3.6M's."""
    path = Path(path) if path is not None else BUILTIN_CAMERAS
    if not path.is_file():
        raise ConvformerError(f"camera file not found: {path}")
    try:
        doc = json.loads(path.read_text())
        intrinsics = doc["intrinsics"]
        out = {}
        for subject, extrinsics in doc["extrinsics"].items():
            if len(extrinsics) != len(intrinsics):
                raise ConvformerError(f"{path.name}: {subject} has {len(extrinsics)} cameras, "
                                      f"but {len(intrinsics)} intrinsics are listed; fix the file")
            out[subject] = [Camera(id=str(k["id"]), res_w=int(k["res_w"]), res_h=int(k["res_h"]),
                                   center=np.array(k["center"], np.float64),
                                   focal=np.array(k["focal_length"], np.float64),
                                   radial=np.array(k["radial_distortion"], np.float64),
                                   tangential=np.array(k["tangential_distortion"], np.float64),
                                   orientation=np.array(e["orientation"], np.float64),
                                   translation=np.array(e["translation_mm"], np.float64) / 1000)
                            for k, e in zip(intrinsics, extrinsics)]
    except (ValueError, KeyError, TypeError) as err:
        raise ConvformerError(f"{path} is not a convformer cameras json ({type(err).__name__}: {err}); "
                              f"compare with {BUILTIN_CAMERAS.name}") from None
    return out


def quaternion_to_matrix(q) -> np.ndarray:
    """(4,) quaternion w x y z -> (3, 3) rotation matrix (normalised first: stored values are float32)."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _float_out(x: np.ndarray, like) -> np.ndarray:
    return x.astype(np.result_type(np.asarray(like).dtype, np.float32), copy=False)


def world_to_camera(x, cam: Camera) -> np.ndarray:
    """(..., 3) world points -> camera coordinates (x right, y down, z along the optical axis)."""
    r = quaternion_to_matrix(cam.orientation)
    # row vectors: R^T (x - t) for each point is (x - t) @ R
    return _float_out((np.asarray(x, np.float64) - cam.translation) @ r, x)


def camera_to_world(x, cam: Camera) -> np.ndarray:
    r = quaternion_to_matrix(cam.orientation)
    return _float_out(np.asarray(x, np.float64) @ r.T + cam.translation, x)


def project(x_cam, cam: Camera, distortion: bool = False) -> np.ndarray:
    """(..., 3) camera-space points -> (..., 2) pixels. The distortion model is Human3.6M's own (radial
    k1..k3 and its tangential form), evaluated on rays clamped to [-1, 1] as its scripts do, because the
    calibrated polynomial blows up far outside the field of view."""
    x_cam = np.asarray(x_cam, np.float64)
    xy = x_cam[..., :2] / x_cam[..., 2:3]
    if distortion:
        xy = np.clip(xy, -1, 1)
        r2 = np.sum(xy ** 2, axis=-1, keepdims=True)
        radial = 1 + r2 * cam.radial[0] + r2 ** 2 * cam.radial[1] + r2 ** 3 * cam.radial[2]
        tangential = np.sum(xy * cam.tangential, axis=-1, keepdims=True)
        xy = xy * (radial + tangential) + cam.tangential * r2
    return xy * cam.focal + cam.center


def normalize_screen(x, w: int, h: int):
    """Pixels -> [-1, 1] along x, same scale along y (so y spans [-h/w, h/w]); numpy or torch."""
    return x / w * 2 - _offset(x, w, h)


def unnormalize_screen(x, w: int, h: int):
    return (x + _offset(x, w, h)) * w / 2


def _offset(x, w, h):
    off = np.array([1.0, h / w])
    return torch.as_tensor(off, dtype=x.dtype, device=x.device) if torch.is_tensor(x) else off


def flip_pose(x, left=H36M_LEFT, right=H36M_RIGHT):
    """Mirror poses (..., J, C) left-right: negate channel 0 (x) and swap left/right joints. numpy or torch;
    returns a new array. Its own inverse, exactly (a permutation and a sign change)."""
    perm = list(range(x.shape[-2]))
    for a, b in zip(left, right):
        perm[a], perm[b] = b, a
    y = x[..., perm, :]          # advanced indexing copies, for numpy and torch alike
    y[..., 0] = -y[..., 0]
    return y


# ------------------------------------------------------------------------------- restricted npz reading
_NUMPY_MODULES = ("multiarray", "numeric")
_NUMPY_NAMES = {"_reconstruct", "scalar", "_frombuffer"}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists, strings and numbers; any other global is refused, so a file
    cannot make unpickling call arbitrary functions (os.system and the like)."""

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module, name):
        core, _, sub = module.rpartition(".")
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if core in ("numpy.core", "numpy._core") and sub in _NUMPY_MODULES and name in _NUMPY_NAMES:
            # files written by numpy 1 say numpy.core, numpy 2 renamed it numpy._core
            base = "numpy._core" if hasattr(np, "_core") else "numpy.core"
            return getattr(importlib.import_module(f"{base}.{sub}"), name)
        raise ConvformerError(f"{self.where} contains a pickled reference to {module}.{name}; refusing to "
                              "load it (only numpy arrays and plain containers are allowed)")


def read_npz(path, keys, optional=()) -> dict:
    """The named members of an .npz file (``optional`` ones only if present); object members are
    unpickled with the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise ConvformerError(f"file not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise ConvformerError(f"{path} is not an .npz archive; expected a VideoPose3D data file") from None
    out = {}
    with archive:
        names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        for key in list(keys) + [k for k in optional if k in names]:
            if key not in names:
                raise ConvformerError(f"{path.name} has no '{key}' member (it has {', '.join(names) or 'none'}); "
                                      "is it a VideoPose3D data file?")
            out[key] = _read_member(archive, key + ".npy", f"{path.name}:{key}")
    return out


def _read_member(archive: zipfile.ZipFile, member: str, where: str):
    fmt = np.lib.format
    try:
        with archive.open(member) as f:
            version = fmt.read_magic(f)
            read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ConvformerError(f"{where}: unsupported .npy version {version}; re-save with numpy")
            shape, _, dtype = read_header(f)
            if dtype.hasobject:
                arr = _ArrayUnpickler(f.read(), where).load()
                return arr.item() if isinstance(arr, np.ndarray) and arr.shape == () else arr
        with archive.open(member) as f:
            return fmt.read_array(f, allow_pickle=False)
    except ConvformerError:
        raise
    except Exception as err:  # truncated or corrupt archives raise many different types
        raise ConvformerError(f"{where} is unreadable ({type(err).__name__}: {err}); re-create the file") from None


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class PoseSequence:
    subject: str
    action: str
    camera: int
    keypoints: np.ndarray   # (N, 17, 2) float32, normalised screen coordinates
    poses: np.ndarray       # (N, 17, 3) float32, camera coordinates relative to joint 0, metres
    trajectory: np.ndarray  # (N, 3) float32, joint 0 in camera coordinates, metres


@dataclass
class PoseData:
    sequences: list[PoseSequence]
    left: tuple = H36M_LEFT
    right: tuple = H36M_RIGHT
    cameras: dict = field(default_factory=dict)
    source: str = ""

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(s.subject for s in self.sequences))


def _action_matches(action: str, wanted) -> bool:
    # Human3.6M names repeated takes "Walking 1", "Walking 2": "Walking" selects all takes, but not
    # "WalkDog" or ("Sitting" vs) "SittingDown" as a plain prefix test would
    return wanted is None or action in wanted or action.split(" ")[0] in wanted


def _check_finite(arr, what):
    if not np.isfinite(arr).all():
        raise ConvformerError(f"{what} contains NaN or Inf; clean or drop that sequence")


def load_h36m(path_3d, path_2d, subjects=None, actions=None, cameras=None) -> PoseData:
    """Pair 3-D motion capture with 2-D keypoints, one :class:`PoseSequence` per (subject, action, camera).

    ``subjects``: default every subject of the 3-D file. ``actions``: names, a name also selecting its
    numbered takes. ``cameras``: a cameras json path or a loaded dict; None -> ``cameras.json`` beside
    ``path_3d`` if present (the synthetic generator writes one), else Human3.6M's calibration.
    """
    path_3d, path_2d = Path(path_3d), Path(path_2d)
    if cameras is None:
        cameras = path_3d.with_name("cameras.json") if path_3d.with_name("cameras.json").is_file() else None
    cams = cameras if isinstance(cameras, dict) else load_cameras(cameras)
    pos3d = read_npz(path_3d, ["positions_3d"])["positions_3d"]
    file_2d = read_npz(path_2d, ["positions_2d"], optional=["metadata"])
    npz2d = file_2d["positions_2d"]
    for data, p in ((pos3d, path_3d), (npz2d, path_2d)):
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ConvformerError(f"{p.name} does not hold a {{subject: {{action: array}}}} dict; "
                                  "is it a VideoPose3D data file?")
    left, right = _symmetry(file_2d.get("metadata"), path_2d)
    subjects = list(pos3d) if subjects is None else [subjects] if isinstance(subjects, str) else list(subjects)
    actions = None if actions is None else {actions} if isinstance(actions, str) else set(actions)
    for s in subjects:
        for data, p in ((pos3d, path_3d), (npz2d, path_2d)):
            if s not in data:
                raise ConvformerError(f"{s} is not in {p.name} (it has {', '.join(data)})")
        if s not in cams:
            raise ConvformerError(f"{s} has no cameras in the camera file (it has {', '.join(cams)})")
    sequences = []
    for s in subjects:
        for action, world in pos3d[s].items():
            if _action_matches(action, actions):
                sequences += _camera_sequences(s, action, world, npz2d[s].get(action), cams[s], path_2d.name)
    if not sequences:
        raise ConvformerError(f"no sequences in {path_3d.name} match subjects {subjects} and actions "
                              f"{sorted(actions) if actions else 'all'}")
    return PoseData(sequences, left, right, {s: cams[s] for s in subjects}, f"{path_3d} + {path_2d}")


def _symmetry(meta, path_2d: Path):
    """Left/right keypoint lists from the 2-D file's metadata (Human3.6M's when the file has none)."""
    if meta is None:
        return H36M_LEFT, H36M_RIGHT
    try:
        left, right = (tuple(int(j) for j in side) for side in meta["keypoints_symmetry"])
    except (KeyError, TypeError, ValueError):
        raise ConvformerError(f"{path_2d.name}: metadata lacks a valid 'keypoints_symmetry'") from None
    return left, right


def _camera_sequences(subject, action, world, views, cams, name_2d) -> list[PoseSequence]:
    where = f"{subject}/{action}"
    world = np.asarray(world)
    if world.ndim != 3 or world.shape[-1] != 3:
        raise ConvformerError(f"{where}: 3-D poses have shape {world.shape}; expected (frames, joints, 3)")
    if world.shape[1] == 32:
        world = world[:, H36M_32_TO_17]
    elif world.shape[1] != 17:
        raise ConvformerError(f"{where}: 3-D poses have {world.shape[1]} joints; expected 17 or 32")
    _check_finite(world, f"{where} (3-D)")
    if views is None:
        raise ConvformerError(f"{where} is not in {name_2d}; use a 2-D file made for the same data")
    if not isinstance(views, (list, tuple)) or len(views) != len(cams):
        n = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
        raise ConvformerError(f"{where} in {name_2d} has {n} camera views; expected {len(cams)}")
    n3 = len(world)
    out = []
    for i, (kp, cam) in enumerate(zip(views, cams)):
        kp = np.asarray(kp)
        if kp.ndim != 3 or kp.shape[1:] != (17, 2):
            raise ConvformerError(f"{where} camera {i}: 2-D keypoints have shape {kp.shape}; expected (frames, 17, 2)")
        if not 0 <= len(kp) - n3 <= MAX_EXTRA_2D_FRAMES:
            raise ConvformerError(f"{where} camera {i}: {len(kp)} 2-D frames but {n3} 3-D frames; "
                                  "the 2-D and 3-D files do not match")
        kp = kp[:n3]  # detections may run a few frames past the motion capture
        _check_finite(kp, f"{where} camera {i} (2-D)")
        xc = world_to_camera(world.astype(np.float64), cam)
        out.append(PoseSequence(subject, action, i,
                                keypoints=normalize_screen(kp.astype(np.float64), cam.res_w, cam.res_h).astype(np.float32),
                                poses=(xc - xc[:, :1]).astype(np.float32),
                                trajectory=xc[:, 0].astype(np.float32)))
    return out


def split_subjects(data: PoseData, train=TRAIN_SUBJECTS, test=TEST_SUBJECTS) -> tuple[PoseData, PoseData]:
    """Split loaded data by subject (the standard protocol: train S1 S5 S6 S7 S8, test S9 S11). Loading
    once and splitting reads each file once; every listed subject must be present."""
    parts = []
    for names in (train, test):
        names = tuple(names)
        missing = [s for s in names if s not in data.subjects]
        if missing:
            raise ConvformerError(f"{', '.join(missing)} not in the loaded data (it has {', '.join(data.subjects)})")
        parts.append(PoseData([q for q in data.sequences if q.subject in names], data.left, data.right,
                              {s: data.cameras[s] for s in names if s in data.cameras}, data.source))
    return parts[0], parts[1]


# ---------------------------------------------------------------------------------------------- windows
class PoseWindows(Dataset):
    """Sliding windows over sequences: item i is the receptive field centred on one frame, frames outside
    the sequence filled by repeating the first/last frame (edge padding, as VideoPose3D does).

    Returns (keypoints (T, 17, 2), target (T, 17, 3) if ``seq2seq`` else (1, 17, 3) for the centre frame,
    index i). ``stride`` keeps every stride-th centre frame of each sequence. ``flip`` mirrors the item with
    probability 0.5 drawn from torch's global RNG (the engine seeds it per sample).
    """

    def __init__(self, sequences, receptive_field: int, stride: int = 1, flip: bool = False,
                 seq2seq: bool = False, left=H36M_LEFT, right=H36M_RIGHT):
        if isinstance(sequences, PoseData):
            sequences = sequences.sequences
        if receptive_field < 1 or receptive_field % 2 == 0:
            raise ConvformerError(f"receptive field must be a positive odd number of frames, got {receptive_field}")
        if stride < 1:
            raise ConvformerError(f"window stride must be at least 1, got {stride}")
        if not sequences:
            raise ConvformerError("no pose sequences to make windows from; check the subject/action filters")
        self.sequences = list(sequences)
        self.receptive_field, self.stride, self.flip, self.seq2seq = receptive_field, stride, flip, seq2seq
        self.left, self.right = tuple(left), tuple(right)
        pad = (receptive_field - 1) // 2
        edge = lambda a: torch.from_numpy(np.pad(a, ((pad, pad), (0, 0), (0, 0)), mode="edge"))
        # padded once here so that an item is a plain slice
        self._keypoints = [edge(s.keypoints.astype(np.float32)) for s in self.sequences]
        self._poses = [edge(s.poses.astype(np.float32)) if seq2seq else torch.from_numpy(s.poses.astype(np.float32))
                       for s in self.sequences]
        counts = [math.ceil(len(s.keypoints) / stride) for s in self.sequences]
        self._starts = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Item index -> (sequence index, centre frame)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return k, int(i - self._starts[k]) * self.stride

    def sequence_of(self, i: int) -> PoseSequence:
        return self.sequences[self.locate(i)[0]]

    def __getitem__(self, i: int):
        k, frame = self.locate(i)
        t = self.receptive_field
        kp = self._keypoints[k][frame:frame + t].clone()
        target = self._poses[k][frame:frame + t] if self.seq2seq else self._poses[k][frame:frame + 1]
        target = target.clone()
        if self.flip and torch.rand(1).item() < 0.5:
            kp, target = flip_pose(kp, self.left, self.right), flip_pose(target, self.left, self.right)
        return kp, target, i
