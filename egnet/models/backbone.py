"""torchvision ResNets at a chosen output stride, with weights from none / ImageNet / a local file.

We compose torchvision's ResNet and never rewrite it. Bottleneck nets (resnet50/101)
dilate through torchvision's own ``replace_stride_with_dilation``. torchvision's
BasicBlock (resnet18/34) refuses dilation, so for those we build the ordinary
(stride-32) net and then convert the strided stages by hand with
:func:`dilate_stages`, reproducing exactly what ``_make_layer(dilate=True)`` does
for a Bottleneck: the first block of a dilated stage keeps the previous dilation
and loses its stride, the later blocks use the doubled dilation, and the
downsample 1x1 conv loses its stride. Parameter shapes do not change, so
pretrained weights load the same before or after the conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from egnet.core.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Which of layer2, layer3, layer4 trade their stride for dilation at each output stride.
DILATION_PLAN: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),
    16: (False, False, True),
    32: (False, False, False),
}

_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")


class ImageNetNormalize(nn.Module):
    """Nx3xHxW RGB in [0, 1] -> ImageNet-normalised; mean/std are (non-persistent) buffers."""

    def __init__(self) -> None:
        super().__init__()
        # non-persistent: constants, so checkpoints hold only learned tensors
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def dilate_stages(net: ResNet, replace_stride_with_dilation: tuple[bool, bool, bool]) -> ResNet:
    """Turn the stride of layer2/3/4 into dilation in place (any block type); returns ``net``.

    Mirrors torchvision's ``ResNet._make_layer(dilate=True)``: the running dilation
    doubles at each converted stage; that stage's first block uses the previous
    dilation, its other blocks the new one. Every 3x3 conv of a block is dilated
    (BasicBlock has two, Bottleneck one: ``conv2``); padding = dilation keeps sizes.
    """
    dilation = 1
    for layer, dilate in zip((net.layer2, net.layer3, net.layer4), replace_stride_with_dilation, strict=True):
        if not dilate:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(layer):
            d = previous if index == 0 else dilation
            convs = (block.conv1, block.conv2) if isinstance(block, BasicBlock) else (block.conv2,)
            for conv in convs:
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1
    return net


def resnet(arch: str, output_stride: int) -> ResNet:
    """An untrained torchvision ResNet (``arch`` in resnet18/34/50/101) at output stride 8, 16 or 32."""
    if arch not in _ARCHS:
        raise ConfigError(f"model.backbone = {arch!r}: expected one of {', '.join(_ARCHS)}")
    if output_stride not in DILATION_PLAN:
        raise ConfigError(f"model.output_stride = {output_stride!r}: expected 8, 16 or 32")
    plan = DILATION_PLAN[output_stride]
    builder = getattr(torchvision.models, arch)
    if arch in ("resnet50", "resnet101"):
        return builder(weights=None, replace_stride_with_dilation=list(plan))
    return dilate_stages(builder(weights=None), plan)


def block_type(net: nn.Module) -> type[nn.Module]:
    """BasicBlock or Bottleneck: the block the net's layer1 is made of."""
    first = net.layer1[0]
    return BasicBlock if isinstance(first, BasicBlock) else Bottleneck


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``arch`` (from the torch hub cache or downloaded).

    resnet18/34: IMAGENET1K_V1 (the only set); resnet50/101: IMAGENET1K_V2.
    """
    weights = getattr(torchvision.models, f"ResNet{arch.removeprefix('resnet')}_Weights").DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash is a RuntimeError
        raise ConfigError(
            f"model.backbone_weights = imagenet: could not fetch {weights} for {arch} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "set it to a local state_dict file or 'none'"
        ) from None


def read_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision-format state_dict from ``path`` (torch.load, weights_only); ConfigError if not one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.backbone_weights: file not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors differ by format; all mean "not a weights file"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.backbone_weights: {p} is not a torch weights file: {first}") from None
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(
            f"model.backbone_weights: {p} is not a state_dict (a mapping of parameter names to tensors); "
            f"got {type(state).__name__}"
        )
    return dict(state)


def load_backbone_state(target: nn.Module, state: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """Load a ResNet state_dict into ``target`` (a ResNet, or torchvision's IntermediateLayerGetter).

    Strict on every key the target has except the classifier ``fc.*`` (which we never use
    and which a file may hold or not): a missing, unexpected or mis-shaped tensor is a
    ConfigError naming ``source``.
    """
    expected = {k: v.shape for k, v in target.state_dict().items() if not k.startswith("fc.")}
    given = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        detail = "; ".join(
            f"{what} {len(keys)} keys (e.g. {', '.join(keys[:3])})"
            for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys
        )
        raise ConfigError(f"model.backbone_weights: {source} is not a torchvision {arch} state_dict: "
                          f"{detail}")
    wrong = [k for k, shape in expected.items() if tuple(given[k].shape) != tuple(shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(
            f"model.backbone_weights: {source} does not fit {arch}: '{k}' has shape "
            f"{tuple(given[k].shape)}, expected {tuple(expected[k])} ({len(wrong)} tensors differ)"
        )
    target.load_state_dict(given, strict=False)


def load_backbone_weights(target: nn.Module, spec: str, arch: str) -> None:
    """Apply ``model.backbone_weights`` (``none`` | ``imagenet`` | path) to ``target`` in place."""
    if spec == "none":
        return
    if spec == "imagenet":
        load_backbone_state(target, imagenet_state_dict(arch), arch, f"ImageNet weights for {arch}")
        return
    load_backbone_state(target, read_state_dict_file(spec), arch, spec)
