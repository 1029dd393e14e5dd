"""The step's fast paths on the CPU: bf16 autocast, fp16 loss scaling, channels-last, compile."""
import copy

import pytest
import torch
from torch import nn

from csg.config import TrainConfig
from csg.method import engine
from csg.method.gate import ClassSpecificGate
from csg.method.attach import attach
from csg.method.precision import Precision, compile_unavailable, resolve_amp
from tests.helpers import engine_setup, job_main, toy_loader

CPU = torch.device("cpu")


def _epoch(model, gate, opts, cfg, precision, path="csg", loader=None):
    return engine.train_one_epoch(model, gate, loader or toy_loader(), path, opts[path], engine.CSGLoss.of(cfg, 64.0),
                                  CPU, precision=precision)


def test_default_precision_is_off_on_the_cpu():
    assert resolve_amp(None, CPU) == "off" and resolve_amp("fp16", CPU) == "fp16"
    with pytest.raises(ValueError, match="amp must be one of"):
        Precision("fp8")


def test_bf16_runs_the_network_in_bf16_and_keeps_g_and_its_gradient_in_fp32():
    cfg, model, gate, opts = engine_setup()
    seen = []
    model.net.fc.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    gate.weight.register_hook(lambda grad: seen.append(("grad", grad.dtype)))
    stats = _epoch(model, gate, opts, cfg, Precision("bf16"))
    assert torch.bfloat16 in seen and ("grad", torch.float32) in seen
    assert gate.weight.dtype == torch.float32 and gate.weight.max() <= 1 and (gate.weight < 1).any()
    assert 0 < stats.loss_total < 10 and stats.loss_sparsity >= 0


def test_a_step_the_fp16_scaler_skips_leaves_g_the_parameters_and_momentum_untouched():
    cfg, model, gate, opts = engine_setup()
    _epoch(model, gate, opts, cfg, Precision("off"), loader=[next(iter(toy_loader()))])  # momentum exists
    before = copy.deepcopy((dict(model.named_parameters()), gate.state_dict(), opts["csg"].state_dict()))
    precision = Precision("fp16")
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # every gradient overflows
    _epoch(model, gate, opts, cfg, precision, loader=[next(iter(toy_loader()))])
    assert precision.scaler.get_scale() < 2.0**120  # the scaler saw the overflow and backed off
    assert torch.equal(gate.weight, before[1]["weight"])
    assert all(torch.equal(value, before[0][name]) for name, value in model.named_parameters())
    momentum = opts["csg"].state_dict()["state"]
    assert all(torch.equal(momentum[i]["momentum_buffer"], before[2]["state"][i]["momentum_buffer"]) for i in momentum)


def test_an_fp16_step_without_overflow_trains_g_and_its_loss_scale_survives_a_checkpoint(tmp_path):
    from csg.store import checkpoint as ckpt_lib

    cfg, model, gate, opts = engine_setup()
    precision = Precision("fp16")
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    _epoch(model, gate, opts, cfg, precision)
    assert (gate.weight < 1).any() and gate.weight.amax(0).eq(1).all()
    assert precision.scaler.get_scale() == 1024.0 * 2 ** len(toy_loader())  # grew after every good step
    ckpt_lib.save(tmp_path, model, gate, opts, engine.build_schedulers(opts, cfg), cfg, 0, [], precision.state_dict())
    resumed = Precision("fp16")
    resumed.load_state_dict(ckpt_lib.read(tmp_path)["scaler"])
    assert resumed.scaler.get_scale() == precision.scaler.get_scale()


def test_channels_last_matches_the_default_layout():
    results = []
    for channels_last in (False, True):
        cfg, model, gate, opts = engine_setup()
        precision = Precision("off", channels_last=channels_last)
        precision.model(model)
        stats = _epoch(model, gate, opts, cfg, precision, loader=[next(iter(toy_loader()))])
        results.append((stats.loss_total, gate.weight.detach().clone(), model.net.fc.weight.detach().clone()))
    (loss_a, gate_a, fc_a), (loss_b, gate_b, fc_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert torch.allclose(gate_a, gate_b, atol=1e-6) and torch.allclose(fc_a, fc_b, atol=1e-6)
    assert not torch.equal(gate_a, torch.ones_like(gate_a))  # the step moved G


def _tiny_net():
    """One conv layer: the smallest network the engine trains, so compiling it takes seconds."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return attach(net, 3, mean=(0.5,), std=(0.3,), quiet=True)


def test_a_compiled_model_trains_like_the_eager_one():
    reason = compile_unavailable("cpu")
    if reason:
        pytest.skip(reason)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = _tiny_net()
        gate = ClassSpecificGate(3, 8)
        cfg = TrainConfig(lr=0.05, epochs=2)
        opts = engine.build_optimizers(model, gate, cfg)
        runner = torch.compile(model) if compiled else model
        stats = _epoch(runner, gate, opts, cfg, Precision(), loader=[next(iter(toy_loader()))] * 2)
        results.append((stats.loss_total, gate.weight.detach().clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-4)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_compile_where_it_cannot_run_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler to be found
    assert "C++ compiler" in compile_unavailable("cpu")
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--preset", "digits-resnet20", "--compile", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "--compile" in err
    assert not (tmp_path / "r").exists()
