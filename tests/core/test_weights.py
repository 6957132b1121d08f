"""Weight files: safetensors round trip, the official layouts, and clear failures."""
import re

import pytest
import timm
import torch
from safetensors.torch import load_file

import convformer
from convformer import ConvformerError
from convformer.weights import read_state_dict, save_state_dict, to_timm

from conftest import perturb


def timm_to_official(state: dict) -> dict:
    """The sail-sg/metaformer key layout, written independently of the library: official models use
    nn.Linear where timm has 1x1 convs, and name stem/downsampling/blocks/head differently."""
    rules = [(r"^stem\.conv\.", "downsample_layers.0.conv."), (r"^stem\.norm\.", "downsample_layers.0.post_norm."),
             (r"^stages\.(\d)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm."),
             (r"^stages\.(\d)\.downsample\.conv\.", r"downsample_layers.\1.conv."),
             (r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2."), (r"^head\.norm\.", "norm."), (r"^head\.fc\.", "head.")]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        if value.ndim == 4 and value.shape[-2:] == (1, 1):
            value = value.flatten(1)
        out[key] = value
    return out


@pytest.mark.parametrize("name", ["poolformerv2_s12", "convformer_s18", "caformer_s18"])
def test_official_layout_loads_like_timms_converter(name):
    """timm's own checkpoint_filter_fn is the reference for reading official checkpoints."""
    from timm.models.metaformer import checkpoint_filter_fn
    torch.manual_seed(0)
    source = perturb(timm.create_model(name))
    official = timm_to_official(source.state_dict())
    ref = timm.create_model(name).eval()
    ref.load_state_dict(checkpoint_filter_fn(official, ref))
    kwargs = {"head_norm_eps": 1e-6} if not name.startswith("pool") else {}
    ours = convformer.create_model(name, **kwargs).eval()
    assert convformer.load_weights(ours, official) == "official"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4


def test_official_randformer_matrix_loads(tmp_path):
    ours = convformer.create_model("randformer_s12")
    official = timm_to_official(ours.state_dict())
    official["stages.2.0.token_mixer.random_matrix"] = torch.softmax(torch.randn(196, 196), -1)
    torch.save(official, tmp_path / "randformer_s12.pth")
    fresh = convformer.create_model("randformer_s12")
    assert convformer.load_weights(fresh, tmp_path / "randformer_s12.pth") == "official"
    assert torch.equal(fresh.stages[2].blocks[0].token_mixer.random_matrix,
                       official["stages.2.0.token_mixer.random_matrix"])


def test_save_load_round_trip_and_metadata(tmp_path):
    model = perturb(convformer.create_model("convformer_nano", num_classes=10)).eval()
    path = convformer.save_weights(model, tmp_path / "w.safetensors")
    state, meta = read_state_dict(path)
    assert meta["architecture"] == "convformer_nano" and meta["num_classes"] == "10"
    other = convformer.create_model("convformer_nano", num_classes=10).eval()
    assert convformer.load_weights(other, path) == "convformer"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_timm_layout_file_loads_in_timm(tmp_path):
    model = perturb(convformer.create_model("caformer_s18", head_norm_eps=1e-6)).eval()
    convformer.save_weights(model, tmp_path / "timm.safetensors", layout="timm")
    ref = timm.create_model("caformer_s18").eval()
    ref.load_state_dict(load_file(tmp_path / "timm.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ref(x) - model(x)).abs().max() <= 1e-4


def test_pretrained_local_file_and_new_head(tmp_path):
    ref = perturb(timm.create_model("poolformerv2_s12"))
    torch.save(ref.state_dict(), tmp_path / "pf.pth")
    model = convformer.create_model("poolformerv2_s12", pretrained=str(tmp_path / "pf.pth")).eval()
    torch.testing.assert_close(model.stem.conv.weight, ref.stem.conv.weight)
    tuned = convformer.create_model("poolformerv2_s12", pretrained=str(tmp_path / "pf.pth"), num_classes=5)
    torch.testing.assert_close(tuned.head.norm.weight, ref.head.norm.weight)
    assert tuned.head.fc.weight.shape == (5, 512)


def test_pretrained_offline_says_how_to_pass_a_file():
    with pytest.raises(ConvformerError, match=r"pretrained='path/to/file'"):
        convformer.create_model("convformer_s18", pretrained=True)


def test_truncated_safetensors_is_reported(tmp_path):
    path = convformer.save_weights(convformer.create_model("convformer_nano"), tmp_path / "w.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvformerError, match="not a valid safetensors file"):
        convformer.load_weights(convformer.create_model("convformer_nano"), path)


def test_checkpoint_of_another_architecture(tmp_path):
    path = convformer.save_weights(convformer.create_model("caformer_s18"), tmp_path / "ca.safetensors")
    with pytest.raises(ConvformerError, match=r"does not fit convformer_s18.*caformer_s18.*missing: .*qkv|unexpected: .*qkv"):
        convformer.load_weights(convformer.create_model("convformer_s18"), path)
    same_keys = convformer.save_weights(convformer.create_model("identityformer_s12"), tmp_path / "id.safetensors")
    with pytest.raises(ConvformerError, match="holds weights for identityformer_s12, not poolformerv2_s12"):
        convformer.load_weights(convformer.create_model("poolformerv2_s12"), same_keys)


class Evil:
    """Any non-tensor object in a pickle must be refused."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ConvformerError, match="pickled Python objects") as info:
        read_state_dict(tmp_path / "evil.pth")
    message = str(info.value)
    assert "safetensors" in message and "\n" not in message
    assert "False" not in message, "the unsafe unrestricted load must never be suggested"


class RunsACommand:
    """The classic payload: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_an_os_system_payload_is_refused_as_pickled_objects_in_any_protocol(tmp_path, protocol, capsys):
    """Protocols 4 and 5 used to be reported as "truncated", after torch's raw UserWarning; nothing runs,
    the message names the object and what to do, and no warning reaches the user."""
    import pickle
    import warnings
    from convformer.cli import main
    marker = tmp_path / "ran"
    with open(tmp_path / "payload.pth", "wb") as fh:
        pickle.dump({"weight": RunsACommand(marker)}, fh, protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any stray warning fails the test
        with pytest.raises(ConvformerError, match=r"refusing .*pickled Python objects \(posix\.system\)") as info:
            read_state_dict(tmp_path / "payload.pth")
    assert "truncated" not in str(info.value) and "safetensors" in str(info.value)
    assert main(["eval", str(tmp_path / "payload.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: refusing") and "Warning" not in err
    assert not marker.exists()


def test_corrupt_pth_is_reported_without_the_unsafe_advice(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(ConvformerError, match="truncated, not a weight file") as info:
        read_state_dict(tmp_path / "bad.pth")
    assert "False" not in str(info.value)


def test_failed_write_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "keep.safetensors"
    save_state_dict({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    import convformer.weights.io as io

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(io, "save_file", broken)
    with pytest.raises(ConvformerError, match="No space left on device"):
        save_state_dict({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


@pytest.mark.parametrize("name", ["poolformerv2_s12", "randformer_s12", "convformer_s18", "caformer_s18"])
def test_official_layout_is_written_as_the_authors_name_it(name, tmp_path):
    torch.manual_seed(0)
    ours = perturb(convformer.create_model(name)).eval()
    expected = timm_to_official(to_timm(ours))  # the test's own, independent naming
    path = convformer.save_weights(ours, tmp_path / f"{name}.pth", layout="official")
    written = torch.load(path, weights_only=True)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    fresh = convformer.create_model(name).eval()
    assert convformer.load_weights(fresh, path) == "official"
    x = torch.randn(1, 3, 224, 224) if name.startswith("rand") else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), ours(x))
    convformer.save_weights(ours, tmp_path / "official.safetensors", layout="official")
    assert load_file(tmp_path / "official.safetensors").keys() == expected.keys()


def test_original_poolformer_written_in_its_layout_loads_through_timms_converter(tmp_path):
    from timm.models.metaformer import checkpoint_filter_fn
    torch.manual_seed(0)
    ours = perturb(convformer.create_model("poolformer_s12")).eval()
    path = convformer.save_weights(ours, tmp_path / "poolformer_s12.pth", layout="official")
    written = torch.load(path, weights_only=True)
    assert "network.0.0.layer_scale_1" in written and written["network.0.0.mlp.fc1.weight"].ndim == 4
    assert "network.1.proj.weight" in written and "patch_embed.proj.weight" in written
    ref = timm.create_model("poolformer_s12").eval()
    ref.load_state_dict(checkpoint_filter_fn(written, ref))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ref(x) - ours(x)).abs().max().item() <= 1e-4


def test_official_layout_is_refused_for_models_without_one(tmp_path):
    with pytest.raises(ConvformerError, match="MetaFormer and LowFormer models only"):
        convformer.save_weights(convformer.create_model("cfsr_x2"), tmp_path / "x.pth", layout="official")
    assert not list(tmp_path.iterdir())


def test_pretrained_weights_fit_another_number_of_input_channels(tmp_path):
    """timm's test_model_load_pretrained builds with in_chans=1, num_classes=5 from RGB weights."""
    torch.manual_seed(0)
    rgb = convformer.create_model("convformer_s18", num_classes=1000).eval()
    path = convformer.save_weights(rgb, tmp_path / "rgb.safetensors")
    grey = convformer.create_model("convformer_s18", pretrained=str(path), in_chans=1, num_classes=5).eval()
    rgb.reset_classifier(0)
    grey.reset_classifier(0)
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(image), rgb(image.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)
    four = convformer.create_model("convformer_s18", pretrained=str(path), in_chans=4, num_classes=5)
    assert four.stem.conv.weight.shape[1] == 4
    assert torch.allclose(four.stem.conv.weight[:, 3], rgb.stem.conv.weight[:, 0] * 0.75)


def test_pickled_globals_names_what_a_protocol_4_pickle_refers_to_through_its_memo(tmp_path):
    """Protocol 4+ names a global once and fetches the strings from the memo afterwards; the scan follows it
    (the refusal names the real classes, not fragments of other strings)."""
    import collections
    import pickle
    from convformer.weights.io import pickled_globals
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps({"a": collections.Counter("ab"), "b": collections.OrderedDict(x=1),
                                       "c": RunsACommand(tmp_path / "x")}, protocol=protocol))
        assert set(pickled_globals(path)) == {"collections.Counter", "collections.OrderedDict", "posix.system"}


def test_a_clean_state_dict_in_a_newer_pickle_protocol_is_not_called_foreign(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "p4.pth", pickle_protocol=4)
    try:
        state, _ = read_state_dict(tmp_path / "p4.pth")  # a torch that reads it: fine
        assert torch.equal(state["w"], torch.zeros(2))
    except ConvformerError as err:
        assert "refusing" not in str(err) and "safe loader" in str(err)
