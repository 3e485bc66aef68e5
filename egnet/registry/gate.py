"""The promotion gate's rules (docs/registry.md, "The gate"): the point rule without a champion
(:func:`gate`), the three rules on a paired bootstrap of challenger - champion over the same test
images (:func:`bootstrap_rules`, :func:`compare`), and the tables the console and the decision
record show. Pure: no registry calls (:mod:`egnet.registry.promotion` makes those)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from egnet.core.config import Config
from egnet.core.text import fmt, fmt_delta, render_markdown, render_table
from egnet.data.exposure import BIN_NAMES
from egnet.metrics.bootstrap import BootstrapResult, Interval, paired_bootstrap
from egnet.registry.like_with_like import Evidence


@dataclass(frozen=True)
class GateRow:
    check: str
    champion: str
    candidate: str
    delta: str
    rule: str
    ok: bool


def gate(candidate: dict[str, float | None], champion: dict[str, float | None] | None,
         min_delta_miou: float, max_mef1_drop: float) -> tuple[bool, list[GateRow]]:
    """The promotion rule. ``candidate``/``champion``: {"mIoU", "mEF1"} (test, paper protocol).

    Pass iff both candidate metrics exist and, when there is a champion,
    ``cand.mIoU - champ.mIoU >= min_delta_miou`` and ``champ.mEF1 - cand.mEF1 <= max_mef1_drop``.
    """
    def ok_number(v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    rows: list[GateRow] = []
    c_iou, c_ef1 = candidate.get("mIoU"), candidate.get("mEF1")
    if champion is None:
        for key, v in (("test mIoU", c_iou), ("test mEF1", c_ef1)):
            rows.append(GateRow(key, "-", fmt(v), "-", "no champion yet: must be a number", ok_number(v)))
        return all(r.ok for r in rows), rows
    p_iou, p_ef1 = champion.get("mIoU"), champion.get("mEF1")
    d_iou = c_iou - p_iou if ok_number(c_iou) and ok_number(p_iou) else None
    d_ef1 = c_ef1 - p_ef1 if ok_number(c_ef1) and ok_number(p_ef1) else None
    rows.append(GateRow("test mIoU", fmt(p_iou), fmt(c_iou), fmt_delta(d_iou),
                        f"delta >= {min_delta_miou:+.4f}", d_iou is not None and d_iou >= min_delta_miou))
    rows.append(GateRow("test mEF1", fmt(p_ef1), fmt(c_ef1), fmt_delta(d_ef1),
                        f"delta >= {-max_mef1_drop:+.4f}", d_ef1 is not None and -d_ef1 <= max_mef1_drop))
    return all(r.ok for r in rows), rows


def format_gate(rows: list[GateRow], candidate: str, champion: str | None) -> str:
    head = ("check", f"champion {champion or '(none)'}", f"candidate {candidate}", "delta", "rule", "")
    body = [(r.check, r.champion, r.candidate, r.delta, r.rule, "ok" if r.ok else "FAIL") for r in rows]
    return render_table([head, *body])


# --------------------------------------------------------------------------- the bootstrap rules


@dataclass(frozen=True)
class RuleResult:
    """One rule of the gate: its verdict and the line the console shows."""

    rule: str                  # "mIoU" | "mEF1" | "EF1 per bin"
    param: str                 # the params.yaml key holding its threshold
    threshold: float
    passed: bool
    text: str
    failing_bins: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "param": self.param, "threshold": self.threshold, "passed": self.passed,
                "text": self.text, **({"failing_bins": [BIN_NAMES[g] for g in self.failing_bins]}
                                      if self.failing_bins else {})}


def _ci(i: Interval, confidence: float) -> str:
    return f"{int(round(100 * confidence))}% CI [{fmt_delta(i.lo)}, {fmt_delta(i.hi)}]"


def bootstrap_rules(b: BootstrapResult, min_delta_miou: float, max_mef1_drop: float,
                    max_bin_ef1_drop: float) -> list[RuleResult]:
    """The three rules on a paired bootstrap of challenger - champion (module docstring).

    An undefined difference (a metric neither model has, e.g. no labelled pixel at all) fails its
    rule. Bins without labelled pixels on the test images have no EF1 and are not judged; the
    failing bins are named darkest first.
    """
    rules = []
    for key, name, limit, param in (("mIoU", "mIoU", min_delta_miou, "register.min_delta_miou"),
                                    ("mEF1", "mEF1", -max_mef1_drop, "register.max_mef1_drop")):
        i = b.miou if key == "mIoU" else b.mef1
        ok = i.lo is not None and i.lo > limit
        values = f"champion {fmt(b.champion[key])} -> challenger {fmt(b.challenger[key])}"
        rules.append(RuleResult(name, param, limit, ok,
                                f"{name}: {values}, difference {fmt_delta(i.point)}, {_ci(i, b.confidence)}; "
                                f"lower bound > {limit:+.4f} ({param})"))
    drops = [(g, -i.point) for g, i in enumerate(b.ef1) if i.point is not None]
    failing = tuple(g for g, d in drops if d > max_bin_ef1_drop)
    if failing:
        text = (f"EF1 per bin: drops by more than {max_bin_ef1_drop:.4f} (register.max_bin_ef1_drop) in "
                + ", ".join(f"{BIN_NAMES[g]} ({fmt_delta(b.ef1[g].point)})" for g in failing))
    elif drops:
        g, d = max(drops, key=lambda x: x[1])
        text = (f"EF1 per bin: least favourable change {-d:+.4f} ({BIN_NAMES[g]}); no drop beyond "
                f"{max_bin_ef1_drop:.4f} (register.max_bin_ef1_drop)")
    else:
        text = "EF1 per bin: no bin has labelled pixels"
    rules.append(RuleResult("EF1 per bin", "register.max_bin_ef1_drop", max_bin_ef1_drop,
                            bool(drops) and not failing, text, failing))
    return rules


def decision_table(b: BootstrapResult, rules: list[RuleResult], champion: str, candidate: str) -> str:
    """The comparison as a Markdown table ops can paste: the headline metrics and every exposure
    bin, both versions' values on the same images, the difference, its interval, the rule."""
    conf = f"{int(round(100 * b.confidence))}% CI"
    by = {r.rule: r for r in rules}
    head = ("metric", f"champion {champion}", f"challenger {candidate}", "difference", conf, "rule", "result")
    rows: list[tuple[str, ...]] = [head]
    for key, i in (("mIoU", b.miou), ("mEF1", b.mef1)):
        r = by[key]
        rows.append((key, fmt(b.champion[key]), fmt(b.challenger[key]), fmt_delta(i.point),
                     f"[{fmt_delta(i.lo)}, {fmt_delta(i.hi)}]", f"lower bound > {r.threshold:+.4f}",
                     "ok" if r.passed else "FAIL"))
    bins = by["EF1 per bin"]
    for g, i in enumerate(b.ef1):
        judged = i.point is not None
        rows.append((f"EF1 {BIN_NAMES[g]}", fmt(b.champion["EF1"][g]), fmt(b.challenger["EF1"][g]),
                     fmt_delta(i.point), f"[{fmt_delta(i.lo)}, {fmt_delta(i.hi)}]",
                     f"drop <= {bins.threshold:.4f}" if judged else "no pixels",
                     ("FAIL" if g in bins.failing_bins else "ok") if judged else "-"))
    return render_markdown(rows)


def compare(champ: Evidence, cand: Evidence, cfg: Config) -> tuple[BootstrapResult, list[RuleResult]]:
    """Paired bootstrap of ``cand`` - ``champ`` over the challenger's test images, and the rules."""
    reg = cfg.register
    a = champ.data.aligned_to(cand.data.stems)
    result = paired_bootstrap(a.counts, cand.data.counts, resamples=reg.bootstrap_resamples,
                              confidence=reg.confidence, seed=reg.bootstrap_seed,
                              average=cfg.evaluate.ef1_average)
    return result, bootstrap_rules(result, reg.min_delta_miou, reg.max_mef1_drop, reg.max_bin_ef1_drop)
