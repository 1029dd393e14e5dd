import json
import threading

import pytest
import torch

from csg.config import TrainConfig
from csg.method import engine
from csg.method.gate import ClassSpecificGate
from csg.method.models import build_model
from csg.store import checkpoint


def _state(num_classes=3, model="resnet20", seed=0):
    torch.manual_seed(seed)
    cfg = TrainConfig(model=model, epochs=4)
    net = build_model(model, num_classes, in_channels=1, mean=(0.5,), std=(0.3,))
    gate = ClassSpecificGate(num_classes, net.num_filters)
    optimizers = engine.build_optimizers(net, gate, cfg)
    return cfg, net, gate, optimizers, engine.build_schedulers(optimizers, cfg)


def test_round_trip_restores_everything(tmp_path):
    cfg, net, gate, opts, scheds = _state()
    with torch.no_grad():
        gate.weight.mul_(0.5)
    opts["csg"].step()
    engine.step_schedulers(scheds)
    checkpoint.save(tmp_path, net, gate, opts, scheds, cfg, epoch=2, history=[{"epoch": 0, "test_acc": 0.5}])
    expected_rng = torch.rand(3)
    _, net2, gate2, opts2, scheds2 = _state(seed=1)
    state = checkpoint.load(tmp_path, net2, gate2, opts2, scheds2, cfg)
    assert state["epoch"] == 2 and state["history"][0]["test_acc"] == 0.5
    assert torch.equal(gate2.weight, gate.weight)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert scheds2["std"].last_epoch == 1 and opts2["csg"].param_groups[0]["lr"] == opts["csg"].param_groups[0]["lr"]
    assert torch.equal(torch.rand(3), expected_rng)


def test_checkpoint_of_another_class_count_or_model_is_refused(tmp_path):
    cfg, net, gate, opts, scheds = _state(num_classes=3)
    checkpoint.save(tmp_path, net, gate, opts, scheds, cfg, 0, [])
    _, net5, gate5, opts5, scheds5 = _state(num_classes=5)
    with pytest.raises(ValueError, match="3 classes, this run has 5"):
        checkpoint.load(tmp_path, net5, gate5, opts5, scheds5, cfg)
    other = TrainConfig(model="resnet32")
    _, net32, gate32, opts32, scheds32 = _state(model="resnet32")
    with pytest.raises(ValueError, match="model='resnet20'"):
        checkpoint.load(tmp_path, net32, gate32, opts32, scheds32, other)


def test_the_latest_registered_checkpoint_survives_ray_rewriting_its_snapshot(tmp_path):
    """Ray Train rewrites its snapshot in place: a reader that finds it empty reads again; one
    that never becomes JSON (a kill mid-write) means no checkpoint, not a crash."""
    snapshot = tmp_path / "run" / checkpoint.SNAPSHOT_FILE
    snapshot.parent.mkdir()
    assert checkpoint.latest_registered(str(tmp_path), "run") is None  # no snapshot yet
    snapshot.write_text("")
    assert checkpoint.latest_registered(str(tmp_path), "run", attempts=3) is None
    content = json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_2", "metrics": {"epoch": 2}}})
    writer = threading.Timer(0.15, snapshot.write_text, [content])  # the write lands while the reader waits
    writer.start()
    try:
        assert checkpoint.latest_registered(str(tmp_path), "run") == (f"{tmp_path}/run/checkpoint_2", 2)
    finally:
        writer.join()
