"""Like with like: the champion's and the challenger's per-image evidence on the same test images.

The gate (:mod:`egnet.registry.promotion`) compares two versions image by image, so it needs
both versions' paper-protocol counts of every image of ONE test set
(``evaluation/per_image_counts.npz``, written by `egnet evaluate`). The challenger's comes
from its own evaluation (the run it was registered from). The champion's, in this order:

1. its own evaluation, when its run's ``test_data_version`` is the challenger's and it holds
   the same test images (a re-split of DVC-tracked data keeps the data version but changes
   the images: the stems are compared too);
2. a re-evaluation on that data recorded earlier (the pipeline's evaluate-champion step, or an
   earlier `egnet promote --data D --split S`): a version tag
   ``reevaluation.<digest of the data version>`` naming the run;
3. a re-evaluation now, when the caller passes the challenger's test data (``--data``/``--split``;
   checked: same data version, same test images): `egnet evaluate`'s code on the
   registered champion (the same device, autocast and decoding settings), logged as its own
   MLflow run (tags ``egnet.reevaluation_of`` = NAME/VERSION, ``egnet.source_run_id``,
   ``test_data_version``; files under ``evaluation/``) and recorded on the version as in 2.

Otherwise :class:`NotComparable` (exit 1) names both data versions.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import DataError, GateRefused
from egnet.evaluation.per_image import PER_IMAGE_COUNTS_FILE, PerImageCounts, read_per_image
from egnet.tracking.client import no_download_bars

EVALUATION_DIR = "evaluation"
REEVALUATION_PREFIX = "reevaluation."
REEVALUATION_OF = "egnet.reevaluation_of"       # run tag: NAME/VERSION the run re-evaluated
SOURCE_RUN = "egnet.source_run_id"              # run tag: the version's training run


class NotComparable(GateRefused):
    """The champion has no evidence on the challenger's test images (exit 1)."""


@dataclass
class Evidence:
    """A version's per-image counts on one test set, and where they come from."""

    version: str
    run_id: str                        # the run holding evaluation/per_image_counts.npz
    test_data_version: str | None
    kind: str                          # "evaluation" (the version's own) | "re-evaluation"
    data: PerImageCounts
    metrics: dict[str, float | None] = field(default_factory=dict)   # that evaluation's test mIoU/mEF1

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "run_id": self.run_id, "test_data_version": self.test_data_version,
                "kind": self.kind, "num_images": self.data.num_images, "metrics": self.metrics}


def reevaluation_key(test_data_version: str) -> str:
    """Version tag naming the run that re-evaluated the version on ``test_data_version`` (MLflow tag
    keys allow few characters: a digest of the data version)."""
    return REEVALUATION_PREFIX + hashlib.sha256(test_data_version.encode()).hexdigest()[:16]


def run_data_version(client: Any, run_id: str, mv: Any = None) -> str | None:
    """``test_data_version`` tag of a run (what its evaluation/ files are about); the version's tag
    when the run has none."""
    tags = client.get_run(run_id).data.tags
    return tags.get("test_data_version") or ((mv.tags or {}).get("test_data_version") if mv else None)


def _run_metrics(client: Any, run_id: str) -> dict[str, float | None]:
    m = client.get_run(run_id).data.metrics
    return {"mIoU": m.get("test_mIoU"), "mEF1": m.get("test_mEF1")}


def load_evidence(client: Any, run_id: str, version: str, kind: str, mv: Any = None) -> Evidence | None:
    """The per-image counts logged in ``run_id`` (None when the run has none: evaluated by an egnet
    that did not write them)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    names = {f.path for f in client.list_artifacts(run_id, EVALUATION_DIR)}
    path = f"{EVALUATION_DIR}/{PER_IMAGE_COUNTS_FILE}"
    if path not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="egnet-evidence-") as tmp, no_download_bars():
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=mlflow.get_tracking_uri())
        except (MlflowException, OSError) as exc:
            raise DataError(f"run {run_id}: {path}: {str(exc).splitlines()[0][:200]}") from None
        data = read_per_image(local)
    return Evidence(version, run_id, run_data_version(client, run_id, mv), kind, data,
                    _run_metrics(client, run_id))


def challenger_evidence(client: Any, name: str, mv: Any) -> Evidence:
    """The challenger's own per-image counts; GateRefused when its evaluation lacks them."""
    ev = load_evidence(client, mv.run_id, str(mv.version), "evaluation", mv) if mv.run_id else None
    if ev is None:
        raise GateRefused(f"{name} v{mv.version}: its run {mv.run_id} has no {EVALUATION_DIR}/"
                          f"{PER_IMAGE_COUNTS_FILE} (evaluated by an older egnet); re-run `egnet evaluate "
                          f"--model models:/{name}/{mv.version} ...` on its test data first")
    if not ev.test_data_version:
        raise GateRefused(f"{name} v{mv.version}: its evaluation has no test_data_version tag")
    return ev


def _same_images(a: PerImageCounts, b: PerImageCounts) -> bool:
    return set(a.stems) == set(b.stems) and a.num_images == b.num_images


def recorded_reevaluation(client: Any, name: str, mv: Any, test_data_version: str) -> Evidence | None:
    """A re-evaluation of version ``mv`` on ``test_data_version`` recorded on it, if any."""
    text = (mv.tags or {}).get(reevaluation_key(test_data_version))
    if not text:
        return None
    try:
        run_id = json.loads(text)["run_id"]
    except (ValueError, KeyError, TypeError):
        return None
    ev = load_evidence(client, run_id, str(mv.version), "re-evaluation", mv)
    if ev is None or ev.test_data_version != test_data_version:
        return None
    return ev


def existing_champion_evidence(client: Any, name: str, champ: Any,
                               cand: Evidence) -> tuple[Evidence | None, str]:
    """The champion's evidence on the challenger's test images without running anything (steps 1-2 of
    the module docstring), or None and why not."""
    own = None
    if champ.run_id:
        own = load_evidence(client, champ.run_id, str(champ.version), "evaluation", champ)
    if own is not None and own.test_data_version == cand.test_data_version and _same_images(own.data,
                                                                                            cand.data):
        return own, "same test data"
    again = recorded_reevaluation(client, name, champ, cand.test_data_version or "")
    if again is not None and _same_images(again.data, cand.data):
        return again, "re-evaluated on the challenger's test data"
    own_dv = own.test_data_version if own is not None else run_data_version(client, champ.run_id, champ) \
        if champ.run_id else None
    if own is None:
        why = (f"champion v{champ.version}'s evaluation has no {EVALUATION_DIR}/{PER_IMAGE_COUNTS_FILE} "
               f"(test data {own_dv or 'unknown'})")
    elif own.test_data_version != cand.test_data_version:
        why = (f"champion v{champ.version} was tested on data {own.test_data_version}, challenger "
               f"v{cand.version} on {cand.test_data_version}")
    else:
        common = len(set(own.data.stems) & set(cand.data.stems))
        why = (f"champion v{champ.version} and challenger v{cand.version} were both tested on data "
               f"{cand.test_data_version} but on different test images ({own.data.num_images} and "
               f"{cand.data.num_images}, {common} in common: a re-split)")
    return None, why


def reevaluate(client: Any, name: str, champ: Any, data: str | Path, split: str | Path, cfg: Config,
               expect_data_version: str, expect_stems: list[str], out: str | Path | None = None) -> Evidence:
    """Evaluate the registered ``champ`` on DATA/SPLIT's test images (checked to be the
    challenger's), log it as its own run, record it on the version (module docstring, step 3)."""
    from egnet.core.files import atomic_dir
    from egnet.evaluation import inference
    from egnet.evaluation.evaluate import (
        announce,
        evaluate_pairs,
        evaluation_tags,
        log_to_run,
        print_summary,
        split_test_pairs,
        write_evaluation,
    )
    from egnet.tracking.runs import LINEAGE_TAGS, data_version

    version = str(champ.version)
    got = data_version(data, split)
    if got != expect_data_version:
        raise NotComparable(f"--data {data} --split {split} is data {got}, but challenger's test data is "
                            f"{expect_data_version}: pass the challenger's test data")
    pairs = split_test_pairs(data, split)
    if {p.stem for p in pairs} != set(expect_stems):
        raise NotComparable(f"{split}/test.txt lists {len(pairs)} images, not the challenger's "
                            f"{len(expect_stems)} test images")
    loaded = inference.load(f"models:/{name}/{version}", cfg)
    print(f"like with like: re-evaluating champion v{version} on the challenger's test data {got}",
          flush=True)
    announce(loaded, len(pairs), cfg)
    result = evaluate_pairs(loaded, pairs, cfg)
    src = client.get_run(champ.run_id) if champ.run_id else None
    experiment = src.info.experiment_id if src is not None else _experiment_id(client, cfg)
    tags = {k: src.data.tags[k] for k in LINEAGE_TAGS if src is not None and k in src.data.tags}
    tags.update({REEVALUATION_OF: f"{name}/{version}", SOURCE_RUN: champ.run_id or "",
                 "mlflow.note.content": f"{name} v{version} (champion) re-evaluated on test data {got} "
                                        "for a like-with-like promotion decision"})
    run = client.create_run(experiment, run_name=f"reeval-{name}-v{version}", tags=tags)
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix="egnet-reeval-") as scratch:
            target = Path(out) if out is not None else Path(scratch) / "evaluation"
            with atomic_dir(target) as tmp:
                doc = write_evaluation(tmp, result, loaded, cfg, run_id)
                log_to_run(client, run_id, tmp, doc, evaluation_tags(doc, got))
        client.set_terminated(run_id)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    print_summary(result)
    client.set_model_version_tag(name, version, reevaluation_key(got), json.dumps({
        "run_id": run_id, "test_data_version": got, "num_images": len(pairs),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
    print(f"like with like: champion v{version} on {got} logged as MLflow run {run_id}")
    assert result.per_image is not None
    return Evidence(version, run_id, got, "re-evaluation", result.per_image,
                    {"mIoU": doc["mIoU"], "mEF1": doc["mEF1"]})


def _experiment_id(client: Any, cfg: Config) -> str:
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return exp.experiment_id if exp is not None else client.create_experiment(cfg.tracking.experiment)


def champion_evidence(client: Any, name: str, champ: Any, cand: Evidence, cfg: Config,
                      data: str | Path | None = None, split: str | Path | None = None,
                      out: str | Path | None = None) -> Evidence:
    """The champion's evidence on the challenger's test images: found, or re-evaluated when
    ``data``/``split`` are given; NotComparable naming both data versions otherwise."""
    found, why = existing_champion_evidence(client, name, champ, cand)
    if found is not None:
        return found
    if data is None or split is None:
        raise NotComparable(f"{name}: {why}; compare like with like: `egnet promote --data DATA "
                            f"--split SPLIT` re-evaluates the champion on the challenger's test data "
                            f"({cand.test_data_version})")
    assert cand.test_data_version is not None
    return reevaluate(client, name, champ, data, split, cfg, cand.test_data_version, cand.data.stems, out)


def needs_reevaluation(client: Any, name: str, version: str) -> tuple[bool, str]:
    """Whether the champion must be re-evaluated before the gate can compare it with ``version``
    (the pipeline's condition for its evaluate-champion step), and why."""
    from egnet.registry.versions import aliases_of
    from egnet.tracking.registered import CHAMPION

    champ_v = aliases_of(client, name).get(CHAMPION)
    if champ_v is None or champ_v == str(version):
        return False, "no champion to compare with" if champ_v is None else f"v{version} is the champion"
    cand = client.get_model_version(name, str(version))
    try:
        cand_ev = challenger_evidence(client, name, cand)
    except GateRefused as exc:
        return False, f"the gate cannot compare: {exc}"
    found, why = existing_champion_evidence(client, name, client.get_model_version(name, champ_v), cand_ev)
    return found is None, why


def ensure_champion_evidence(client: Any, name: str, version: str, cfg: Config, data: str | Path,
                             split: str | Path, out: str | Path | None = None) -> str:
    """The champion's evidence on ``version``'s test images, re-evaluating it on DATA/SPLIT when
    needed; returns the run holding it ("" when there is no champion to compare with)."""
    from egnet.registry.versions import aliases_of
    from egnet.tracking.registered import CHAMPION

    champ_v = aliases_of(client, name).get(CHAMPION)
    if champ_v is None or champ_v == str(version):
        return ""
    cand_ev = challenger_evidence(client, name, client.get_model_version(name, str(version)))
    champ = client.get_model_version(name, champ_v)
    return champion_evidence(client, name, champ, cand_ev, cfg, data, split, out).run_id
