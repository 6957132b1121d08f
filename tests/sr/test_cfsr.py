"""CFSR: the network against the authors' released weights and ONNX exports, the merge, and the cards."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convformer
from convformer.bench import count_params
from convformer.sr.cfsr import cfsr_official_to_ours
from convformer.weights.hub import local_weight_dirs

SHARED = next((d / "cfsr" for d in local_weight_dirs() if (d / "cfsr" / "CFSR_x2.pth").is_file()), None)
needs_weights = pytest.mark.skipif(SHARED is None, reason="official CFSR weights (../shared/weights/cfsr) not present")


@pytest.mark.parametrize("scale,params", [(2, 291_324), (3, 297_819), (4, 306_912)])
def test_parameter_counts_equal_the_released_networks(scale, params):
    model = convformer.create_model(f"cfsr_x{scale}")
    assert model.merged and count_params(model) == params == convformer.model_card(f"cfsr_x{scale}").params
    train_form = convformer.create_model(f"cfsr_x{scale}", merged=False)
    assert count_params(train_form) == params + 12 * 6 * 96  # 3 branches x (scale, bias) per hidden channel


def _photo_lr(scale, size=96):
    """A real photograph (scikit-image's astronaut), centre crop, bicubic-downsampled LR in [0, 1]."""
    from skimage import data
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    hr = img[:, :, 150:150 + size, 180:180 + size]
    lr = torch.nn.functional.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True)
    return lr.clamp(0, 1)


@needs_weights
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_weights_match_the_official_onnx_on_a_real_photo(scale):
    import onnxruntime as ort
    x = _photo_lr(scale)
    session = ort.InferenceSession(str(SHARED / f"CFSRx{scale}.onnx"), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"modelInput": x.numpy()})[0]
    for merged in (True, False):  # merged weights load into the training form too (edge branches at zero)
        model = convformer.create_model(f"cfsr_x{scale}", pretrained=str(SHARED / f"CFSR_x{scale}.pth"),
                                        merged=merged).eval()
        with torch.no_grad():
            out = model(x).numpy()
        assert out.shape == ref.shape == (1, 3, x.shape[2] * scale, x.shape[3] * scale)
        assert np.abs(out - ref).max() <= 1e-4


@needs_weights
def test_pretrained_true_finds_the_local_official_file_and_names_it_in_errors(monkeypatch, tmp_path):
    model = convformer.create_model("cfsr_x2", pretrained=True)
    assert model.conv_first.weight.abs().sum() > 0
    from convformer.weights import hub
    monkeypatch.setattr(hub, "local_weight_dirs", lambda: [tmp_path])
    with pytest.raises(convformer.ConvformerError, match="github.com/Aitical/CFSR"):
        convformer.create_model("cfsr_x2", pretrained=True)


def _perturb_edges(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.fill_(0.5)  # make the blocks matter
            elif name.endswith(("_scale", "_bias")):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_merge_gives_the_same_outputs_and_the_released_layout():
    torch.manual_seed(0)
    model = _perturb_edges(convformer.create_model("cfsr_x3", merged=False)).eval()
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        before = model(x)
        model.merge()
        after = model(x)
    assert model.merged and before.shape == (2, 3, 60, 72)
    assert (before - after).abs().max().item() <= 1e-5
    assert (before - x.repeat_interleave(3, 2).repeat_interleave(3, 3)).abs().max() > 1e-3  # not a no-op
    assert count_params(model) == 297_819


def test_edge_branches_are_the_official_masks_and_reach_the_output():
    from convformer.mixers.convmod import edge_mask
    assert edge_mask("sobel_x").tolist() == [[0, 1, -1], [2, 0, -2], [1, 0, -1]]
    assert edge_mask("sobel_y").tolist() == [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    assert edge_mask("laplacian").tolist() == [[1, 0, 0], [1, -4, 1], [0, 1, 0]]
    torch.manual_seed(0)
    model = _perturb_edges(convformer.create_model("cfsr_x2", merged=False)).train()
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    ffn = model.groups[0].blocks[0].ffn
    assert ffn.sobel_x_scale.grad.abs().sum() > 0 and ffn.laplacian_bias.grad.abs().sum() > 0


def test_official_training_form_keys_convert():
    """An unmerged official checkpoint (separate edge parameters and masks) maps onto our training form."""
    own = convformer.create_model("cfsr_x2", merged=False).state_dict()
    official = {"layers.0.blocks.0.mlp.scale_sobel_x": torch.ones(96, 1, 1, 1),
                "layers.0.blocks.0.mlp.sobel_x_bias": torch.full((96,), 2.0),
                "layers.0.blocks.0.mlp.mask_sobel_x": torch.zeros(96, 1, 3, 3),
                "layers.0.blocks.0.attn.a.0.weight": torch.ones(48, 48, 1, 1),
                "layers.1.conv.weight": torch.ones(48, 48, 1, 1)}
    out = cfsr_official_to_ours(official, own)
    assert out["groups.0.blocks.0.ffn.sobel_x_scale"].shape == (96,)
    assert out["groups.0.blocks.0.ffn.sobel_x_bias"][0] == 2.0
    assert out["groups.0.blocks.0.mixer.a_proj.weight"].shape == (48, 48)
    assert out["groups.1.proj.weight"].shape == (48, 48)
    assert not any("mask" in k for k in out)
    assert cfsr_official_to_ours({"stem.conv.weight": torch.ones(1)}, own) is None


def test_wrong_input_is_a_clear_error():
    model = convformer.create_model("cfsr_x2")
    with pytest.raises(convformer.ConvformerError, match=r"expects images \(B, 3, H, W\)"):
        model(torch.rand(1, 1, 16, 16))


@needs_weights
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_cfsr_beats_bicubic_on_a_real_photo(scale):
    from convformer.sr.data import bicubic_down, bicubic_up, bundled_photo, mod_crop
    from convformer.sr.metrics import psnr_y, ssim_y
    hr = mod_crop(bundled_photo("coffee")[:, :, 100:220, 200:344], scale)
    lr = bicubic_down(hr, scale)
    model = convformer.create_model(f"cfsr_x{scale}", pretrained=str(SHARED / f"CFSR_x{scale}.pth")).eval()
    with torch.no_grad():
        sr = model(lr).clamp(0, 1)
    bic = bicubic_up(lr, scale)
    assert psnr_y(sr, hr, scale) > psnr_y(bic, hr, scale) + 0.5
    assert ssim_y(sr, hr, scale) > ssim_y(bic, hr, scale)


def test_tiled_upscale_equals_untiled_with_enough_context_and_stays_close_without():
    from convformer.sr.task import upscale
    from convformer.sr.metrics import psnr_y
    torch.manual_seed(0)
    model = _perturb_edges(convformer.create_model("cfsr_x2")).eval()
    lr = torch.rand(1, 3, 40, 52)
    whole = upscale(model, lr)
    assert whole.shape == (1, 3, 80, 104)
    exact = upscale(model, lr, tile=16, overlap=64)  # context beyond the receptive field
    assert (exact - whole).abs().max().item() <= 1e-5
    close = upscale(model, lr, tile=16, overlap=12)
    assert psnr_y(close, whole) >= 50  # the bound for tiled vs untiled


@needs_weights
def test_sr_upscale_and_eval_commands(tmp_path, capsys):
    from convformer.cli import main
    from convformer.sr.data import bicubic_down, bundled_photo, load_rgb, save_png
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    photo = bundled_photo("chelsea")[:, :, 60:156, 120:240]
    save_png(photo, hr_dir / "cat.png")
    save_png(bicubic_down(photo, 2), lr_dir / "cat.png")
    w = str(SHARED / "CFSR_x2.pth")
    assert main(["sr", "upscale", str(lr_dir), "-o", str(tmp_path / "out"), "--model", "cfsr_x2", "--weights", w,
                 "--tile", "24"]) == 0
    out = load_rgb(tmp_path / "out" / "cat_x2.png")
    assert out.shape == (1, 3, 96, 120)
    assert main(["sr", "upscale", str(lr_dir), "-o", str(tmp_path / "out"), "--model", "cfsr_x2",
                 "--weights", w]) == 2
    assert "already exists" in capsys.readouterr().err  # nothing overwritten without --overwrite
    assert main(["sr", "eval", str(hr_dir), "--model", "cfsr_x2", "--weights", w, "--json",
                 "--output", str(tmp_path / "ev")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 1 and result["psnr"] > result["bicubic_psnr"]
    assert (tmp_path / "ev" / "strip.png").read_bytes()[:4] == b"\x89PNG"
    assert "bicubic_ssim" in (tmp_path / "ev" / "metrics.csv").read_text()
    assert main(["sr", "upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o2")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["sr", "eval", str(hr_dir), "--model", "convformer_s18"]) == 2
    assert "not a super-resolution model" in capsys.readouterr().err


def test_training_form_weights_load_into_the_merged_model_folded(tmp_path):
    torch.manual_seed(0)
    trained = _perturb_edges(convformer.create_model("cfsr_x2", merged=False)).eval()
    convformer.save_weights(trained, tmp_path / "t.safetensors")
    merged = convformer.create_model("cfsr_x2", pretrained=str(tmp_path / "t.safetensors")).eval()
    assert merged.merged
    x = torch.rand(1, 3, 16, 20)
    with torch.no_grad():
        assert (merged(x) - trained(x)).abs().max().item() <= 1e-5
