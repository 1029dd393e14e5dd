import math
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from csg.config import TrainConfig
from csg.method import engine
from csg.method.features import gap_features
from csg.method.models import build_model
from tests.helpers import engine_setup, toy_loader

CPU = torch.device("cpu")


def loss_of(cfg):
    return engine.CSGLoss.of(cfg, 64.0)  # g = 64: one class's share of 64 filters at density 1


def paths(**overrides):
    cfg = TrainConfig(**overrides)
    return "".join("S" if p == "std" else p[0].upper() for p in (engine.epoch_path(e, cfg) for e in range(cfg.epochs)))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(warmup=0, period=3, csg_epochs=1, epochs=9), "SSCSSCSSC"),
        (dict(warmup=2, period=3, csg_epochs=2, epochs=8), "SSCSCCSC"),
        (dict(warmup=1, period=1, csg_epochs=1, epochs=4), "SCCC"),
        (dict(warmup=0, period=4, csg_epochs=4, epochs=4), "CCCC"),
        (dict(warmup=3, period=2, csg_epochs=1, epochs=7), "SSSCSCS"),
        (dict(warmup=10, period=3, csg_epochs=2, epochs=14), "SSSSSSSSSSCCSC"),
        (dict(method="std", period=3, csg_epochs=1, epochs=4), "SSSS"),
        (dict(scheme="joint", warmup=1, epochs=3), "SJJ"),
    ],
)
def test_path_schedule(overrides, expected):
    assert paths(**overrides) == expected


@pytest.mark.parametrize(
    "schedule, expected",
    [("multistep", [1, 1, 0.1, 0.01, 0.001]), ("constant", [1] * 5), ("cosine", [1, 0.9045, 0.6545, 0.3455, 0.0955])],
)
def test_learning_rate_schedules(schedule, expected):
    cfg, model, gate, opts = engine_setup(lr_schedule=schedule)
    cfg.epochs = 5
    schedulers = engine.build_schedulers(opts, cfg)
    seen = []
    for _ in range(5):
        seen.append(opts["csg"].param_groups[0]["lr"] / cfg.lr)
        engine.step_schedulers(schedulers)
    assert seen == pytest.approx(expected, abs=1e-4)


def test_csg_epoch_updates_gate_and_keeps_it_projected():
    cfg, model, gate, opts = engine_setup(lambda2=0.5)
    before = gate.weight.detach().clone()
    stats = engine.train_one_epoch(model, gate, toy_loader(), "csg", opts["csg"], loss_of(cfg), CPU)
    after = gate.weight.detach()
    assert not torch.equal(before, after)
    assert torch.equal(after.amax(0), torch.ones(64)) and after.min() >= 0
    assert after.sum() < before.sum()  # the sparsity term pushed ||G||_1 toward g
    assert math.isnan(stats.loss_ce_std) and stats.loss_sparsity > 0


def test_std_epoch_leaves_gate_alone():
    cfg, model, gate, opts = engine_setup()
    before = gate.weight.detach().clone()
    stats = engine.train_one_epoch(model, gate, toy_loader(), "std", opts["std"], loss_of(cfg), CPU)
    assert torch.equal(before, gate.weight.detach()) and gate.weight.grad is None
    assert math.isnan(stats.loss_ce_csg) and stats.loss_ce_std > 0


def test_joint_scheme_trains_both_paths_every_batch():
    cfg, model, gate, opts = engine_setup(scheme="joint")
    stats = engine.train_one_epoch(model, gate, toy_loader(), "joint", opts["joint"], loss_of(cfg), CPU)
    assert stats.loss_ce_std > 0 and stats.loss_ce_csg > 0
    assert stats.loss_total == pytest.approx(
        stats.loss_ce_std + cfg.lambda1 * stats.loss_ce_csg + cfg.lambda2 * stats.loss_sparsity, rel=1e-5
    )


def test_fixed_gate_stays_constant():
    cfg, model, gate, opts = engine_setup(gate_kind="fixed")
    before = gate.matrix.clone()
    engine.train_one_epoch(model, gate, toy_loader(), "csg", opts["csg"], loss_of(cfg), CPU)
    assert torch.equal(before, gate.matrix)


def test_per_path_frozen_stages_and_learning_rates():
    cfg, model, gate, opts = engine_setup(std_frozen="stem", csg_frozen="layer2", csg_lr=0.5)
    assert opts["csg"].param_groups[0]["lr"] == 0.5 and opts["std"].param_groups[0]["lr"] == 0.05
    stem = model.net.stages["stem"][0].weight.detach().clone()
    layer1 = model.net.stages["layer1"][0].conv1.weight.detach().clone()
    engine.train_one_epoch(model, gate, toy_loader(), "csg", opts["csg"], loss_of(cfg), CPU)
    assert torch.equal(stem, model.net.stages["stem"][0].weight) and torch.equal(layer1, model.net.stages["layer1"][0].conv1.weight)
    engine.train_one_epoch(model, gate, toy_loader(), "std", opts["std"], loss_of(cfg), CPU)
    assert torch.equal(stem, model.net.stages["stem"][0].weight)
    assert not torch.equal(layer1, model.net.stages["layer1"][0].conv1.weight)


def test_nan_loss_names_epoch_and_step():
    cfg, model, gate, opts = engine_setup()
    x = torch.rand(16, 1, 8, 8)
    x[9] = float("nan")
    loader = DataLoader(TensorDataset(x, torch.arange(16) % 3), batch_size=8)
    with pytest.raises(engine.DivergedError, match="not finite at epoch 4, step 1"):
        engine.train_one_epoch(model, gate, loader, "std", opts["std"], loss_of(cfg), CPU, epoch=4)


def test_evaluate_and_features_use_the_std_path():
    cfg, model, gate, _ = engine_setup()
    loader = toy_loader()
    correct, total = engine.evaluate(model, loader, torch.device("cpu"))
    out = gap_features(model, loader, torch.device("cpu"))
    assert total == 32 and out["features"].shape == (32, 64)
    assert correct == int((out["predictions"] == out["labels"]).sum())


@pytest.mark.parametrize("path", ["std", "csg", "joint"])
def test_a_step_reads_the_device_once_and_the_epoch_once_more(path):
    from csg.testing.host_syncs import HostSyncCounter

    cfg, model, gate, opts = engine_setup(scheme="joint" if path == "joint" else "alternate")
    loader = toy_loader()
    with HostSyncCounter() as syncs:
        stats = engine.train_one_epoch(model, gate, loader, path, opts[path], loss_of(cfg), CPU)
    assert syncs.total == len(loader) + 1, syncs.sites  # the divergence check per step, the sums per epoch
    assert len(syncs.sites) == 2 and 0 < stats.train_acc <= 1


def test_a_non_finite_loss_never_reaches_the_weights():
    cfg, model, gate, opts = engine_setup()
    x = torch.rand(16, 1, 8, 8)
    x[9] = float("nan")
    reference = build_model("resnet20", 3, in_channels=1, mean=(0.5,), std=(0.3,))
    reference.load_state_dict(model.state_dict())
    ref_opts = engine.build_optimizers(reference, None, cfg)
    engine.train_one_epoch(reference, None, DataLoader(TensorDataset(x[:8], torch.arange(8) % 3), batch_size=8), "std",
                           ref_opts["std"], loss_of(cfg), CPU)
    with pytest.raises(engine.DivergedError):
        engine.train_one_epoch(model, gate, DataLoader(TensorDataset(x, torch.arange(16) % 3), batch_size=8), "std",
                               opts["std"], loss_of(cfg), CPU)
    for (name, mine), theirs in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(mine, theirs), name  # step 0 applied, the NaN step 1 not


class _Delayed:
    """A loader whose every batch arrives `delay` seconds late."""

    def __init__(self, loader, delay: float):
        self.loader, self.delay = loader, delay

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def test_the_wait_for_data_is_timed_on_the_host_within_the_epoch():
    cfg, model, gate, opts = engine_setup()
    prompt = engine.train_one_epoch(model, gate, toy_loader(), "std", opts["std"], loss_of(cfg), CPU)
    late = engine.train_one_epoch(model, gate, _Delayed(toy_loader(), 0.05), "std", opts["std"], loss_of(cfg), CPU)
    assert 4 * 0.05 <= late.data_wait_s <= late.seconds  # 4 batches, each 50 ms late
    assert late.data_wait_s / late.seconds > 0.5 > prompt.data_wait_s / prompt.seconds
