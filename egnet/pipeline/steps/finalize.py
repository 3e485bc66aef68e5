"""The pipeline's exit handler: stop or clean up the run's training job, tag its MLflow run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from egnet.pipeline.steps.common import FINAL_STATE_TAG, KFP_TAGS, SUCCESS_STATES


def finalize_run(state: str, run_id: str, run_name: str, *, nodes: int, job_kind: str,
                 cluster: dict[str, Any], params_file: str = "", profile: str = "",
                 overrides: Sequence[str] | None = (), experiment: str = "",
                 jobs_factory: Callable[[str], Any] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The pipeline's exit handler (``dsl.ExitHandler``: it runs after the run succeeded, failed
    or was terminated). Stops the run's training job if it still runs (a cancelled run must
    not hold GPUs for up to ``active_deadline_s``) and deletes a finished one per
    ``pipeline.cleanup``; tags the run's MLflow training run ``kfp_final_state=<state>`` (and
    ends it as KILLED if it is still open); prints one status line. Never fails the run
    over an unreachable API: each problem is a line in the log."""
    from egnet.pipeline import trainjob

    ok = state in SUCCESS_STATES
    job, mlflow_run = "none", "none"
    if nodes > 1:
        job = _finalize_job(trainjob.job_name(run_id), job_kind, cluster, jobs_factory, log)
    try:
        mlflow_run = _finalize_mlflow(run_id, state, ok, params_file, profile, overrides, experiment)
    except Exception as exc:  # noqa: BLE001 - the run's outcome is decided; report, do not fail
        mlflow_run = f"not tagged ({str(exc).splitlines()[0][:200]})"
    line = f"run {run_name or '-'} ({run_id}): {state}; training job: {job}; MLflow run: {mlflow_run}"
    log(line)
    return {"state": state, "job": job, "mlflow_run": mlflow_run, "line": line}


def _finalize_job(name: str, job_kind: str, cluster: dict[str, Any],
                  jobs_factory: Callable[[str], Any] | None, log: Callable[[str], None]) -> str:
    from egnet.core.errors import EgnetError
    from egnet.pipeline.jobs import TrainingJobs, job_state

    try:
        jobs = (jobs_factory or (lambda kind: TrainingJobs.in_cluster(kind)))(job_kind)
        obj = jobs.get(name)
        if obj is None:
            return f"{name} not found (never created, or already deleted)"
        state = job_state(obj)
        if not state.done:
            jobs.delete(name)
            return f"{name} was {state.phase}: deleted (its pods stop now)"
        policy = cluster.get("cleanup", "never")
        if policy == "always" or (policy == "on_success" and state.phase == "succeeded"):
            jobs.delete(name)
            return f"{name} {state.phase}: deleted (cleanup {policy})"
        return f"{name} {state.phase}: kept (cleanup {policy})"
    except EgnetError as exc:
        log(f"training job {name}: {exc}")
        return f"{name}: unknown ({exc})"


def _finalize_mlflow(run_id: str, state: str, ok: bool, params_file: str, profile: str,
                     overrides: Sequence[str] | None, experiment: str) -> str:
    from egnet.core.config import load_config
    from egnet.tracking.client import client_for
    from egnet.tracking.runs import fast_http_env

    fast_http_env()     # an exit handler must not hang on MLflow's default minutes of retries
    cfg = load_config(params_file or None, profile or None,
                      [*(overrides or []), *([f"tracking.experiment={experiment}"] if experiment else [])])
    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.{KFP_TAGS[0]} = '{run_id}'") if exp else []
    if not runs:
        return f"none tagged {KFP_TAGS[0]}={run_id} in experiment {cfg.tracking.experiment}"
    for r in runs:
        client.set_tag(r.info.run_id, FINAL_STATE_TAG, state)
        if r.info.status == "RUNNING" and not ok:
            client.set_terminated(r.info.run_id, "KILLED")
    return ", ".join(f"{r.info.run_id} tagged {FINAL_STATE_TAG}={state}" for r in runs)
