"""`egnet registry grant`: MLflow basic-auth users and their permissions, idempotently.

The MLflow server runs MLflow's basic-auth app (``mlflow server --app-name basic-auth``,
``default_permission = NO_PERMISSIONS``: a user sees only what is granted). This bootstrap,
run with the MLflow admin's login (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``), makes the
experiment (``tracking.experiment``) and the registered model (``register.model_name``) exist,
so that no user becomes their creator (creators get MANAGE), then creates each user of the
users folder and sets its permissions to exactly what its role gives (:data:`ROLES`):

- ``reviewer``: READ on the experiment and the registered model (runs, metrics, versions).
- ``pipeline``: EDIT on both: create runs and log, log models, register versions, set aliases
  and version tags (the gate promotes with that). No deletes.
- ``ops``: MANAGE on the registered model (promote, roll back: deleting aliases needs MANAGE;
  can delegate grants on that model), READ on the experiment (the gate reads run metrics).

The users folder is a mounted Secret (k8s: ``egnet-mlflow-users``) or any folder: one file
per user named ``<role>.<username>`` holding the password (12+ characters, MLflow's rule).
Running it again changes nothing but passwords (set from the files, which rotates them) and
levels that differ; permissions of a user on these two resources that its role does not give
are revoked. Users not in the folder are left alone (delete them with MLflow's admin API).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError
from egnet.tracking.client import client_for, mlflow_errors

EXPERIMENT = "experiment"
REGISTERED_MODEL = "registered_model"
#: role -> resource type -> MLflow permission
ROLES: dict[str, dict[str, str]] = {
    "reviewer": {EXPERIMENT: "READ", REGISTERED_MODEL: "READ"},
    "pipeline": {EXPERIMENT: "EDIT", REGISTERED_MODEL: "EDIT"},
    "ops": {EXPERIMENT: "READ", REGISTERED_MODEL: "MANAGE"},
}
MIN_PASSWORD = 12  # MLflow refuses shorter passwords
NONE = "NO_PERMISSIONS"


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password: str = ""

    def __repr__(self) -> str:  # never print a password
        return f"User({self.name!r}, role={self.role!r})"


def read_users(folder: Path) -> list[User]:
    """Users from ``<role>.<username>`` files (hidden entries, e.g. a Secret volume's ``..data``, skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--users {folder}: not a folder (one file per user, named <role>.<username>)")
    users: dict[str, User] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        role, dot, name = path.name.partition(".")
        if not dot or role not in ROLES or not name:
            raise ConfigError(f"--users {folder}: file '{path.name}' is not <role>.<username> with role in "
                              f"{', '.join(ROLES)}")
        password = path.read_text().rstrip("\r\n")
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"--users {folder}: '{path.name}': the password is shorter than {MIN_PASSWORD} "
                              "characters (MLflow refuses it)")
        if name in users:
            raise ConfigError(f"--users {folder}: user '{name}' has two roles "
                              f"({users[name].role}, {role}); give each user one file")
        users[name] = User(name, role, password)
    if not users:
        raise ConfigError(f"--users {folder}: no <role>.<username> files")
    return list(users.values())


def _code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def ensure_resources(client: Any, experiment: str, model: str) -> str:
    """Create the experiment and the registered model if missing; returns the experiment id."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp_id = client.create_experiment(experiment)
            print(f"created experiment '{experiment}' ({exp_id})")
        except MlflowException as exc:  # created meanwhile by someone else
            if _code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        exp_id = exp.experiment_id
    try:
        client.get_registered_model(model)
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(model)
            print(f"created registered model '{model}'")
        except MlflowException as exc2:
            if _code(exc2) != "RESOURCE_ALREADY_EXISTS":
                raise
    return str(exp_id)


def ensure_user(auth: Any, user: User) -> str:
    """Create the user, or set its password from the file when it exists. Returns what happened."""
    from mlflow.exceptions import MlflowException

    try:
        auth.create_user(user.name, user.password)
        return "created"
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    auth.update_user_password(user.name, user.password)
    return "exists, password set"


def ensure_permission(auth: Any, username: str, resource_type: str, resource_id: str,
                      want: str | None) -> str:
    """Make ``username``'s permission on the resource ``want`` (None: no grant). Returns what happened."""
    from mlflow.exceptions import MlflowException

    have = auth.get_user_permission(username, resource_type, resource_id).permission
    if want is None:
        if have == NONE:
            return "none"
        try:
            auth.revoke_user_permission(username, resource_type, resource_id)
        except MlflowException as exc:
            if _code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            return f"{have} (not a grant of this user; left as is)"
        return f"revoked {have}"
    if have == want:
        return f"{want} (unchanged)"
    try:
        auth.grant_user_permission(username, resource_type, resource_id, want)
        return f"{want} (granted)"
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    # a grant of another level exists: MLflow has no update of a user grant, so revoke + grant
    auth.revoke_user_permission(username, resource_type, resource_id)
    auth.grant_user_permission(username, resource_type, resource_id, want)
    return f"{want} (was {have})"


def grant(client: Any, auth: Any, users: list[User], experiment: str, model: str) -> list[tuple[str, ...]]:
    """Users, passwords and permissions as :data:`ROLES` says; returns the table that was printed."""
    exp_id = ensure_resources(client, experiment, model)
    rows = [("user", "role", "login", f"experiment '{experiment}'", f"registered model '{model}'")]
    for user in users:
        login = ensure_user(auth, user)
        levels = ROLES[user.role]
        on_exp = ensure_permission(auth, user.name, EXPERIMENT, exp_id, levels.get(EXPERIMENT))
        on_model = ensure_permission(auth, user.name, REGISTERED_MODEL, model, levels.get(REGISTERED_MODEL))
        rows.append((user.name, user.role, login, on_exp, on_model))
    return rows


def grant_main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet registry grant --users DIR [--name MODEL] [--experiment NAME]`."""
    import mlflow
    from mlflow.server import get_app_client

    from egnet.core.text import render_table

    users = read_users(args.users)
    model = args.name or cfg.register.model_name
    experiment = args.experiment or cfg.tracking.experiment
    with mlflow_errors("registry grant"):
        client = client_for(cfg)
        auth = get_app_client("basic-auth", tracking_uri=mlflow.get_tracking_uri())
        rows = grant(client, auth, users, experiment, model)
    print(render_table(rows))
    return 0
