"""EGL as ``f * (w1 + w2 * W_r)`` against Eq. 1 written out, and the V map computed once per batch,
only by the variants that use it (issue 16, item 5)."""

from __future__ import annotations

import pytest
import torch

from egnet.core.config import ModelConfig
from egnet.models import EGNET_VARIANTS, build_model
from egnet.models.egl import ExposureGuidance, guide
from egnet.training.losses import SegExposureLoss

torch.set_num_threads(1)


def _eq1(f_s: torch.Tensor, f_e: torch.Tensor, conv: torch.nn.Conv2d, w1: float, w2: float) -> torch.Tensor:
    """Eq. 1 as the paper writes it, channel by channel: f_S <- w1 f_S + w2 f_S (x) W_r with
    W_r = sigmoid(W * f_E + b), W a 1x1 convolution to one channel."""
    w_r = torch.sigmoid(sum(conv.weight[0, c, 0, 0] * f_e[:, c] for c in range(f_e.shape[1])) + conv.bias[0])
    return torch.stack([w1 * f_s[:, c] + w2 * f_s[:, c] * w_r for c in range(f_s.shape[1])], dim=1)


@pytest.mark.parametrize("w1,w2", [(1.0, 0.3), (0.7, -1.5), (0.0, 2.0)])
def test_egl_values_and_gradients_are_equation_1(w1, w2):
    g = torch.Generator().manual_seed(1)
    egl = ExposureGuidance(channels=5, w1=w1, w2=w2).double()
    with torch.no_grad():
        egl.attention[0].weight.copy_(torch.randn(1, 5, 1, 1, generator=g, dtype=torch.float64))
        egl.attention[0].bias.copy_(torch.randn(1, generator=g, dtype=torch.float64))
    f_s = torch.randn(3, 5, 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    f_e = torch.randn(3, 5, 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    got = egl(f_s, f_e)
    want = _eq1(f_s, f_e, egl.attention[0], w1, w2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    up = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(got, [f_s, f_e, egl.attention[0].weight], up)
    want_grads = torch.autograd.grad(want, [f_s, f_e, egl.attention[0].weight], up)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _saved_for_backward(fn, *inputs: torch.Tensor) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return saved


def test_egl_keeps_no_full_size_tensor_of_its_own_for_backward():
    """The written-out form keeps w2 * f_S (full size, NxCxhxw) for backward; ours keeps only
    f_S itself, which exists anyway, and the Nx1xhxw gate."""
    f_s = torch.randn(2, 8, 6, 6, requires_grad=True)
    w_r = torch.rand(2, 1, 6, 6, requires_grad=True)

    def extra_full_size(saved: list[torch.Tensor]) -> int:
        return sum(t.numel() == f_s.numel() and t.data_ptr() != f_s.data_ptr() for t in saved)

    assert extra_full_size(_saved_for_backward(lambda a, b: 1.0 * a + 0.3 * a * b, f_s, w_r)) == 1
    saved = _saved_for_backward(lambda a, b: guide(a, b, 1.0, 0.3), f_s, w_r)
    assert extra_full_size(saved) == 0
    assert sum(t.numel() for t in saved) <= f_s.numel() + w_r.numel()


BASE = dict(backbone="resnet18", output_stride=32, backbone_weights="none", num_classes=4,
            egl_positions=(2, 3, 4), egl_w1=1.0, egl_w2=0.3)
#: who computes V (the input's max over RGB) for each variant: the forward pass, the loss, or nobody
USES_V = {"egnet": "loss", "no_egl": "loss", "concat": "loss", "sum": "loss",
          "extra_input": "forward", "attention_map": "forward", "no_exposure_stream": None,
          "fcn_resnet101": None}


@pytest.mark.parametrize("variant", [*EGNET_VARIANTS, "fcn_resnet101"])
def test_value_map_is_computed_once_per_batch_and_only_where_used(variant, monkeypatch):
    import egnet.models.egnet as egnet_mod
    import egnet.training.losses as losses_mod

    assert set(USES_V) == {*EGNET_VARIANTS, "fcn_resnet101"}
    calls: list[str] = []
    for where, mod in (("forward", egnet_mod), ("loss", losses_mod)):
        original = mod.value_map_torch
        monkeypatch.setattr(mod, "value_map_torch",
                            lambda x, _o=original, _w=where: calls.append(_w) or _o(x))
    over = {"backbone": "resnet101", "output_stride": 8} if variant == "fcn_resnet101" else {}
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**BASE, "variant": variant, **over})).train()
    x = torch.rand(2, 3, 32, 32)
    target = torch.randint(0, 4, (2, 32, 32))
    total, _ = SegExposureLoss(1.0, 0.01)(model(x), target, x)
    total.backward()
    assert calls == ([USES_V[variant]] if USES_V[variant] else [])
