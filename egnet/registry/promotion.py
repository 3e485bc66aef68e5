"""Champion/challenger promotion and rollback with MLflow 3 aliases (docs/registry.md).

The gate: a candidate (``challenger`` or ``--version``) replaces the ``champion`` only when,
on the SAME test images (:mod:`egnet.registry.like_with_like`: the champion is re-evaluated on
the challenger's test data when their test data differ), a paired bootstrap of challenger -
champion over those images (:mod:`egnet.metrics.bootstrap`; ``register.bootstrap_resamples``,
``register.bootstrap_seed``, two-sided ``register.confidence`` interval) passes three rules
(:func:`egnet.registry.gate.bootstrap_rules`):

- mIoU: the interval's lower bound > ``register.min_delta_miou``;
- mEF1: the interval's lower bound > ``-register.max_mef1_drop``;
- EF1 per exposure bin: no bin's EF1 drops by more than ``register.max_bin_ef1_drop``.

With no champion yet, any candidate with both metrics passes (:func:`egnet.registry.gate.gate`).
Every decision (pass, refusal, forced, rollback) is written as tags ``promotion.<UTC time>`` and
``last_decision`` (JSON: both test data versions, the point differences and intervals, the
per-bin differences, each rule, which rule decided, who, when) on the versions involved.

Alias invariant: ``champion`` != ``previous-champion``. :func:`move_champion` keeps it
after every single registry call (drop previous-champion only when it names the
version about to become champion, move champion, then set previous-champion), checks
the champion is still the one the decision was made against, and re-reads afterwards
to detect (and repair) a concurrent writer. The registry lock (``register.lock_uri`` or
``$EGNET_REGISTRY_LOCK``: a file lock or an S3 lease, :mod:`egnet.registry.locking`) is held around
the whole decision and move, so with it every decision is made against the champion it
replaces; without one two racing commands can still lose one promotion from the history
(never break the invariant for long: see docs/registry.md, "Racing").

MLflow permissions (docs/registry.md, "Who may do what"): setting an alias needs EDIT on the
registered model, deleting one MANAGE. A promotion of a new challenger only *sets* aliases
(``challenger`` stays on the promoted version: champion == challenger means "decided"), so the
pipeline's gate works with EDIT. Deleting aliases is left to what ops do with MANAGE: a
rollback (previous-champion becomes champion, so it is dropped first, and a ``challenger``
left on the demoted version is removed so a plain ``egnet promote`` cannot bring it back), and
promoting the version that is previous-champion.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from datetime import datetime, timezone
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError, EgnetError, GateRefused
from egnet.metrics.bootstrap import BootstrapResult
from egnet.registry.gate import RuleResult, compare, decision_table, format_gate, gate
from egnet.registry.like_with_like import NotComparable, challenger_evidence, champion_evidence
from egnet.registry.locking import NO_LOCK, LockSpec, lock_spec, registry_lock
from egnet.registry.versions import aliases_of, version_metrics
from egnet.tracking.access import is_denied
from egnet.tracking.client import client_for, mlflow_errors
from egnet.tracking.registered import CHALLENGER, CHAMPION, PREVIOUS

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
        client.delete_registered_model_alias(name, PREVIOUS)   # (MANAGE: rollbacks, ops' promotions)
    client.set_registered_model_alias(name, CHAMPION, new)
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
    # `challenger` stays where it is: on the new champion it reads "decided", and removing it
    # would need MANAGE, which the pipeline's gate (EDIT) does not have
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
            dry_run: bool = False, force: bool = False, data: str | None = None,
            split: str | None = None) -> int:
    """The gate; prints a line per rule (and with ``dry_run`` the table); returns 0 (promoted /
    would promote / nothing to do). Raises GateRefused (exit 1) when refused without --force,
    NotComparable (exit 1) when the champion has no evidence on the challenger's test images
    and no ``data``/``split`` to re-evaluate it on. Holds the registry lock (none for a dry run,
    which moves no alias) from reading the champion to moving it."""
    with registry_lock(name, NO_LOCK if dry_run else lock_spec(cfg)):
        return _promote(client, name, cfg, version, dry_run, force, data, split)


def _compare_versions(client: Any, name: str, cand: Any, champ: Any, cfg: Config, data: str | None,
                      split: str | None) -> tuple[dict[str, Any], bool, BootstrapResult, list[RuleResult]]:
    """Evidence of both versions on the same images, the bootstrap and the rules, printed."""
    cand_ev = challenger_evidence(client, name, cand)
    champ_ev = champion_evidence(client, name, champ, cand_ev, cfg, data, split)
    result, rules = compare(champ_ev, cand_ev, cfg)
    how = ("both evaluated on it" if champ_ev.kind == "evaluation"
           else f"champion re-evaluated on it in run {champ_ev.run_id}")
    print(f"like with like: champion v{champ.version} and challenger v{cand.version} on test data "
          f"{cand_ev.test_data_version}, the same {result.num_images} images ({how}); paired bootstrap, "
          f"{result.resamples} resamples, seed {result.seed}")
    for r in rules:
        print(f"rule {r.text}: {'ok' if r.passed else 'FAIL'}")
    passed = all(r.passed for r in rules)
    failed = [r.rule for r in rules if not r.passed]
    test_data = {"challenger": cand_ev.test_data_version,
                 "champion_registered": (champ.tags or {}).get("test_data_version"),
                 "champion_evidence": champ_ev.describe(), "challenger_evidence": cand_ev.describe(),
                 "compared_on": cand_ev.test_data_version, "num_images": result.num_images}
    fields = {"test_data": test_data, "comparison": result.to_dict(), "rules": [r.to_dict() for r in rules],
              "decided_by": "all rules passed" if passed else failed[0], "failed_rules": failed}
    return fields, passed, result, rules


def _promote(client: Any, name: str, cfg: Config, version: str | None, dry_run: bool, force: bool,
             data: str | None = None, split: str | None = None) -> int:
    aliases = aliases_of(client, name)
    cand_v = str(version) if version else aliases.get(CHALLENGER)
    if cand_v is None:
        raise ConfigError(f"{name}: no --version given and no '{CHALLENGER}' alias "
                          "(run `egnet register` first)")
    from mlflow.exceptions import MlflowException

    try:
        cand = client.get_model_version(name, cand_v)
    except MlflowException as exc:
        if is_denied(exc):
            raise
        raise ConfigError(f"{name}: version {cand_v} does not exist") from None
    champ_v = aliases.get(CHAMPION)
    if champ_v == cand_v:
        print(f"{name} v{cand_v} is already the champion; nothing to do")
        return 0
    champ = client.get_model_version(name, champ_v) if champ_v else None
    cand_m = version_metrics(client, cand)
    champ_m = version_metrics(client, champ) if champ else None
    reg = cfg.register
    decision: dict[str, Any] = {
        "action": "promote", "candidate": cand_v, "champion_before": champ_v,
        "candidate_metrics": cand_m, "champion_metrics": champ_m,
        "rule": {"min_delta_miou": reg.min_delta_miou, "max_mef1_drop": reg.max_mef1_drop,
                 "max_bin_ef1_drop": reg.max_bin_ef1_drop, "confidence": reg.confidence,
                 "bootstrap_resamples": reg.bootstrap_resamples, "bootstrap_seed": reg.bootstrap_seed},
        "by": _who(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if champ is None:
        passed, rows = gate(cand_m, None, reg.min_delta_miou, reg.max_mef1_drop)
        print(format_gate(rows, f"v{cand_v}", None))
        decision["decided_by"] = "first champion" if passed else "no test metrics"
    else:
        try:
            fields, passed, result, rules = _compare_versions(client, name, cand, champ, cfg, data, split)
        except NotComparable as exc:
            if not force:
                if not dry_run:
                    record_decision(client, name, [cand_v], {**decision, "passed": False, "forced": False,
                                                             "outcome": "refused", "decided_by": str(exc)})
                raise
            print(f"not compared: {exc}")
            passed, fields = False, {"decided_by": f"not compared: {exc}"}
        else:
            if dry_run:
                print(decision_table(result, rules, f"v{champ_v}", f"v{cand_v}"))
            if data is not None and fields["test_data"]["champion_evidence"]["kind"] == "evaluation":
                print("note: --data/--split not needed: the champion was evaluated on the challenger's "
                      "test data")
        decision.update(fields)
    decision["passed"] = passed
    decision["forced"] = force and not passed
    verdict = "passes" if passed else ("refused, promoting anyway (--force)" if force else "refused")
    if dry_run:
        print(f"dry run: v{cand_v} {'would be promoted' if passed or force else 'would be refused'}; "
              "no alias moved")
        if not passed and not force:
            raise GateRefused(f"{name} v{cand_v}: gate would refuse ({decision.get('decided_by')})")
        return 0
    if not passed and not force:
        record_decision(client, name, [cand_v], {**decision, "outcome": "refused"})
        raise GateRefused(f"{name} v{cand_v}: gate refused promotion over champion v{champ_v} "
                          f"({decision.get('decided_by')})")
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
    if champ is not None and aliases.get(CHALLENGER) == champ:
        # the rolled-back version must not come back through a plain `egnet promote`
        client.delete_registered_model_alias(name, CHALLENGER)
    print(f"{name} v{prev} is champion again{after}")
    return 0


def promote_main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet promote [--version V] [--data D --split S] [--dry-run] [--force] [--rollback]`."""
    name = args.name or cfg.register.model_name
    if args.rollback and (args.version or args.force or getattr(args, "data", None)):
        raise ConfigError("--rollback takes no --version, --force or --data: it restores previous-champion")
    if (getattr(args, "data", None) is None) != (getattr(args, "split", None) is None):
        raise ConfigError("--data and --split go together: the challenger's test data to re-evaluate "
                          "the champion on")
    with mlflow_errors(f"promote {name}"):
        client = client_for(cfg, read_only=True)  # no store: no model to promote; create none
        if args.rollback:
            return rollback(client, name, args.dry_run, lock_spec(cfg))
        return promote(client, name, cfg, args.version, args.dry_run, args.force,
                       data=getattr(args, "data", None), split=getattr(args, "split", None))
