"""Submit and schedule the compiled pipeline on a Kubeflow Pipelines server (kfp.Client).

- :func:`kfp_client`: checks ``GET <host>/apis/v2beta1/healthz`` first (one clear line when the
  host is unreachable, instead of kfp's retries and traceback) and the backend's version in
  it (``tag_name``; ``kfp.Client.get_kfp_healthz()`` drops that field): an older backend than
  the pipeline needs is refused with one line, an unknown one (a custom build says
  ``unknown``) earns a warning. Then it builds ``kfp.Client``; a bearer token comes from
  ``$KFP_TOKEN`` (``existing_token``).
- :func:`upload`: ``upload_pipeline`` the first time, ``upload_pipeline_version`` under the
  same pipeline name afterwards, so every submit is a new version of one pipeline.
- :func:`submit`: upload, then one run in an experiment (created if missing).
- :func:`schedule`: upload, then a recurring run with KFP's 6-field cron (seconds first),
  ``max_concurrency=1`` and no catch-up of missed slots; idempotent by name: a recurring run
  of the same name (of this pipeline) is replaced, never doubled. KFP has no update of a
  recurring run's spec, so the new one is created first and the old ones deleted after.
- :func:`recurring_runs`, :func:`set_schedule`: list the pipeline's recurring runs; pause,
  resume or delete one by name.

Run parameters (``--param k=v``) are typed from the compiled spec's parameter
declarations; an unknown name is an error that lists the known ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from egnet.core.errors import ConfigError, DataError

TOKEN_ENV = "KFP_TOKEN"
HEALTHZ = "/apis/v2beta1/healthz"


def check_reachable(host: str, timeout_s: float = 10.0, token: str | None = None) -> dict[str, Any]:
    """Raise ConfigError (one line) unless ``host`` answers the KFP healthz endpoint; returns its
    JSON (``tag_name``, ``commit_sha``, ``multi_user``: kubeflow/pipelines
    ``backend/src/apiserver/main.go`` ``newHealthzResponse``)."""
    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"--host {host}: expected http(s)://HOST[:PORT]")
    req = urllib.request.Request(host.rstrip("/") + HEALTHZ)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - a user-given URL
            body = resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ConfigError(f"KFP at {host}: HTTP {exc.code} (set ${TOKEN_ENV} to a valid token)") from None
        raise ConfigError(f"KFP at {host}: {HEALTHZ} answered HTTP {exc.code}; "
                          "is this the KFP API?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"KFP at {host} is not reachable ({reason}); "
                          "port-forward it or check --host (docs/pipeline.md)") from None
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise ConfigError(f"KFP at {host}: {HEALTHZ} did not answer JSON; is this the KFP API?") from None
    return doc if isinstance(doc, dict) else {}


def parse_version(tag: str | None) -> tuple[int, int, int] | None:
    """``"2.17.0"``, ``"v2.17.0-rc.1"`` -> ``(2, 17, 0)``; None when it is not a release version."""
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", (tag or "").strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def check_backend(doc: dict[str, Any], host: str, minimum: str | None) -> str:
    """Refuse (ConfigError, one line) a backend older than ``minimum``; warn (stderr) when its
    version is unknown. Returns the version the server reports."""
    tag = str(doc.get("tag_name") or "unknown")
    have, need = parse_version(tag), parse_version(minimum)
    if need is None:
        return tag
    if have is None:
        print(f"egnet: warning: KFP at {host} does not say its version (tag_name {tag!r}); this pipeline "
              f"needs {minimum} or newer", file=sys.stderr)
    elif have < need:
        raise ConfigError(f"KFP at {host} runs backend {tag}; this pipeline needs {minimum} or newer "
                          "(docs/pipeline.md, \"Backend version\")")
    return tag


def kfp_client(host: str, namespace: str | None = None, timeout_s: float = 10.0,
               min_backend: str | None = None) -> Any:
    """A kfp.Client for ``host`` after a reachability and version check; token from ``$KFP_TOKEN``."""
    import warnings

    import kfp

    token = os.environ.get(TOKEN_ENV) or None
    check_backend(check_reachable(host, timeout_s, token), host, min_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(host=host.rstrip("/"), existing_token=token, namespace=namespace or "kubeflow")


# --------------------------------------------------------------------------- parameters


def parameter_types(package: str | Path) -> dict[str, str]:
    """``{name: parameterType}`` (STRING, NUMBER_INTEGER, LIST, ...) of a compiled pipeline."""
    doc = next(d for d in yaml.safe_load_all(Path(package).read_text()) if d and "root" in d)
    params = doc["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: spec["parameterType"] for name, spec in params.items()}


def _typed(name: str, raw: str, kind: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"--param {name}={raw}: expected {expected}")

    if kind == "STRING":
        return raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "LIST":
        if value is None:
            return []
        if isinstance(value, str):  # one k=v item, or comma-separated ones
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad('a list, e.g. \'["train.lr=0.01","train.iterations=1000"]\'')
        return value
    if kind == "STRUCT":
        if not isinstance(value, dict):
            raise bad("a mapping")
        return value
    return value


def parse_params(items: list[str] | None, types: dict[str, str]) -> dict[str, Any]:
    """``["nodes=2", "data_rev=v1.2"]`` -> ``{"nodes": 2, "data_rev": "v1.2"}``, typed per ``types``."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE")
        if name not in types:
            raise ConfigError(f"--param {name}: not a parameter of the pipeline "
                              f"(known: {', '.join(sorted(types))})")
        out[name] = _typed(name, raw, types[name])
    return out


# --------------------------------------------------------------------------- upload, run, schedule


@dataclass(frozen=True)
class Uploaded:
    pipeline_id: str
    version_id: str
    version_name: str
    new_pipeline: bool


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What the KFP API client raises: HTTP errors (ApiException) and broken connections (urllib3)."""
    from kfp_server_api import ApiException
    from urllib3.exceptions import HTTPError

    return ApiException, HTTPError


def _api_error(what: str, exc: Exception) -> DataError:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    detail = ""
    if body:
        try:
            detail = json.loads(body).get("message") or json.loads(body).get("error_message") or ""
        except (ValueError, AttributeError):
            detail = str(body)[:200]
    return DataError(f"KFP {what} failed: HTTP {status} {detail}".rstrip() if status
                     else f"KFP {what} failed: {exc}")


def version_name(name: str, package: str | Path, now: datetime | None = None) -> str:
    """``<name>-<UTC time>-<8 hex of the spec>``: unique per upload, traceable to the spec."""
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8]
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{digest}"


def upload(client: Any, package: str | Path, name: str, description: str = "") -> Uploaded:
    """Upload ``package`` as pipeline ``name`` (first time) or as a new version of it."""
    vname = version_name(name, package)
    try:
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package), pipeline_name=name,
                                              description=description or None)
            pipeline_id = pipeline.pipeline_id
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            version = (versions.pipeline_versions or [None])[0]
            if version is None:
                raise DataError(f"KFP: pipeline {name} ({pipeline_id}) was uploaded but lists no version")
            return Uploaded(pipeline_id, version.pipeline_version_id, version.display_name, True)
        version = client.upload_pipeline_version(str(package), pipeline_version_name=vname,
                                                 pipeline_id=pipeline_id, description=description or None)
        return Uploaded(pipeline_id, version.pipeline_version_id, vname, False)
    except _transport_errors() as exc:
        raise _api_error(f"upload of pipeline {name}", exc) from None


def _experiment_id(client: Any, experiment: str, namespace: str | None) -> str:
    try:
        return client.create_experiment(experiment, namespace=namespace).experiment_id
    except _transport_errors() as exc:
        raise _api_error(f"experiment {experiment}", exc) from None


def submit(client: Any, package: str | Path, *, name: str, experiment: str, params: dict[str, Any],
           run_name: str | None = None, namespace: str | None = None,
           description: str = "", version_param: str | None = None) -> dict[str, Any]:
    """Upload and start one run; returns ids and the run's UI link. ``version_param``: the run
    parameter that gets the uploaded version's name (unless ``params`` sets it)."""
    up = upload(client, package, name, description)
    if version_param:
        params = {version_param: up.version_name, **params}
    exp_id = _experiment_id(client, experiment, namespace)
    run_name = run_name or f"{name} {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}"
    try:
        run = client.run_pipeline(exp_id, run_name, params=params, pipeline_id=up.pipeline_id,
                                  version_id=up.version_id)
    except _transport_errors() as exc:
        raise _api_error(f"run creation in {experiment}", exc) from None
    return {"pipeline_id": up.pipeline_id, "version_id": up.version_id, "version_name": up.version_name,
            "new_pipeline": up.new_pipeline, "experiment_id": exp_id, "run_id": run.run_id,
            "run_name": run_name}


def check_cron(cron: str) -> str:
    """KFP cron has 6 fields (seconds first): ``0 0 3 * * 0`` is Sundays 03:00."""
    fields = cron.split()
    if len(fields) != 6:
        raise ConfigError(f"--cron {cron!r}: KFP cron expressions have 6 fields, seconds first "
                          f"(e.g. \"0 0 3 * * 0\" = Sundays 03:00), got {len(fields)}")
    return " ".join(fields)


def recurring_runs(client: Any, pipeline: str, job_name: str | None = None,
                   namespace: str | None = None) -> list[Any]:
    """The recurring runs of pipeline ``pipeline`` (by name), optionally only those named ``job_name``."""
    flt = None
    if job_name:
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                          "stringValue": job_name}]})
    try:
        pipeline_id = client.get_pipeline_id(pipeline)
        if pipeline_id is None:
            return []
        found, token = [], ""
        while True:
            page = client.list_recurring_runs(page_token=token, page_size=100, namespace=namespace,
                                              filter=flt)
            found += [r for r in page.recurring_runs or []
                      if getattr(r.pipeline_version_reference, "pipeline_id", None) == pipeline_id]
            token = page.next_page_token or ""
            if not token:
                return found
    except _transport_errors() as exc:
        raise _api_error("listing of recurring runs", exc) from None


def describe_recurring_run(rec: Any) -> dict[str, Any]:
    """The fields `egnet pipeline schedules` shows."""
    cron = getattr(getattr(rec.trigger, "cron_schedule", None), "cron", None) if rec.trigger else None
    ref = rec.pipeline_version_reference
    paused = str(rec.status or rec.mode or "").upper().startswith("DISABLE")
    return {"name": rec.display_name, "id": rec.recurring_run_id, "cron": cron or "-",
            "state": "paused" if paused else "active",
            "pipeline_version_id": getattr(ref, "pipeline_version_id", None) or "-",
            "experiment_id": rec.experiment_id or "-"}


def set_schedule(client: Any, pipeline: str, job_name: str, action: str,
                 namespace: str | None = None) -> list[str]:
    """``pause`` | ``resume`` | ``delete`` the recurring run(s) named ``job_name``; returns their ids."""
    found = recurring_runs(client, pipeline, job_name, namespace)
    if not found:
        raise ConfigError(f"no recurring run named {job_name!r} of pipeline {pipeline} "
                          "(`egnet pipeline schedules` lists them)")
    call = {"pause": client.disable_recurring_run, "resume": client.enable_recurring_run,
            "delete": client.delete_recurring_run}[action]
    try:
        for rec in found:
            call(rec.recurring_run_id)
    except _transport_errors() as exc:
        raise _api_error(f"{action} of recurring run {job_name}", exc) from None
    return [r.recurring_run_id for r in found]


def schedule(client: Any, package: str | Path, *, name: str, experiment: str, cron: str,
             params: dict[str, Any], job_name: str | None = None, namespace: str | None = None,
             description: str = "", version_param: str | None = None) -> dict[str, Any]:
    """Upload and create (or replace) the recurring run ``job_name`` (default: the pipeline's
    name): ``max_concurrency=1``, no catch-up of missed slots. The new one is created before
    the old ones of that name are deleted, so a failure never leaves no schedule."""
    cron = check_cron(cron)
    job_name = job_name or name
    old = recurring_runs(client, name, job_name, namespace)
    up = upload(client, package, name, description)
    if version_param:
        params = {version_param: up.version_name, **params}
    exp_id = _experiment_id(client, experiment, namespace)
    try:
        rec = client.create_recurring_run(exp_id, job_name, description=description or None,
                                          cron_expression=cron, max_concurrency=1, no_catchup=True,
                                          params=params, pipeline_id=up.pipeline_id, version_id=up.version_id,
                                          enabled=True)
        for r in old:
            client.delete_recurring_run(r.recurring_run_id)
    except _transport_errors() as exc:
        raise _api_error(f"recurring run {job_name} in {experiment}", exc) from None
    return {"pipeline_id": up.pipeline_id, "version_id": up.version_id, "version_name": up.version_name,
            "experiment_id": exp_id, "recurring_run_id": rec.recurring_run_id, "job_name": job_name,
            "cron": cron, "replaced": [r.recurring_run_id for r in old]}
