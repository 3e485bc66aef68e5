"""`egnet report RUN --vs VS`: the paired comparison section (the promotion gate's bootstrap on the
two runs' per-image counts), from hand-made evaluations, no MLflow server."""

from __future__ import annotations

import numpy as np

from egnet.core.config import load_config
from egnet.evaluation.per_image import PerImageCounts
from egnet.evaluation.report import RunData, render
from egnet.metrics import metrics_from_counts
from tests.support import PARAMS

C = 19


def counts(acc_by_bin: dict[int, float], images: int = 20, px: int = 1000) -> np.ndarray:
    c = np.zeros((images, 10, C, C + 1), np.int64)
    for g, a in acc_by_bin.items():
        tp = round(px * a)
        c[:, g, 0, 0], c[:, g, 0, C] = tp, px - tp
    return c


def run(run_id: str, per_image: np.ndarray, stems: list[str]) -> RunData:
    m = metrics_from_counts(per_image.sum(axis=0), len(stems))
    return RunData(run_id, run_id, {}, {}, {**m, "protocol": {"description": "paper"}},
                   per_image=PerImageCounts(stems, per_image))


def test_vs_report_draws_the_paired_per_bin_differences() -> None:
    cfg = load_config(PARAMS)
    stems = [f"s{i}" for i in range(20)]
    first = run("aaaaaaaa01", counts({0: 0.722, 5: 0.95}), stems)
    second = run("bbbbbbbb02", counts({0: 0.80, 5: 0.80})[::-1].copy(), stems[::-1])  # other order
    page, data = render([first, second], cfg)
    paired = data["paired"]
    assert paired["num_images"] == 20 and paired["resamples"] == cfg.register.bootstrap_resamples
    dark = paired["EF1"][0]
    assert dark["name"] == "[0.0,0.1)" and dark["point"] == round(2 * 0.722 / 1.722 - 2 * 0.8 / 1.8, 6)
    assert dark["lo"] == dark["hi"] == dark["point"]             # identical images: no spread
    assert paired["mIoU"]["point"] == round(0.836 - 0.8, 6)
    assert "Paired comparison on the same test images" in page and "drop beyond the limit" in page
    assert 'data-key="paired.EF1.0.point"' in page


def test_vs_report_says_why_it_cannot_pair() -> None:
    cfg = load_config(PARAMS)
    first = run("aaaaaaaa01", counts({0: 0.8}), [f"s{i}" for i in range(20)])
    other = run("bbbbbbbb02", counts({0: 0.8}), [f"t{i}" for i in range(20)])
    page, data = render([first, other], cfg)
    assert "not on the same test images" in data["paired"]["note"] and "not on the same test images" in page
    older = RunData("cccccccc03", "c", {}, {}, dict(first.metrics))
    _, data = render([first, older], cfg)
    assert "cccccccc03" in data["paired"]["note"] and "per_image_counts.npz" in data["paired"]["note"]
    _, data = render([first], cfg)
    assert "paired" not in data
