"""Models: EGNet, its ablations and the torchvision baselines, all built by :func:`build_model`.

Every model takes Nx3xHxW float RGB in [0, 1] (un-normalised; it normalises inside)
and returns ``{"out": NxCxHxW logits}`` at the input size, plus ``"exposure"``
(Nx1xHxW in [0, 1]) when ``model.has_exposure_head``. See docs/models.md.
"""

from __future__ import annotations

from torch import nn

from egnet.core.config import ModelConfig
from egnet.models.baselines import BASELINES, TorchvisionSegmentation, build_baseline
from egnet.models.counting import count_flops, count_parameters
from egnet.models.egl import ExposureGuidance
from egnet.models.egnet import EGNET_VARIANTS, EGNet, build_egnet

__all__ = [
    "BASELINES", "EGNET_VARIANTS", "EGNet", "ExposureGuidance", "TorchvisionSegmentation",
    "build_model", "count_flops", "count_parameters",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model ``cfg.variant`` names, with weights per ``cfg.backbone_weights``.

    Raises ConfigError for weights that cannot be found or do not fit the backbone.
    """
    if cfg.variant in BASELINES:
        return build_baseline(cfg)
    return build_egnet(cfg)
