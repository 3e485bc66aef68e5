"""torchvision ResNets at a chosen output stride, with weights from none / ImageNet / a local file.

ImageNet weights are never downloaded at run time (an air-gapped cluster must train too):
``imagenet`` reads torchvision's weight file from ``$TORCH_HOME/hub/checkpoints/`` (the CUDA
image carries it there, docker/Dockerfile), and :func:`fetch_imagenet` (`egnet weights
fetch`) is the one place that downloads it, checked against the sha256 pinned in
:data:`IMAGENET_WEIGHTS`.

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

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from egnet.core.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Which of layer2, layer3, layer4 trade their stride for dilation at each output stride.
DILATION_PLAN: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),
    16: (False, False, True),
    32: (False, False, False),
}

_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")

#: torchvision's default ImageNet weights per depth (resnet18/34: IMAGENET1K_V1, resnet50/101:
#: IMAGENET1K_V2): file name (its 8-hex prefix is torchvision's hash check) and the full sha256
IMAGENET_WEIGHTS: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"),
    "resnet34": ("resnet34-b627a593.pth", "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f"),
    "resnet50": ("resnet50-11ad3fa6.pth", "11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca"),
    "resnet101": ("resnet101-cd907fc2.pth",
                  "cd907fc2a0de2292b2ba2b27d2216bc672d84632d1cf20058d01c0c03b5e020e"),
}


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


def imagenet_weights(arch: str) -> Any:
    """torchvision's default ImageNet ``Weights`` enum member for ``arch``."""
    return getattr(torchvision.models, f"ResNet{arch.removeprefix('resnet')}_Weights").DEFAULT


def imagenet_file(arch: str) -> Path:
    """Where ``imagenet`` weights of ``arch`` are read from: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    if arch not in IMAGENET_WEIGHTS:
        raise ConfigError(f"model.backbone = {arch!r}: expected one of {', '.join(_ARCHS)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS[arch][0]


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``arch`` from the local file :func:`imagenet_file`; never downloads.

    A missing file is a ConfigError naming the param and the path (fetch it at image build with
    `egnet weights fetch`, or point ``model.backbone_weights`` at a state_dict file, e.g. on the
    dataset PVC).
    """
    path = imagenet_file(arch)
    if not path.is_file():
        raise ConfigError(
            f"model.backbone_weights = imagenet: {path} not found (the ImageNet weights of {arch}; "
            "nothing is downloaded at run time): `egnet weights fetch` puts them there (the CUDA image "
            "has them), or set model.backbone_weights to a state_dict file, e.g. on the dataset PVC"
        )
    return read_state_dict_file(path, "model.backbone_weights = imagenet")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_imagenet(arch: str, folder: Path | None = None, url: str | None = None) -> tuple[Path, bool]:
    """Download the ImageNet weights of ``arch`` into ``folder`` (default: where
    :func:`imagenet_state_dict` reads them), checked against the pinned sha256.

    Returns (file, downloaded: False when a file with the right sha256 is there already).
    Written to a temporary sibling and renamed: a failed or mismatching download leaves nothing.
    """
    target = imagenet_file(arch) if folder is None else Path(folder) / IMAGENET_WEIGHTS[arch][0]
    want = IMAGENET_WEIGHTS[arch][1]
    if target.is_file() and sha256_file(target) == want:
        return target, False
    url = url or imagenet_weights(arch).url
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310
            for block in iter(lambda: resp.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != want:
            raise DataError(f"{url}: sha256 {digest.hexdigest()} is not the pinned {want} "
                            f"(egnet.models.backbone.IMAGENET_WEIGHTS); nothing was kept")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except (OSError, urllib.error.URLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{url}: download failed: {reason}; nothing was kept") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target, True


def read_state_dict_file(path: str | Path, param: str = "model.backbone_weights") -> dict[str, torch.Tensor]:
    """A torchvision-format state_dict from ``path`` (torch.load, weights_only); ConfigError naming
    ``param`` if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{param}: file not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors differ by format; all mean "not a weights file"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{param}: {p} is not a torch weights file: {first}") from None
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(
            f"{param}: {p} is not a state_dict (a mapping of parameter names to tensors); "
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
