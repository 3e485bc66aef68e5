"""The training loss of the paper (Sec. 4.1): L = alpha * CE + beta * L1(exposure, V)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from egnet.data.exposure import value_map_torch
from egnet.data.labels import IGNORE_INDEX


class SegExposureLoss(nn.Module):
    """``alpha * CE(out, target) + beta * mean|exposure - V(images)|``.

    CE averages over labelled pixels (``ignore_index`` dropped; a batch with none gives
    0, not NaN). V is the HSV value map of the un-normalised, augmented input images,
    the one exposure definition (``egnet.data.exposure``). Outputs without
    ``"exposure"`` (variants without an exposure stream) give CE alone and
    ``loss_exposure`` = 0. Both terms are computed in float32 (safe under autocast).
    """

    def __init__(self, alpha: float, beta: float, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.alpha, self.beta, self.ignore_index = float(alpha), float(beta), int(ignore_index)

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor, images: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``outputs`` from the model, ``target`` NxHxW int64 trainIds, ``images`` Nx3xHxW in [0, 1].

        Returns (total loss with grad, {"loss_total", "loss_ce", "loss_exposure"} detached scalars
        and ``"labelled"``, the int64 count of labelled pixels), all on the device: what the log
        window needs, with no host sync. V is computed here, once per batch, and only for models
        with an exposure output (the only ones whose loss uses it).
        """
        logits = outputs["out"].float()
        if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
        # sum / count rather than mean: an all-ignore crop gives 0 instead of NaN, with no host sync
        labelled = (target != self.ignore_index).sum()
        ce_sum = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        ce = ce_sum / labelled.clamp(min=1)
        if "exposure" in outputs:
            exposure = outputs["exposure"].float()
            v = value_map_torch(images.float())
            if exposure.shape != v.shape:
                raise ValueError(f"exposure {tuple(exposure.shape)} and V map {tuple(v.shape)} do not match")
            l1 = F.l1_loss(exposure, v)
        else:
            l1 = logits.new_zeros(())
        total = self.alpha * ce + self.beta * l1
        parts = {"loss_total": total.detach(), "loss_ce": ce.detach(), "loss_exposure": l1.detach(),
                 "labelled": labelled}
        return total, parts
