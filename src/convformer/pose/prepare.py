"""`convformer pose prepare`: turn 3-D motion into the 2-D + 3-D files `pose train/eval` read.

``prepare_mocap`` takes any 3-D file in VideoPose3D's layout (``positions_3d[subject][action]``, world
metres, 17 Human3.6M joints or the 32 recorded ones, z up), films every clip with cameras and writes a
folder that ``pose train --data FOLDER`` reads as it reads Human3.6M:

* ``data_3d_h36m.npz``: the 3-D poses, reduced to 17 joints;
* ``data_2d_h36m_<keypoints>.npz``: one (N, 17, 2) pixel array per camera, plus the keypoint symmetry;
* ``cameras.json``: the cameras used (the loader picks it up from beside the 3-D file).

The default cameras are Human3.6M's four intrinsics (focal length, principal point, resolution and lens
distortion, as published) placed on a ring around the capture volume: azimuths 45, 135, 225 and 315
degrees (jittered by up to 8 degrees per subject, as a rig is re-set between sessions), ``distance``
metres from the centre, at about chest height, looking at the centre. A cameras json (the layout of
``h36m_cameras.json``) with extrinsics for every subject replaces them. Optional Gaussian 2-D noise and
dropped keypoints imitate a detector, exactly as the synthetic generator does. All randomness follows
from ``seed``; the same call writes the same bytes.

``prepare_synthetic`` is the synthetic Human3.6M stand-in of :mod:`convformer.pose.synth`.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from convformer.errors import ConvformerError
from convformer.fileio import atomic_write
from convformer.pose.data import (BUILTIN_CAMERAS, H36M_32_TO_17, H36M_LEFT, H36M_RIGHT, load_cameras, project,
                                  read_npz, world_to_camera)

#: the nearest a joint may come to a camera (metres) before the projection is refused
MIN_DEPTH = 0.5


def _refuse_existing(output: Path, names, overwrite: bool) -> None:
    existing = [n for n in names if (output / n).exists()]
    if existing and not overwrite:
        raise ConvformerError(f"{output} already has {', '.join(existing)}; pass --overwrite or choose another "
                              "--output")


def _publish(staging: Path, output: Path, names) -> None:
    """Move the finished files from ``staging`` into ``output``, each appearing whole (atomic_write)."""
    for n in names:
        atomic_write(output / n, lambda tmp, src=staging / n: shutil.copyfile(src, tmp))


def ring_cameras(subjects, intrinsics: list[dict], distance: float = 6.0, height: float = 1.5,
                 target=(0.0, 0.0, 0.9), seed: int = 0) -> dict:
    """A cameras-json document: ``len(intrinsics)`` cameras evenly spaced on a ring of radius ``distance``
    around ``target`` (world metres, z up), at ``height`` (+-0.1 m), looking at ``target``; per subject the
    azimuths are jittered by up to 8 degrees."""
    from convformer.pose.synth import _look_at_quaternion, _rng
    if distance <= 0:
        raise ConvformerError(f"camera distance must be positive, got {distance}")
    n = len(intrinsics)
    target = np.asarray(target, np.float64)
    extrinsics = {}
    for s in subjects:
        r = _rng(seed, 5, s)
        cams = []
        for i in range(n):
            azimuth = np.deg2rad(45 + 360 / n * i + r.uniform(-8, 8))
            eye = target[:2] + distance * np.array([np.cos(azimuth), np.sin(azimuth)])
            eye = np.array([eye[0], eye[1], height + r.uniform(-0.1, 0.1)])
            cams.append(dict(orientation=_look_at_quaternion(eye, target),
                             translation_mm=[float(v) for v in eye * 1000]))
        extrinsics[s] = cams
    return {"format": "convformer cameras v1",
            "source": f"Human3.6M intrinsics on a ring of radius {distance} m around {target.tolist()}, seed {seed}",
            "conventions": "as h36m_cameras.json", "intrinsics": intrinsics, "extrinsics": extrinsics}


def _read_motion(path: Path) -> dict:
    """{subject: {action: (N, 17, 3) float32}} from a VideoPose3D-layout 3-D file, checked."""
    data = read_npz(path, ["positions_3d"])["positions_3d"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise ConvformerError(f"{path.name} does not hold a {{subject: {{action: (frames, joints, 3)}}}} dict in "
                              "'positions_3d'; is it a VideoPose3D-layout 3-D file?")
    out = {}
    for subject, clips in data.items():
        out[str(subject)] = {}
        for action, world in clips.items():
            where = f"{path.name}: {subject}/{action}"
            world = np.asarray(world)
            if world.ndim != 3 or world.shape[-1] != 3 or len(world) == 0:
                raise ConvformerError(f"{where} has shape {world.shape}; expected (frames, 17 or 32, 3)")
            if world.shape[1] == 32:
                world = world[:, H36M_32_TO_17]
            elif world.shape[1] != 17:
                raise ConvformerError(f"{where} has {world.shape[1]} joints; expected 17 (Human3.6M order) or 32")
            if not np.isfinite(world).all():
                raise ConvformerError(f"{where} contains NaN or Inf; clean or drop that clip")
            out[str(subject)][str(action)] = world.astype(np.float32)
    return out


def _film(world: np.ndarray, cam, where: str, distortion: bool) -> np.ndarray:
    xc = world_to_camera(world.astype(np.float64), cam)
    nearest = float(xc[..., 2].min())
    if nearest < MIN_DEPTH:
        raise ConvformerError(f"{where} comes {nearest:.2f} m from camera {cam.id} (or behind it); place the "
                              "cameras further out (--distance) or give a camera file that frames the motion")
    return project(xc, cam, distortion=distortion)


def prepare_mocap(path_3d, output, cameras=None, keypoints: str = "gt", noise_px: float = 0.0,
                  drop_prob: float = 0.0, distance: float = 6.0, distortion: bool = True, seed: int = 0,
                  overwrite: bool = False) -> dict:
    """Project a VideoPose3D-layout 3-D file through cameras into ``output``; returns a summary dict
    (subjects, clips, frames, files). ``cameras``: None for Human3.6M's intrinsics on a ring (see the module
    docstring), or a cameras json with extrinsics for every subject. Nothing is written unless every clip
    projects; the files appear together (written in a temporary folder, then moved)."""
    from convformer.pose.synth import _detect, _rng
    path_3d, output = Path(path_3d), Path(output)
    if noise_px < 0 or not 0 <= drop_prob < 1:
        raise ConvformerError(f"--noise must be >= 0 pixels and --drop in [0, 1) (got {noise_px}, {drop_prob})")
    if not keypoints or any(c in keypoints for c in "/\\. "):
        raise ConvformerError(f"--keypoints names the 2-D file data_2d_h36m_<keypoints>.npz; use letters, digits, "
                              f"- and _ (got {keypoints!r})")
    names = ("data_3d_h36m.npz", f"data_2d_h36m_{keypoints}.npz", "cameras.json")
    _refuse_existing(output, names, overwrite)
    motion = _read_motion(path_3d)
    subjects = list(motion)
    if cameras is None:
        intrinsics = json.loads(BUILTIN_CAMERAS.read_text())["intrinsics"]
        doc = ring_cameras(subjects, intrinsics, distance=distance, seed=seed)
    else:
        cameras = Path(cameras)
        loaded = load_cameras(cameras)      # validates the file
        missing = [s for s in subjects if s not in loaded]
        if missing:
            raise ConvformerError(f"{cameras.name} has no cameras for {', '.join(missing)} (it has "
                                  f"{', '.join(loaded)}); add their extrinsics or leave out the camera file")
        doc = json.loads(cameras.read_text())
    with tempfile.TemporaryDirectory(prefix="convformer-prepare-") as tmp:
        tmp = Path(tmp)
        (tmp / "cameras.json").write_text(json.dumps(doc, indent=1) + "\n")
        cams = load_cameras(tmp / "cameras.json")
        pos2d, frames = {}, 0
        for s in subjects:
            pos2d[s] = {}
            for action, world in motion[s].items():
                where = f"{path_3d.name}: {s}/{action}"
                pos2d[s][action] = [_detect(_film(world, cam, where, distortion), noise_px, drop_prob,
                                            _rng(seed, 6, s, action, i)) for i, cam in enumerate(cams[s])]
                frames += len(world)
        np.savez_compressed(tmp / names[0], positions_3d=motion)
        metadata = {"layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": [list(H36M_LEFT), list(H36M_RIGHT)],
                    "source": str(path_3d.name), "noise_px": noise_px, "drop_prob": drop_prob,
                    "distortion": distortion, "seed": seed}
        np.savez_compressed(tmp / names[1], positions_2d=pos2d, metadata=metadata)
        _publish(tmp, output, names)
    return {"subjects": subjects, "clips": sum(len(v) for v in motion.values()), "frames": frames,
            "cameras": len(cams[subjects[0]]), "files": [str(output / n) for n in names], "keypoints": keypoints}


def prepare_synthetic(output, frames: int = 600, noise_px: float = 0.0, drop_prob: float = 0.0, seed: int = 0,
                      overwrite: bool = False) -> dict:
    """The synthetic Human3.6M stand-in (:func:`convformer.pose.synth.generate_h36m_like`) in ``output``."""
    from convformer.pose.synth import ACTIONS, SUBJECTS, generate_h36m_like
    output = Path(output)
    names = ("data_3d_h36m.npz", "data_2d_h36m_synth.npz", "cameras.json")
    _refuse_existing(output, names, overwrite)
    with tempfile.TemporaryDirectory(prefix="convformer-prepare-") as tmp:
        generate_h36m_like(tmp, frames=frames, noise_px=noise_px, drop_prob=drop_prob, seed=seed)
        _publish(Path(tmp), output, names)
    return {"subjects": list(SUBJECTS), "clips": len(SUBJECTS) * len(ACTIONS), "frames": None, "cameras": 4,
            "files": [str(output / n) for n in names], "keypoints": "synth"}
