"""SegExposureLoss against a hand computation."""

from __future__ import annotations

import math

import torch

from egnet.training.losses import SegExposureLoss

torch.set_num_threads(1)


def _case():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 2, 2, generator=g, requires_grad=True)
    target = torch.tensor([[[0, 2], [255, 1]], [[1, 1], [0, 255]]])
    images = torch.rand(2, 3, 2, 2, generator=g)
    exposure = torch.rand(2, 1, 2, 2, generator=g, requires_grad=True)
    return logits, target, images, exposure


def _hand_ce(logits, target) -> float:
    logits = logits.detach()
    terms = []
    for n in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                c = int(target[n, i, j])
                if c == 255:
                    continue
                z = [float(logits[n, k, i, j]) for k in range(logits.shape[1])]
                terms.append(-(z[c] - math.log(sum(math.exp(v) for v in z))))
    return sum(terms) / len(terms)


def _hand_l1(exposure, images) -> float:
    exposure = exposure.detach()
    diffs = [
        abs(float(exposure[n, 0, i, j]) - max(float(images[n, ch, i, j]) for ch in range(3)))
        for n in range(images.shape[0]) for i in range(images.shape[2]) for j in range(images.shape[3])
    ]
    return sum(diffs) / len(diffs)


def test_loss_equals_hand_computation():
    logits, target, images, exposure = _case()
    loss = SegExposureLoss(alpha=0.7, beta=0.25)
    total, parts = loss({"out": logits, "exposure": exposure}, target, images)
    ce, l1 = _hand_ce(logits, target), _hand_l1(exposure, images)
    assert math.isclose(float(parts["loss_ce"]), ce, rel_tol=1e-5)
    assert math.isclose(float(parts["loss_exposure"]), l1, rel_tol=1e-5)
    assert math.isclose(float(total.detach()), 0.7 * ce + 0.25 * l1, rel_tol=1e-5)
    assert float(parts["loss_total"]) == float(total.detach())
    assert set(parts) == {"loss_total", "loss_ce", "loss_exposure", "labelled"}
    assert parts["labelled"].dtype == torch.int64 and int(parts["labelled"]) == int((target != 255).sum())
    assert not any(p.requires_grad for p in parts.values())
    total.backward()
    assert logits.grad.abs().sum() > 0 and exposure.grad.abs().sum() > 0


def test_without_exposure_output_loss_is_ce_alone():
    logits, target, images, _ = _case()
    total, parts = SegExposureLoss(alpha=2.0, beta=5.0)({"out": logits}, target, images)
    assert float(parts["loss_exposure"]) == 0.0
    assert math.isclose(float(total.detach()), 2.0 * _hand_ce(logits, target), rel_tol=1e-5)


def test_all_ignored_crop_gives_zero_not_nan():
    logits, target, images, exposure = _case()
    total, parts = SegExposureLoss(1.0, 0.0)({"out": logits}, torch.full_like(target, 255), images)
    assert float(total.detach()) == 0.0 and int(parts["labelled"]) == 0
    total.backward()
    assert torch.isfinite(logits.grad).all()
