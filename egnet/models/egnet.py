"""EGNet (paper Sec. 4, Fig. 5) and its ablations (Tables 4-5), built from one torchvision ResNet.

    x in [0,1] -> normalise -> S1 = stem + layer1 (shared encoder)
        segmentation stream: layer2 -> [fuse] -> layer3 -> [fuse] -> layer4 -> [fuse] -> FCNHead -> "out"
        exposure stream:     layer2 ---------> layer3 ---------> layer4 -> 1x1 conv -> sigmoid -> "exposure"

Each stream owns a deep copy of layer2-4 (both start from the same weights); ``fuse``
at the positions in ``model.egl_positions`` is the EGL of Eq. 1 (``egnet``), a concat or
sum fusion (``concat``, ``sum``), or Eq. 1 with the V map as W_r (``attention_map``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

from egnet.core.config import ModelConfig
from egnet.data.exposure import value_map_torch
from egnet.models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetNormalize,
    load_backbone_weights,
    resnet,
)
from egnet.models.egl import ConcatFusion, ExposureGuidance, SumFusion, ValueMapGuidance

STAGES = ("layer2", "layer3", "layer4")  # the paper's S2, S3, S4
EGNET_VARIANTS = ("egnet", "no_egl", "no_exposure_stream", "concat", "sum", "extra_input", "attention_map")
_WITH_EXPOSURE_STREAM = ("egnet", "no_egl", "concat", "sum")

# The extra V input channel is scaled like an average ImageNet-normalised RGB channel.
_V_MEAN = sum(IMAGENET_MEAN) / 3
_V_STD = sum(IMAGENET_STD) / 3


class EGNet(nn.Module):
    """Two-stream exposure-guided segmentation net; see the module docstring for the wiring.

    ``forward(x)`` takes Nx3xHxW float RGB in [0, 1] (not normalised) and returns
    ``{"out": NxCxHxW logits}`` plus ``"exposure": Nx1xHxW in [0, 1]`` when the variant
    has an exposure stream; both at the input size (bilinear upsampling).
    """

    def __init__(
        self,
        *,
        variant: str,
        encoder: nn.Sequential,
        seg_stream: nn.ModuleDict,
        exposure_stream: nn.ModuleDict | None,
        guidance: nn.ModuleDict,
        seg_head: nn.Module,
        exposure_head: nn.Module | None,
        value_input: bool,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.normalize = ImageNetNormalize()
        self.value_input = value_input
        # the input's V map: the 4th input channel (extra_input) or W_r (attention_map); the
        # exposure target of the other variants is the loss's business, not the forward's
        self.uses_value_map = value_input or any(isinstance(g, ValueMapGuidance) for g in guidance.values())
        self.encoder = encoder
        self.seg_stream = seg_stream
        self.exposure_stream = exposure_stream
        self.guidance = guidance
        self.seg_head = seg_head
        self.exposure_head = exposure_head

    @property
    def has_exposure_head(self) -> bool:
        return self.exposure_head is not None

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final features of the segmentation and exposure streams (the latter None without one).

        Spatial size is the input size / output stride (rounded up at each stride-2 step).
        """
        v = value_map_torch(x) if self.uses_value_map else None  # once, and only where it is used
        h = self.normalize(x)
        if self.value_input:
            h = torch.cat((h, (v - _V_MEAN) / _V_STD), dim=1)
        f_s = self.encoder(h)
        f_e = f_s if self.exposure_stream is not None else None
        for name in STAGES:
            f_s = self.seg_stream[name](f_s)
            if self.exposure_stream is not None:
                f_e = self.exposure_stream[name](f_e)
            if name in self.guidance:
                f_s = self.guidance[name](f_s, v if f_e is None else f_e)
        return f_s, f_e

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        f_s, f_e = self.features(x)
        result = {"out": F.interpolate(self.seg_head(f_s), size=size, mode="bilinear", align_corners=False)}
        if self.exposure_head is not None and f_e is not None:
            logit = F.interpolate(self.exposure_head(f_e), size=size, mode="bilinear", align_corners=False)
            result["exposure"] = torch.sigmoid(logit)
        return result


def _with_value_channel(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of the 3-channel stem conv taking a 4th (V) channel whose weights start at zero.

    Zero start: the (pretrained) RGB filters are kept as they are and the net begins
    as the RGB-only net, learning from there how much of V to use.
    """
    new = nn.Conv2d(
        4, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :3].copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def build_egnet(cfg: ModelConfig) -> EGNet:
    """EGNet or one of its ablations (``cfg.variant`` in EGNET_VARIANTS) from ``cfg``."""
    variant = cfg.variant
    if variant not in EGNET_VARIANTS:
        raise ValueError(f"not an EGNet-family variant: {variant!r}")
    net = resnet(cfg.backbone, cfg.output_stride)
    load_backbone_weights(net, cfg.backbone_weights, cfg.backbone)

    stem_conv = _with_value_channel(net.conv1) if variant == "extra_input" else net.conv1
    encoder = nn.Sequential(OrderedDict(
        conv1=stem_conv, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool, layer1=net.layer1,
    ))
    seg_stream = nn.ModuleDict({name: getattr(net, name) for name in STAGES})
    two_streams = variant in _WITH_EXPOSURE_STREAM
    # deep copy: the exposure stream starts from the same (pretrained) weights but trains its own
    exposure_stream = copy.deepcopy(seg_stream) if two_streams else None

    channels = {name: _out_channels(seg_stream[name]) for name in STAGES}
    positions = [f"layer{p}" for p in sorted(set(cfg.egl_positions))]
    fusions: dict[str, nn.Module] = {}
    for name in positions:
        c = channels[name]
        if variant == "egnet":
            fusions[name] = ExposureGuidance(c, cfg.egl_w1, cfg.egl_w2)
        elif variant == "concat":
            fusions[name] = ConcatFusion(c)
        elif variant == "sum":
            fusions[name] = SumFusion()
        elif variant == "attention_map":
            fusions[name] = ValueMapGuidance(cfg.egl_w1, cfg.egl_w2)
    top = channels["layer4"]
    return EGNet(
        variant=variant,
        encoder=encoder,
        seg_stream=seg_stream,
        exposure_stream=exposure_stream,
        guidance=nn.ModuleDict(fusions),
        # torchvision's FCN head (3x3 conv C->C/4, BN, ReLU, dropout 0.1, 1x1 conv to classes):
        # the same head as the fcn_resnet101 baseline, so comparisons isolate the streams and EGL
        seg_head=FCNHead(top, cfg.num_classes),
        exposure_head=nn.Conv2d(top, 1, kernel_size=1) if two_streams else None,
        value_input=variant == "extra_input",
    )


def _out_channels(stage: nn.Sequential) -> int:
    """Channels a ResNet stage puts out (its last block's last BN)."""
    last = stage[-1]
    bn = getattr(last, "bn3", None) or last.bn2
    return bn.num_features
