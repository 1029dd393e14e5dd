"""The training step's fast paths: mixed precision, channels-last memory, torch.compile.

Autocast covers the network's forward and its cross-entropies; G, the sparsity term and the
projection stay in fp32 (G is an fp32 parameter and the sparsity term is computed outside
autocast). fp16 adds a GradScaler: a step whose gradients overflow is skipped whole, G's
update included, and G then stays bit for bit what it was, because the projection of an
already projected G is the identity (each column's max is 1, so dividing by it and clipping
to [0, 1] changes nothing). bf16 needs no scaler.
"""
from __future__ import annotations

import contextlib
import shutil

import torch

AMP_CHOICES = ("bf16", "fp16", "off")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str | None, device: torch.device) -> str:
    """`--amp` as given, or by default bf16 on a GPU that supports it, off elsewhere."""
    if amp is not None:
        return amp
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"


def compile_unavailable(device_type: str) -> str | None:
    """Why torch.compile cannot build a model here, or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device_type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile needs a C++ compiler (g++) on the CPU; none is on PATH"
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile needs Triton on the GPU; it is not installed"
    return None


class Precision:
    """How a step runs its math: autocast dtype, loss scaling and memory format."""

    def __init__(self, amp: str = "off", device_type: str = "cpu", channels_last: bool = False):
        if amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)} (got {amp!r})")
        self.amp = amp
        self.device_type = device_type
        self.channels_last = channels_last
        self.scaler = torch.amp.GradScaler(device_type) if amp == "fp16" else None

    def autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.amp])

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step, skipped by the scaler when a gradient overflowed in fp16. The
        scaler decides on the host: fp16 costs one more device read per step than bf16."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
