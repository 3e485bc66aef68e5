"""`egnet report RUN_ID [--vs RUN_ID] --out DIR`: a self-contained HTML page for reviewers.

    egnet report 3f2a... --out outputs/report              # one run
    egnet report 3f2a... --vs 9c1b... --out outputs/report # side by side, deltas RUN - VS

Reads the evaluation that ``egnet evaluate`` logged into each training run (artifacts
under ``evaluation/``): ``metrics.json`` (required), ``confusion.npy`` ([10, C, C+1]
pixel counts per exposure bin, gt rows, predicted columns then not-a-class) and
``per_image.json`` + ``worst/`` (written by :class:`egnet.evaluation.worst.WorstImages`,
which evaluate calls once per test image). Missing optional files are named on the page and on stderr; the
page still renders (``qualitative.png`` stands in for the gallery).

Sections: headline metrics (with the paper's EGNet Table 1 numbers), EF1 per exposure
bin against the paper's Table 2 EGNet row (chart + table), IoU per class, the most
confused class pairs in the darkest and brightest bins, and a gallery of the worst test
images by per-image mIoU (input, ground truth, prediction, predicted exposure).
With ``--vs`` and both runs' ``per_image_counts.npz`` on the same test images: the paired
comparison the promotion gate makes (:mod:`egnet.metrics.bootstrap`, params.yaml's
``register`` settings): RUN - VS for mIoU, mEF1 and EF1 per exposure bin, each with its
interval, as a chart (bins whose EF1 drops by more than ``register.max_bin_ef1_drop`` in red)
and a table.

Output (atomic): ``DIR/report.html`` (inline CSS, images as data URIs, no JavaScript) and
``DIR/report.json`` (the data on the page). The page is logged into RUN_ID's run as
``report/report.html`` (``report/vs_<VS_ID>.html`` with ``--vs``) unless ``--no-log``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from egnet.core import html, paper
from egnet.core.charts import bar_figure, interval_figure, png_bytes
from egnet.core.config import Config
from egnet.core.errors import DataError
from egnet.core.files import atomic_dir, read_json, write_json
from egnet.core.html import data_uri
from egnet.core.text import fmt
from egnet.data.exposure import BIN_NAMES, NUM_BINS
from egnet.data.labels import CLASS_NAMES, NUM_CLASSES
from egnet.evaluation.per_image import PER_IMAGE_COUNTS_FILE, PerImageCounts, read_per_image
from egnet.evaluation.worst import PER_IMAGE_FILE
from egnet.metrics.bootstrap import paired_bootstrap
from egnet.tracking.access import is_denied
from egnet.tracking.client import mlflow_error

#: the paper's EGNet numbers on NightCity (Table 1, "N" columns)
PAPER = {"mIoU": paper.EGNET_MIOU, "mEF1": paper.EGNET_MEF1}
EVAL_DIR = "evaluation"
CONFUSION_FILE = "confusion.npy"
PANELS = ("input", "ground truth", "prediction", "predicted exposure")
TOP_CONFUSED = 5


# --------------------------------------------------------------------------- reading runs


@dataclass
class RunData:
    run_id: str
    name: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, Any]                       # evaluation/metrics.json
    counts: np.ndarray | None = None              # [10, C, C+1]
    gallery: list[dict[str, Any]] = field(default_factory=list)
    qualitative: str | None = None                # data URI of qualitative.png (gallery fallback)
    missing: list[str] = field(default_factory=list)
    per_image: PerImageCounts | None = None       # per_image_counts.npz (paired comparison with --vs)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.run_id[:8]})"


def load_run(client: Any, run_id: str, dst: Path) -> RunData:
    """A run's evaluation artifacts (downloaded into ``dst``) and its params/tags."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_denied(exc):
            raise mlflow_error(f"MLflow run {run_id}", exc) from None
        raise DataError(f"MLflow run {run_id}: {exc.error_code}") from None
    names = {f.path for f in client.list_artifacts(run_id, EVAL_DIR)}
    if f"{EVAL_DIR}/metrics.json" not in names:
        raise DataError(f"MLflow run {run_id} has no {EVAL_DIR}/metrics.json: "
                        "run `egnet evaluate --model <its train dir>` first (it logs into the training run)")
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=EVAL_DIR, dst_path=str(dst),
                                                     tracking_uri=mlflow.get_tracking_uri()))
    data = RunData(run_id, run.info.run_name or run_id[:8], dict(run.data.params), dict(run.data.tags),
                   read_json(local / "metrics.json", "evaluation metrics"))
    if (local / CONFUSION_FILE).is_file():
        data.counts = np.load(local / CONFUSION_FILE)
        if data.counts.shape != (NUM_BINS, NUM_CLASSES, NUM_CLASSES + 1):
            raise DataError(f"run {run_id}: {EVAL_DIR}/{CONFUSION_FILE} has shape {data.counts.shape}, "
                            f"expected [{NUM_BINS}, {NUM_CLASSES}, {NUM_CLASSES + 1}]")
    else:
        data.missing.append(CONFUSION_FILE)
    if (local / PER_IMAGE_FILE).is_file():
        per_image = read_json(local / PER_IMAGE_FILE, "per-image scores")
        for w in per_image.get("worst", []):
            mean_v = next((e.get("mean_exposure") for e in per_image.get("images", [])
                           if e["stem"] == w["stem"]), None)
            panels = [{"name": title, "uri": data_uri(local / w["files"][key])}
                      for title, key in zip(PANELS, ("input", "gt", "pred", "exposure"), strict=True)
                      if key in w["files"]]
            data.gallery.append({"rank": w["rank"], "stem": w["stem"], "miou": w["mIoU"],
                                 "mean_exposure": mean_v, "panels": panels})
    else:
        data.missing.append(PER_IMAGE_FILE)
    if (local / "qualitative.png").is_file():
        data.qualitative = data_uri(local / "qualitative.png")
    if (local / PER_IMAGE_COUNTS_FILE).is_file():
        data.per_image = read_per_image(local / PER_IMAGE_COUNTS_FILE)
    return data


# --------------------------------------------------------------------------- sections


def _cell(run: str, key: str, v: float | int | None, digits: int = 4) -> dict[str, Any]:
    raw = "" if v is None else (str(v) if isinstance(v, int) else repr(float(v)))
    return {"run": run, "key": key, "raw": raw, "text": fmt(v, digits) if not isinstance(v, int) else str(v)}


def _delta(a: float | None, b: float | None) -> dict[str, Any]:
    if a is None or b is None:
        return {"text": "-", "cls": "na"}
    d = a - b
    return {"text": f"{d:+.4f}", "cls": "pos" if d > 0 else "neg" if d < 0 else ""}


def metric_table(table_id: str, first: str, rows: list[tuple[str, str, list[float | None], float | None]],
                 runs: list[RunData], paper: bool) -> dict[str, Any]:
    """Rows (label, key, value per run, paper value) -> the template's table: a column per run,
    ``delta`` (first run - second) with two runs, and the paper's value + delta with ``paper``."""
    header = ([r.label for r in runs] + (["Δ (first − second)"] if len(runs) > 1 else [])
              + (["paper", "Δ vs paper"] if paper else []))
    out_rows = []
    for label, key, values, ref in rows:
        cells = [_cell(r.run_id, key, v) for r, v in zip(runs, values, strict=True)]
        if len(runs) > 1:
            cells.append(_delta(values[0], values[1]))
        if paper:
            cells += [{"text": fmt(ref)}, _delta(values[0], ref)]
        out_rows.append({"name": label, "cells": cells})
    return {"id": table_id, "first": first, "header": header, "rows": out_rows}


def headline(runs: list[RunData]) -> dict[str, Any]:
    rows = [(k, k, [r.metrics.get(k) for r in runs], PAPER.get(k)) for k in ("mIoU", "mEF1", "pixel_acc")]
    table = metric_table("headline", "metric", rows, runs, paper=True)
    blanks = len(table["header"]) - len(runs)
    table["rows"].append({"name": "test images",
                          "cells": [_cell(r.run_id, "num_images", int(r.metrics["num_images"]))
                                    for r in runs] + [{"text": ""}] * blanks})
    return table


def paper_ef1() -> tuple[float, ...]:
    return paper.EGNET_EF1


def ef1_table(runs: list[RunData]) -> dict[str, Any]:
    ref = paper_ef1()
    rows = [(BIN_NAMES[g], f"EF1.{g}", [(r.metrics.get("EF1") or [None] * NUM_BINS)[g] for r in runs], ref[g])
            for g in range(NUM_BINS)]
    return metric_table("ef1", "exposure bin", rows, runs, paper=True)


def iou_table(runs: list[RunData]) -> dict[str, Any]:
    rows = [(c, f"IoU.{c}", [r.metrics.get("IoU", {}).get(c) for r in runs], None) for c in CLASS_NAMES]
    return metric_table("iou", "class", rows, runs, paper=False)


def confused_pairs(counts: np.ndarray, g: int, top: int = TOP_CONFUSED) -> list[dict[str, Any]]:
    """The ``top`` (gt, predicted) class pairs with the most wrongly predicted pixels in bin ``g``;
    share = of the gt class's labelled pixels in that bin."""
    c = counts.shape[1]
    mat = counts[g, :, :c].astype(np.int64)
    gt_pixels = counts[g].sum(axis=1)
    off = mat.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:top]
    rows = []
    for flat in order:
        i, j = divmod(int(flat), c)
        if off[i, j] == 0:
            break
        rows.append({"gt": CLASS_NAMES[i], "pred": CLASS_NAMES[j], "pixels": int(off[i, j]),
                     "share": float(off[i, j] / gt_pixels[i])})
    return rows


def extreme_bins(counts: np.ndarray) -> list[tuple[int, str]]:
    """(bin, title) of the darkest and brightest bins holding labelled pixels."""
    filled = [g for g in range(NUM_BINS) if counts[g].sum() > 0]
    if not filled:
        return []
    lo, hi = filled[0], filled[-1]
    out = [(lo, f"darkest bin {BIN_NAMES[lo]}"
            + ("" if lo == 0 else " (lower bins have no labelled pixels)"))]
    if hi != lo:
        out.append((hi, f"brightest bin {BIN_NAMES[hi]}" + ("" if hi == NUM_BINS - 1 else
                                                             " (higher bins have no labelled pixels)")))
    return out


def charts(runs: list[RunData]) -> dict[str, str]:
    """EF1 per bin (bars per run, the paper's Table 2 EGNet row as a line) and IoU per class, as data URIs."""
    ef1 = bar_figure(BIN_NAMES, {r.label: r.metrics.get("EF1") or [None] * NUM_BINS for r in runs}, None,
                     "EF1", xlabel="exposure (HSV V)", reference=("paper EGNet (Table 2)", paper_ef1()),
                     ylim=(0, 1.05))
    iou = bar_figure(CLASS_NAMES,
                     {r.label: [r.metrics.get("IoU", {}).get(c) for c in CLASS_NAMES] for r in runs},
                     None, "IoU", ylim=(0, 1.0))
    return {"ef1": data_uri(png_bytes(ef1), "image/png"), "iou": data_uri(png_bytes(iou), "image/png")}


def paired_section(runs: list[RunData], cfg: Config) -> dict[str, Any] | None:
    """RUN - VS with intervals (the gate's paired bootstrap) when both runs have per-image counts of
    the same test images; {"note": why not} otherwise; None for a single run."""
    if len(runs) < 2:
        return None
    first, second = runs[0], runs[1]
    missing = [r.run_id for r in runs if r.per_image is None]
    if missing:
        return {"note": f"no paired comparison: run(s) {', '.join(missing)} have no "
                        f"{EVAL_DIR}/{PER_IMAGE_COUNTS_FILE} (re-run `egnet evaluate`)."}
    assert first.per_image is not None and second.per_image is not None
    try:
        base = second.per_image.aligned_to(first.per_image.stems)
    except ValueError:
        return {"note": "no paired comparison: the two evaluations are not on the same test images "
                        f"({first.per_image.num_images} and {second.per_image.num_images} images)."}
    reg = cfg.register
    b = paired_bootstrap(base.counts, first.per_image.counts, resamples=reg.bootstrap_resamples,
                         confidence=reg.confidence, seed=reg.bootstrap_seed, average=cfg.evaluate.ef1_average)
    flagged = [i.point is not None and -i.point > reg.max_bin_ef1_drop for i in b.ef1]
    conf = f"{int(round(100 * b.confidence))}%"
    fig = interval_figure(BIN_NAMES, [i.point for i in b.ef1], [i.lo for i in b.ef1], [i.hi for i in b.ef1],
                          f"EF1 per exposure bin, {conf} interval\n{first.label} - {second.label}",
                          "EF1 difference", xlabel="exposure (HSV V)",
                          limit=(f"largest drop allowed (register.max_bin_ef1_drop {reg.max_bin_ef1_drop})",
                                 -reg.max_bin_ef1_drop), flagged=flagged)
    rows = []
    for name, key, i in [("mIoU", "mIoU", b.miou), ("mEF1", "mEF1", b.mef1),
                         *((f"EF1 {BIN_NAMES[g]}", f"EF1.{g}", b.ef1[g]) for g in range(NUM_BINS))]:
        cells = [_cell(first.run_id, f"paired.{key}.{part}", v)
                 for part, v in (("point", i.point), ("lo", i.lo), ("hi", i.hi))]
        beyond = key.startswith("EF1.") and flagged[int(key[4:])]
        rows.append({"name": name, "cells": [*cells, {"text": "drop beyond the limit" if beyond else ""}]})
    return {"chart": data_uri(png_bytes(fig), "image/png"), "bootstrap": b.to_dict(),
            "text": (f"Paired bootstrap over the {b.num_images} common test images ({b.resamples} resamples, "
                     f"seed {b.seed}): the same resampled images for both runs; {conf} percentile "
                     f"intervals of {first.label} - {second.label}."),
            "table": {"id": "paired", "first": "difference (first - second)",
                      "header": ["point", f"{conf} low", f"{conf} high", ""], "rows": rows}}


def _run_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    def param(r: RunData, *keys: str) -> str:
        return "/".join(r.params.get(k, "?") for k in keys)

    rows = [("run id", lambda r: r.run_id), ("model", lambda r: param(r, "model.variant", "model.backbone")),
            ("iterations", lambda r: r.params.get("train.iterations", "?")),
            ("test images", lambda r: str(r.metrics.get("num_images"))),
            ("EF1 average", lambda r: r.metrics.get("ef1_average", "?"))]
    rows += [(t, lambda r, t=t: r.tags.get(t, "-"))
             for t in ("git_commit", "data_version", "test_data_version", "params_hash")]
    return [{"name": n, "texts": [fn(r) for r in runs]} for n, fn in rows]


def render(runs: list[RunData], cfg: Config | None = None) -> tuple[str, dict[str, Any]]:
    """The HTML page and the data behind it for ``runs`` (first = RUN_ID, second = --vs); ``cfg``
    (its ``register`` and ``evaluate.ef1_average``) for the paired comparison of two runs."""
    import markupsafe

    from egnet.evaluation.report_template import TABLE_MACRO, TEMPLATE

    notes = []
    views = []
    for r in runs:
        view: dict[str, Any] = {"key": r.run_id, "label": r.label, "gallery": r.gallery,
                                "qualitative": r.qualitative, "confused": None}
        if r.counts is not None:
            view["confused"] = [{"bin": g, "title": t, "rows": confused_pairs(r.counts, g)}
                                for g, t in extreme_bins(r.counts)]
        view["missing_confusion"] = (f"{EVAL_DIR}/{CONFUSION_FILE} is not in run {r.run_id}: its evaluation "
                                     "predates per-bin confusion counts; re-run `egnet evaluate`.")
        view["missing_gallery"] = (f"{EVAL_DIR}/{PER_IMAGE_FILE} is not in run {r.run_id}: "
                                   "no per-image scores; "
                                   + ("evenly spaced test images below instead." if r.qualitative else
                                      "re-run `egnet evaluate`."))
        if r.metrics.get("labels_resized_nearest"):
            notes.append(f"{r.label}: {r.metrics['labels_resized_nearest']} NightCity+ label(s) "
                         "at 2x the image size were resized nearest-neighbour.")
        views.append(view)
    data = {"runs": [{"run_id": r.run_id, "name": r.name, "metrics": {k: r.metrics.get(k) for k in (
        "mIoU", "mEF1", "pixel_acc", "EF1", "IoU", "num_images", "ef1_average", "num_pixels_per_bin")},
        "confused": v.get("confused"),
        "worst": [{k: g[k] for k in ("rank", "stem", "miou")} for g in r.gallery],
        "missing": r.missing} for r, v in zip(runs, views, strict=True)],
        "paper": {**PAPER, "EF1": list(paper_ef1())}}
    paired = paired_section(runs, cfg) if cfg is not None else None
    if paired is not None:
        data["paired"] = paired.get("bootstrap") or {"note": paired["note"]}
    title = "EGNet evaluation: " + " vs ".join(r.label for r in runs)
    page = html.render(
        TABLE_MACRO + TEMPLATE,
        title=title, generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        protocol=runs[0].metrics.get("protocol", {}).get("description", "-"), runs=views,
        run_rows=_run_rows(runs),
        notes=notes, headline=headline(runs), ef1=ef1_table(runs), iou=iou_table(runs), charts=charts(runs),
        paired=paired,
        ef1_average=runs[0].metrics.get("ef1_average", "weighted"), panel_columns=len(PANELS),
        # not executed; "</" escaped so the JSON cannot close the script element
        data_json=markupsafe.Markup(json.dumps(data, allow_nan=False).replace("</", "<\\/")),
    )
    return page, data


# --------------------------------------------------------------------------- entry points


def build_report(run_id: str, cfg: Config, out: str | Path, vs: str | None = None, log: bool = True) -> Path:
    """Write ``out/report.html`` (+ report.json) for ``run_id`` (and ``vs``); log it into ``run_id``'s run
    as ``report/report.html`` (``report/vs_<vs>.html``) when ``log``. Returns the HTML path."""
    import mlflow

    from egnet.tracking.runs import connect_mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download is noise here
    client = mlflow.MlflowClient(tracking_uri=connect_mlflow(cfg, read_only=True))
    with tempfile.TemporaryDirectory(prefix="egnet-report-") as tmp:
        runs = [load_run(client, rid, Path(tmp) / rid) for rid in [run_id, *([vs] if vs else [])]]
    for r in runs:
        if r.missing:
            print(f"egnet report: warning: run {r.run_id} lacks "
                  f"{', '.join(f'{EVAL_DIR}/{m}' for m in r.missing)}; "
                  "the page says so", file=sys.stderr)
    page, data = render(runs, cfg)
    out = Path(out)
    with atomic_dir(out) as tmp_out:
        (tmp_out / "report.html").write_text(page, encoding="utf-8")
        write_json(tmp_out / "report.json", data)
    if log:
        name = "report.html" if vs is None else f"vs_{vs}.html"
        with tempfile.TemporaryDirectory(prefix="egnet-report-") as tmp:
            (Path(tmp) / name).write_bytes((out / "report.html").read_bytes())
            client.log_artifact(run_id, str(Path(tmp) / name), artifact_path="report")
    return out / "report.html"


def main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet report RUN_ID [--vs RUN_ID] --out DIR [--no-log]`."""
    path = build_report(args.run_id, cfg, args.out, vs=args.vs, log=not args.no_log)
    logged = "" if args.no_log else f"; logged to run {args.run_id} under report/"
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB){logged}")
    return 0
