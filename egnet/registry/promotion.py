"""Champion/challenger promotion and rollback with MLflow 3 aliases (docs/registry.md).

The gate (:func:`gate`): a candidate (``challenger`` or ``--version``) replaces the
``champion`` only if its test mIoU (paper protocol) improves by at least
``register.min_delta_miou`` and its test mEF1 drops by at most ``register.max_mef1_drop``;
with no champion yet, any candidate with both metrics passes. Every decision (pass,
refusal, forced, rollback) is written as tags ``promotion.<UTC time>`` and
``last_decision`` (JSON: metrics side by side, rule, who, when) on the versions involved.

Alias invariant: ``champion`` != ``previous-champion``. :func:`move_champion` keeps it
after every single registry call (drop previous-champion only when it names the
version about to become champion, move champion, then set previous-champion), checks
the champion is still the one the decision was made against, and re-reads afterwards
to detect (and repair) a concurrent writer. The registry lock (``register.lock_uri`` or
``$EGNET_REGISTRY_LOCK``: a file lock or an S3 lease, :mod:`egnet.registry.locking`) is held around
the whole decision and move, so with it every decision is made against the champion it
replaces; without one two racing commands can still lose one promotion from the history
(never break the invariant for long: see docs/registry.md, "Racing").
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError, EgnetError, GateRefused
from egnet.core.text import fmt, fmt_delta, render_table
from egnet.registry.locking import NO_LOCK, LockSpec, lock_spec, registry_lock
from egnet.registry.versions import aliases_of, version_metrics
from egnet.tracking.client import client_for, mlflow_errors
from egnet.tracking.registered import CHALLENGER, CHAMPION, PREVIOUS


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


# --------------------------------------------------------------------------- alias moves


def move_champion(client: Any, name: str, new: str, expect_champion: str | None) -> str | None:
    """Make ``new`` champion and the current champion previous-champion, keeping the invariant
    (champion != previous-champion) after every single call. Returns the old champion.

    Raises EgnetError when the champion is not ``expect_champion`` any more (someone moved
    it since the decision) or when the re-read after the move shows a concurrent change.
    Callers hold the registry lock (:func:`promote`, :func:`rollback`).
    """
    now = aliases_of(client, name)
    old = now.get(CHAMPION)
    if old != expect_champion:
        raise EgnetError(f"{name}: champion changed from {expect_champion} to {old} while deciding; re-run")
    if old == new:
        return old
    if now.get(PREVIOUS) == new:               # new is about to be champion: it cannot stay previous
        client.delete_registered_model_alias(name, PREVIOUS)
    client.set_registered_model_alias(name, CHAMPION, new)
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
    if now.get(CHALLENGER) == new:             # decided: no longer a pending challenger
        client.delete_registered_model_alias(name, CHALLENGER)
    after = aliases_of(client, name)
    if after.get(CHAMPION) is not None and after.get(CHAMPION) == after.get(PREVIOUS):
        client.delete_registered_model_alias(name, PREVIOUS)   # repair: never leave them equal
        raise EgnetError(f"{name}: concurrent alias update detected (champion and previous-champion were "
                         f"both v{after[CHAMPION]}); previous-champion removed, check `egnet models`")
    if after.get(CHAMPION) != new:
        raise EgnetError(f"{name}: concurrent alias update detected: "
                         f"champion is v{after.get(CHAMPION)}, not v{new}")
    return old


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


def record_decision(client: Any, name: str, versions: list[str], decision: dict[str, Any]) -> str:
    """Write the decision as ``promotion.<UTC time>`` and ``last_decision`` tags on ``versions``."""
    key = "promotion." + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    text = json.dumps(decision, sort_keys=True)
    for v in dict.fromkeys(versions):
        client.set_model_version_tag(name, v, key, text)
        client.set_model_version_tag(name, v, "last_decision", text)
    return key


# --------------------------------------------------------------------------- promote / rollback


def promote(client: Any, name: str, cfg: Config, version: str | None = None,
            dry_run: bool = False, force: bool = False) -> int:
    """The gate; prints the table; returns 0 (promoted / would promote / nothing to do).
    Raises GateRefused (exit 1) when refused without --force. Holds the registry lock
    (none for a dry run, which changes nothing) from reading the champion to moving it."""
    with registry_lock(name, NO_LOCK if dry_run else lock_spec(cfg)):
        return _promote(client, name, cfg, version, dry_run, force)


def _promote(client: Any, name: str, cfg: Config, version: str | None, dry_run: bool, force: bool) -> int:
    aliases = aliases_of(client, name)
    cand_v = str(version) if version else aliases.get(CHALLENGER)
    if cand_v is None:
        raise ConfigError(f"{name}: no --version given and no '{CHALLENGER}' alias "
                          "(run `egnet register` first)")
    from mlflow.exceptions import MlflowException

    try:
        cand = client.get_model_version(name, cand_v)
    except MlflowException:
        raise ConfigError(f"{name}: version {cand_v} does not exist") from None
    champ_v = aliases.get(CHAMPION)
    if champ_v == cand_v:
        print(f"{name} v{cand_v} is already the champion; nothing to do")
        return 0
    champ = client.get_model_version(name, champ_v) if champ_v else None
    cand_m = version_metrics(client, cand)
    champ_m = version_metrics(client, champ) if champ else None
    passed, rows = gate(cand_m, champ_m, cfg.register.min_delta_miou, cfg.register.max_mef1_drop)
    print(format_gate(rows, f"v{cand_v}", f"v{champ_v}" if champ_v else None))
    decision = {
        "action": "promote", "candidate": cand_v, "champion_before": champ_v,
        "candidate_metrics": cand_m, "champion_metrics": champ_m, "passed": passed,
        "forced": force and not passed,
        "rule": {"min_delta_miou": cfg.register.min_delta_miou, "max_mef1_drop": cfg.register.max_mef1_drop},
        "by": _who(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    verdict = "passes" if passed else ("refused, promoting anyway (--force)" if force else "refused")
    if dry_run:
        print(f"dry run: v{cand_v} {'would be promoted' if passed or force else 'would be refused'}; "
              "nothing changed")
        if not passed and not force:
            raise GateRefused(f"{name} v{cand_v}: gate would refuse (see table)")
        return 0
    if not passed and not force:
        record_decision(client, name, [cand_v], {**decision, "outcome": "refused"})
        raise GateRefused(f"{name} v{cand_v}: gate refused promotion over champion v{champ_v} (see table)")
    _move_and_record(client, name, cand_v, champ_v, decision, "promoted")
    print(f"gate {verdict}: {name} v{cand_v} is champion" +
          (f"; v{champ_v} is {PREVIOUS}" if champ_v else " (first champion)"))
    return 0


def _move_and_record(client: Any, name: str, new: str, old: str | None, decision: dict[str, Any],
                     outcome: str) -> None:
    """Move champion to ``new`` (``old`` becomes previous-champion) and record the decision on
    both versions: ``outcome``, or ``conflict: ...`` when another writer got in the way."""
    involved = [new] + ([old] if old else [])
    try:
        move_champion(client, name, new, old)
    except EgnetError as exc:
        record_decision(client, name, involved, {**decision, "outcome": f"conflict: {exc}"})
        raise
    record_decision(client, name, involved, {**decision, "outcome": outcome})


def rollback(client: Any, name: str, dry_run: bool = False, lock: LockSpec = NO_LOCK) -> int:
    """previous-champion becomes champion and the current champion becomes previous-champion
    (a swap: a second rollback undoes the first). No gate: an operator's decision.
    Holds the registry lock ``lock`` (the CLI passes ``lock_spec(cfg)``) unless ``dry_run``."""
    with registry_lock(name, NO_LOCK if dry_run else lock):
        return _rollback(client, name, dry_run)


def _rollback(client: Any, name: str, dry_run: bool) -> int:
    aliases = aliases_of(client, name)
    prev, champ = aliases.get(PREVIOUS), aliases.get(CHAMPION)
    if prev is None:
        raise GateRefused(f"{name}: no '{PREVIOUS}' alias: nothing to roll back to")
    after = f"; {PREVIOUS} becomes v{champ}" if champ else ""
    print(f"rollback: champion v{champ or '-'} -> v{prev}{after}")
    if dry_run:
        print("dry run: nothing changed")
        return 0
    decision = {"action": "rollback", "candidate": prev, "champion_before": champ,
                "by": _who(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _move_and_record(client, name, prev, champ, decision, "rolled back")
    print(f"{name} v{prev} is champion again{after}")
    return 0


def promote_main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet promote [--version V] [--dry-run] [--force] [--rollback]`."""
    name = args.name or cfg.register.model_name
    if args.rollback and (args.version or args.force):
        raise ConfigError("--rollback takes no --version or --force: it restores previous-champion")
    with mlflow_errors(f"promote {name}"):
        client = client_for(cfg)
        if args.rollback:
            return rollback(client, name, args.dry_run, lock_spec(cfg))
        return promote(client, name, cfg, args.version, args.dry_run, args.force)
