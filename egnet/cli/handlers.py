"""The command handlers: ``handler(args, cfg) -> exit code``, one per `egnet` command.

Each imports the layer that does the work when it runs (so ``egnet --help`` loads neither
torch nor MLflow) and calls it. Only `data drift` wires two layers: the tracking layer
finds a run's or a registered version's stats.json, the data layer compares.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace, Any], int]


def params_show(args, cfg) -> int:
    from egnet.core.params import show_main
    return show_main(args, cfg)


def params_resolve(args, cfg) -> int:
    from egnet.core.params import resolve_main
    return resolve_main(args, cfg)


def data_synth(args, cfg) -> int:
    from egnet.data.synth.generate import main
    return main(args, cfg)


def data_import(args, cfg) -> int:
    from egnet.data.importer import main
    return main(args, cfg)


def data_validate(args, cfg) -> int:
    from egnet.data.validate import main
    return main(args, cfg)


def data_split(args, cfg) -> int:
    from egnet.data.split import main
    return main(args, cfg)


def data_stats(args, cfg) -> int:
    from egnet.data.stats import main
    return main(args, cfg)


def data_drift(args, cfg) -> int:
    """`egnet data drift NEW_DATA --reference SPEC [--out DIR] [--quarantine F]
    [--allow-missing-reference]`."""
    from egnet.data import drift
    from egnet.tracking.reference import ReferenceMissing, resolve_reference

    try:
        reference = resolve_reference(args.reference, cfg)
    except ReferenceMissing as exc:
        if not args.allow_missing_reference:
            raise
        if args.out is not None:
            drift.write_skipped(args.out, drift.skipped_report(args.reference, str(exc)))
        print(f"drift: skipped, no reference: {exc}")
        return 0
    report = drift.check_drift(args.data, reference, cfg, args.out, args.quarantine)
    return drift.verdict(report, cfg, args.out)


def score(args, cfg) -> int:
    from egnet.evaluation.score import main
    return main(args, cfg)


def train(args, cfg) -> int:
    from egnet.training.train import main
    return main(args, cfg)


def weights_fetch(args, cfg) -> int:
    """`egnet weights fetch [--arch A] [--dir D]`."""
    from egnet.models import backbone
    from egnet.models.baselines import BASELINES

    arch = args.arch or ("resnet101" if cfg.model.variant in BASELINES else cfg.model.backbone)
    path, downloaded = backbone.fetch_imagenet(arch, args.dir)
    print(f"{arch}: {path} ({'downloaded' if downloaded else 'already there'}, sha256 "
          f"{backbone.IMAGENET_WEIGHTS[arch][1][:12]}... checked)")
    return 0


def evaluate(args, cfg) -> int:
    from egnet.evaluation.evaluate import main
    return main(args, cfg)


def predict(args, cfg) -> int:
    from egnet.evaluation.predict import main
    return main(args, cfg)


def report(args, cfg) -> int:
    from egnet.evaluation.report import main
    return main(args, cfg)


def register(args, cfg) -> int:
    from egnet.registry.register import register_main
    return register_main(args, cfg)


def promote(args, cfg) -> int:
    from egnet.registry.promotion import promote_main
    return promote_main(args, cfg)


def registry_grant(args, cfg) -> int:
    from egnet.registry.grants import grant_main
    return grant_main(args, cfg)


def models(args, cfg) -> int:
    from egnet.registry.versions import models_main
    return models_main(args, cfg)


def compare(args, cfg) -> int:
    from egnet.registry.compare import compare_main
    return compare_main(args, cfg)


def pipeline_compile(args, cfg) -> int:
    from egnet.pipeline.commands import compile_main
    return compile_main(args, cfg)


def pipeline_run(args, cfg) -> int:
    from egnet.pipeline.commands import run_main
    return run_main(args, cfg)


def pipeline_submit(args, cfg) -> int:
    from egnet.pipeline.commands import submit_main
    return submit_main(args, cfg)


def pipeline_schedule(args, cfg) -> int:
    from egnet.pipeline.commands import schedule_main
    return schedule_main(args, cfg)


def pipeline_schedules(args, cfg) -> int:
    from egnet.pipeline.commands import schedules_main
    return schedules_main(args, cfg)


def pipeline_render_job(args, cfg) -> int:
    from egnet.pipeline.commands import render_job_main
    return render_job_main(args, cfg)
