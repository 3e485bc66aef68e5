"""`egnet evaluate`'s per-image evidence (per_image_counts.npz) and its one counting pass per image;
`egnet score` over worker processes. No MLflow server (the gate's use of the evidence: tests/registry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from egnet.cli import main
from egnet.core.errors import DataError
from egnet.evaluation.per_image import PerImageCounts, read_per_image, write_per_image
from egnet.metrics import counting, image_scores, metrics_from_counts
from tests.support import tiny_args


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "train", 1)


def test_evaluate_writes_the_per_image_counts_it_scored_with_one_pass_per_image(
        synth_root, split_dir, checkpoint, tmp_path, monkeypatch) -> None:
    passes = []
    real = counting.count_table
    monkeypatch.setattr(counting, "count_table", lambda *a, **k: passes.append(1) or real(*a, **k))
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(synth_root), "--split", str(split_dir), "--model", str(checkpoint),
                 "--out", str(out),
                 *tiny_args("evaluate.extra_modes=[flip]", "evaluate.num_qualitative=2")]) == 0
    stems = (split_dir / "test.txt").read_text().split()
    assert len(passes) == 2 * len(stems)             # paper + flip: one counting pass each, per image

    ev = read_per_image(out / "per_image_counts.npz")
    assert ev.stems == stems and ev.counts.dtype == np.int32 and ev.counts.shape == (len(stems), 10, 19, 20)
    assert np.array_equal(ev.total(), np.load(out / "confusion.npy"))
    doc = json.loads((out / "metrics.json").read_text())
    again = metrics_from_counts(ev.total(), len(stems), doc["ef1_average"])
    assert again["mIoU"] == doc["mIoU"] and again["EF1"] == doc["EF1"]
    # WorstImages ranked the images from the same counts
    per = {e["stem"]: e for e in json.loads((out / "per_image.json").read_text())["images"]}
    for stem, counts in zip(ev.stems, ev.counts, strict=True):
        assert per[stem]["mIoU"] == image_scores(counts)["mIoU"]
        assert per[stem]["labelled_pixels"] == int(counts.sum())
        assert 0.0 <= per[stem]["mean_exposure"] <= 1.0


def test_per_image_file_round_trip_and_refusals(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = PerImageCounts(["b", "a", "c"], rng.integers(0, 1000, (3, 10, 19, 20)))
    write_per_image(tmp_path / "p.npz", data)
    back = read_per_image(tmp_path / "p.npz")
    assert back.stems == ["b", "a", "c"] and np.array_equal(back.counts, data.counts)
    moved = back.aligned_to(["a", "b", "c"])
    assert np.array_equal(moved.counts[0], data.counts[1])
    with pytest.raises(ValueError, match="not the same test images"):
        back.aligned_to(["a", "b"])
    with pytest.raises(ValueError, match="expected"):
        PerImageCounts(["a"], np.zeros((1, 10, 19, 19)))
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DataError, match="bad.npz: not a per-image counts file"):
        read_per_image(tmp_path / "bad.npz")


def test_score_in_worker_processes_equals_one_process(synth_root, split_dir, checkpoint, tmp_path) -> None:
    from egnet.data import layout
    from egnet.evaluation.score import score

    stems = (split_dir / "test.txt").read_text().split()
    images = [str(layout.image_path(synth_root, "val", s)) for s in stems]
    pred = tmp_path / "pred"
    assert main(["predict", *images, "--model", str(checkpoint), "--out", str(pred), *tiny_args()]) == 0
    one = score(pred, synth_root, stems, (256, 128), workers=1)
    two = score(pred, synth_root, stems, (256, 128), workers=2)
    assert one == two and one["num_images"] == len(stems)
