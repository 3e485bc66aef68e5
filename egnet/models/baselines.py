"""torchvision FCN-ResNet101 and DeepLabV3-ResNet101 behind the EGNet interface.

Both are ResNet-101 at output stride 8 by definition (torchvision's builders fix it),
so ``model.backbone`` and ``model.output_stride`` do not apply to them; ``aux_loss``
is off. ``model.backbone_weights`` (none | imagenet | path) sets the backbone's
weights, the role of torchvision's ``weights_backbone``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet101, fcn_resnet101

from egnet.core.config import ModelConfig
from egnet.models.backbone import ImageNetNormalize, load_backbone_weights

log = logging.getLogger(__name__)

BASELINES = {"fcn_resnet101": fcn_resnet101, "deeplabv3_resnet101": deeplabv3_resnet101}


class TorchvisionSegmentation(nn.Module):
    """Wraps a torchvision segmentation model: [0, 1] RGB in, ``{"out": NxCxHxW logits}`` out."""

    has_exposure_head = False

    def __init__(self, variant: str, model: nn.Module) -> None:
        super().__init__()
        self.variant = variant
        self.normalize = ImageNetNormalize()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.model(self.normalize(x))["out"]}


def build_baseline(cfg: ModelConfig) -> TorchvisionSegmentation:
    """``cfg.variant`` in BASELINES, with ``cfg.num_classes`` and ``cfg.backbone_weights``."""
    if cfg.backbone != "resnet101" or cfg.output_stride != 8:
        log.warning(
            "%s is ResNet-101 at output stride 8; model.backbone=%s, model.output_stride=%s are not used",
            cfg.variant, cfg.backbone, cfg.output_stride,
        )
    model = BASELINES[cfg.variant](weights=None, weights_backbone=None, num_classes=cfg.num_classes,
                                   aux_loss=False)
    load_backbone_weights(model.backbone, cfg.backbone_weights, "resnet101")
    return TorchvisionSegmentation(cfg.variant, model)
