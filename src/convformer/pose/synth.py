"""A synthetic stand-in for Human3.6M, written in VideoPose3D's file layout.

Human3.6M (Ionescu et al., TPAMI 2014) is licensed and not on these machines, so tests, demos and
smoke-training use this generator instead. It writes the same three things the real pipeline has:
``data_3d_h36m.npz`` (32-joint world poses, metres, so the 32 -> 17 reduction is exercised),
``data_2d_h36m_synth.npz`` (4 camera views in pixels, plus metadata) and ``cameras.json``.

Bodies: the 17-joint Human3.6M skeleton with typical adult bone lengths, scaled per subject (height
about +-8 %, limb groups +-3 % more). Motion: joint angles (hips, knees, shoulders, elbows, spine, head,
facing direction, root path) are sums of sinusoids plus smoothed noise, one recipe per action family,
clipped to joint limits (knees and elbows bend one way only), at 50 fps; forward kinematics gives world
joints and the lower ankle is kept on the ground. Views: 4 distortion-free pinhole cameras around the
subject at 4.2-5 m, jittered per subject as Human3.6M's rig is. Optional 2-D noise and dropped keypoints
imitate a detector: a dropped keypoint repeats its value from the previous frame (frame 0 is never
dropped), as a tracker holding its last detection would. Everything follows from ``seed``.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from convformer.errors import ConvformerError
from convformer.pose.data import H36M_32_TO_17, H36M_LEFT, H36M_RIGHT, load_cameras, project, world_to_camera

FPS = 50
ACTIONS = ("Walking", "Sitting", "Waving", "Squat", "Boxing")
SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")
#: typical adult bone lengths, metres
BONES = dict(hip_half=0.13, thigh=0.45, shin=0.45, spine=0.23, thorax=0.25, neck=0.12, head=0.11,
             shoulder_half=0.15, upper_arm=0.28, forearm=0.25, ankle=0.08)
_GROUPS = dict(legs=("thigh", "shin", "ankle"), torso=("spine", "thorax", "neck", "head"),
               arms=("upper_arm", "forearm"), widths=("hip_half", "shoulder_half"))
#: joint limits, radians (flexion forward positive; knees and elbows one-sided)
LIMITS = dict(hip_flex=(-0.5, 2.1), hip_abd=(-0.3, 0.8), knee=(0.0, 2.4), sh_flex=(-0.9, 2.9),
              sh_abd=(-0.2, 2.6), elbow=(0.0, 2.5), spine_bend=(-0.3, 1.1), spine_side=(-0.4, 0.4),
              torso_twist=(-0.7, 0.7), head_nod=(-0.5, 0.6))
_LIMB_ANGLES = ("hip_flex", "hip_abd", "knee", "sh_flex", "sh_abd", "elbow")  # one per side
# the 15 joints the 17-joint skeleton drops, each filled with a copy of the joint it sits on or next to
_FILL_32 = {4: 3, 5: 3, 9: 8, 10: 8, 11: 0, 16: 13, 20: 19, 21: 19, 22: 19, 23: 19, 24: 13,
            28: 27, 29: 27, 30: 27, 31: 27}


def _rng(seed, *tags) -> np.random.Generator:
    # crc32 of names keeps each subject's/action's stream the same whatever else is generated
    return np.random.default_rng([seed] + [zlib.crc32(t.encode()) if isinstance(t, str) else t for t in tags])


def _noise(rng, n, scale, sigma=25.0) -> np.ndarray:
    """Smooth random signal: white noise blurred by a Gaussian of ``sigma`` frames, std ``scale``."""
    k = np.exp(-0.5 * (np.arange(-3 * int(sigma), 3 * int(sigma) + 1) / sigma) ** 2)
    k /= np.sqrt(np.sum(k ** 2))  # unit output variance
    return scale * np.convolve(rng.standard_normal(n + len(k) - 1), k, mode="valid")


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _wave(t, freq, phase=0.0):
    return np.sin(2 * np.pi * freq * t + phase)


# ---------------------------------------------------------------------------------------------- motion
def _motion(family: str, n: int, rng) -> dict:
    """Joint angles (radians), facing yaw and root (x, y) over n frames for one action family."""
    t = np.arange(n) / FPS
    a = {f"{k}_{s}": _noise(rng, n, 0.04) for k in _LIMB_ANGLES for s in "lr"}  # a little sway everywhere
    a.update({k: _noise(rng, n, 0.04) for k in LIMITS if k not in _LIMB_ANGLES})
    a.update(yaw=rng.uniform(-np.pi, np.pi) + _noise(rng, n, 0.15, 60),
             x=_noise(rng, n, 0.08, 60), y=_noise(rng, n, 0.08, 60))
    sides = (("r", 0.0), ("l", np.pi))
    if family == "Walking":
        f, ph0, radius = rng.uniform(0.85, 1.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.1)
        for s, off in sides:
            ph = 2 * np.pi * f * t + ph0 + off
            a[f"hip_flex_{s}"] += 0.1 + 0.4 * np.sin(ph)
            a[f"knee_{s}"] += 0.1 + 0.35 * (1 + np.sin(ph + 0.9))
            a[f"sh_flex_{s}"] -= 0.3 * np.sin(ph)      # arms swing against the legs
            a[f"sh_abd_{s}"] += 0.12
            a[f"elbow_{s}"] += 0.35 + 0.15 * np.sin(ph)
        a["torso_twist"] += 0.08 * _wave(t, f, ph0)
        a["spine_bend"] += 0.06
        # a circle at about 1 m/s, facing along the path
        direction = rng.choice([-1, 1])
        alpha = rng.uniform(0, 2 * np.pi) + direction * 1.1 * f * t / radius
        a["x"] += radius * np.cos(alpha)
        a["y"] += radius * np.sin(alpha)
        a["yaw"] = alpha + (0 if direction > 0 else np.pi) + _noise(rng, n, 0.05)
    elif family == "Sitting":
        # sits down and stands up again every 8-12 s (a chair is implied by the grounded feet)
        s = _smoothstep(0.5 + 0.8 * _wave(t, 1 / rng.uniform(8, 12), rng.uniform(0, 2 * np.pi)))
        for side, _ in sides:
            a[f"hip_flex_{side}"] += 1.55 * s
            a[f"knee_{side}"] += 1.65 * s
            a[f"sh_flex_{side}"] += 0.35 * s + _noise(rng, n, 0.25)
            a[f"elbow_{side}"] += 0.3 + 0.6 * s + _noise(rng, n, 0.2)
        a["spine_bend"] += 0.15 * s + 1.2 * s * (1 - s)  # leans forward most while getting up
        a["head_nod"] += _noise(rng, n, 0.15)
    elif family == "Waving":
        up = _smoothstep(0.5 + _wave(t, 1 / rng.uniform(5, 7), rng.uniform(0, 2 * np.pi)))
        w = rng.choice(["l", "r"])
        a[f"sh_abd_{w}"] += 0.15 + 1.75 * up
        a[f"sh_flex_{w}"] += 0.4 * up
        a[f"elbow_{w}"] += 0.3 + up * (0.4 + 0.45 * _wave(t, rng.uniform(1.0, 1.5)))
        o = "l" if w == "r" else "r"
        a[f"sh_abd_{o}"] += 0.1
        a[f"elbow_{o}"] += 0.2
        a["spine_side"] += 0.08 * up * (1 if w == "l" else -1)
    elif family == "Squat":
        d = _smoothstep(0.5 - 0.5 * _wave(t, 1 / rng.uniform(2.5, 3.5), rng.uniform(0, 2 * np.pi)) * 1.1)
        for s, _ in sides:
            a[f"hip_flex_{s}"] += 0.1 + 1.7 * d
            a[f"knee_{s}"] += 0.05 + 2.0 * d
            a[f"hip_abd_{s}"] += 0.15 * d
            a[f"sh_flex_{s}"] += 0.2 + 1.2 * d   # arms forward for balance
            a[f"elbow_{s}"] += 0.2
        a["spine_bend"] += 0.1 + 0.5 * d
    elif family == "Boxing":
        f = rng.uniform(0.6, 0.8)
        for s, off in sides:
            punch = np.maximum(0, _wave(t, f, off)) ** 2   # right and left jabs alternate
            a[f"hip_flex_{s}"] += 0.25
            a[f"knee_{s}"] += 0.45
            a[f"hip_abd_{s}"] += 0.12
            a[f"sh_flex_{s}"] += 0.8 + 0.6 * punch
            a[f"sh_abd_{s}"] += 0.3
            a[f"elbow_{s}"] += 1.9 - 1.6 * punch
        a["torso_twist"] += 0.25 * (np.maximum(0, _wave(t, f)) ** 2 - np.maximum(0, _wave(t, f, np.pi)) ** 2)
        a["spine_bend"] += 0.15
        a["x"] += _noise(rng, n, 0.15, 40)
        a["y"] += _noise(rng, n, 0.15, 40)
    else:
        raise ConvformerError(f"no synthetic motion for action {family!r}; choose from {', '.join(ACTIONS)}")
    for key, (lo, hi) in LIMITS.items():
        for k in (key, f"{key}_l", f"{key}_r"):
            if k in a:
                a[k] = np.clip(a[k], lo, hi)
    return a


# ------------------------------------------------------------------------------------ forward kinematics
def _rot(axis: str, angle) -> np.ndarray:
    """(n,) angles -> (n, 3, 3) rotations about a coordinate axis."""
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(c), np.zeros_like(c)
    rows = {"x": [[o, z, z], [z, c, -s], [z, s, c]],
            "y": [[c, z, s], [z, o, z], [-s, z, c]],
            "z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis]
    return np.stack([np.stack(r, -1) for r in rows], -2)


def _along(r, v) -> np.ndarray:
    return np.einsum("nij,j->ni", r, np.asarray(v, np.float64))


def forward_kinematics(a: dict, body: dict) -> np.ndarray:
    """Angles -> (n, 17, 3) world joints. Body frame: x = subject's left, y = forward, z = up; limbs
    hang along -z at zero angles. Flexion turns a limb forward; knees bend it backward."""
    n = len(a["yaw"])
    j = np.zeros((n, 17, 3))
    root_r = _rot("z", a["yaw"])
    j[:, 0, :2] = np.stack([a["x"], a["y"]], -1)
    down = (0, 0, -1)
    for s, (hip, knee, foot), side in (("r", (1, 2, 3), -1), ("l", (4, 5, 6), 1)):
        j[:, hip] = j[:, 0] + _along(root_r, (side * body["hip_half"], 0, 0))
        thigh = root_r @ _rot("y", -side * a[f"hip_abd_{s}"]) @ _rot("x", a[f"hip_flex_{s}"])
        j[:, knee] = j[:, hip] + body["thigh"] * _along(thigh, down)
        j[:, foot] = j[:, knee] + body["shin"] * _along(thigh @ _rot("x", -a[f"knee_{s}"]), down)
    torso = root_r @ _rot("z", a["torso_twist"]) @ _rot("y", a["spine_side"]) @ _rot("x", -a["spine_bend"])
    j[:, 7] = j[:, 0] + body["spine"] * _along(torso, (0, 0, 1))
    j[:, 8] = j[:, 7] + body["thorax"] * _along(torso, (0, 0, 1))
    head = torso @ _rot("x", -a["head_nod"])
    j[:, 9] = j[:, 8] + body["neck"] * _along(head, np.array([0, 0.3, 1]) / np.hypot(0.3, 1))  # nose: forward
    j[:, 10] = j[:, 9] + body["head"] * _along(head, np.array([0, -0.2, 1]) / np.hypot(0.2, 1))
    for s, (sh, el, wr), side in (("r", (14, 15, 16), -1), ("l", (11, 12, 13), 1)):
        j[:, sh] = j[:, 8] + _along(torso, (side * body["shoulder_half"], 0, 0))
        upper = torso @ _rot("y", -side * a[f"sh_abd_{s}"]) @ _rot("x", a[f"sh_flex_{s}"])
        j[:, el] = j[:, sh] + body["upper_arm"] * _along(upper, down)
        j[:, wr] = j[:, el] + body["forearm"] * _along(upper @ _rot("x", a[f"elbow_{s}"]), down)
    # stand on the ground: the lower ankle at ankle height
    j[..., 2] += body["ankle"] - np.minimum(j[:, 3, 2], j[:, 6, 2])[:, None]
    return j


def to_32_joints(j17: np.ndarray) -> np.ndarray:
    """(n, 17, 3) -> Human3.6M's recorded 32-joint layout (dropped joints copy their neighbours)."""
    out = np.zeros((len(j17), 32, 3), j17.dtype)
    out[:, list(H36M_32_TO_17)] = j17
    for k, src in _FILL_32.items():
        out[:, k] = out[:, src]
    return out


def subject_body(subject: str, seed: int = 0) -> dict:
    rng = _rng(seed, 1, subject)
    overall = rng.uniform(0.92, 1.08)
    body = dict(BONES)
    for names in _GROUPS.values():
        g = overall * rng.uniform(0.97, 1.03)
        body.update({k: BONES[k] * g for k in names})
    return body


# --------------------------------------------------------------------------------------------- cameras
def _look_at_quaternion(eye, target) -> list[float]:
    """Quaternion (w, x, y, z) of the camera-to-world rotation whose columns are the camera axes
    (x right, y down, z towards the target) in world coordinates, with world z up."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, (0, 0, 1.0))
    x /= np.linalg.norm(x)
    r = np.stack([x, np.cross(z, x), z], axis=1)
    tr = np.trace(r)
    # Shepperd's method: divide by the largest of the four candidates for stability
    if tr > 0:
        s = 2 * np.sqrt(1 + tr)
        q = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2 * np.sqrt(1 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [(r[2, 1] - r[1, 2]) / s, s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2 * np.sqrt(1 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s]
    else:
        s = 2 * np.sqrt(1 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4]
    return [float(v) for v in q]


def synthetic_cameras(subjects, seed: int = 0) -> dict:
    """A cameras-json document: 4 cameras at the corners around the subject, per-subject jitter."""
    rng = _rng(seed, 0)
    intrinsics = [dict(id=f"synth{i}", res_w=1000, res_h=1002,
                       center=[float(500 + rng.uniform(-15, 15)), float(501 + rng.uniform(-15, 15))],
                       focal_length=[float(v) for v in 1146 + rng.uniform(-4, 4, 2)],
                       radial_distortion=[0.0, 0.0, 0.0], tangential_distortion=[0.0, 0.0]) for i in range(4)]
    extrinsics = {}
    for s in subjects:
        r = _rng(seed, 2, s)
        cams = []
        for i in range(4):
            azimuth = np.deg2rad(45 + 90 * i + r.uniform(-8, 8))
            dist, height = r.uniform(4.2, 5.0), r.uniform(1.3, 1.7)
            eye = np.array([dist * np.cos(azimuth), dist * np.sin(azimuth), height])
            target = np.array([*r.uniform(-0.1, 0.1, 2), 0.9])
            cams.append(dict(orientation=_look_at_quaternion(eye, target), translation_mm=[float(v) for v in eye * 1000]))
        extrinsics[s] = cams
    return {"format": "convformer cameras v1", "source": f"convformer synthetic rig, seed {seed}",
            "conventions": "as h36m_cameras.json", "intrinsics": intrinsics, "extrinsics": extrinsics}


# ---------------------------------------------------------------------------------------------- writer
def generate_h36m_like(folder, subjects=SUBJECTS, actions=ACTIONS, frames: int = 600, noise_px: float = 0.0,
                       drop_prob: float = 0.0, extra_2d_frames: int = 0, seed: int = 0,
                       compress: bool = True) -> tuple[Path, Path]:
    """Write ``data_3d_h36m.npz``, ``data_2d_h36m_synth.npz`` and ``cameras.json`` into ``folder``.

    Each sequence has ``frames`` +-10 % frames; the 2-D views have ``extra_2d_frames`` more (as real
    detections sometimes do). ``noise_px``: Gaussian 2-D noise std in pixels. ``drop_prob``: chance that a
    keypoint is missed in a frame (it then repeats the previous frame's value). ``compress``: zip-deflate
    as VideoPose3D's own files are (about 2/3 the size, but most of the time goes into compressing).
    Returns (3-D, 2-D) paths.
    """
    if frames < 1 or extra_2d_frames < 0 or noise_px < 0 or not 0 <= drop_prob < 1:
        raise ConvformerError("synthetic data needs frames >= 1, extra_2d_frames >= 0, noise_px >= 0 and "
                              f"0 <= drop_prob < 1 (got {frames}, {extra_2d_frames}, {noise_px}, {drop_prob})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = synthetic_cameras(subjects, seed)
    (folder / "cameras.json").write_text(json.dumps(doc, indent=1) + "\n")
    cameras = load_cameras(folder / "cameras.json")
    pos3d, pos2d = {}, {}
    for s in subjects:
        body = subject_body(s, seed)
        pos3d[s], pos2d[s] = {}, {}
        for action in actions:
            rng = _rng(seed, 3, s, action)
            n = max(1, int(round(frames * rng.uniform(0.9, 1.1))))
            world = forward_kinematics(_motion(action.split(" ")[0], n + extra_2d_frames, rng), body)
            world = world.astype(np.float32)  # the 2-D views are projected from exactly what is stored
            pos3d[s][action] = to_32_joints(world[:n])
            pos2d[s][action] = [_detect(project(world_to_camera(world.astype(np.float64), cam), cam), noise_px,
                                        drop_prob, _rng(seed, 4, s, action, i)) for i, cam in enumerate(cameras[s])]
    path_3d, path_2d = folder / "data_3d_h36m.npz", folder / "data_2d_h36m_synth.npz"
    save = np.savez_compressed if compress else np.savez
    save(path_3d, positions_3d=pos3d)
    metadata = {"layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": [list(H36M_LEFT), list(H36M_RIGHT)]}
    save(path_2d, positions_2d=pos2d, metadata=metadata)
    return path_3d, path_2d


def _detect(kp: np.ndarray, noise_px: float, drop_prob: float, rng) -> np.ndarray:
    """Imitate a 2-D detector: Gaussian pixel noise, then missed keypoints hold the previous value."""
    if noise_px > 0:
        kp = kp + rng.normal(0, noise_px, kp.shape)
    if drop_prob > 0:
        n, joints = kp.shape[:2]
        missed = rng.random((n, joints)) < drop_prob
        missed[0] = False
        # for every (frame, joint), the last frame at or before it where the joint was seen
        seen_at = np.maximum.accumulate(np.where(missed, 0, np.arange(n)[:, None]), axis=0)
        kp = kp[seen_at, np.arange(joints)[None, :]]
    return kp.astype(np.float32)
