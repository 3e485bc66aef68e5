"""`egnet evaluate`: a model on the test split under the paper's protocol (+ named extra modes).

Paper protocol (Sec. 5.1, :mod:`egnet.evaluation.inference`): resize to ``evaluate.infer_size``
(900x900), predict, resize the logits bilinearly to the label size (1024x512), argmax.
The headline numbers in ``metrics.json`` are that protocol's, always; the modes in
``evaluate.extra_modes`` (native, flip, multiscale) go under ``modes: {name: {...}}``
and into MLflow as ``test_<mode>_*``, never mixed in.

Outputs (atomic): ``metrics.json`` (the keys docs/architecture.md lists + ``protocol`` + ``modes``),
``model_source.json``, ``confusion_matrix.png`` (row-normalised), ``ef1_per_bin.png``
(with the paper's Table 2 EGNet row for reference), ``iou_per_class.png``,
``qualitative.png``. When the model's training run is known (train dir's
``mlflow_run_id``, or the registered version's run), metrics ``test_mIoU``,
``test_mEF1``, ``test_EF1_bin0..9``, ``test_IoU_<class>`` and the files (under
``evaluation/``) are logged into that run.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from egnet import metrics
from egnet.core import paper
from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError
from egnet.core.files import atomic_dir, cpu_workers, write_csv, write_json
from egnet.data import charts as plots
from egnet.data import layout
from egnet.data.exposure import BIN_NAMES, NUM_BINS, max_rgb, value_bins, value_bins_torch
from egnet.data.labels import CLASS_NAMES, colorize, to_train_ids
from egnet.evaluation import inference
from egnet.evaluation.per_image import PER_IMAGE_COUNTS_FILE, PerImageCounts, write_per_image
from egnet.evaluation.worst import WorstImages
from egnet.tracking.client import mlflow_errors

log = logging.getLogger(__name__)



@dataclass
class Sample:
    """One qualitative example (numpy, at the label size)."""

    stem: str
    image: np.ndarray                 # HxWx3 uint8 RGB
    target: np.ndarray                # HxW uint8 trainIds
    pred: np.ndarray                  # HxW uint8 trainIds (paper protocol)
    exposure: np.ndarray | None       # HxW predicted V map: float [0, 1], or uint8 V x 255


@dataclass
class EvalResult:
    metrics: dict[str, Any]                           # paper protocol
    modes: dict[str, dict[str, Any]]                  # extra modes, by name
    confusion: np.ndarray                             # [C, C] paper-protocol pixel counts (gt rows)
    samples: list[Sample] = field(default_factory=list)
    labels_resized: int = 0                           # NightCity+ labels resized nearest-neighbour
    counts: np.ndarray | None = None                  # [10, C, C+1] paper-protocol counts -> confusion.npy
    # per-image scores, worst images -> per_image.json, worst/
    worst: WorstImages | None = None
    # per-image paper-protocol counts -> per_image_counts.npz (the gate's paired bootstrap)
    per_image: PerImageCounts | None = None


def qualitative_indices(n_images: int, k: int) -> list[int]:
    """``k`` indices spread evenly over the test list (first and last included)."""
    if k <= 0 or n_images == 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n_images - 1, min(k, n_images))})


@dataclass
class _Item:
    """One decoded test image (the reader threads' output)."""

    pair: layout.Pair
    image: np.ndarray                 # HxWx3 uint8 RGB
    target: np.ndarray                # HxW uint8 trainIds
    resized: bool
    bins: np.ndarray | None           # HxW uint8, binned on the host (CPU device) or None (on the device)
    mean_v: float | None


def evaluate_pairs(
    loaded: inference.LoadedModel,
    pairs: list[layout.Pair],
    cfg: Config,
    progress: bool | None = None,
) -> EvalResult:
    """Run the paper protocol and ``cfg.evaluate.extra_modes`` over ``pairs``; accumulate metrics.

    On a GPU the loop never waits for the device within an image: images are decoded by
    ``evaluate.workers`` threads, staged through pinned buffers, binned by exposure on the
    device, predicted under bf16 autocast (``evaluate.amp``), counted there (one counting
    pass per image and mode: the paper-protocol counts feed the metrics, the per-image
    evidence and :class:`WorstImages`), and read back one image later, while the next one runs.
    """
    ev = cfg.evaluate
    modes = ["paper", *[m for m in ev.extra_modes if m != "paper"]]
    num_classes = loaded.config.model.num_classes
    if num_classes != len(CLASS_NAMES):
        raise ConfigError(f"model.num_classes = {num_classes}: "
                          f"NightCity labels have {len(CLASS_NAMES)} classes")
    device = loaded.device
    on_host = device.type == "cpu"               # bin on the host, in the reader threads
    cuda = device.type == "cuda"
    amp = ev.amp and cuda
    channels_last = ev.channels_last and cuda
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    acc = {m: metrics.ExposureConfusion(num_classes, device) for m in modes}
    keep = set(qualitative_indices(len(pairs), ev.num_qualitative))
    samples: list[Sample] = []
    worst = WorstImages(ev.num_qualitative)
    image_counts = np.zeros((len(pairs), NUM_BINS, num_classes, num_classes + 1), dtype=np.int32)
    resized = 0

    def read(pair: layout.Pair) -> _Item:
        image = layout.read_image(pair.image)
        label, was_resized = layout.read_label(pair.label, cfg.data.image_size)
        if image.shape[:2] != label.shape:
            raise DataError(f"{pair.image}: image is {image.shape[1]}x{image.shape[0]}, "
                            f"label {label.shape[1]}x{label.shape[0]}")
        bins = mean_v = None
        if on_host:
            v = max_rgb(image)
            bins, mean_v = value_bins(v), float(cv2.mean(v)[0] / 255.0)
        return _Item(pair, image, to_train_ids(label), was_resized, bins, mean_v)

    def finish(i: int, item: _Item, readback: inference.Readback) -> None:
        """Host side of image ``i`` once its device work is done: evidence, worst images, samples."""
        counts, pred, exposure, mean_v = readback.wait()
        image_counts[i] = counts
        mv = item.mean_v if item.mean_v is not None else float(mean_v)
        worst.add(item.pair.stem, item.image, item.target, pred, exposure, counts=counts, mean_exposure=mv)
        if i in keep:
            samples.append(Sample(item.pair.stem, item.image, item.target, pred.copy(),
                                  None if exposure is None else exposure.astype(np.float32) / 255.0))

    staging = inference.Staging(device)
    workers = cpu_workers(ev.workers)
    stream = inference.prefetch(read, pairs, depth=2 * max(2, workers), workers=workers)
    pending: tuple[int, _Item, inference.Readback] | None = None
    for i, item in enumerate(tqdm(stream, total=len(pairs), desc="evaluate", unit="img",
                                  disable=None if progress is None else not progress)):
        resized += int(item.resized)
        host = [item.image, item.target] + ([item.bins] if on_host else [])
        uploaded = staging.upload(i, *host)
        image_t, target = uploaded[0], uploaded[1]
        if on_host:
            bins, mean_v = uploaded[2], None
        else:
            v = image_t.amax(dim=-1)
            bins, mean_v = value_bins_torch(v), v.float().mean().div_(255.0)
        x = inference.to_tensor(image_t, device, channels_last)
        out_size = (item.target.shape[1], item.target.shape[0])
        preds = inference.predict(loaded.model, x, out_size, ev.infer_size, modes, ev.multiscale_scales,
                                  amp=amp)
        counts = {mode: acc[mode].update(p.train_ids, target, bins) for mode, p in preds.items()}
        paper_pred = preds["paper"]
        exposure = (None if paper_pred.exposure is None
                    else paper_pred.exposure.mul(255.0).round_().to(torch.uint8))
        readback = staging.download(i, counts["paper"], paper_pred.train_ids, exposure, mean_v)
        if pending is not None:
            finish(*pending)
        pending = (i, item, readback)
    if pending is not None:
        finish(*pending)
    paper = acc["paper"].compute(ev.ef1_average)
    extra = {m: acc[m].compute(ev.ef1_average) for m in modes if m != "paper"}
    counts_all = acc["paper"].counts()
    return EvalResult(paper, extra, counts_all[..., :num_classes].sum(0), samples, resized,
                      counts=counts_all, worst=worst,
                      per_image=PerImageCounts([p.stem for p in pairs], image_counts))


# --------------------------------------------------------------------------- charts


def confusion_png(path: Path, confusion: np.ndarray, title: str) -> None:
    """Row-normalised confusion matrix (rows: ground truth; each row sums to 1 where labelled)."""
    rows = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=np.float64), where=rows > 0)
    n = len(norm)
    fig = Figure(figsize=(9, 8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    names = list(CLASS_NAMES[:n])
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    for r in range(n):
        for c in range(n):
            if norm[r, c] >= 0.05:
                ax.text(c, r, f"{norm[r, c]:.2f}", ha="center", va="center", fontsize=5,
                        color="white" if norm[r, c] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def qualitative_png(path: Path, samples: list[Sample]) -> None:
    """Grid: one row per sample; input, ground truth colours, prediction colours, exposure map."""
    with_exposure = any(s.exposure is not None for s in samples)
    cols = ["input", "ground truth", "prediction"] + (["predicted exposure"] if with_exposure else [])
    rows = max(1, len(samples))
    h, w = samples[0].image.shape[:2] if samples else (1, 2)
    fig = Figure(figsize=(3.2 * len(cols), 3.2 * len(cols) * rows * h / (w * len(cols)) + 0.6))
    FigureCanvasAgg(fig)
    for r, s in enumerate(samples):
        panels = [s.image, colorize(s.target), colorize(s.pred)]
        if with_exposure:
            panels.append(s.exposure if s.exposure is not None else np.zeros(s.image.shape[:2]))
        for c, panel in enumerate(panels):
            ax = fig.add_subplot(rows, len(cols), r * len(cols) + c + 1)
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0,
                      vmax=1 if panel.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(s.stem, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(out: Path, result: EvalResult, source: inference.ModelSource,
                  cfg: Config) -> dict[str, Any]:
    """metrics.json, model_source.json and the charts into ``out``; returns the metrics.json dict."""
    modes = ["paper", *result.modes]
    doc = {
        **result.metrics,
        "protocol": inference.describe_protocol(cfg, modes),
        "labels_resized_nearest": result.labels_resized,
        "modes": result.modes,
        "model": source.to_dict(),
    }
    write_json(out / "metrics.json", doc)
    m = result.metrics
    # plot data for `dvc plots` (an empty cell for an empty exposure bin)
    write_csv(out / "ef1_per_bin.csv", ["bin", "exposure", "EF1"],
              [[i, name, v] for i, (name, v) in enumerate(zip(BIN_NAMES, m["EF1"], strict=True))])
    write_csv(out / "iou_per_class.csv", ["class", "IoU"], [[c, v] for c, v in m["IoU"].items()])
    confusion_png(out / "confusion_matrix.png", result.confusion,
                  f"confusion (row-normalised), mIoU {100 * (m['mIoU'] or 0):.1f}%")
    plots.exposure_chart(out / "ef1_per_bin.png", {"this model": m["EF1"]},
                         f"EF1 per exposure bin (mEF1 {m['mEF1'] or 0:.3f})", "EF1",
                         reference=("paper EGNet (Table 2)", paper.EGNET_EF1), ylim=(0, 1.05))
    plots.class_chart(out / "iou_per_class.png", {"IoU": list(m["IoU"].values())},
                      f"IoU per class (mIoU {100 * (m['mIoU'] or 0):.1f}%)", "IoU")
    if result.samples:
        qualitative_png(out / "qualitative.png", result.samples)
    if result.counts is not None:
        np.save(out / "confusion.npy", result.counts)
    if result.worst is not None:
        result.worst.write(out)
    if result.per_image is not None:
        write_per_image(out / PER_IMAGE_COUNTS_FILE, result.per_image)
    return doc


# --------------------------------------------------------------------------- MLflow


def mlflow_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """``test_*`` for the paper protocol, ``test_<mode>_*`` for each extra mode."""
    flat = metrics.to_mlflow(doc, prefix="test_")
    for mode, m in doc.get("modes", {}).items():
        flat.update(metrics.to_mlflow(m, prefix=f"test_{mode}_"))
    return flat


def run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def log_to_run(client: Any, run_id: str, out: Path, doc: dict[str, Any], tags: dict[str, str]) -> None:
    """Metrics, tags and every file of ``out`` (under ``evaluation/``) into the training run."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    values = [Metric(k, v, now, 0) for k, v in sorted(mlflow_metrics(doc).items())]
    for i in range(0, len(values), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=values[i:i + 1000],
                         tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
    client.log_artifacts(run_id, str(out), artifact_path="evaluation")


# --------------------------------------------------------------------------- CLI


def split_test_pairs(data: str | Path, split: str | Path) -> list[layout.Pair]:
    """The pairs of ``SPLIT/test.txt`` in its order; DataError when a stem has no pair or it is empty."""
    test_list = Path(split) / "test.txt"
    pairs = layout.select(layout.pairs_by_stem(data), layout.read_split_list(test_list), str(test_list))
    if not pairs:
        raise DataError(f"{test_list}: empty test split")
    return pairs


def announce(loaded: inference.LoadedModel, n: int, cfg: Config) -> None:
    source = loaded.source
    print(f"evaluating {source.spec} ({loaded.config.model.variant}/{loaded.config.model.backbone}) on "
          f"{n} test images, {loaded.device}; protocol: infer {cfg.evaluate.infer_size[0]}x"
          f"{cfg.evaluate.infer_size[1]} -> label size" +
          (f"; extra modes: {', '.join(cfg.evaluate.extra_modes)}" if cfg.evaluate.extra_modes else ""),
          flush=True)


def write_evaluation(out: Path, result: EvalResult, loaded: inference.LoadedModel, cfg: Config,
                     logged_to_run: str | None) -> dict[str, Any]:
    """Every output file of an evaluation into the folder ``out`` (metrics.json's dict returned)."""
    doc = write_outputs(out, result, loaded.source, cfg)
    write_json(out / "model_source.json", {
        **loaded.source.to_dict(),
        "model_config": {"variant": loaded.config.model.variant, "backbone": loaded.config.model.backbone,
                         "params_hash": loaded.config.params_hash()},
        "logged_to_run": logged_to_run,
    })
    return doc


def evaluation_tags(doc: dict[str, Any], test_data_version: str) -> dict[str, str]:
    """The tags an evaluation sets on the run it logs into."""
    return {"test_data_version": test_data_version, "test_protocol": doc["protocol"]["description"][:4000]}


def print_summary(result: EvalResult) -> None:
    print(metrics.format_table(result.metrics))
    for mode, m in result.modes.items():
        print(f"[{mode}] mIoU {100 * (m['mIoU'] or 0):.2f}%  mEF1 {m['mEF1'] or 0:.4f}  "
              "(not the paper protocol)")
    if result.labels_resized:
        print(f"note: {result.labels_resized} label(s) were 2x the image size (NightCity+) and were resized "
              "nearest-neighbour")


def main(args: argparse.Namespace, cfg: Config) -> int:
    pairs = split_test_pairs(args.data, args.split)
    loaded = inference.load(args.model, cfg)
    source = loaded.source
    announce(loaded, len(pairs), cfg)
    # the run is looked up before the (long) inference: an unreachable server fails fast
    client = None
    if source.run_id:
        import mlflow

        from egnet.tracking.runs import connect_mlflow, data_version

        client = mlflow.MlflowClient(tracking_uri=connect_mlflow(cfg))
        with mlflow_errors(f"MLflow run {source.run_id}"):
            known = run_exists(client, source.run_id)
        if not known:
            log.warning("MLflow run %s (from %s) not found at %s; metrics not logged to MLflow",
                        source.run_id, source.spec, mlflow.get_tracking_uri())
            client = None
    result = evaluate_pairs(loaded, pairs, cfg)
    with atomic_dir(args.out) as tmp:
        doc = write_evaluation(tmp, result, loaded, cfg, source.run_id if client is not None else None)
        if client is not None:
            with mlflow_errors(f"logging the evaluation into MLflow run {source.run_id}"):
                log_to_run(client, source.run_id, tmp, doc,
                           evaluation_tags(doc, data_version(args.data, args.split)))
    print_summary(result)
    where = f"; logged to MLflow run {source.run_id}" if client is not None else ""
    print(f"wrote {args.out}{where}")
    return 0
