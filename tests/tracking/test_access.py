"""MLflow's 401/403 as one line naming the user and the missing permission (egnet/tracking/access.py).

Against a loopback stub that answers like MLflow's basic-auth app (JSON error bodies;
tests/registry/test_registry_auth.py does the same against the real server): the MLflow client's own
exception goes through :func:`denial`, through ``mlflow_errors`` in a command, and through the
CLI's last-resort handler for a call no step wrapped.
"""

from __future__ import annotations

import pytest

from egnet.cli import handlers, main
from egnet.tracking.access import NEEDS, denial, is_denied


def refusing(status: int, readable_model: bool = False):
    """Refuse everything but /health (and, for a READ user, getting the registered model, which
    the client itself reads before an alias call to rule out a prompt)."""
    code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}[status]

    def handle(req):
        if req.path == "/health":
            return 200, {}
        if readable_model and req.path.endswith("/registered-models/get"):
            return 200, {"registered_model": {"name": req.query["name"][0], "tags": []}}
        return status, {"error_code": code, "message": "Permission denied"}
    return handle


def test_each_call_names_its_level_and_resource(monkeypatch, json_stub):
    import mlflow
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-secret")
    stub = json_stub(refusing(403, readable_model=True))
    client = mlflow.MlflowClient(tracking_uri=stub.url, registry_uri=stub.url)
    cases = [
        (lambda: client.set_registered_model_alias("m", "champion", "1"),
         "set_registered_model_alias needs EDIT permission on registered model 'm'"),
        (lambda: client.delete_registered_model_alias("m", "previous-champion"),
         "delete_registered_model_alias needs MANAGE permission on registered model 'm'"),
        (lambda: client.get_model_version("m", "3"),
         "get_model_version needs READ permission on registered model 'm'"),
        (lambda: client.create_run("7"), "create_run needs EDIT permission on experiment 7"),
        (lambda: client.log_metric("abc123", "loss", 1.0),
         "log_metric needs EDIT permission on the experiment of run abc123"),
    ]
    for call, expected in cases:
        with pytest.raises(MlflowException) as err:
            call()
        assert is_denied(err.value)
        message = denial(err.value)
        assert message.startswith("MLflow denied user 'alice' (HTTP 403): "), message
        assert expected in message and "\n" not in message, message
    assert not is_denied(MlflowException("boom", error_code="RESOURCE_DOES_NOT_EXIST"))
    assert denial(ValueError("x")) is None
    assert {level for level, _ in NEEDS.values()} >= {"READ", "EDIT", "MANAGE"}


def test_a_missing_login_says_which_variables(monkeypatch, json_stub):
    import mlflow
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    stub = json_stub(refusing(401))
    with pytest.raises(MlflowException) as err:
        mlflow.MlflowClient(tracking_uri=stub.url).get_run("r1")
    assert denial(err.value) == ("MLflow requires a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                                 "MLFLOW_TRACKING_PASSWORD to an MLflow user")


def test_commands_print_one_line_and_exit_2(monkeypatch, capsys, json_stub):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-secret")
    stub = json_stub(refusing(403))
    # a command that wraps its MLflow calls (mlflow_errors)
    assert main(["models", "--set", f"tracking.uri={stub.url}"]) == 2
    err = capsys.readouterr().err
    assert err == ("egnet: error: models egnet-nightcity: MLflow denied user 'alice' (HTTP 403): "
                   "get_registered_model needs READ permission on registered model 'egnet-nightcity'; "
                   "an MLflow admin grants it (egnet registry grant, docs/registry.md)\n")

    # a call no step wrapped: the CLI's last resort gives the same kind of line
    def unwrapped(args, cfg):
        import mlflow

        mlflow.MlflowClient(tracking_uri=stub.url).set_tag("run9", "k", "v")
        return 0

    monkeypatch.setattr(handlers, "models", unwrapped)
    monkeypatch.setattr("egnet.cli.parser.h.models", unwrapped)
    assert main(["models", "--set", f"tracking.uri={stub.url}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("egnet: error: MLflow denied user 'alice' (HTTP 403): set_tag needs EDIT "
                          "permission on the experiment of run run9") and err.count("\n") == 1
