"""The promotion gate's three rules on a paired bootstrap (egnet/registry/promotion.py), no server.

Per-image confusions made by hand, so every difference is known: road pixels only, misses
predicted as "no class", so mIoU = the pooled road accuracy and EF1 of a bin = 2a / (1 + a).
"""

from __future__ import annotations

import numpy as np
import pytest

from egnet.cli import main
from egnet.metrics.bootstrap import paired_bootstrap
from egnet.registry.gate import bootstrap_rules, decision_table, gate
from tests.support import tiny_args

C = 19
N = 60


def image(acc_by_bin: dict[int, float], px: int = 1000) -> np.ndarray:
    c = np.zeros((10, C, C + 1), np.int64)
    for g, a in acc_by_bin.items():
        tp = round(px * a)
        c[g, 0, 0], c[g, 0, C] = tp, px - tp
    return c


def run(champion: np.ndarray, challenger: np.ndarray, min_delta=0.0, max_mef1_drop=0.01, max_bin_drop=0.02):
    b = paired_bootstrap(champion, challenger, resamples=300, confidence=0.9, seed=0)
    return b, bootstrap_rules(b, min_delta, max_mef1_drop, max_bin_drop)


def f1(a: float) -> float:
    return 2 * a / (1 + a)


def test_bin_guard_refuses_a_challenger_that_loses_the_darkest_bin() -> None:
    """mIoU +0.036 and mEF1 +0.018 on every image, but [0.0,0.1)'s EF1 falls by 0.05."""
    champ = np.stack([image({0: 0.80, 5: 0.80})] * N)
    chall = np.stack([image({0: 0.722, 5: 0.95})] * N)
    b, rules = run(champ, chall)
    by = {r.rule: r for r in rules}
    assert b.miou.lo == pytest.approx(0.036, abs=1e-9) and by["mIoU"].passed
    assert b.mef1.lo > 0 and by["mEF1"].passed
    assert b.ef1[0].point == pytest.approx(f1(0.722) - f1(0.80), abs=1e-12)
    assert -0.051 < b.ef1[0].point < -0.05
    guard = by["EF1 per bin"]
    assert not guard.passed and guard.failing_bins == (0,)
    assert "[0.0,0.1) (-0.0503)" in guard.text and "register.max_bin_ef1_drop" in guard.text
    # the point rule of old would have promoted it
    assert gate(b.challenger, b.champion, 0.0, 0.01)[0]


def test_noisier_challenger_with_a_higher_mean_is_refused_where_the_point_rule_passes() -> None:
    """+0.01 mIoU on average (71% and 91% images against 80% everywhere): inside the noise."""
    champ = np.stack([image({0: 0.80, 5: 0.80})] * 100)
    noisy = np.stack([image({0: 0.71, 5: 0.71}) if i % 2 else image({0: 0.91, 5: 0.91}) for i in range(100)])
    b, rules = run(champ, noisy)
    assert gate(b.challenger, b.champion, 0.0, 0.01)[0]                 # the point rule: +0.01 >= 0
    assert [r.passed for r in rules] == [False, True, True]             # refused by the mIoU rule only
    assert "lower bound > +0.0000 (register.min_delta_miou)" in rules[0].text
    steady = np.stack([image({0: 0.81, 5: 0.81})] * 100)                # +0.01 on every image passes
    assert all(r.passed for r in run(champ, steady)[1])


def test_failing_bins_are_named_darkest_first_and_within_the_limit_pass() -> None:
    champ = np.stack([image({0: 0.8, 1: 0.8, 7: 0.8})] * N)
    chall = np.stack([image({0: 0.75, 1: 0.78, 7: 0.70})] * N)   # drops: 0.029, 0.011, 0.065
    _, rules = run(champ, chall)
    guard = rules[-1]
    assert guard.failing_bins == (0, 7)
    assert guard.text.index("[0.0,0.1)") < guard.text.index("[0.7,0.8)") and "[0.1,0.2)" not in guard.text
    _, rules = run(champ, chall, max_bin_drop=0.07)
    assert rules[-1].passed and "no drop beyond 0.0700" in rules[-1].text


def test_mef1_rule_reads_the_lower_bound() -> None:
    champ = np.stack([image({0: 0.8})] * N)
    noisy = np.stack([image({0: 0.70 if i % 2 else 0.88}) for i in range(N)])   # mean -0.01
    b, rules = run(champ, noisy, min_delta=-1.0, max_mef1_drop=0.01)
    assert b.mef1.point > -0.01 > b.mef1.lo                                     # point inside, bound not
    assert [r.passed for r in rules] == [True, False, True]
    b, rules = run(champ, noisy, min_delta=-1.0, max_mef1_drop=0.05)
    assert rules[1].passed


def test_decision_table_is_markdown_with_every_bin() -> None:
    champ = np.stack([image({0: 0.80, 5: 0.80})] * N)
    chall = np.stack([image({0: 0.722, 5: 0.95})] * N)
    b, rules = run(champ, chall)
    table = decision_table(b, rules, "v1", "v2")
    lines = table.splitlines()
    assert lines[0] == "| metric | champion v1 | challenger v2 | difference | 90% CI | rule | result |"
    assert len(lines) == 2 + 2 + 10
    row = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines[2:]}
    assert row["mIoU"].endswith("| lower bound > +0.0000 | ok |") and "+0.0360" in row["mIoU"]
    assert row["EF1 [0.0,0.1)"].endswith("| drop <= 0.0200 | FAIL |")
    assert row["EF1 [0.5,0.6)"].endswith("| ok |")
    assert row["EF1 [0.9,1.0]"].endswith("| no pixels | - |")


def test_promote_data_and_split_go_together(capsys) -> None:
    assert main(["promote", "--data", "somewhere", *tiny_args()]) == 2
    assert "--data and --split go together" in capsys.readouterr().err
    assert main(["promote", "--rollback", "--data", "d", "--split", "s", *tiny_args()]) == 2
