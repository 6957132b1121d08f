"""Model cards against the model itself, timm's parameter counts and the papers' tables."""
import pytest
import timm
import torch

import convformer
from convformer.bench import count_macs, count_params
from convformer.errors import ConvformerError

from conftest import PAPER_ONLY_VARIANTS, TIMM_VARIANTS

ALL_28 = TIMM_VARIANTS + PAPER_ONLY_VARIANTS


def test_all_28_variants_registered():
    names = set(convformer.list_models())
    assert set(ALL_28) <= names
    assert len(ALL_28) == 28
    assert convformer.list_models("caformer*") == ["caformer_b36", "caformer_m36", "caformer_s18", "caformer_s36"]


def _build_for_counting(name):
    """The model on the meta device: flop_counter counts from shapes, so the counts are those of the real
    model (``test_meta_counts_equal_real_counts``) at no compute. The pose lifters copy tensors while they
    initialise, which the meta device cannot; they are small and built for real."""
    if convformer.model_card(name).task == "pose":
        return convformer.create_model(name)
    with torch.device("meta"):
        return convformer.create_model(name)


@pytest.mark.parametrize("name", convformer.list_models())
def test_card_counts_match_model(name):
    card = convformer.model_card(name)
    model = _build_for_counting(name)
    assert count_params(model) == card.params
    assert count_params(model, trainable=False) == card.frozen_params
    macs = count_macs(model, card.input_size)
    assert abs(macs - card.macs) <= 0.02 * card.macs


@pytest.mark.parametrize("name", ["caformer_s18", "randformer_s12", "lowformer_b0", "cfsr_x4", "conformer_ctc_xs"])
def test_meta_counts_equal_real_counts(name):
    card = convformer.model_card(name)
    real = convformer.create_model(name)
    assert count_macs(_build_for_counting(name), card.input_size) == count_macs(real, card.input_size)
    assert count_params(_build_for_counting(name), trainable=False) == count_params(real, trainable=False)


@pytest.mark.parametrize("name", TIMM_VARIANTS)
def test_params_equal_timm(name):
    with torch.device("meta"):  # shapes are all a count needs
        ours = count_params(convformer.create_model(name))
        reference = sum(p.numel() for p in timm.create_model(name).parameters())
    assert ours == reference


@pytest.mark.parametrize("name", ALL_28)
def test_card_agrees_with_paper_table(name):
    card = convformer.model_card(name)
    # the paper prints params in M and MACs in G, rounded to the precision it shows
    digits = 1 if name.startswith(("identity", "rand", "poolformerv2")) else 0
    assert round(card.params / 1e6, digits) == pytest.approx(card.paper_params_m)
    # MACs: to the paper's 0.1G precision; the PoolFormer v1 paper's counter also counted norm layers,
    # which flop_counter leaves out, so allow 1% more there
    slack = 0.05 + (0.01 * card.paper_macs_g if card.family == "poolformer" else 0.0)
    assert abs(card.macs / 1e9 - card.paper_macs_g) <= slack
    assert card.metrics["in1k_224"] > 70
    assert card.weights, "every paper variant lists a weight source"


@pytest.mark.parametrize("name,frozen_m", [("randformer_s12", 0.2), ("randformer_s24", 0.5),
                                           ("randformer_s36", 0.7), ("randformer_m36", 0.7),
                                           ("randformer_m48", 0.9)])
def test_randformer_frozen_params_match_paper(name, frozen_m):
    assert round(convformer.model_card(name).frozen_params / 1e6, 1) == frozen_m


def test_card_states_head_eps_difference_and_preprocessing():
    card = convformer.model_card("caformer_s18")
    assert any("1e-5" in n and "1e-6" in n for n in card.notes)
    assert card.preprocessing["interpolation"] == "bicubic" and card.preprocessing["crop_pct"] == 1.0
    assert [w.tag for w in card.weights][:2] == ["sail_in1k", "sail_in1k_384"]
    assert "caformer_s18" in card.describe()


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ConvformerError, match="unknown model 'caformer_s99'"):
        convformer.create_model("caformer_s99")
