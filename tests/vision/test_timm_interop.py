"""Working where a timm model works: timm's registry (timm.create_model), its data-config and optimizer
helpers, checked against timm's own configuration of the same architectures."""
import pytest
import timm
import timm.optim
import torch
from timm.data import resolve_data_config

import convformer

from conftest import by_structure
from convformer.vision.metaformer import MetaFormer

TIMM_KEYS = ("num_classes", "input_size", "pool_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
             "first_conv", "classifier")


@pytest.fixture(scope="module")
def registered():
    return convformer.register_with_timm()


def test_every_classification_model_is_in_timms_registry(registered):
    ours = convformer.list_models(task="classification")
    assert sorted(registered) == sorted("cvf_" + n for n in ours)
    assert sorted(timm.list_models("cvf_*")) == sorted(registered)
    assert convformer.register_with_timm() == registered  # idempotent
    assert timm.list_models("caformer_s18") == ["caformer_s18"]  # timm's own port is untouched


@pytest.mark.parametrize("name", by_structure(n for n in convformer.list_models(task="classification") if timm.is_model(n)))
def test_pretrained_cfg_equals_timms_for_the_same_architecture(registered, name):
    theirs = timm.models.get_pretrained_cfg(name).to_dict()
    ours = timm.models.get_pretrained_cfg("cvf_" + name).to_dict()
    data_keys = [k for k in TIMM_KEYS if k not in ("first_conv", "classifier")]
    assert {k: ours[k] for k in data_keys} == {k: theirs[k] for k in data_keys}
    assert resolve_data_config(pretrained_cfg=ours) == resolve_data_config(pretrained_cfg=theirs)
    # first_conv / classifier name modules: where our module names differ from timm's (LowFormer), they
    # must name the layers timm's names: the same tensors once the weights are in timm's layout
    model = convformer.create_model(name)
    in_timm_layout = model.layout_state_dict("timm") if hasattr(model, "layout_state_dict") else model.state_dict()
    for key in ("first_conv", "classifier"):
        assert torch.equal(model.state_dict()[ours[key] + ".weight"], in_timm_layout[theirs[key] + ".weight"])


def test_timm_create_model_builds_ours_with_timm_arguments(registered):
    model = timm.create_model("cvf_caformer_s18", pretrained=False, num_classes=10, drop_path_rate=0.1,
                              img_size=64)
    assert isinstance(model, MetaFormer) and model.model_card.name == "caformer_s18"
    assert model.num_classes == 10 and model.cfg.drop_path_rate == 0.1
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert resolve_data_config(model=model)["input_size"] == (3, 64, 64)
    default = timm.create_model("cvf_caformer_s18")
    assert resolve_data_config(model=default) == resolve_data_config(model=timm.create_model("caformer_s18"))
    feats = timm.create_model("cvf_convformer_s18", features_only=True, out_indices=(1, 3))
    assert feats.feature_info.channels() == [128, 512]
    assert [m.shape[1] for m in feats(torch.randn(1, 3, 64, 64))] == [128, 512]


def test_timm_optimizer_factory_uses_our_decay_and_layer_groups():
    model = convformer.create_model("convformer_nano")
    plain = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decays = {id(p): g["weight_decay"] for g in plain.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        assert decays[id(p)] == (0.0 if p.ndim <= 1 else 0.05), n
    layered = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in layered.param_groups for p in g["params"]}
    stem = scale[id(model.stem.conv.weight)]
    first_block = scale[id(model.stages[0].blocks[0].mlp.fc1.weight)]
    last_block = scale[id(model.stages[3].blocks[-1].mlp.fc1.weight)]
    head = scale[id(model.head.fc.fc2.weight)]
    assert stem < first_block < last_block < head == 1.0


def test_bad_prefix_is_refused():
    with pytest.raises(convformer.ConvformerError, match="prefix"):
        convformer.register_with_timm(prefix="")
