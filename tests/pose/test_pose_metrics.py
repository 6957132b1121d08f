"""3-D pose errors (MPJPE, P-MPJPE, N-MPJPE, MPJVE) and the per-action table, on poses whose errors are
known by construction, with Procrustes checked against an independent numpy Umeyama solution."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from convformer.pose.metrics import (PoseErrorTable, action_group, mpjpe, mpjve, n_mpjpe, p_mpjpe,
                                            procrustes_align)
from convformer.errors import ConvformerError


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # uniform over orthogonal matrices
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]  # make it proper
    return q


def poses(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return 0.3 * torch.randn(*shape, 17, 3, generator=gen, dtype=torch.float64)


def umeyama_reference(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Umeyama (1991), eqs. 34-42, one pose at a time: the similarity transform of pred onto target."""
    out = np.empty_like(pred)
    for i, (x, y) in enumerate(zip(pred, target)):
        n = len(x)
        mx, my = x.mean(0), y.mean(0)
        var_x = ((x - mx) ** 2).sum() / n
        cov = (y - my).T @ (x - mx) / n
        u, d, vt = np.linalg.svd(cov)
        s = np.eye(3)
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            s[2, 2] = -1
        r = u @ s @ vt
        c = np.trace(np.diag(d) @ s) / var_x
        t = my - c * r @ mx
        out[i] = c * x @ r.T + t
    return out


def test_mpjpe_of_a_known_offset_is_its_length():
    target = poses(torch.Generator().manual_seed(0), 4)
    assert mpjpe(target + torch.tensor([0.03, -0.04, 0.0], dtype=torch.float64), target).item() == \
        pytest.approx(0.05, abs=1e-12)
    offsets = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.2, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    per_pose = mpjpe(target + offsets[:, None, :], target, reduction="none")
    assert per_pose.shape == (4,)
    assert torch.allclose(per_pose, torch.tensor([0.1, 0.2, 0.3, 0.0], dtype=torch.float64))


def test_p_mpjpe_undoes_rotation_scale_and_shift():
    gen = torch.Generator().manual_seed(1)
    target = poses(gen, 8)
    moved = 1.7 * target @ random_rotation(gen).T + torch.tensor([0.5, -1.0, 4.0], dtype=torch.float64)
    assert mpjpe(moved, target).item() > 1.0
    assert p_mpjpe(moved, target).item() < 1e-6
    assert p_mpjpe(moved.float(), target.float()).item() < 1e-5
    assert p_mpjpe(moved.float(), target.float()).dtype == torch.float32
    assert p_mpjpe(moved.numpy(), target.numpy()).item() < 1e-6  # numpy in, same answer


def test_p_mpjpe_does_not_undo_a_mirror_image():
    gen = torch.Generator().manual_seed(2)
    target = poses(gen, 6)
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    # An orthogonal fit that allowed reflections would match the mirror exactly...
    x, y = mirrored[0] - mirrored[0].mean(0), target[0] - target[0].mean(0)
    u, _, vh = torch.linalg.svd(y.T @ x)
    assert (x @ (u @ vh).T - y).norm(dim=-1).mean().item() < 1e-9
    # ...but protocol 2 allows only proper rotations, so the error stays.
    assert (p_mpjpe(mirrored, target, reduction="none") > 0.05).all()


def test_procrustes_align_matches_numpy_umeyama():
    gen = torch.Generator().manual_seed(3)
    pred, target = poses(gen, 20), poses(gen, 20)
    # Half of the pairs are mirror-related with noise, so the reflection fix is exercised.
    pred[:10] = target[:10] * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64) + 0.02 * torch.randn(
        10, 17, 3, generator=gen, dtype=torch.float64)
    expected = umeyama_reference(pred.numpy(), target.numpy())
    np.testing.assert_allclose(procrustes_align(pred, target).numpy(), expected, atol=1e-9)


def test_alignment_never_increases_squared_error_and_p_mpjpe_is_below_mpjpe():
    gen = torch.Generator().manual_seed(4)
    target = poses(gen, 200)
    pred = target + 0.1 * torch.randn(200, 17, 3, generator=gen, dtype=torch.float64) + 0.05
    aligned = procrustes_align(pred, target)
    # Procrustes minimises the squared error, so this holds pose by pose, always:
    assert ((aligned - target).square().sum((-1, -2)) <= (pred - target).square().sum((-1, -2)) + 1e-12).all()
    # The mean of distances is not what is minimised, but with real misalignment it drops too:
    assert (p_mpjpe(pred, target, reduction="none") <= mpjpe(pred, target, reduction="none")).all()


def test_n_mpjpe_fits_only_the_scale():
    gen = torch.Generator().manual_seed(5)
    target = poses(gen, 5)
    assert mpjpe(0.6 * target, target).item() > 0.05
    assert n_mpjpe(0.6 * target, target).item() < 1e-12
    # A rotation is not undone:
    assert n_mpjpe(target @ random_rotation(gen).T, target).item() > 0.05
    # With noise, the scale used is the least-squares one: find it by scanning and compare.
    pred = 1.3 * target[0] + 0.05 * torch.randn(17, 3, generator=gen, dtype=torch.float64)
    scales = torch.linspace(0.5, 1.0, 50001, dtype=torch.float64)
    sq = ((scales[:, None, None] * pred - target[0]) ** 2).sum((-1, -2))
    best = scales[sq.argmin()]
    assert n_mpjpe(pred, target[0]).item() == pytest.approx(mpjpe(best * pred, target[0]).item(), abs=1e-6)
    assert n_mpjpe(pred, target[0]).item() <= mpjpe(pred, target[0]).item()


def test_mpjve_sees_motion_not_offsets():
    gen = torch.Generator().manual_seed(6)
    target = poses(gen, 3, 10)  # (B, T, J, 3)
    # A different constant offset per clip: zero velocity error (and it proves time is dim -3, not 0).
    offsets = torch.tensor([[0.1, 0, 0], [0, 0.5, 0], [0, 0, -0.3]], dtype=torch.float64)
    assert mpjve(target + offsets[:, None, None, :], target).item() < 1e-12
    step = torch.tensor([0.0, 0.003, 0.004], dtype=torch.float64)  # 5 mm per frame
    drift = torch.arange(10, dtype=torch.float64)[:, None, None] * step
    assert mpjve(target + drift, target).item() == pytest.approx(0.005, abs=1e-12)
    assert mpjve(target[0] + drift, target[0], reduction="none").shape == (9,)
    with pytest.raises(ConvformerError, match="at least 2 frames"):
        mpjve(target[:, :1], target[:, :1])


def test_shape_mismatch_is_a_one_line_error():
    with pytest.raises(ConvformerError, match="shapes differ") as err:
        mpjpe(torch.zeros(2, 17, 3), torch.zeros(3, 17, 3))
    assert "\n" not in str(err.value)


def test_action_group_uses_the_name_before_the_first_space():
    assert action_group("Walking 1") == "Walking"
    assert action_group("Walking") == "Walking"
    assert action_group("WalkDog") == "WalkDog"
    assert action_group("SittingDown 2") == "SittingDown"


def offset_poses(*offsets_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and predictions shifted along x by the given amounts (metres): MPJPE = the shift."""
    target = poses(torch.Generator().manual_seed(7), len(offsets_m))
    shift = torch.tensor(offsets_m, dtype=torch.float64)[:, None, None] * torch.tensor([1.0, 0, 0], dtype=torch.float64)
    return target + shift, target


def filled_table() -> PoseErrorTable:
    table = PoseErrorTable()  # metres in, millimetres out
    table.update(["Walking 1", "Walking 1"], *offset_poses(0.01, 0.03))
    table.update("Walking", *offset_poses(0.05))
    table.update(["Eating"], *offset_poses(0.1))
    return table


def test_table_means_per_action_and_the_papers_average():
    rows = filled_table().table()
    assert list(rows) == ["Eating", "Walking", "Average"]
    assert rows["Walking"]["mpjpe"] == pytest.approx(30.0)  # (10 + 30 + 50) / 3, "Walking 1" merged in
    assert rows["Walking"]["count"] == 3
    assert rows["Eating"]["mpjpe"] == pytest.approx(100.0)
    assert rows["Average"]["mpjpe"] == pytest.approx(65.0)  # mean of the two actions, not of the 4 poses
    assert rows["Average"]["count"] == 4
    assert rows["Average"]["p_mpjpe"] == pytest.approx(0.0, abs=1e-6)  # a shift is fully aligned away
    assert filled_table().pose_weighted()["mpjpe"] == pytest.approx(47.5)  # (10 + 30 + 50 + 100) / 4


def test_table_labels_clips_and_subjects():
    pred, target = offset_poses(0.01, 0.02)
    clips_p = torch.stack([pred, pred + 0.0]), torch.stack([target, target])  # (B=2, T=2, J, 3)
    table = PoseErrorTable()
    table.update(["Posing 1", "Greeting"], *clips_p, subject=["S9", "S11"])
    rows = table.table()
    assert rows["Posing"]["count"] == 2 and rows["Greeting"]["count"] == 2
    assert rows["Posing"]["mpjpe"] == pytest.approx(15.0)
    assert list(table.table(by="subject")) == ["S11", "S9", "Average"]
    with pytest.raises(ConvformerError, match="3 action labels"):
        table.update(["a", "b", "c"], *clips_p)
    with pytest.raises(ConvformerError, match="empty"):
        PoseErrorTable().table()


def test_markdown_has_one_row_per_protocol_and_actions_as_columns():
    lines = filled_table().to_markdown().strip().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["Protocol (mm)", "Eating", "Walking", "Avg"]
    assert cells[2] == ["MPJPE", "100.0", "30.0", "65.0"]
    assert cells[3] == ["P-MPJPE", "0.0", "0.0", "0.0"]
    assert len(lines) == 4
    assert len(filled_table().to_markdown(protocols=("mpjpe", "p_mpjpe", "n_mpjpe")).strip().splitlines()) == 5


def test_csv_and_json_are_written_atomically(tmp_path, monkeypatch):
    table = filled_table()
    table.to_csv(tmp_path / "errors.csv")
    table.to_json(tmp_path / "errors.json")
    assert sorted(os.listdir(tmp_path)) == ["errors.csv", "errors.json"]  # no temp file left behind
    with open(tmp_path / "errors.csv", newline="") as fh:
        rows = {r["action"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["Eating", "Walking", "Average", "Pose-weighted"]
    assert float(rows["Walking"]["mpjpe_mm"]) == pytest.approx(30.0)
    assert float(rows["Pose-weighted"]["mpjpe_mm"]) == pytest.approx(47.5)
    saved = json.loads((tmp_path / "errors.json").read_text())
    assert saved["Average"]["mpjpe"] == pytest.approx(65.0) and saved["Eating"]["count"] == 1

    # A failing rename leaves the old file as it was and no temp file.
    before = (tmp_path / "errors.csv").read_text()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", broken_replace)
    table.update("Smoking", *offset_poses(0.2))
    with pytest.raises(ConvformerError, match="could not write"):
        table.to_csv(tmp_path / "errors.csv")
    assert (tmp_path / "errors.csv").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["errors.csv", "errors.json"]
