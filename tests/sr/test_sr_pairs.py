"""Given LR/HR pairs: matching by name, size checks, aligned random crops, and their use in sr eval/train."""
import json

import pytest
import torch

import convformer
from convformer.cli import main
from convformer.sr.data import bicubic_down, bicubic_up, load_pair, paired_files, save_png
from convformer.engine.sampler import seeded
from convformer.sr.task import PatchSet
from convformer.sr.metrics import psnr_y


def _write_pairs(root, scale=2):
    """HR images and LR images under DIV2K-style names (0001x2.png), one in a subfolder."""
    g = torch.Generator().manual_seed(0)
    names = ["0001", "0002", "sub/0003"]
    for i, name in enumerate(names):
        hr = torch.rand(1, 3, 40 + 2 * i, 36, generator=g)
        save_png(hr, root / "hr" / f"{name}.png")
        save_png(bicubic_down(hr, scale), root / "lr" / f"{name}x{scale}.png")
    return names


def test_pairs_are_matched_by_name_and_suffix(tmp_path):
    names = _write_pairs(tmp_path)
    pairs = paired_files(tmp_path / "hr", tmp_path / "lr", 2)
    assert [(lr.relative_to(tmp_path / "lr").as_posix(), hr.relative_to(tmp_path / "hr").as_posix())
            for lr, hr in pairs] == [(f"{n}x2.png", f"{n}.png") for n in names]
    lr, hr = load_pair(*pairs[1], 2)
    assert lr.shape == (1, 3, 21, 18) and hr.shape == (1, 3, 42, 36)


def test_missing_or_mismatched_lr_is_a_clear_error(tmp_path):
    _write_pairs(tmp_path)
    (tmp_path / "lr" / "0002x2.png").unlink()
    with pytest.raises(convformer.ConvformerError, match=r"no LR image in .* for 0002.png \(LR files are matched"):
        paired_files(tmp_path / "hr", tmp_path / "lr", 2)
    save_png(torch.rand(1, 3, 10, 10), tmp_path / "lr" / "0002x2.png")  # wrong size for x2
    pairs = paired_files(tmp_path / "hr", tmp_path / "lr", 2)
    with pytest.raises(convformer.ConvformerError, match="must be exactly 1/2 of the HR size"):
        load_pair(*pairs[1], 2)
    with pytest.raises(convformer.ConvformerError, match="LR folder not found"):
        paired_files(tmp_path / "hr", tmp_path / "nowhere", 2)


@pytest.mark.parametrize("seed", range(4))
def test_paired_crops_stay_aligned_through_flips_and_rotations(seed):
    """With an HR image that is its LR image enlarged by pixel repetition, every aligned crop pair satisfies
    hr == repeat(lr) exactly, whatever flip or rotation was drawn; a misaligned crop would not."""
    s = 3
    lr = torch.rand(1, 3, 14, 17, generator=torch.Generator().manual_seed(seed))
    hr = lr.repeat_interleave(s, 2).repeat_interleave(s, 3)
    patches = PatchSet([(lr, hr)], 8, 5, s)
    pairs = []
    for i in range(8):
        with seeded(seed * 100 + i):  # as the engine loads sample i
            pairs.append(patches[i])
    lrp, hrp = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    assert lrp.shape == (8, 3, 5, 5) and hrp.shape == (8, 3, 15, 15)
    assert torch.equal(hrp, lrp.repeat_interleave(s, 2).repeat_interleave(s, 3))
    assert len({p.sum().item() for p in lrp}) > 1  # different crops were drawn


def test_sr_eval_uses_the_given_lr_images(tmp_path):
    """Given LR made by another degradation (pixel subsampling, no anti-aliasing), the bicubic baseline is
    computed from those LR images, not from a bicubic downsampling of the HR images."""
    from convformer.sr.data import load_rgb
    g = torch.Generator().manual_seed(1)
    hr = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(48, 48), mode="bilinear")
    save_png(hr, tmp_path / "hr" / "a.png")
    hr = load_rgb(tmp_path / "hr" / "a.png")
    save_png(hr[:, :, ::2, ::2], tmp_path / "lr" / "a_x2.png")
    common = ["--model", "cfsr_x2", "--weights", str(tmp_path / "w.safetensors"), "--json"]
    convformer.save_weights(convformer.create_model("cfsr_x2"), tmp_path / "w.safetensors")
    assert main(["sr", "eval", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr"), "--output",
                 str(tmp_path / "given")] + common) == 0
    assert main(["sr", "eval", str(tmp_path / "hr"), "--output", str(tmp_path / "bicubic")] + common) == 0
    given = json.loads((tmp_path / "given" / "metrics.json").read_text())["mean"]
    bicubic = json.loads((tmp_path / "bicubic" / "metrics.json").read_text())["mean"]
    expect_given = psnr_y(bicubic_up(load_rgb(tmp_path / "lr" / "a_x2.png"), 2), hr, 2)
    expect_bicubic = psnr_y(bicubic_up(bicubic_down(hr, 2), 2), hr, 2)
    assert given["bicubic_psnr"] == pytest.approx(expect_given, abs=1e-6)
    assert bicubic["bicubic_psnr"] == pytest.approx(expect_bicubic, abs=1e-6)
    assert abs(expect_given - expect_bicubic) > 0.1


def test_sr_train_on_given_pairs(tmp_path):
    _write_pairs(tmp_path)
    args = ["sr", "train", "--data", str(tmp_path / "hr"), "--data-lr", str(tmp_path / "lr"), "--val",
            str(tmp_path / "hr"), "--val-lr", str(tmp_path / "lr"), "--steps", "2", "--batch-size", "2",
            "--patch", "8", "--eval-every", "2", "--threads", "1", "--output", str(tmp_path / "runs"),
            "--name", "pairs", "--quiet"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "runs" / "pairs" / "metrics.json").read_text())
    assert rows[-1]["step"] == 2 and rows[-1]["val_bicubic_psnr"] > 10
    config = json.loads((tmp_path / "runs" / "pairs" / "config.json").read_text())
    assert config["data_lr"] == str(tmp_path / "lr")


def test_sr_train_pair_flags_without_their_partner_are_errors(tmp_path, capsys):
    assert main(["sr", "train", "--data-lr", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    assert "--data-lr pairs with a folder of HR images" in capsys.readouterr().err
    assert main(["sr", "train", "--val-lr", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    assert "--val-lr needs --val" in capsys.readouterr().err
