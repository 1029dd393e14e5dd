"""Two gloo ranks, no Ray: G must be bit-identical on every rank before and after every step."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from csg.config import TrainConfig
from csg.distributed.ray_train import DistributedSync
from csg.method import engine
from csg.method.gate import ClassSpecificGate
from csg.method.models import build_model


def _rank_main(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=3, period=2, csg_epochs=1, lambda2=0.5, lr=0.05)
    model = build_model("resnet20", 3, in_channels=1, mean=(0.5,), std=(0.3,))
    gate = ClassSpecificGate(3, 64)
    optimizers = engine.build_optimizers(model, gate, cfg)
    wrapped = DistributedDataParallel(model, find_unused_parameters=False)
    data = TensorDataset(torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(48) % 3)
    sampler = DistributedSampler(data, 2, rank, seed=0)
    loader = DataLoader(data, batch_size=8, sampler=sampler)

    class CheckedSync(DistributedSync):
        """Before each gate update, compare G across ranks, bit for bit."""

        steps_checked = 0

        def average_grad(self, param):
            everyone = [torch.empty_like(param.data) for _ in range(2)]
            dist.all_gather(everyone, param.data)
            assert torch.equal(everyone[0], everyone[1]), "G differs across ranks"
            self.steps_checked += 1
            super().average_grad(param)

    sync = CheckedSync(torch.device("cpu"))

    for epoch, path in enumerate(["std", "csg", "std", "csg"]):
        sampler.set_epoch(epoch)
        role = "std" if path == "std" else "csg"
        engine.train_one_epoch(wrapped, gate, loader, path, optimizers[role], engine.CSGLoss.of(cfg, 64.0),
                               torch.device("cpu"), epoch=epoch, sync=sync)
    everyone = [torch.empty_like(gate.weight.data) for _ in range(2)]
    dist.all_gather(everyone, gate.weight.data)
    results[rank] = (sync.steps_checked, torch.equal(everyone[0], everyone[1]), float(gate.weight.sum()))
    dist.destroy_process_group()


def test_gate_identical_on_both_ranks_every_step_and_std_epochs_need_no_unused_detection():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A spawned (not forked) manager: forking this process would copy the live gRPC channels
    # of the session's Ray driver, which then stopped answering here.
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_rank_main, args=(port, results), nprocs=2, join=True)
    (steps0, same0, sum0), (steps1, same1, sum1) = results[0], results[1]
    assert steps0 == steps1 == 6  # 2 CSG epochs x 3 batches per rank
    assert same0 and same1 and sum0 == sum1
    assert sum0 < 3 * 64  # the gate did move: the check compared something that changed
