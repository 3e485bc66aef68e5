"""MLflow run set-up and lineage for training (docs/architecture.md, "MLflow conventions").

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` from params
(default ``sqlite:///mlflow.db`` in the working directory). A URI that cannot be
reached is a ConfigError (exit 2) raised before any training starts.

Inside the training loop MLflow must never stop training: :class:`RunLogger`
buffers metrics, sends them in batches, and when the server is away it warns
once, backs off, and flushes the buffer when the server answers again.
Tags: ``git_commit``, ``data_version``, ``params_hash``; what ran the run: ``egnet_version``,
``torch_version``, ``torch_cuda`` (egnet.core.version, ``egnet --version``); for data a pipeline
fetched from a git+DVC repo also ``data_repo``, ``data_repo_path``, ``data_md5``; and whatever the
JSON object in ``EGNET_RUN_TAGS`` holds (the pipeline's train step: ``kfp_run_id``,
``kfp_run_name``, ``kfp_pipeline_version``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError
from egnet.core.version import git_commit, version_tags
from egnet.data.versioning import data_version, read_marker
from egnet.tracking.access import denial

log = logging.getLogger(__name__)

#: in-loop HTTP calls fail within seconds, not MLflow's default minutes of retries
FAST_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def tracking_uri(cfg: Config) -> str:
    """The tracking URI this run uses: env ``MLFLOW_TRACKING_URI``, else ``cfg.tracking.uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri


def fast_http_env() -> None:
    """Make MLflow HTTP calls give up quickly (user-set values win)."""
    for key, value in FAST_HTTP_ENV.items():
        os.environ.setdefault(key, value)


def _check_http(uri: str, timeout_s: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - user-given URI
            if resp.status != 200:
                raise ConfigError(f"MLflow tracking URI {uri}: /health answered HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"MLflow tracking URI {uri}: /health answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"MLflow tracking URI {uri} is not reachable ({reason}); "
            "set MLFLOW_TRACKING_URI or tracking.uri"
        ) from None


class TrackingStoreMissing(ConfigError):
    """A command that only reads found no tracking store where the URI points (exit 2); it
    creates none (an empty ``mlflow.db`` would only hide the mistake)."""


def _missing_store(uri: str, where: Path, what: str) -> TrackingStoreMissing:
    default = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_absolute()
    return TrackingStoreMissing(
        f"no MLflow {what} at {where.resolve()} (tracking URI {uri}"
        + (", relative to this folder" if default else "") + "); this command only reads and creates "
        "none: run it where the runs were made, or point it there with MLFLOW_TRACKING_URI=URI "
        "(or --set tracking.uri=URI)")


def _check_sqlite(uri: str, read_only: bool = False) -> None:
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if not path:
        raise ConfigError(f"MLflow tracking URI {uri}: expected sqlite:///PATH")
    if read_only:
        if not Path(path).is_file():
            raise _missing_store(uri, Path(path), "tracking database")
        try:  # mode=ro: never creates the file
            sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True).close()
        except sqlite3.Error as exc:
            raise ConfigError(f"MLflow tracking URI {uri}: cannot open the database ({exc})") from None
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise ConfigError(f"MLflow tracking URI {uri}: directory {parent} does not exist")
    try:
        sqlite3.connect(path).close()
    except sqlite3.Error as exc:
        raise ConfigError(f"MLflow tracking URI {uri}: cannot open the database ({exc})") from None


def connect_mlflow(cfg: Config, timeout_s: float = 5.0, read_only: bool = False) -> str:
    """Set MLflow's tracking URI from ``cfg`` (or the env), check it answers, return it.

    http(s): GET ``/health``; sqlite: the file can be opened; file: the directory can be made.
    ``read_only`` (commands that only read: models, compare, report, promote, drift and
    predict from the registry): a sqlite file or file store that does not exist is a
    :class:`TrackingStoreMissing`, and nothing is created.
    Raises ConfigError (one line, exit 2) when it cannot be reached.
    """
    import mlflow

    uri = tracking_uri(cfg)
    scheme = uri.split(":", 1)[0].lower() if "://" in uri else "file"
    if scheme in ("http", "https"):
        _check_http(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri, read_only)
    elif scheme == "file":
        root = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if read_only and not root.is_dir():
            raise _missing_store(uri, root, "file store")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"MLflow tracking URI {uri}: cannot create {root} ({exc.strerror})") from None
    elif scheme not in ("databricks", "postgresql", "mysql", "mssql"):
        raise ConfigError(f"MLflow tracking URI {uri}: unsupported scheme '{scheme}'")
    mlflow.set_tracking_uri(uri)
    return uri


#: the lineage tags every training run carries (and registered versions copy)
LINEAGE_TAGS = ("git_commit", "data_version", "params_hash")


#: a JSON object of extra tags for the run a training process starts (set by the pipeline's train step)
RUN_TAGS_ENV = "EGNET_RUN_TAGS"


def extra_tags() -> dict[str, str]:
    """The tags ``$EGNET_RUN_TAGS`` names (a JSON object); a malformed value is a ConfigError."""
    import json

    raw = os.environ.get(RUN_TAGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        tags = json.loads(raw)
        if not isinstance(tags, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise ConfigError(f"{RUN_TAGS_ENV}={raw[:80]!r}: expected a JSON object of tags ({exc})") from None
    return {str(k): str(v) for k, v in tags.items()}


def run_tags(cfg: Config, data_root: str | Path, split_dir: str | Path) -> dict[str, str]:
    """The lineage tags every training run carries, what ran it (``egnet --version``), where
    fetched data came from and the extra tags of ``$EGNET_RUN_TAGS``."""
    tags = {
        "git_commit": git_commit(),
        "data_version": data_version(data_root, split_dir),
        "params_hash": cfg.params_hash(),
        **version_tags(),
    }
    marker = read_marker(data_root) or {}
    if marker.get("repo"):
        tags.update(data_repo=str(marker["repo"]), data_repo_path=str(marker.get("path", "")),
                    data_md5=str(marker.get("md5", "")))
    return {**extra_tags(), **tags}


class RunLogger:
    """Metric logging that never raises: buffer, batch-send, back off while the server is away.

    ``log(metrics, step)`` queues the values and tries to send when the back-off allows;
    ``flush(final=True)`` tries a few more times before giving up with a warning.
    Each outage is kept in ``gaps`` (see :meth:`gap_report`): when it began and ended (UTC),
    the iterations whose values waited in the buffer, and how many values arrived late or never.
    """

    MAX_BUFFER = 100_000  # metrics kept while the server is away (drop oldest beyond)
    BATCH = 1000  # MLflow's log_batch limit on metrics per request

    def __init__(self, run_id: str, uri: str, backoff_s: float = 2.0, max_backoff_s: float = 60.0,
                 client: Any = None):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = client if client is not None else MlflowClient(tracking_uri=uri)
        self._buffer: list[Any] = []
        self._backoff0, self._max_backoff = backoff_s, max_backoff_s
        self._backoff = backoff_s
        self._next_try = 0.0
        self._failing = False
        self.dropped = 0
        self.gaps: list[dict[str, Any]] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now_ms, int(step)) for k, v in metrics.items()]
        if len(self._buffer) > self.MAX_BUFFER:
            self.dropped += len(self._buffer) - self.MAX_BUFFER
            self._buffer = self._buffer[-self.MAX_BUFFER:]
        if time.monotonic() >= self._next_try:
            self._send()

    def _send(self) -> bool:
        pending = len(self._buffer)
        steps = [m.step for m in self._buffer]
        try:
            while self._buffer:
                chunk = self._buffer[: self.BATCH]
                self.client.log_batch(self.run_id, metrics=chunk)
                del self._buffer[: len(chunk)]
        except Exception as exc:  # any transport/server error: training goes on
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if not self._failing:
                log.warning("MLflow logging failed (%s); training continues, %d metric value(s) buffered",
                            reason, len(self._buffer))
                self.gaps.append({"from": _utc_now(), "to": None, "reason": reason,
                                  "from_iteration": min(steps, default=None), "to_iteration": None,
                                  "values_delayed": 0, "values_dropped": 0, "_dropped0": self.dropped,
                                  "_t0": time.monotonic()})
            self._failing = True
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self._max_backoff)
            return False
        if self._failing:
            gap = self.gaps[-1]
            gap.update(to=_utc_now(), to_iteration=max(steps, default=None), values_delayed=pending,
                       values_dropped=self.dropped - gap["_dropped0"])
            log.warning("MLflow logging is back after %.0f s: %d buffered metric value(s) "
                        "of iterations %s-%s sent late%s", time.monotonic() - gap["_t0"], pending,
                        gap["from_iteration"], gap["to_iteration"],
                        f", {gap['values_dropped']} dropped (buffer full)" if gap["values_dropped"] else "")
        self._failing = False
        self._backoff = self._backoff0
        return True

    def gap_report(self) -> list[dict[str, Any]]:
        """The outages so far: ``from``/``to`` (UTC ISO 8601; ``to`` None while still away),
        ``from_iteration``/``to_iteration`` (the steps of the values that waited), ``reason``,
        ``values_delayed`` (sent after the server came back), ``values_dropped`` (buffer full),
        and ``values_lost`` (still unsent when training ended, only for an open gap)."""
        out = []
        for gap in self.gaps:
            g = {k: v for k, v in gap.items() if not k.startswith("_")}
            if g["to"] is None:
                g["values_lost"] = len(self._buffer)
                g["values_dropped"] = self.dropped - gap["_dropped0"]
            out.append(g)
        return out

    def flush(self, final: bool = False, wait_s: float = 60.0) -> bool:
        """Send what is buffered now; with ``final``, keep trying for up to ``wait_s`` seconds
        (a server that is restarting gets the run's last metrics; a dead one costs a minute)."""
        deadline = time.monotonic() + (wait_s if final else 0.0)
        while not self._send():
            if not final or time.monotonic() >= deadline:
                break
            if self._buffer:
                log.warning("MLflow still unreachable; retrying for up to %.0f s",
                            deadline - time.monotonic())
            time.sleep(min(5.0, max(deadline - time.monotonic(), 0.0)))
        if final and self._buffer:
            log.warning("MLflow unreachable at the end: %d metric value(s) not logged", len(self._buffer))
        return not self._buffer

    def safe(self, what: str, fn, *args, **kwargs) -> Any:
        """Call an MLflow function; on failure warn and return None (params, tags, artifacts)."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            log.warning("MLflow %s failed (%s); training continues", what, str(exc).splitlines()[0][:200])
            return None


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: where a training run keeps its split's stats.json: the reference `egnet data drift` compares with
DATA_STATS_ARTIFACT = "data/stats.json"


def log_data_stats(run_id: str, stats_json: str | Path, uri: str | None = None) -> str:
    """Log a stats.json into a (training) run as ``data/stats.json``; returns the artifact path."""
    import shutil
    import tempfile

    import mlflow

    folder, _, name = DATA_STATS_ARTIFACT.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="egnet-stats-") as tmp:
        copy = Path(tmp) / name  # the artifact's name is fixed, whatever the file is called
        shutil.copyfile(stats_json, copy)
        mlflow.MlflowClient(tracking_uri=uri).log_artifact(run_id, str(copy), artifact_path=folder)
    return DATA_STATS_ARTIFACT


def sqlite_artifact_root(uri: str) -> Path | None:
    """``mlartifacts/`` beside the database of an embedded ``sqlite:///`` store, else None.

    Without a server MLflow would put artifacts in ./mlruns; egnet keeps them in
    ``mlartifacts/`` next to ``mlflow.db`` so one folder pair holds a whole local history.
    """
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlartifacts"


def _experiment(name: str, uri: str) -> Any:
    """Get or create the experiment; a new one on an embedded store keeps artifacts in mlartifacts/."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        root = sqlite_artifact_root(uri)
        try:
            client.create_experiment(name, artifact_location=root.as_uri() if root else None)
        except MlflowException as exc:  # another process created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    return mlflow.set_experiment(name)


def start_run(cfg: Config, uri: str, run_id: str | None, tags: Mapping[str, str],
              system_metrics: bool = True) -> str:
    """Start (or, with ``run_id``, reopen) the training run in ``cfg.tracking.experiment``.

    Returns the run id. A ``run_id`` this server does not know starts a new run (warning).
    ``system_metrics``: MLflow's CPU/GPU/memory sampler (needs psutil; pynvml for GPUs).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    fast_http_env()
    try:
        exp = _experiment(cfg.tracking.experiment, uri)
        if run_id:
            try:
                mlflow.MlflowClient(uri).get_run(run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("MLflow run %s not found at %s; starting a new run", run_id, uri)
                run_id = None
        run = mlflow.start_run(run_id=run_id, experiment_id=exp.experiment_id if not run_id else None,
                               log_system_metrics=system_metrics)
        mlflow.set_tags(dict(tags))
    except MlflowException as exc:
        raise ConfigError(f"MLflow {uri}: {denial(exc) or str(exc).splitlines()[0][:300]}") from None
    return run.info.run_id


def end_run(status: str = "FINISHED") -> None:
    """End the active run; a server that is away only earns a warning."""
    import mlflow

    try:
        mlflow.end_run(status=status)
    except Exception as exc:
        log.warning("MLflow end_run failed (%s)", str(exc).splitlines()[0][:200])
