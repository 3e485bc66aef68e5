"""Model loading and test-time inference shared by ``egnet evaluate`` and ``egnet predict``.

Loading (:func:`load`): a checkpoint file, a training output directory (its
``model.pt``, else its latest checkpoint; local or ``s3://``), or a registered version
``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``.
Every path ends in ``egnet.training.checkpoint.load_model``, i.e. ``torch.load(weights_only=True)``
on an egnet checkpoint: a registered version carries that checkpoint as an extra file
of its MLflow model (``extra_files/egnet-checkpoint.pt``, written by ``egnet register``),
so loading from the registry never unpickles code (docs/registry.md).

Inference (:func:`predict`): the paper's protocol (Sec. 5.1) is ``paper``: resize the
image to ``evaluate.infer_size`` (900x900), predict, resize the logits bilinearly to
the output size (the 1024x512 label size), argmax. Extra modes, reported apart:
``native`` (predict at the image's own size), ``flip`` (paper protocol, softmax averaged
with the horizontally flipped image), ``multiscale`` (softmax averaged over
``infer_size * s`` for s in ``evaluate.multiscale_scales``).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError
from egnet.tracking.access import is_denied
from egnet.tracking.client import mlflow_error, mlflow_errors
from egnet.tracking.registered import checkpoint_artifact_uri, parse_models_uri, registered_version
from egnet.tracking.runs import connect_mlflow
from egnet.training.checkpoint import RUN_ID_FILE, load_model

MODES = ("paper", "native", "flip", "multiscale")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ModelSource:
    """What was loaded: the user's spec, the checkpoint read, and its MLflow lineage."""

    spec: str
    kind: str                      # "checkpoint" | "registry"
    checkpoint: str                # checkpoint file read (for the registry: the artifact URI)
    run_id: str | None = None      # MLflow run that trained it, when known
    name: str | None = None        # registered model name
    version: str | None = None
    alias: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module               # in eval mode, on ``device``
    config: Config                 # the config it was trained with (from the checkpoint)
    source: ModelSource
    device: torch.device

    @property
    def has_exposure_head(self) -> bool:
        return bool(getattr(self.model, "has_exposure_head", False))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- loading


def training_run_id(spec: str) -> str | None:
    """The MLflow run that trained the model at ``spec`` (checkpoint file or train dir, local or
    ``s3://``): ``mlflow_run_id`` in its train dir, i.e. the folder itself, the file's folder
    (``OUT/model.pt``) or the one above (``OUT/checkpoints/ckpt_<iter>.pt``)."""
    from egnet.core.storage import Location

    text = spec.rstrip("/")
    if text.endswith(".pt"):
        parent = text.rpartition("/")[0] or "."
        folders = [parent, parent.rpartition("/")[0] or "."] if "/" in parent else [parent, ".."]
    else:
        folders = [text]
    for folder in folders:
        loc = Location.from_str(folder)
        if loc.exists(RUN_ID_FILE):
            return loc.read_text(RUN_ID_FILE).strip() or None
    return None


def _load_path(spec: str) -> tuple[nn.Module, Config, ModelSource]:
    model, cfg = load_model(spec)
    return model, cfg, ModelSource(spec=spec, kind="checkpoint", checkpoint=spec,
                                   run_id=training_run_id(spec))


def _load_registered(uri: str, cfg: Config) -> tuple[nn.Module, Config, ModelSource]:
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking = connect_mlflow(cfg, read_only=True)
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    with mlflow_errors(f"--model {uri}"):
        mv = registered_version(client, uri)
        art = checkpoint_artifact_uri(client, mv)
    with tempfile.TemporaryDirectory(prefix="egnet-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=art, dst_path=tmp, tracking_uri=tracking)
        except (MlflowException, OSError) as exc:
            if is_denied(exc):
                raise mlflow_error(f"--model {uri}", exc) from None
            raise DataError(
                f"--model {uri}: version {mv.version} has no egnet checkpoint ({art}): "
                f"{str(exc).splitlines()[0][:200]}; was it registered with `egnet register`?"
            ) from None
        model, model_cfg = load_model(Path(local))
    _, _, alias = parse_models_uri(uri)
    source = ModelSource(spec=uri, kind="registry", checkpoint=art, run_id=mv.run_id or None,
                         name=mv.name, version=str(mv.version), alias=alias)
    return model, model_cfg, source


def load(spec: str, cfg: Config, device: torch.device | None = None) -> LoadedModel:
    """Load ``spec`` (checkpoint file, train dir, or ``models:/`` URI) for inference on ``device``."""
    device = device or default_device()
    if spec.startswith("models:/"):
        model, model_cfg, source = _load_registered(spec, cfg)
    elif "://" in spec and not spec.startswith("s3://"):
        raise ConfigError(f"--model {spec}: expected a checkpoint path, a train dir (local or s3://) "
                          "or models:/NAME@ALIAS")
    else:
        model, model_cfg, source = _load_path(spec)
    return LoadedModel(model.to(device).eval(), model_cfg, source, device)


# --------------------------------------------------------------------------- inference


def to_tensor(image: np.ndarray | torch.Tensor, device: torch.device,
              channels_last: bool = False) -> torch.Tensor:
    """HxWx3 uint8 RGB (numpy, or a tensor already on ``device``) -> 1x3xHxW float in [0, 1]
    (the models normalise inside); ``channels_last`` memory format on request."""
    t = image if torch.is_tensor(image) else torch.from_numpy(np.ascontiguousarray(image))
    x = t.to(device).permute(2, 0, 1)[None]
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    return x.float().div_(255.0)


def _resize(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    return F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)


def _forward(model: nn.Module, x: torch.Tensor, size_wh: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` resized to ``size_wh`` (width, height)."""
    return model(_resize(x, (size_wh[1], size_wh[0])))


@dataclass(frozen=True)
class Prediction:
    """Per-image inference result at the output size, on the model's device."""

    train_ids: torch.Tensor        # HxW uint8 trainIds (argmax, narrowed on the device)
    exposure: torch.Tensor | None  # HxW float32 V map in [0, 1] predicted by the exposure head


def _argmax_ids(scores: torch.Tensor) -> torch.Tensor:
    """CxHxW scores -> HxW trainIds, uint8 when the classes fit (an eighth of argmax's int64 to
    count and to copy to the host)."""
    ids = scores.argmax(0)
    return ids.to(torch.uint8) if scores.shape[0] <= 256 else ids


@torch.inference_mode()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    out_size: tuple[int, int],
    infer_size: tuple[int, int],
    modes: Sequence[str] = ("paper",),
    scales: Sequence[float] = (1.0,),
    amp: bool = False,
) -> dict[str, Prediction]:
    """Predict one image ``x`` (1x3xHxW float [0, 1]) under each of ``modes``.

    ``out_size`` and ``infer_size`` are (width, height). ``paper`` argmaxes the
    bilinearly resized logits (as the paper); the averaging modes argmax the mean
    softmax. The exposure map (if the model has the head) is the paper-protocol one
    for every mode except ``native``. ``amp``: the network runs under bf16 autocast on
    ``x``'s device (CUDA); its outputs are resized and argmaxed in float32.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown inference mode(s) {unknown}; known: {list(MODES)}")
    out_hw = (out_size[1], out_size[0])

    def run(inp: torch.Tensor, size_wh: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        with torch.autocast(inp.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(inp) if size_wh is None else _forward(model, inp, size_wh)
        return {k: v.float() for k, v in out.items()}

    results: dict[str, Prediction] = {}
    paper_out = run(x, infer_size)
    paper_logits = _resize(paper_out["out"], out_hw)
    exposure = paper_out.get("exposure")
    paper_exp = _resize(exposure, out_hw)[0, 0].clamp_(0, 1) if exposure is not None else None
    for mode in modes:
        if mode == "paper":
            results[mode] = Prediction(_argmax_ids(paper_logits[0]), paper_exp)
        elif mode == "native":
            out = run(x, None)
            exp = out.get("exposure")
            results[mode] = Prediction(
                _argmax_ids(_resize(out["out"], out_hw)[0]),
                _resize(exp, out_hw)[0, 0].clamp_(0, 1) if exp is not None else None,
            )
        elif mode == "flip":
            flipped = _resize(run(x.flip(-1), infer_size)["out"], out_hw).flip(-1)
            probs = paper_logits.softmax(1) + flipped.softmax(1)
            results[mode] = Prediction(_argmax_ids(probs[0]), paper_exp)
        else:  # multiscale
            probs = torch.zeros_like(paper_logits)
            for s in scales:
                size = (max(8, round(infer_size[0] * s)), max(8, round(infer_size[1] * s)))
                logits = paper_logits if size == tuple(infer_size) else _resize(run(x, size)["out"], out_hw)
                probs += logits.softmax(1)
            results[mode] = Prediction(_argmax_ids(probs[0]), paper_exp)
    return results


def prefetch(fn: Callable[[T], R], items: Iterable[T], depth: int = 4, workers: int = 1) -> Iterator[R]:
    """``map(fn, items)`` in order, computed up to ``depth`` items ahead by ``workers`` threads
    (image decoding overlaps inference and each other: OpenCV and NumPy release the GIL),
    with at most ``depth`` results held in memory. A failure is raised in order; the items
    not yet started are dropped."""
    it = iter(items)
    depth = max(depth, workers)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [pool.submit(fn, item) for item in _take(it, depth)]
        try:
            while pending:
                result = pending.pop(0).result()
                pending += [pool.submit(fn, item) for item in _take(it, 1)]
                yield result
        finally:
            for future in pending:
                future.cancel()


class Staging:
    """Host <-> device copies that overlap the device's work: pinned host buffers in a ring of
    ``slots`` (CUDA). A pageable copy to a CUDA device first waits for the stream to drain; a
    pinned one is queued behind the previous image's kernels and the host moves on.

    ``upload(i, *arrays)`` puts numpy arrays of item ``i`` on the device (through slot
    ``i % slots``, reused once the copy that last used it is done); ``download(i, *tensors)``
    queues device tensors of item ``i`` into pinned buffers and returns a :class:`Readback`
    whose ``wait()`` gives numpy arrays once they have arrived. A reader must be done with an
    item's arrays before item ``i + slots`` is downloaded (they are the slot's buffers).
    On the CPU both are plain tensors, no copies.
    """

    def __init__(self, device: torch.device, slots: int = 3) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.slots = slots
        self._bufs: dict[tuple[str, int, int], torch.Tensor] = {}
        self._uploaded: list[Any] = [None] * slots

    def _buffer(self, kind: str, slot: int, j: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        key = (kind, slot, j)
        buf = self._bufs.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = torch.empty(tuple(shape), dtype=dtype, pin_memory=True)
            self._bufs[key] = buf
        return buf

    def upload(self, i: int, *arrays: np.ndarray) -> list[torch.Tensor]:
        if not self.cuda:
            return [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        slot = i % self.slots
        if self._uploaded[slot] is not None:
            self._uploaded[slot].synchronize()   # the copy of item i - slots has left this buffer
        out = []
        for j, a in enumerate(arrays):
            src = torch.from_numpy(np.ascontiguousarray(a))
            buf = self._buffer("up", slot, j, src.shape, src.dtype)
            buf.copy_(src)
            out.append(buf.to(self.device, non_blocking=True))
        event = torch.cuda.Event()
        event.record()
        self._uploaded[slot] = event
        return out

    def download(self, i: int, *tensors: torch.Tensor | None) -> Readback:
        if not self.cuda:
            return Readback([None if t is None else t.detach().cpu() for t in tensors], None)
        slot = i % self.slots
        bufs: list[torch.Tensor | None] = []
        for j, t in enumerate(tensors):
            if t is None:
                bufs.append(None)
                continue
            buf = self._buffer("down", slot, j, t.shape, t.dtype)
            buf.copy_(t, non_blocking=True)
            bufs.append(buf)
        event = torch.cuda.Event()
        event.record()
        return Readback(bufs, event)


@dataclass
class Readback:
    """Tensors on their way to the host; :meth:`wait` returns them as numpy arrays (views of the
    staging buffers on CUDA: copy what must outlive the slot)."""

    tensors: list[torch.Tensor | None]
    event: Any

    def wait(self) -> list[np.ndarray | None]:
        if self.event is not None:
            self.event.synchronize()
        return [None if t is None else t.numpy() for t in self.tensors]


def _take(it: Iterator[T], n: int) -> list[T]:
    out: list[T] = []
    with contextlib.suppress(StopIteration):
        for _ in range(n):
            out.append(next(it))
    return out


def describe_protocol(cfg: Config, modes: Sequence[str]) -> dict[str, Any]:
    """The protocol note written into metrics.json / predictions.json."""
    w, h = cfg.evaluate.infer_size
    return {
        "name": "paper",
        "description": (f"resize the image bilinearly to {w}x{h}, predict, resize the logits bilinearly "
                        "to the label size, argmax (Tan et al., Sec. 5.1)"),
        "infer_size": [w, h],
        "extra_modes": {
            m: {
                "native": "predict at the image's own size; logits resized to the label size",
                "flip": "paper protocol; softmax averaged with the horizontally flipped image",
                "multiscale": (f"softmax averaged over infer_size x {list(cfg.evaluate.multiscale_scales)}, "
                               "each resized to the label size"),
            }[m]
            for m in modes if m != "paper"
        },
    }


class SegmentationLogits(nn.Module):
    """An egnet model that returns the logits tensor only: MLflow's pytorch pyfunc flavor (and
    serving) needs a single output tensor, the egnet models return a dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW float RGB in [0, 1] -> NxCxHxW logits at the input size."""
        return self.model(x)["out"]
