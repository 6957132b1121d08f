"""CFSR's fast inference path (folded weights, stripe-by-stripe) against the plain network, and CFSR in
`convformer bench` beside the authors' ONNX export."""
import json

import numpy as np
import pytest
import torch

import convformer
from convformer.bench.candidates import parse_size
from convformer.bench.runner import run_benchmark
from convformer.cli import main
from convformer.sr.cfsr_fast import FastCFSR
from test_cfsr import SHARED, _perturb_edges, _photo_lr, needs_weights


def _random_cfsr(scale=2, merged=False, seed=0):
    """Random weights with layer scales and edge branches that matter (the init makes blocks near-identity),
    and random norm affines, so every folded parameter is exercised."""
    torch.manual_seed(seed)
    model = _perturb_edges(convformer.create_model(f"cfsr_x{scale}", merged=merged), seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif "layer_scale" in name:
                p.copy_(0.5 + 0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("stripe,size", [(3, (23, 17)), (5, (40, 9)), (64, (12, 30)), (2, (3, 11))])
def test_striped_fast_path_equals_the_plain_network(stripe, size):
    """Stripes smaller and larger than the 9x9 kernel's reach, images shorter than a halo, batch 2."""
    model = _random_cfsr(scale=3)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        ref = model(x)
        out = FastCFSR(model, stripe_rows=stripe)(x)
    assert out.shape == ref.shape == (2, 3, size[0] * 3, size[1] * 3)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    up = x.repeat_interleave(3, 2).repeat_interleave(3, 3)
    assert (ref - up).abs().max() > 1e-2  # the blocks change the result: the comparison is not vacuous


def test_fast_path_uses_stripes_even_without_no_grad(monkeypatch):
    """A caller who forgets ``torch.no_grad()`` still gets the striped path (not one whole-image stripe),
    and the same numbers; under tracing a stripe covers the whole image (one graph for any height)."""
    from convformer.sr import cfsr_fast
    model = _random_cfsr(scale=2)
    fast = FastCFSR(model, stripe_rows=8)
    seen = []
    original = cfsr_fast.FastCFSRBlock._mixer_stripe
    monkeypatch.setattr(cfsr_fast.FastCFSRBlock, "_mixer_stripe",
                        lambda self, x, out, r0, r1, *a: seen.append((r0, r1)) or original(self, x, out, r0, r1, *a))
    x = torch.rand(1, 3, 30, 12)
    out = fast(x)  # grad mode on
    assert not out.requires_grad
    assert seen[:4] == [(0, 8), (8, 16), (16, 24), (24, 30)]
    with torch.no_grad():
        assert (out - model(x)).abs().max() <= 1e-5
    seen.clear()
    torch.jit.trace(fast, x, check_trace=False)
    assert {(int(r0), int(r1)) for r0, r1 in seen} == {(0, 30)}


def test_optimize_returns_the_fast_path_and_leaves_the_model_alone():
    model = _random_cfsr(scale=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = convformer.optimize(model)
    assert isinstance(fast, FastCFSR) and fast.scale == 2
    assert not any(p.requires_grad for p in fast.parameters())
    x = torch.rand(1, 3, 20, 26)
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max() <= 1e-5
        bf16 = convformer.optimize(model, dtype="bf16")(x)
    assert bf16.dtype == torch.float32 and (bf16 - model(x)).abs().max() < 0.1  # bf16 keeps ~3 digits
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    merged = convformer.optimize(model, fold=False)
    assert merged.merged and not model.merged  # the export form: a merged copy


@needs_weights
def test_fast_path_with_official_weights_matches_the_official_onnx():
    import onnxruntime as ort
    x = _photo_lr(4)
    ref = ort.InferenceSession(str(SHARED / "CFSRx4.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"modelInput": x.numpy()})[0]
    fast = convformer.optimize(convformer.create_model("cfsr_x4", pretrained=True))
    fast.stripe_rows = 5
    with torch.no_grad():
        assert np.abs(fast(x).numpy() - ref).max() <= 1e-4


def test_sr_upscale_fast_writes_the_same_image(tmp_path):
    from convformer.sr.data import load_rgb, save_png
    model = _random_cfsr(scale=2, merged=True)
    weights = tmp_path / "w.safetensors"
    convformer.save_weights(model, weights)
    save_png(torch.rand(1, 3, 21, 19), tmp_path / "in" / "a.png")
    for flag, out in (([], "plain"), (["--fast"], "fast"), (["--runtime", "onnxruntime"], "ort")):
        assert main(["sr", "upscale", str(tmp_path / "in"), "-o", str(tmp_path / out), "--model", "cfsr_x2",
                     "--weights", str(weights)] + flag) == 0
    plain, fast = load_rgb(tmp_path / "plain" / "a_x2.png"), load_rgb(tmp_path / "fast" / "a_x2.png")
    assert plain.shape == (1, 3, 42, 38) and (plain - fast).abs().max() <= 1 / 255  # at most one 8-bit level
    assert (plain - load_rgb(tmp_path / "ort" / "a_x2.png")).abs().max() <= 1 / 255


def test_parse_size():
    assert parse_size(224) == (224, 224) and parse_size("64") == (64, 64) and parse_size("180x320") == (180, 320)
    for bad in ("180x", "0x4", "axb", "1x2x3"):
        with pytest.raises(convformer.ConvformerError, match="N or HxW"):
            parse_size(bad)


def test_bench_runs_cfsr_at_a_non_square_size_with_training(tmp_path):
    specs = ["cfsr_x2", "cfsr_x2@fast", "onnx:cfsr_x2"]
    report = run_benchmark(specs, img_size="12x20", batch=1, repeats=2, warmup=1, threads=1, train=True)
    by = {r["spec"]: r for r in report["results"]}
    assert report["settings"]["img_size"] == [12, 20]
    model = convformer.create_model("cfsr_x2")
    macs = convformer.bench.count_macs(model, (3, 12, 20))
    assert macs * 1280 * 720 == convformer.model_card("cfsr_x2").macs * 24 * 40  # MACs scale with the pixels
    for r in by.values():
        assert r["params"] == 291_324 and r["macs"] == macs
        # batch 1: the latency is the throughput run itself
        assert r["latency_ms"] == pytest.approx(1000 / r["throughput"])
    assert by["cfsr_x2"]["train_throughput"] > 0 and "train_throughput" not in by["cfsr_x2@fast"]


def test_bench_default_size_is_the_cards_and_official_onnx_needs_one():
    from convformer.bench.candidates import default_size
    assert default_size(["cfsr_x4@fast"]) == (180, 320) and default_size(["onnx:cfsr_x2@official"]) == (360, 640)
    assert default_size(["timm:convformer_s18"]) == (224, 224)
    with pytest.raises(convformer.ConvformerError, match="no official ONNX export"):
        run_benchmark(["onnx:convformer_nano@official"], img_size=32, batch=1, repeats=1, warmup=0)


@needs_weights
def test_bench_official_onnx_against_ours_and_the_benchmark_script(tmp_path, capsys):
    from conftest import load_benchmark
    script = load_benchmark("cfsr_speed")
    out = tmp_path / "speed.json"
    script.main(["--img-size", "10x16", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-memory",
                 "--output", str(out)])
    report = json.loads(out.read_text())
    specs = [r["spec"] for r in report["results"]]
    assert specs == ["cfsr_x4", "cfsr_x4@fast", "cfsr_x4@fast-bf16", "cfsr_x4@ort", "onnx:cfsr_x4@official",
                     "onnx:cfsr_x4"]
    assert report["settings"]["pretrained"] and all(r["throughput"] > 0 for r in report["results"])
    printed = capsys.readouterr().out
    assert "ours fp32 (@fast) / official ONNX in onnxruntime" in printed and "target >= 1.0" in printed
    assert "ours in onnxruntime (@ort) / official ONNX in onnxruntime" in printed
    by = {r["spec"]: r["throughput"] for r in report["results"]}
    ratio, best = max((by[s] / by["onnx:cfsr_x4@official"], s) for s in ("cfsr_x4", "cfsr_x4@fast", "cfsr_x4@ort"))
    assert f"best of ours ({best}) / official ONNX in onnxruntime   {ratio:.2f}x (issue 24 target >= 1.15)" in printed
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_bad_size_is_a_one_line_error(capsys):
    assert main(["bench", "cfsr_x2", "--img-size", "12x", "--batch", "1"]) == 2
    assert "N or HxW" in capsys.readouterr().err


def test_cfsr_onnx_export_takes_any_image_size(tmp_path):
    """The super-resolution export leaves height and width free: exported at 16x16, run at 20x27."""
    from convformer.export import onnx_session
    model = _random_cfsr(scale=2, merged=True)
    weights = tmp_path / "w.safetensors"
    convformer.save_weights(model, weights)
    assert main(["export", str(tmp_path / "sr.onnx"), "--model", "cfsr_x2", "--weights", str(weights),
                 "--img-size", "16", "--fast"]) == 0
    x = torch.rand(1, 3, 20, 27)
    out = onnx_session(tmp_path / "sr.onnx").run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (1, 3, 40, 54) and np.abs(out - ref).max() <= 1e-4
