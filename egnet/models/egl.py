"""Exposure guidance (paper Sec. 4.2, Eq. 1) and the fusions the ablations put in its place.

Every fusion module has the same call: ``fusion(f_s, guide) -> new f_s``, where ``f_s``
is the segmentation stream's NxCxhxw feature after a stage and ``guide`` is either the
exposure stream's feature at the same depth (NxCxhxw) or, for ``attention_map``, the
input's Nx1xHxW V map. The attention map W_r is produced by a child module named
``attention`` so that a forward hook on it shows W_r (paper Fig. 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def guide(f_s: torch.Tensor, w_r: torch.Tensor, w1: float, w2: float) -> torch.Tensor:
    """Eq. 1, ``w1 * f_s + w2 * f_s * W_r`` (W_r Nx1xhxw broadcasts over channels), computed as
    ``f_s * (w1 + w2 * W_r)``: the same values up to float rounding, but one full-size product
    instead of three full-size temporaries and a sum; backward keeps only f_s and the Nx1xhxw gate."""
    return f_s * (w_r * w2 + w1)


class ExposureGuidance(nn.Module):
    """EGL: W_r = sigmoid(W * f_E + b) with a 1x1 conv C -> 1, then Eq. 1 on f_S.

    w1, w2 are fixed hyperparameters (the paper sets them to 1 and 0.3), not learned.
    Gradients of the segmentation loss reach the exposure stream through W_r.
    """

    def __init__(self, channels: int, w1: float, w2: float) -> None:
        super().__init__()
        self.w1, self.w2 = float(w1), float(w2)
        self.attention = nn.Sequential(nn.Conv2d(channels, 1, kernel_size=1, bias=True), nn.Sigmoid())

    def forward(self, f_s: torch.Tensor, f_e: torch.Tensor) -> torch.Tensor:
        return guide(f_s, self.attention(f_e), self.w1, self.w2)

    def extra_repr(self) -> str:
        return f"w1={self.w1}, w2={self.w2}"


class ResizedValueMap(nn.Module):
    """Nx1xHxW V map -> Nx1xhxw at the feature's size by area averaging (no parameters).

    Area (adaptive average) pooling: each feature cell gets the mean exposure of the
    input pixels it covers, without the aliasing of bilinear sampling at stride 8-32.
    """

    def forward(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(v, like.shape[-2:])


class ValueMapGuidance(nn.Module):
    """``attention_map`` ablation (Table 5): Eq. 1 with W_r = the input's V map resized to f_S."""

    def __init__(self, w1: float, w2: float) -> None:
        super().__init__()
        self.w1, self.w2 = float(w1), float(w2)
        self.attention = ResizedValueMap()

    def forward(self, f_s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return guide(f_s, self.attention(v, f_s), self.w1, self.w2)

    def extra_repr(self) -> str:
        return f"w1={self.w1}, w2={self.w2}"


class ConcatFusion(nn.Module):
    """``concat`` ablation (Table 4): ``conv1x1(cat(f_S, f_E))`` back to C channels.

    Initialised as the identity on f_S and zero on f_E, so at step 0 the stream
    passes its (pretrained) features on unchanged and learns how much of f_E to mix in
    (a random 2C -> C projection would scramble the pretrained features of later stages).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False)
        with torch.no_grad():
            self.project.weight.zero_()
            self.project.weight[:, :channels, 0, 0].copy_(torch.eye(channels))

    def forward(self, f_s: torch.Tensor, f_e: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat((f_s, f_e), dim=1))


class SumFusion(nn.Module):
    """``sum`` ablation (Table 4): ``f_S + f_E`` (no parameters)."""

    def forward(self, f_s: torch.Tensor, f_e: torch.Tensor) -> torch.Tensor:
        return f_s + f_e
