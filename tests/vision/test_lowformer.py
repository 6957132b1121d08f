"""LowFormer against timm's port (parameters, MACs, logits, both weight layouts) and the paper's table,
and Lowtention as a mixer."""
import pytest
import timm
import torch
from timm.models.lowformer import checkpoint_filter_fn

import convformer
from convformer.bench import count_macs, count_params
from convformer.mixers import MIXERS, LowtentionMixer
from convformer.weights import read_state_dict
from convformer.vision.lowformer_keys import prefix_rows, rename

from conftest import by_structure, randomize_

VARIANTS = ["lowformer_b0", "lowformer_b1", "lowformer_b15", "lowformer_b3",
            "lowformer_e1", "lowformer_e2", "lowformer_e3"]
PAPER_B = {"lowformer_b0": (14.1, 944), "lowformer_b1": (17.9, 1411), "lowformer_b15": (33.9, 2574),
           "lowformer_b3": (57.1, 6099)}  # WACV 2025 table: params M, MACs M


def test_every_variant_is_registered():
    assert convformer.list_models("lowformer*") == sorted(VARIANTS)


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_macs_equal_timms_port(name):
    with torch.device("meta"):  # shapes are all the counts need
        ours, ref = convformer.create_model(name), timm.create_model(name)
    assert count_params(ours) == sum(p.numel() for p in ref.parameters())
    assert count_macs(ours, (3, 224, 224)) == count_macs(ref, (3, 224, 224))


@pytest.mark.parametrize("name", sorted(PAPER_B))
def test_card_equals_the_paper_table(name):
    card = convformer.model_card(name)
    params_m, macs_m = PAPER_B[name]
    # the table rounds B3's 57.09M up but prints B1.5's 33.98M as 33.9: within 0.1M either way
    assert abs(card.params / 1e6 - params_m) < 0.1
    assert round(card.macs / 1e6) == macs_m
    assert card.paper_params_m == params_m and card.metrics["in1k_224"] > 78


def test_edge_variants_cards_state_the_journal_figures():
    for name, macs_g in [("lowformer_e1", 1.35), ("lowformer_e2", 3.8)]:
        card = convformer.model_card(name)
        assert abs(card.macs / 1e9 - macs_g) <= 0.015 and card.paper_macs_g == macs_g
    e3 = convformer.model_card("lowformer_e3")
    assert e3.paper_macs_g == 5.35 and "4866M" in e3.notes[0]  # the journal's figure disagrees with its network


def _pair(name, size=64):
    torch.manual_seed(0)
    ref = randomize_(timm.create_model(name), std=0.1).eval()
    ours = convformer.create_model(name).eval()
    return ours, ref, torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", by_structure(VARIANTS))
def test_timm_weights_give_timms_logits_both_ways(name, tmp_path):
    ours, ref, x = _pair(name)
    timm_file = tmp_path / "timm.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, timm_file)
    assert convformer.load_weights(ours, timm_file) == "timm"
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=1e-4)
        # and back: our file in timm's layout loads strictly into timm's model
        convformer.save_weights(ours, tmp_path / "back.safetensors", layout="timm")
        fresh = timm.create_model(name).eval()
        fresh.load_state_dict(read_state_dict(tmp_path / "back.safetensors")[0], strict=True)
        torch.testing.assert_close(fresh(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["lowformer_b0", "lowformer_b3", "lowformer_e1", "lowformer_e3"])
def test_official_layout_both_ways(name, tmp_path):
    """Our writer's official layout is what timm's converter for the authors' checkpoints expects (it
    loads strictly into timm's model after that converter), and our reader detects and loads it."""
    ours, ref, x = _pair(name)
    convformer.load_weights(ours, ref.state_dict())
    path = tmp_path / "evalmodel.pth"
    convformer.save_weights(ours, path, layout="official")
    official = read_state_dict(path)[0]
    assert all(k.startswith(("backbone.input_stem.", "backbone.stages.", "head.op_list.")) for k in official)
    fresh = timm.create_model(name).eval()
    fresh.load_state_dict(checkpoint_filter_fn({"state_dict": official}, fresh), strict=True)
    again = convformer.create_model(name).eval()
    assert convformer.load_weights(again, path) == "official"
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(fresh(x), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(again(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", VARIANTS)
def test_key_map_covers_every_tensor_and_inverts(name):
    model = convformer.create_model(name)
    state = model.state_dict()
    ours = [row[0] for row in prefix_rows(model.cfg)]
    assert len(set(ours)) == len(ours)
    listed = set(ours)
    uncovered = [k for k in state if not any(k.startswith(p + ".") for p in listed)]
    assert not uncovered
    for layout in ("timm", "official"):
        there = rename(state, model.cfg, "convformer", layout)
        assert set(rename(there, model.cfg, layout, "convformer")) == set(state)
    assert set(rename(state, model.cfg, "convformer", "timm")) == set(timm.create_model(name).state_dict())


def test_wrong_checkpoint_names_what_is_missing(tmp_path):
    b0 = convformer.create_model("lowformer_b0")
    with pytest.raises(convformer.ConvformerError, match="does not fit lowformer_b1"):
        convformer.load_weights(convformer.create_model("lowformer_b1"), b0.state_dict())


@pytest.mark.parametrize("hw", [(14, 14), (13, 9), (7, 7)])
def test_lowtention_keeps_the_size_and_mixes_tokens(hw):
    torch.manual_seed(0)
    mixer = LowtentionMixer(64, stage_stride=16).eval()
    assert mixer.att_stride == 2 and mixer.down.kernel_size == (5, 5)
    assert (mixer.num_heads, mixer.head_dim) == (1, 32)  # 64 channels: one 32-wide head
    x = torch.randn(2, *hw, 64)
    with torch.no_grad():
        y = mixer(x)
        assert y.shape == x.shape
        bumped = x.clone()
        bumped[:, 0, 0] += 1.0  # one token changed: attention spreads it to far-away tokens
        far = (mixer(bumped) - y)[:, -1, -1].abs().max()
    assert far > 1e-6
    assert LowtentionMixer(64, stage_stride=32).att_stride == 1 and "lowtention" in MIXERS


def test_lowtention_channels_last_equals_nchw():
    mixer = LowtentionMixer(128, att_stride=2).eval()
    x = torch.randn(1, 128, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), mixer.forward_nchw(x))


def test_speed_benchmark_reports_ours_against_each_timm_way(tmp_path):
    from conftest import load_benchmark
    script = load_benchmark("lowformer_speed")
    out = tmp_path / "speed.json"
    report = script.main(["--models", "lowformer_b0", "--variants", "{m}@fast", "{m}@ort", "timm:{m}",
                          "onnx:timm:{m}", "--img-size", "64", "--batch", "2", "--repeats", "1", "--output", str(out)])
    assert out.is_file() and out.with_suffix(".png").is_file()
    by = {r["spec"]: r for r in report["results"]}
    r = report["ratios"]["lowformer_b0@fast vs timm eager"]
    assert r["b32_speedup"] == by["lowformer_b0@fast"]["throughput"] / by["timm:lowformer_b0"]["throughput"]
    assert r["b1_speedup"] == by["timm:lowformer_b0"]["latency_ms"] / by["lowformer_b0@fast"]["latency_ms"]
    assert set(report["ratios"]) == {f"lowformer_b0@{o} vs timm {p}" for o in ("fast", "ort")
                                     for p in ("eager", "in onnxruntime")}
    # issue 24's target: the best of ours against timm's LowFormer in ONNX Runtime
    t = report["runtime_target"]["lowformer_b0"]
    ours = [by["lowformer_b0@fast"], by["lowformer_b0@ort"]]
    fastest = max(ours, key=lambda x: x["throughput"])
    quickest = min(ours, key=lambda x: x["latency_ms"])
    peer = by["onnx:timm:lowformer_b0"]
    assert t["throughput"] == fastest["spec"] and t["latency"] == quickest["spec"]
    assert t["throughput_ratio"] == fastest["throughput"] / peer["throughput"]
    assert t["latency_ratio"] == quickest["latency_ms"] / peer["latency_ms"]
