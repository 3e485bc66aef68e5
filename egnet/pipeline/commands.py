"""`egnet pipeline compile | run --local | submit | schedule` (docs/pipeline.md).

- ``compile``: the pipeline for the resolved params -> ``pipelines/nightcity_training.yaml``.
- ``run --local``: the very pipeline function under ``kfp.local`` (SubprocessRunner, this
  venv) on ``--data``, ``data/nightcity`` or fresh synthetic data, with the ``quick`` profile
  and MLflow in ``sqlite:///mlflow.db`` unless told otherwise. One line per step (a bar while
  training), each step's full log in ``<run folder>/logs/`` (egnet/pipeline/progress.py;
  ``--verbose`` streams them too); ends with a summary linking the MLflow run and version.
- ``submit`` / ``schedule``: compile, upload (a new version of the pipeline), then one run /
  a recurring run on a KFP server (egnet/pipeline/client.py), after checking the server's
  version. ``schedule`` replaces a recurring run of the same name; ``--pause`` / ``--resume`` /
  ``--delete`` act on it; ``schedules`` lists the pipeline's recurring runs.

``--set section.key=value`` applies at compile time (``pipeline.*`` shapes the compiled
pipeline) and, for the other sections, becomes the run's ``overrides`` parameter, so the
steps see it too. ``--param NAME=VALUE`` sets a pipeline parameter of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from egnet.core.config import Config, load_config
from egnet.core.errors import ConfigError, DataError
from egnet.core.files import read_json
from egnet.pipeline.definition import pipeline_module
from egnet.pipeline.progress import StepConsole, duration, shown, steps_hooked

LOCAL_PROFILE = "quick"
#: the pipeline parameter submit/schedule set to the uploaded version's name (an MLflow tag of the run)
VERSION_PARAM = "pipeline_version"
#: where `make ui` (mlflow ui) serves a local store; the summary links pages there
UI_URL = "http://127.0.0.1:5000"


def step_overrides(overrides: list[str]) -> list[str]:
    """The ``--set`` items the steps must see too: everything but ``pipeline.*`` and ``profile``."""
    return [o for o in overrides if not o.split("=", 1)[0].strip().startswith(("pipeline.", "profile"))]


def _params_file(args: argparse.Namespace) -> str:
    return str(Path(args.params).resolve()) if args.params else ""


# --------------------------------------------------------------------------- compile


def compile_main(args: argparse.Namespace, cfg: Config) -> int:
    module = pipeline_module()
    out = Path(args.out) if args.out else module.COMPILED
    module.compile_pipeline(cfg, out)
    print(f"compiled {cfg.pipeline.name} -> {out} (image {cfg.pipeline.image}, profile {cfg.profile})")
    return 0


# --------------------------------------------------------------------------- run --local


def _local_data(args: argparse.Namespace, cfg: Config, work: Path) -> Path:
    """--data, else data/nightcity, else synthetic scenes made once under ``work``."""
    if args.data:
        if not Path(args.data).is_dir():
            raise ConfigError(f"--data {args.data}: not a directory")
        return Path(args.data).resolve()
    if Path("data/nightcity").is_dir():
        return Path("data/nightcity").resolve()
    data = work / "nightcity"
    if not data.exists():
        from egnet.data.synth import synthesize

        d = cfg.data
        w, h = d.image_size
        print(f"==> synthetic NightCity-format data: {d.synth_num} scenes, {w}x{h} -> {shown(data)}",
              flush=True)
        s = synthesize(data, d.synth_num, d.synth_seed, (w, h), d.synth_val_fraction, d.workers)
        print(f"    made in {duration(s['seconds'])} (train {s['train']}, val {s['val']})", flush=True)
    return data.resolve()


class _Output:
    """A step output of a finished kfp.local run (what ``task.outputs[...]`` would be)."""

    def __init__(self, path: Path):
        self.path = str(path)


def local_outputs(run_dir: Path) -> dict[str, Any]:
    """The outputs the summary reads, from a kfp.local run folder: a pipeline with an exit
    handler cannot return outputs (kfp: "Pipeline outputs may only be returned from the top
    level"), so they come from the steps' own folders (``<step>/<output>``, ``executor_output.json``)."""
    gate = read_json(run_dir / "gate" / "executor_output.json", "gate output")
    return {"evaluation": _Output(run_dir / "evaluate" / "evaluation"),
            "registration": _Output(run_dir / "register" / "registration"),
            "decision": gate["parameterValues"]["Output"]}


def ui_links(uri: str) -> tuple[str, list[str]]:
    """(base URL of the MLflow UI for ``uri``, how to start it): a server is its own UI; a
    local store (sqlite, file) is served by `make ui` at :data:`UI_URL`."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/"), ["open the links above"]
    port = UI_URL.rsplit(":", 1)[1]
    return UI_URL, ["make ui, then open the links above",
                    f"(without make: mlflow ui --backend-store-uri {uri} --port {port})"]


def local_summary(outputs: dict[str, Any], cfg: Config, data: Path, uri: str, wall_s: float,
                  logs: Path | None = None) -> str:
    """Metrics, MLflow run and registered version (with their UI links), gate decision, where the
    outputs and logs are, and how to look."""
    from egnet.registry.versions import aliases_of
    from egnet.tracking.client import client_for

    evaluation = outputs["evaluation"]
    metrics = read_json(Path(evaluation.path) / "metrics.json", "evaluation metrics")
    reg = read_json(outputs["registration"].path, "registration")
    client = client_for(cfg, read_only=True)
    aliases = aliases_of(client, reg["name"])
    experiment = client.get_run(reg["run_id"]).info.experiment_id
    base, how = ui_links(uri)
    mine = sorted(a for a, v in aliases.items() if str(v) == str(reg["version"]))
    others = ", ".join(f"{a} v{v}" for a, v in sorted(aliases.items()) if str(v) != str(reg["version"]))
    decision = outputs["decision"]
    ef1 = " ".join("  -  " if v is None else f"{v:.3f}" for v in metrics["EF1"])
    lines = [
        "", "=== summary ===",
        f"data            {shown(data)}",
        f"test mIoU       {metrics['mIoU']:.4f}",
        f"test mEF1       {metrics['mEF1']:.4f}",
        f"EF1 per bin     {ef1}",
        f"MLflow run      {reg['run_id']}",
        f"                {base}/#/experiments/{experiment}/runs/{reg['run_id']}",
        f"model version   {reg['name']} v{reg['version']} ({', '.join(mine) or 'no alias'})"
        + (f"; {others}" if others else ""),
        f"                {base}/#/models/{reg['name']}/versions/{reg['version']}",
        "gate            "
        f"{'passed: promoted to champion' if decision == 'promote' else 'refused: champion kept'}",
        f"pipeline        {duration(wall_s)}, outputs under {shown(Path(evaluation.path).parents[1])}",
        *([f"step logs       {shown(logs)}/"] if logs else []),
        f"look            {how[0]}",
        *(f"                {line}" for line in how[1:]),
    ]
    return "\n".join(lines)


def run_local(args: argparse.Namespace) -> int:
    if not args.local:
        raise ConfigError("egnet pipeline run: only --local runs here; "
                          "use `egnet pipeline submit --host URL` for a Kubeflow Pipelines server")
    from kfp import local
    from kfp.local.executor_input_utils import get_local_task_resource_name

    from egnet.pipeline.client import parameter_types, parse_params

    profile = args.profile or LOCAL_PROFILE
    overrides = list(args.overrides)
    if not any(o.split("=", 1)[0].strip() == "pipeline.train_retries" for o in overrides):
        # a cluster retries a preempted train pod; here a failure would only repeat after a minute
        overrides.append("pipeline.train_retries=0")
    cfg = load_config(args.params, profile, overrides)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = _local_data(args, cfg, work)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri

    module = pipeline_module()
    pipeline = module.build_pipeline(cfg)
    arguments: dict[str, Any] = {
        "data_repo": "", "data_path": str(data), "data_cache": str(work / "data-versions"),
        "profile": profile, "overrides": step_overrides(args.overrides), "params_file": _params_file(args),
        "mlflow_uri": uri, "nodes": 1, "gpus_per_node": 1, "train_out": "", "pipeline_version": "local",
    }
    if args.param:
        with tempfile.TemporaryDirectory() as tmp:
            types = parameter_types(module.compile_pipeline(cfg, Path(tmp) / "p.yaml"))
        arguments.update(parse_params(args.param, types))
    if arguments["nodes"] != 1:
        raise ConfigError("egnet pipeline run --local: nodes must be 1 (multi-node needs a cluster)")

    # the components name the cluster image; here they run in this venv, which has egnet
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom",
                            category=RuntimeWarning)
    # the cluster settings (resources, GPUs) that kfp.local ignores: one warning per step
    warnings.filterwarnings("ignore", message=r"Task '.*': settings \[.*\] have no effect",
                            category=UserWarning)
    root = work / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    print(f"==> pipeline {cfg.pipeline.name} with kfp.local (profile {profile}, MLflow {uri})", flush=True)
    before = set(root.iterdir()) if root.is_dir() else set()
    steps = [get_local_task_resource_name(name.replace("exec-", "comp-", 1))
             for name in pipeline.pipeline_spec.deployment_spec["executors"]]
    console = StepConsole(sys.stdout, len(steps), cfg.train.iterations, verbose=args.verbose)
    t0 = time.perf_counter()
    try:
        with console.captured(), steps_hooked(console):
            pipeline(**arguments)
    except RuntimeError as exc:
        if console.failed:
            raise DataError(f"local pipeline run failed at step {console.failed}; its log: "
                            f"{shown(console.step_log(console.failed))}") from None
        # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        what = re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0])   # kfp colours task names
        where = f"; logs: {shown(console.logs)}" if console.logs else ""
        raise DataError(f"local pipeline run failed: {what}{where}") from None
    console.skipped([s for s in steps if s not in console.done])
    (run_dir,) = [d for d in root.iterdir() if d not in before and d.is_dir()]
    print(local_summary(local_outputs(run_dir), cfg, data, uri, time.perf_counter() - t0, console.logs))
    return 0


def run_main(args: argparse.Namespace, cfg: Config) -> int:
    return run_local(args)


# --------------------------------------------------------------------------- submit / schedule


def _remote(args: argparse.Namespace,
            cfg: Config) -> tuple[Any, Path, dict[str, Any], tempfile.TemporaryDirectory]:
    """Client, compiled package (a temp copy unless --package), and the typed run parameters."""
    from egnet.pipeline.client import parameter_types, parse_params
    from egnet.pipeline.steps import cpu_image_of

    tmp = tempfile.TemporaryDirectory()
    if args.package:
        package = Path(args.package)
        if not package.is_file():
            raise ConfigError(f"--package {package}: not found")
    else:
        package = pipeline_module().compile_pipeline(cfg, Path(tmp.name) / "nightcity_training.yaml")
    types = parameter_types(package)
    params: dict[str, Any] = {}
    if step_overrides(args.overrides):
        params["overrides"] = step_overrides(args.overrides)
    params.update(parse_params(args.param, types))
    if "image" in params and "cpu_image" in types and "cpu_image" not in params:
        params["cpu_image"] = cpu_image_of(params["image"])   # the CPU steps follow --param image
    client = _client(args)
    return client, package, params, tmp


def _client(args: argparse.Namespace) -> Any:
    """kfp.Client after the reachability and backend-version checks."""
    from egnet.pipeline.client import kfp_client

    return kfp_client(args.host, args.namespace, min_backend=getattr(pipeline_module(), "MIN_BACKEND", None))


def submit_main(args: argparse.Namespace, cfg: Config) -> int:
    from egnet.pipeline.client import submit

    client, package, params, tmp = _remote(args, cfg)
    with tmp:
        res = submit(client, package, name=cfg.pipeline.name,
                     experiment=args.experiment or cfg.tracking.experiment,
                     params=params, run_name=args.run_name, namespace=args.namespace,
                     version_param=VERSION_PARAM)
    what = "new pipeline" if res["new_pipeline"] else "new version"
    print(f"uploaded {cfg.pipeline.name} ({what} {res['version_name']}); run {res['run_id']} started in "
          f"experiment {args.experiment or cfg.tracking.experiment}: "
          f"{args.host.rstrip('/')}/#/runs/details/{res['run_id']}")
    return 0


def schedule_main(args: argparse.Namespace, cfg: Config) -> int:
    from egnet.pipeline.client import check_cron, schedule, set_schedule

    action = next((a for a in ("pause", "resume", "delete") if getattr(args, a, False)), None)
    name = args.run_name or cfg.pipeline.name
    if action:
        if args.cron or args.param or args.package:
            raise ConfigError(f"--{action} acts on the existing recurring run {name!r}: "
                              "no --cron, --param or --package with it")
        ids = set_schedule(_client(args), cfg.pipeline.name, name, action, args.namespace)
        done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[action]
        print(f"{done} recurring run {name!r} ({', '.join(ids)})")
        return 0
    if not args.cron:
        raise ConfigError("egnet pipeline schedule: --cron is required (or --pause / --resume / --delete)")
    check_cron(args.cron)  # before any network call
    client, package, params, tmp = _remote(args, cfg)
    with tmp:
        res = schedule(client, package, name=cfg.pipeline.name,
                       experiment=args.experiment or cfg.tracking.experiment, cron=args.cron,
                       params=params, job_name=name, namespace=args.namespace, version_param=VERSION_PARAM)
    what = f"replaced {', '.join(res['replaced'])}" if res["replaced"] else "new"
    print(f"scheduled {name!r}: {cfg.pipeline.name} ({res['version_name']}) with cron \"{res['cron']}\" "
          f"(max 1 at a time, no catch-up): recurring run {res['recurring_run_id']} ({what})")
    return 0


def schedules_main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet pipeline schedules`: the pipeline's recurring runs, one line each."""
    from egnet.core.text import render_table
    from egnet.pipeline.client import describe_recurring_run, recurring_runs

    rows = [describe_recurring_run(r) for r in recurring_runs(_client(args), cfg.pipeline.name,
                                                               namespace=args.namespace)]
    if not rows:
        print(f"no recurring runs of {cfg.pipeline.name}")
        return 0
    cols = ["name", "state", "cron", "id", "pipeline_version_id"]
    print(render_table([cols, *([r[c] for c in cols] for r in rows)]))
    return 0


# --------------------------------------------------------------------------- render-job


def render_job_main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet pipeline render-job`: the TrainJob / PyTorchJob the train step would create, as YAML.

    Built by the train step's own function (``steps.training_job``) from the same settings
    (``trainjob.cluster_settings``). What only a run knows has stand-ins, each an option: the job
    name derives from ``--run-id`` (default ``example``), ``--data`` is ``pipeline.data_path``,
    ``--split`` the run's folder on the PVC (``<data_mount>/runs/<job>/split``, where the step
    copies the split), ``--out`` is ``<pipeline.train_out>/<job>`` (``$VAR`` expanded from this
    environment when set, as the step does in its pod). The pods get ``--profile``, the
    non-``pipeline`` ``--set`` items and ``tracking.experiment``, as from the pipeline's parameters.
    """
    import sys

    import yaml

    from egnet.pipeline import steps, trainjob

    if args.nodes < 2:
        raise ConfigError(f"--nodes {args.nodes}: the train step creates a TrainJob/PyTorchJob only for "
                          "2 or more nodes (one node trains in the step's own pod)")
    kind = args.kind or cfg.pipeline.job_kind
    job = trainjob.job_name(args.run_id)
    out = args.out or f"{cfg.pipeline.train_out.rstrip('/')}/{job}"
    expanded = os.path.expandvars(out)
    if "$" in expanded:
        print(f"render-job: {out}: variables not set here are left for the train step to expand",
              file=sys.stderr)
    config = steps.config_args("", cfg.profile, step_overrides(args.overrides), cfg.tracking.experiment)
    split = args.split or f"{cfg.pipeline.data_mount.rstrip('/')}/runs/{job}/split"
    train_args = steps.train_args(args.data or cfg.pipeline.data_path, split,
                                  expanded if "$" not in expanded else out, args.quarantine, config)
    tags = json.dumps(steps.kfp_run_tags(args.run_id), sort_keys=True)
    manifest = steps.training_job(kind, trainjob.cluster_settings(cfg), run_id=args.run_id,
                                  image=args.image or cfg.pipeline.image, nodes=args.nodes,
                                  gpus_per_node=args.gpus_per_node, args=train_args,
                                  mlflow_uri=args.mlflow_uri or "", tags=tags)
    plain = json.loads(json.dumps(manifest))  # no shared sub-objects: no YAML anchors/aliases
    sys.stdout.write(yaml.safe_dump(plain, sort_keys=True, default_flow_style=False))
    return 0
