"""The training engine's foundations: data order, per-sample seeding, the checkpoint, presets and EMA."""
import json

import pytest
import torch

import convformer
from convformer.engine import build_config
from convformer.vision.config import TrainConfig
from convformer.engine.ema import ModelEma
from convformer.engine.sampler import SeededDataset, StepBatches
from convformer.engine.state import load_train_state, read_train_state, save_train_state
from convformer.engine.train import build_optimizer


def _steps(batches, epoch, start=0):
    mbs = list(batches.micro_batches(epoch, start))
    return [mbs[i:i + batches.accum] for i in range(0, len(mbs), batches.accum)]


def test_two_ranks_see_exactly_the_global_batches_of_one_process():
    single = _steps(StepBatches(103, 8, 1, 0, 1, seed=3), epoch=2)
    ranks = [_steps(StepBatches(103, 4, 1, r, 2, seed=3), epoch=2) for r in range(2)]
    assert len(single) == 103 // 8 == len(ranks[0])
    for s, (a, b) in enumerate(zip(*ranks)):
        assert [i for i, _ in a[0] + b[0]] == [i for i, _ in single[s][0]]
        assert a[0] + b[0] == single[s][0]  # and each sample carries the same augmentation seed


def test_accumulation_and_resume_positions_replay_the_same_samples():
    accum = _steps(StepBatches(100, 4, 2, 0, 1, seed=0), epoch=1)
    plain = _steps(StepBatches(100, 8, 1, 0, 1, seed=0), epoch=1)
    assert [a[0] + a[1] for a in accum] == [p[0] for p in plain]
    assert _steps(StepBatches(100, 8, 1, 0, 1, seed=0), epoch=1, start=5) == plain[5:]
    other = _steps(StepBatches(100, 8, 1, 0, 1, seed=0), epoch=2)
    assert [i for i, _ in other[0][0]] != [i for i, _ in plain[0][0]]  # each epoch is a new permutation


def test_seeded_dataset_gives_each_sample_its_own_reproducible_augmentation():
    from convformer.vision.data import DigitsDataset, load_digits_tensors
    x, y, _, _ = load_digits_tensors(32)
    ds = SeededDataset(DigitsDataset(x[:4], y[:4], train=True))
    a1, _ = ds[(0, 11)]
    torch.rand(100)  # global generator use in between must not matter
    a2, _ = ds[(0, 11)]
    b, _ = ds[(0, 12)]
    assert torch.equal(a1, a2) and not torch.equal(a1, b)


def _tiny():
    torch.manual_seed(0)
    return convformer.create_model("convformer_nano", num_classes=10, img_size=32)


def _step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), t).backward()
    opt.step()


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_checkpoint_round_trip_continues_bit_identically(tmp_path, optimizer):
    cfg = TrainConfig(optimizer=optimizer)
    model = _tiny()
    opt = build_optimizer(cfg, model, 1e-3)
    ema = ModelEma(model, 0.9)
    for s in range(3):
        _step(model, opt, s)
        ema.update(model)
    save_train_state(tmp_path / "checkpoint.safetensors", model, opt, ema, None,
                     {"epoch": 2, "step_in_epoch": 1, "global_step": 3, "best_top1": 1.0, "sums": [0, 0, 0],
                      "model": "convformer_nano"})
    _step(model, opt, 99)
    ema.update(model)

    model2 = convformer.create_model("convformer_nano", num_classes=10, img_size=32)
    opt2 = build_optimizer(cfg, model2, 1e-3)
    ema2 = ModelEma(model2, 0.9)
    info = load_train_state(*read_train_state(tmp_path), model2, opt2, ema2, None)
    assert info["global_step"] == 3 and info["epoch"] == 2
    _step(model2, opt2, 99)
    ema2.update(model2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(ema.module.state_dict().values(), ema2.module.state_dict().values()):
        assert torch.equal(a, b)


def test_weights_file_is_not_a_training_checkpoint(tmp_path):
    convformer.save_weights(_tiny(), tmp_path / "w.safetensors")
    with pytest.raises(convformer.ConvformerError, match="not a training checkpoint"):
        read_train_state(tmp_path / "w.safetensors")
    with pytest.raises(convformer.ConvformerError, match="no checkpoint.safetensors"):
        read_train_state(tmp_path)


def test_ema_follows_the_weights_at_its_decay():
    model = _tiny()
    ema = ModelEma(model, 0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, before[k] + 0.25, atol=1e-6), k


def test_metaformer_preset_is_the_papers_recipe_and_flags_override_it():
    cfg = build_config(TrainConfig, preset="metaformer-in1k", model="caformer_s18")
    assert (cfg.optimizer, cfg.lr, cfg.drop_path_rate, cfg.warmup_epochs, cfg.epochs) == ("lamb", 8e-3, 0.15, 20, 300)
    assert (cfg.mixup, cfg.cutmix, cfg.random_erasing, cfg.randaugment) == (0.8, 1.0, 0.25, "rand-m9-mstd0.5-inc1")
    assert cfg.lr_base_batch == 4096
    conv = build_config(TrainConfig, preset="metaformer-in1k", model="convformer_s18", lr=1e-3)
    assert conv.optimizer == "adamw" and conv.drop_path_rate == 0.2 and conv.lr == 1e-3
    with pytest.raises(convformer.ConvformerError, match="unknown preset"):
        build_config(TrainConfig, preset="imagenet-magic")
    with pytest.raises(convformer.ConvformerError, match="no recipe for"):
        build_config(TrainConfig, preset="metaformer-in1k", model="convformer_nano")
