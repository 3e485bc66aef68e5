"""`egnet report`: a real `egnet train` + `egnet evaluate` in a real `mlflow server` (artifacts on
moto S3), the page read back (its numbers equal metrics.json), rendered in headless Chromium
without console errors, side by side with a second run, and with optional artifacts missing."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from egnet.cli import main
from egnet.data.exposure import NUM_BINS
from egnet.data.labels import CLASS_NAMES
from egnet.evaluation.report import confused_pairs
from egnet.evaluation.worst import WorstImages, image_scores
from egnet.metrics import metrics_from_counts
from tests.support import PARAMS, tiny_args, train_argv

CHROMIUM = Path("/usr/bin/chromium")
WORST_K = 3


# --------------------------------------------------------------------------- pure parts


def test_image_scores_match_sklearn() -> None:
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    target = rng.choice([0, 1, 2, 13, 255], size=(24, 40)).astype(np.uint8)
    pred = rng.choice([0, 1, 2, 8, 13], size=(24, 40)).astype(np.int64)
    got = image_scores(torch.from_numpy(pred), target)
    keep = target != 255
    present = sorted(set(target[keep]) | set(pred[keep]))          # classes in gt or prediction
    expected = jaccard_score(target[keep], pred[keep], labels=present, average="macro")
    assert got["mIoU"] == pytest.approx(expected)
    assert got["pixel_acc"] == pytest.approx((pred[keep] == target[keep]).mean())
    assert got["labelled_pixels"] == keep.sum()
    assert image_scores(pred, np.full_like(target, 255))["mIoU"] is None


def test_worst_images_keeps_the_k_lowest(tmp_path) -> None:
    worst = WorstImages(2)
    image = np.zeros((8, 1000, 3), np.uint8)                         # wider than the gallery: shrunk
    target = np.zeros((8, 1000), np.uint8)
    for i, wrong in enumerate([0.0, 0.5, 0.1, 0.9, 0.3]):           # fraction of pixels predicted wrong
        pred = np.zeros((8, 1000), np.int64)
        pred[:, : int(1000 * wrong)] = 1
        worst.add(f"Town_{i:04d}", image, target, pred, np.ones((8, 1000), np.float32))
    worst.write(tmp_path)
    doc = json.loads((tmp_path / "per_image.json").read_text())
    assert [w["stem"] for w in doc["worst"]] == ["Town_0003", "Town_0001"]  # 0.9, then 0.5 wrong
    assert doc["num_images"] == 5 and len(doc["images"]) == 5
    # mIoU with 10% wrong: road IoU 0.9, sidewalk IoU 0 -> 0.45
    assert doc["images"][2]["mIoU"] == pytest.approx(0.45)
    panel = cv2.imread(str(tmp_path / doc["worst"][0]["files"]["pred"]))
    assert panel.shape[1] == 480


def test_confused_pairs_hand_worked() -> None:
    counts = np.zeros((NUM_BINS, 19, 20), np.int64)
    counts[0, 0, 0] = 100      # road right
    counts[0, 0, 1] = 30       # road -> sidewalk
    counts[0, 2, 10] = 50      # building -> sky
    counts[0, 2, 19] = 7       # building -> not a class: counts in the building total, not as a pair
    rows = confused_pairs(counts, 0)
    assert [(r["gt"], r["pred"], r["pixels"]) for r in rows] == [("building", "sky", 50),
                                                                  ("road", "sidewalk", 30)]
    assert rows[0]["share"] == pytest.approx(50 / 57) and rows[1]["share"] == pytest.approx(30 / 130)
    assert confused_pairs(counts, 5) == []


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    uri: str
    root: Path
    runs: dict[str, str]        # "a" (10 iterations), "b" (2 iterations), "bare" (metrics.json only)
    metrics: dict[str, dict]    # run key -> evaluation metrics.json

    def args(self, *extra: str) -> list[str]:
        return [*extra, *tiny_args(f"tracking.uri={self.uri}")]

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)


def complete_evaluation(run_id: str, train_dir: Path, data: Path, split: Path, uri: str, out: Path) -> None:
    """What `egnet evaluate` is asked to save beside metrics.json (confusion.npy, per_image.json,
    worst/), computed the way it computes metrics, for an evaluate that does not save them yet."""
    import mlflow

    from egnet.core.config import load_config
    from egnet.data import layout
    from egnet.data.exposure import bin_index_torch
    from egnet.data.labels import to_train_ids
    from egnet.evaluation import inference
    from egnet.metrics import ExposureConfusion

    cfg = load_config(PARAMS, "tiny")   # as `tiny_args()` gives evaluate
    loaded = inference.load(str(train_dir), cfg, torch.device("cpu"))
    pairs = layout.select(layout.pairs_by_stem(data), layout.read_split_list(split / "test.txt"), "test.txt")
    acc, worst = ExposureConfusion(19), WorstImages(WORST_K)
    for pair in pairs:
        image = layout.read_image(pair.image)
        label, _ = layout.read_label(pair.label, cfg.data.image_size)
        target = torch.from_numpy(to_train_ids(label))
        p = inference.predict(loaded.model, inference.to_tensor(image, loaded.device),
                              (label.shape[1], label.shape[0]), cfg.evaluate.infer_size)["paper"]
        acc.update(p.train_ids, target, bin_index_torch(torch.from_numpy(image).permute(2, 0, 1)))
        worst.add(pair.stem, image, target, p.train_ids, p.exposure)
    out.mkdir(parents=True)
    np.save(out / "confusion.npy", acc.counts())
    worst.write(out)
    mlflow.MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(out), artifact_path="evaluation")


@pytest.fixture(scope="module")
def world(mlflow_server, synth_root, split_dir, tmp_path_factory) -> Iterator[World]:
    # mlflow.set_tracking_uri (called by every in-process step) also sets MLFLOW_TRACKING_URI in
    # os.environ, which would outlive this module's server: restore it when the module ends
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        yield _make_world(mlflow_server.uri, synth_root, split_dir, tmp_path_factory.mktemp("report"))


def _make_world(uri: str, synth_root: Path, split_dir: Path, root: Path) -> World:
    w = World(uri, root, {}, {})
    for key, iterations in (("a", 10), ("b", 2)):
        assert main(train_argv(synth_root, split_dir, root / key, f"train.iterations={iterations}",
                               f"tracking.uri={uri}", resume=False)) == 0
        w.runs[key] = (root / key / "mlflow_run_id").read_text().strip()
        assert main(w.args("evaluate", "--data", str(synth_root), "--split", str(split_dir),
                           "--model", str(root / key), "--out", str(root / f"eval_{key}"))) == 0
        w.metrics[key] = json.loads((root / f"eval_{key}" / "metrics.json").read_text())
    client = w.client()
    if not (root / "eval_a" / "confusion.npy").exists():
        complete_evaluation(w.runs["a"], root / "a", synth_root, split_dir, uri, root / "extra_a")
    # a run whose evaluation is only metrics.json (evaluated by an older egnet)
    bare = client.create_run(client.get_run(w.runs["a"]).info.experiment_id, run_name="bare").info.run_id
    client.log_artifact(bare, str(root / "eval_a" / "metrics.json"), artifact_path="evaluation")
    w.runs["bare"], w.metrics["bare"] = bare, w.metrics["a"]
    return w


class _Page(HTMLParser):
    """data-key/data-value cells by (data-run, data-key), the JSON blob, and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], str] = {}
        self.text_after: dict[tuple[str, str], str] = {}
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._blob = False
        self._last: tuple[str, str] | None = None
        self.blob = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "data-key" in a:
            self._last = (a.get("data-run", ""), a["data-key"])
            self.values[self._last] = a["data-value"]
        self.urls += [a[k] for k in ("src", "href") if a.get(k)]
        self._blob = tag == "script" and a.get("id") == "report-data"

    def handle_data(self, data):
        if self._blob:
            self.blob += data
        elif self._last is not None and data.strip():
            self.text_after.setdefault(self._last, data.strip())

    def handle_endtag(self, tag):
        self._blob = False


def _page(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _number(raw: str) -> float | None:
    return None if raw == "" else float(raw)


def _check_numbers(page: _Page, run_id: str, m: dict) -> None:
    for key in ("mIoU", "mEF1", "pixel_acc", "num_images"):
        assert _number(page.values[(run_id, key)]) == m[key], key
    for g in range(NUM_BINS):
        assert _number(page.values[(run_id, f"EF1.{g}")]) == m["EF1"][g]
    for c in CLASS_NAMES:
        assert _number(page.values[(run_id, f"IoU.{c}")]) == m["IoU"][c]


# --------------------------------------------------------------------------- end to end


def _download(w: World, run_id: str, path: str, dst: Path) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                    tracking_uri=w.uri))


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
def test_report_numbers_equal_metrics_json(world, tmp_path) -> None:
    run = world.runs["a"]
    out = tmp_path / "report"
    assert main(world.args("report", run, "--out", str(out))) == 0
    page = _page(out / "report.html")
    evaluation = _download(world, run, "evaluation", tmp_path / "dl")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    _check_numbers(page, run, metrics)
    blob = json.loads(page.blob)
    assert blob["runs"][0]["metrics"]["EF1"] == metrics["EF1"] and blob["runs"][0]["run_id"] == run
    assert blob["paper"]["EF1"] == [0.8690, 0.8751, 0.8819, 0.8819, 0.8828,
                                    0.8814, 0.8739, 0.8738, 0.8689, 0.9155]

    # confusion.npy is the accumulator metrics.json came from
    counts = np.load(evaluation / "confusion.npy")
    again = metrics_from_counts(counts, metrics["num_images"], metrics["ef1_average"])
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-12)
    assert again["EF1"] == pytest.approx(metrics["EF1"], abs=1e-12)
    # the confused pairs on the page: recount the largest off-diagonal cells by brute force
    for entry in blob["runs"][0]["confused"]:
        g = entry["bin"]
        cells = sorted(((int(counts[g, i, j]), CLASS_NAMES[i], CLASS_NAMES[j])
                        for i in range(19) for j in range(19) if i != j and counts[g, i, j] > 0),
                       reverse=True)
        assert [r["pixels"] for r in entry["rows"]] == [c[0] for c in cells[:5]]
        for r in entry["rows"]:
            assert int(page.values[(run, f"confused.{g}.{r['gt']}.{r['pred']}")]) == counts[
                g, CLASS_NAMES.index(r["gt"]), CLASS_NAMES.index(r["pred"])]
    assert blob["runs"][0]["confused"][0]["bin"] == min(g for g in range(NUM_BINS) if counts[g].sum() > 0)

    # the gallery: the k lowest per-image mIoU, lowest first, each with its four panels
    per_image = json.loads((evaluation / "per_image.json").read_text())
    scored = [e for e in per_image["images"] if e["mIoU"] is not None]
    lowest = sorted(scored, key=lambda e: e["mIoU"])[:WORST_K]
    assert [g["stem"] for g in blob["runs"][0]["worst"]] == [e["stem"] for e in lowest]
    for e in lowest:
        assert _number(page.values[(run, f"image_mIoU.{e['stem']}")]) == e["mIoU"]

    # self-contained: only data: URIs, no script but the JSON blob, every image decodes
    assert page.urls and all(u.startswith("data:image/") for u in page.urls)
    assert "link" not in page.tags and "iframe" not in page.tags
    assert len(re.findall(r"<script\b", (out / "report.html").read_text())) == 1
    for u in page.urls:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(u.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.size > 0
    # logged into the run
    logged = _download(world, run, "report/report.html", tmp_path / "logged")
    assert logged.read_bytes() == (out / "report.html").read_bytes()


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
def test_vs_report_side_by_side_with_deltas(world, tmp_path) -> None:
    a, b = world.runs["a"], world.runs["b"]
    out = tmp_path / "vs"
    assert main(world.args("report", a, "--vs", b, "--out", str(out), "--no-log")) == 0
    page = _page(out / "report.html")
    _check_numbers(page, a, world.metrics["a"])
    _check_numbers(page, b, world.metrics["b"])
    html = (out / "report.html").read_text()
    delta = world.metrics["a"]["mIoU"] - world.metrics["b"]["mIoU"]
    assert f"{delta:+.4f}" in html
    names = {f.path for f in world.client().list_artifacts(a, "report")}
    assert f"report/vs_{b}.html" not in names           # --no-log


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
def test_missing_optional_artifacts_are_named_and_the_page_still_renders(world, tmp_path, capsys) -> None:
    bare = world.runs["bare"]
    out = tmp_path / "bare"
    assert main(world.args("report", bare, "--vs", world.runs["a"], "--out", str(out))) == 0
    err = capsys.readouterr().err
    assert "evaluation/confusion.npy" in err and "evaluation/per_image.json" in err
    html = (out / "report.html").read_text()
    assert "evaluation/confusion.npy is not in run" in html
    _check_numbers(_page(out / "report.html"), bare, world.metrics["bare"])
    logged = {f.path for f in world.client().list_artifacts(bare, "report")}
    assert f"report/vs_{world.runs['a']}.html" in logged


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
def test_run_without_evaluation_is_a_one_line_error(world, tmp_path, capsys) -> None:
    client = world.client()
    run = client.create_run(client.get_run(world.runs["a"]).info.experiment_id).info.run_id
    out = tmp_path / "none"
    assert main(world.args("report", run, "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert "evaluation/metrics.json" in err and len(err.strip().splitlines()) == 1 and not out.exists()


# --------------------------------------------------------------------------- headless Chromium


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with ``extra`` flags: one of --dump-dom / --screenshot makes it exit."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0"]
    # its own process group: on a hang, the renderer and GPU processes go too
    proc = subprocess.Popen([str(CHROMIUM), *flags, *extra, url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def console_messages(stderr: str) -> list[str]:
    """Chromium's log lines for page console output (console.*, uncaught exceptions)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
@pytest.mark.chromium
@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="/usr/bin/chromium missing (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(world, tmp_path) -> None:
    # the detector itself: a page that throws is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>throw new Error('kaput')</script></body></html>")
    caught = console_messages(chromium(bad.as_uri(), tmp_path, "--dump-dom").stderr)
    assert any("kaput" in ln for ln in caught)

    out = tmp_path / "vs"
    assert main(world.args("report", world.runs["a"], "--vs", world.runs["b"], "--out", str(out),
                           "--no-log")) == 0
    url = (out / "report.html").resolve().as_uri()
    dom = chromium(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == []
    for table in ("runs", "headline", "ef1", "iou"):
        assert f'id="{table}"' in dom.stdout
    # run a's gallery (run b's too once evaluate saves it)
    assert dom.stdout.count('class="panels"') >= WORST_K
    shot = tmp_path / "report.png"
    res = chromium(url, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000")
    assert res.returncode == 0 and console_messages(res.stderr) == []
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (4000, 1280)
    assert (img < 200).any(axis=2).mean() > 0.05             # something was drawn, not a blank page
