"""MLflow's basic-auth refusals (HTTP 401/403) as one line naming the user and the missing permission.

An MLflow server started with ``--app-name basic-auth`` answers 401 to a request without a
valid login and 403 to a user whose permission on the experiment or registered model is too
low. The client turns both into an ``MlflowException`` (``UNAUTHENTICATED`` /
``PERMISSION_DENIED``; proxied artifact transfers raise a ``requests.HTTPError``) whose text
names only an endpoint. :func:`denial` recognises them and says who was refused and what
would have been needed, from the MLflow call that failed (the innermost frame of the
traceback that is a client/store method listed in :data:`NEEDS`).

The levels are MLflow 3's (``mlflow/server/auth/__init__.py``, BEFORE_REQUEST_HANDLERS):
READ < USE < EDIT < MANAGE; setting an alias needs EDIT on the registered model, deleting one
MANAGE; creating runs and logging needs EDIT on the experiment (docs/registry.md, "Who may
do what").
"""

from __future__ import annotations

import os
import traceback
from typing import Any

RM = "registered model"
EXP = "experiment"

#: MLflow client / store method -> (permission it needs, on what)
NEEDS: dict[str, tuple[str, str]] = {
    **{m: ("READ", RM) for m in (
        "get_registered_model", "get_model_version", "get_model_version_by_alias", "get_latest_versions",
        "get_model_version_download_uri", "search_model_versions")},
    **{m: ("EDIT", RM) for m in (
        "set_registered_model_alias", "create_model_version", "update_model_version", "set_model_version_tag",
        "update_registered_model", "set_registered_model_tag", "transition_model_version_stage",
        "copy_model_version")},
    **{m: ("MANAGE", RM) for m in (
        "delete_registered_model_alias", "delete_model_version_tag", "delete_model_version",
        "delete_registered_model", "delete_registered_model_tag", "rename_registered_model")},
    **{m: ("READ", EXP) for m in (
        "get_run", "get_metric_history", "list_artifacts", "download_artifacts", "get_experiment",
        "get_experiment_by_name", "get_logged_model", "search_logged_models")},
    **{m: ("EDIT", EXP) for m in (
        "create_run", "update_run", "set_terminated", "log_metric", "log_param", "log_batch", "set_tag",
        "delete_tag", "log_inputs", "log_outputs", "log_artifact", "log_artifacts", "create_logged_model",
        "finalize_logged_model", "set_logged_model_tags", "log_model_params", "set_experiment_tag")},
    **{m: ("MANAGE", EXP) for m in ("delete_run", "restore_run", "delete_experiment", "delete_logged_model")},
    # the basic-auth admin API (`egnet registry grant`)
    **{m: ("admin rights (MLflow's admin user)", "") for m in (
        "create_user", "update_user_password", "update_user_admin", "delete_user", "get_user")},
    **{m: ("MANAGE permission on the resource, or admin rights", "") for m in (
        "grant_user_permission", "revoke_user_permission", "get_user_permission")},
    # any logged-in user may create these, unless an admin set a DENY on them
    "create_experiment": ("permission to create experiments", ""),
    "create_registered_model": ("permission to create registered models", ""),
}


def _status(exc: BaseException) -> int | None:
    """401/403 when ``exc`` is MLflow's or requests' refusal, else None."""
    code = getattr(exc, "error_code", None)
    if code == "UNAUTHENTICATED":
        return 401
    if code == "PERMISSION_DENIED":
        return 403
    response = getattr(exc, "response", None)        # requests.HTTPError (proxied artifacts)
    status = getattr(response, "status_code", None)
    return status if status in (401, 403) else None


def is_denied(exc: BaseException) -> bool:
    """Whether ``exc`` is an authentication (401) or permission (403) refusal of the MLflow server."""
    return _status(exc) is not None


def user() -> str | None:
    """The MLflow login the client sends (None: anonymous; a bearer token has no name)."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return "(bearer token)"
    return None


def failed_call(exc: BaseException) -> tuple[str, dict[str, Any]] | None:
    """(method name, its arguments) of the innermost MLflow call in ``exc``'s traceback we know."""
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        name = frame.f_code.co_name
        if name in NEEDS and frame.f_globals.get("__name__", "").startswith("mlflow"):
            found = (name, dict(frame.f_locals))
    return found


def _resource(kind: str, args: dict[str, Any]) -> str:
    if kind == RM and isinstance(args.get("name"), str):
        return f"{RM} '{args['name']}'"
    if kind == EXP:
        if args.get("experiment_id") is not None:
            return f"{EXP} {args['experiment_id']}"
        if isinstance(args.get("run_id"), str):
            return f"the {EXP} of run {args['run_id']}"
    return f"the {kind}"


def denial(exc: BaseException) -> str | None:
    """One line for a 401/403 of the MLflow server (None for any other error).

    401: the login is missing or wrong. 403: who was refused, what the call needs, on which
    experiment / registered model."""
    status = _status(exc)
    if status is None:
        return None
    who = user()
    if status == 401:
        if who is None:
            return ("MLflow requires a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD to an MLflow user")
        return (f"MLflow refused the login of user '{who}' (HTTP 401): check MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD")
    who_text = f"user '{who}'" if who else "an anonymous client"
    call = failed_call(exc)
    if call is None:
        return f"MLflow denied {who_text} (HTTP 403): permission missing for this request"
    method, args = call
    level, kind = NEEDS[method]
    if not kind:
        return f"MLflow denied {who_text} (HTTP 403): {method} needs {level}"
    return (f"MLflow denied {who_text} (HTTP 403): {method} needs {level} permission on "
            f"{_resource(kind, args)}; an MLflow admin grants it (egnet registry grant, docs/registry.md)")
