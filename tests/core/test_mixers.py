"""Any registered mixer in any MetaFormer stage: shapes, gradients, the stage layout, errors, the
`metaformer` card, `model_kwargs` from a config file, and a smoke run of the digits mix study."""
import json

import pytest
import torch

import convformer
from convformer.bench import count_macs, count_params
from convformer.errors import ConvformerError
from convformer.mixers import MIXERS, SEQUENCE_MIXERS, FlattenedImageMixer, LowtentionMixer

from conftest import load_benchmark

SIZE = 32
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=5, img_size=SIZE)


def make(mixers, **kwargs):
    torch.manual_seed(0)
    return convformer.create_model("metaformer", mixers=mixers, **{**SMALL, **kwargs})


def stage_mixer(model, i):
    """The token mixer of stage i's first block, unwrapped if it is a flattened sequence mixer."""
    mixer = model.stages[i].blocks[0].token_mixer
    return mixer.mixer if isinstance(mixer, FlattenedImageMixer) else mixer


@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_works_in_every_stage(name, position):
    mixers = ["identity"] * 4
    mixers[position] = name
    model = make(tuple(mixers)).train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert isinstance(stage_mixer(model, position), MIXERS[name])


def test_mixed_model_holds_the_requested_mixer_per_stage():
    mixers = ("pool", "sepconv", "lowtention", "attention")
    model = make(mixers)
    for i, name in enumerate(mixers):
        assert all(isinstance(b.token_mixer, MIXERS[name]) for b in model.stages[i].blocks)
    assert model.cfg.mixers == mixers


def test_lowtention_gets_the_stage_stride():
    """Stages at 1/4..1/16 attend on a map downsampled by 2, the 1/32 stage at full size (LowFormer)."""
    model = make(("lowtention",) * 4)
    assert [stage_mixer(model, i).att_stride for i in range(4)] == [2, 2, 2, 1]
    assert all(isinstance(stage_mixer(model, i), LowtentionMixer) for i in range(4))


def test_sequence_mixer_runs_on_the_flattened_map_at_any_size():
    model = make(("sepconv", "dynamic_conv_attention", "sepconv", "sepconv")).eval()
    assert "dynamic_conv_attention" in SEQUENCE_MIXERS
    assert isinstance(model.stages[1].blocks[0].token_mixer, FlattenedImageMixer)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_lists_from_json_are_accepted():
    model = make(["sepconv", "sepconv", "attention", "attention"], depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])
    assert model.cfg.mixers == ("sepconv", "sepconv", "attention", "attention")


def test_unknown_mixer_is_a_clear_error():
    with pytest.raises(ConvformerError, match=r"unknown mixer\(s\) \['sepcnv'\]; valid: .*attention.*sepconv"):
        make(("sepcnv", "sepconv", "attention", "attention"))


def test_mixers_must_match_the_stage_count():
    with pytest.raises(ConvformerError, match="one entry per stage"):
        make(("sepconv", "sepconv", "attention"))


def test_metaformer_card_counts_equal_the_model():
    card = convformer.model_card("metaformer")
    model = convformer.create_model("metaformer")
    assert model.cfg.mixers == ("sepconv", "sepconv", "attention", "attention")
    assert count_params(model) == card.params
    assert count_params(model, trainable=False) == card.frozen_params == 0
    assert count_macs(model, card.input_size) == card.macs
    assert card.family == "metaformer" and not card.weights and not card.metrics
    assert any("Not a paper model" in n for n in card.notes)


def test_model_kwargs_from_a_config_file_reach_the_model(tmp_path):
    from convformer.engine import build_config
    from convformer.vision.config import TrainConfig
    from convformer.engine.tasks import model_options
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"model": "metaformer", "model_kwargs": {"mixers": ["pool"] * 4}}))
    cfg = build_config(TrainConfig, str(path))
    assert model_options(cfg, {"num_classes": 10}) == {"mixers": ["pool"] * 4}
    with pytest.raises(ConvformerError, match="may not set"):
        model_options(TrainConfig(model_kwargs={"num_classes": 3}), {"num_classes": 10})


def test_model_kwargs_flag_must_be_a_json_object():
    from convformer.engine.options import json_mapping as _json_mapping
    assert _json_mapping("--model-kwargs", '{"mixers": ["pool", "pool", "pool", "pool"]}') == {"mixers": ["pool"] * 4}
    with pytest.raises(ConvformerError, match="not valid JSON"):
        _json_mapping("--model-kwargs", "{mixers: pool}")
    with pytest.raises(ConvformerError, match="JSON object"):
        _json_mapping("--model-kwargs", '["pool"]')


def test_mix_study_script_runs_on_a_tiny_budget(tmp_path):
    script = load_benchmark("mixer_mix_digits")
    out = tmp_path / "mix"
    script.main(["--epochs", "1", "--limit", "96", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["results"]
    assert [r["mixers"] for r in rows] == list(script.MIXES.values())
    for r in rows:
        assert r["params"] > 0 and r["macs"] > 0 and r["img_per_s"] > 0 and 0 <= r["test_top1"] <= 100
    assert "| C: LowFormer-like |" in out.with_suffix(".md").read_text()
