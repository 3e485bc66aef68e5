"""Parameter and FLOP counts (FLOPs counted by torch.utils.flop_counter, never typed in)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_flops(model: nn.Module, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of one inference forward pass on a ``batch`` x3x``height``x``width`` input.

    Counted by ``FlopCounterMode`` (a multiply-add counts as 2 FLOPs; convolutions and
    matmuls only, element-wise ops are not counted). Runs on the model's device; build the
    model under ``torch.device("meta")`` to count without computing anything.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    x = torch.zeros(batch, 3, height, width, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
