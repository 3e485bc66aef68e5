"""MLflow with authentication: the roles of `egnet registry grant` against a real
`mlflow server --app-name basic-auth` on 127.0.0.1 (``default_permission = NO_PERMISSIONS``,
as in k8s/platform/mlflow.yaml), every command through `egnet`'s CLI as the user it would run as.

In order: anonymous requests are refused; the bootstrap creates the users and their permissions
and changes nothing when run again; the pipeline user (EDIT) registers versions and the gate
promotes them, but cannot roll back (deleting an alias needs MANAGE); the reviewer (READ) lists
versions and reads metrics, and `egnet promote` exits with one line naming the user and the
permission that is missing, leaving the aliases as they were; ops (MANAGE) roll back.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from egnet.cli import main
from egnet.tracking.registered import CHALLENGER, CHAMPION, PREVIOUS
from tests.support import tiny_args
from tests.support.evidence import log_evidence
from tests.support.services import MlflowServer

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

ADMIN = ("admin", "admin-password-for-tests")
#: role -> (username, password), as the Secret egnet-mlflow-users would hold them
USERS = {"pipeline": ("egnet-pipeline", "pipeline-password-1"),
         "reviewer": ("alice", "reviewer-password-1"), "ops": ("bob", "ops-password-12345")}
#: params.yaml's register.model_name and tracking.experiment (the bootstrap's defaults)
MODEL, EXPERIMENT = "egnet-nightcity", "nightcity-egnet"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-basic-auth")
    ini = root / "basic_auth.ini"
    # as k8s/platform/mlflow.yaml writes it
    ini.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\nauth_cache_ttl_seconds = 30\n"
                   f"database_uri = sqlite:///{root / 'auth.db'}\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    srv = MlflowServer(root=root, artifacts_destination=str(root / "artifacts"), env=env,
                       app_name="basic-auth").start(timeout_s=180)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("auth-work")


@pytest.fixture
def as_user(monkeypatch):
    """``as_user("reviewer")`` / ``as_user("admin")`` / ``as_user(None)``: the login egnet sends."""
    def login(role: str | None) -> None:
        if role is None:
            monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
            monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
            return
        name, password = ADMIN if role == "admin" else USERS[role]
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return login


def egnet(server, *argv: str) -> int:
    return main([*argv, *tiny_args(f"tracking.uri={server.uri}")])


def aliases(server) -> dict[str, str]:
    """The registered model's aliases, read as the current user (every role may read them)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    return {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("egnet: error: "), err
    return err


def test_anonymous_requests_are_refused(server, as_user, capsys):
    as_user(None)
    req = urllib.request.Request(f"{server.uri}/api/2.0/mlflow/experiments/search", method="POST",
                                 data=b'{"max_results": 1}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")
    with urllib.request.urlopen(f"{server.uri}/health", timeout=30) as r:   # probes need no login
        assert r.status == 200
    assert egnet(server, "models") == 2
    assert "MLflow requires a login (HTTP 401): set MLFLOW_TRACKING_USERNAME" in one_line_error(capsys)
    as_user("reviewer")  # not created yet: a wrong login
    assert egnet(server, "models") == 2
    assert "MLflow refused the login of user 'alice' (HTTP 401)" in one_line_error(capsys)


def users_dir(work: Path) -> Path:
    folder = work / "mlflow-users"
    folder.mkdir(exist_ok=True)
    for role, (name, password) in USERS.items():
        (folder / f"{role}.{name}").write_text(password + "\n")
    (folder / "..data").mkdir(exist_ok=True)   # what a Secret volume also holds
    return folder


def test_bootstrap_grants_each_role_and_changes_nothing_when_run_again(server, work, as_user, capsys):
    from mlflow.server import get_app_client

    folder = users_dir(work)
    as_user("pipeline")  # not an admin (and not yet a user): refused, one line
    assert egnet(server, "registry", "grant", "--users", str(folder)) == 2
    assert "MLflow refused the login of user 'egnet-pipeline'" in one_line_error(capsys)
    as_user("admin")
    capsys.readouterr()
    assert egnet(server, "registry", "grant", "--users", str(folder)) == 0
    first = capsys.readouterr().out
    assert f"created experiment '{EXPERIMENT}'" in first and f"created registered model '{MODEL}'" in first
    assert first.count("created") >= 5 and "(granted)" in first
    assert egnet(server, "registry", "grant", "--users", str(folder)) == 0
    again = capsys.readouterr().out
    assert "created" not in again and "(granted)" not in again and again.count("(unchanged)") == 6

    auth = get_app_client("basic-auth", tracking_uri=server.uri)
    import mlflow

    exp_id = mlflow.MlflowClient(server.uri).get_experiment_by_name(EXPERIMENT).experiment_id
    levels = {role: (auth.get_user_permission(name, "experiment", exp_id).permission,
                     auth.get_user_permission(name, "registered_model", MODEL).permission)
              for role, (name, _) in USERS.items()}
    assert levels == {"reviewer": ("READ", "READ"), "pipeline": ("EDIT", "EDIT"), "ops": ("READ", "MANAGE")}
    # a password MLflow would refuse: one line naming the file, nothing done
    bad = work / "bad-users"
    bad.mkdir()
    (bad / "reviewer.carol").write_text("short\n")
    assert egnet(server, "registry", "grant", "--users", str(bad)) == 2
    assert "'reviewer.carol': the password is shorter than 12" in one_line_error(capsys)
    # a non-admin with a login may not administer users either
    as_user("reviewer")
    assert egnet(server, "registry", "grant", "--users", str(folder)) == 2
    err = one_line_error(capsys)
    assert "MLflow denied user 'alice' (HTTP 403)" in err and ("admin rights" in err or "MANAGE" in err)


def _train_and_eval(server, work: Path, make_checkpoint, tag: str, miou: float) -> tuple[Path, Path]:
    """A run in the experiment made by the pipeline user, an (untrained) model and its evaluation
    (metrics.json and, in the run, hand-made per-image counts with that mIoU)."""
    import mlflow

    client = mlflow.MlflowClient(server.uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    run = client.create_run(exp_id, run_name=tag, tags={"git_commit": "0" * 40, "data_version": "content:t",
                                                        "params_hash": tag})
    client.log_metric(run.info.run_id, "val_mIoU", miou)
    log_evidence(client, run.info.run_id, miou, work)   # the gate's per-image counts (EDIT logs them)
    client.set_terminated(run.info.run_id)
    train, ev = work / tag, work / f"eval_{tag}"
    make_checkpoint(train, 0, "model.variant=no_exposure_stream", run_id=run.info.run_id)
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({"mIoU": miou, "mEF1": 0.8, "num_images": 4}))
    (ev / "model_source.json").write_text(json.dumps({"run_id": run.info.run_id, "model_config": {
        "variant": "no_exposure_stream", "backbone": "resnet18"}}))
    return train, ev


def _register(server, work, make_checkpoint, tag, miou) -> int:
    train, ev = _train_and_eval(server, work, make_checkpoint, tag, miou)
    return egnet(server, "register", "--train-dir", str(train), "--eval-dir", str(ev),
                 "--set", "register.serialization_format=pickle")


def test_the_pipeline_registers_and_its_gate_promotes_but_it_cannot_roll_back(server, work, make_checkpoint,
                                                                             as_user, capsys):
    as_user("pipeline")
    assert _register(server, work, make_checkpoint, "v1", 0.30) == 0
    assert aliases(server) == {CHALLENGER: "1"}
    # the pipeline's gate step, then its promote step (egnet promote --version V [--dry-run])
    assert egnet(server, "promote", "--version", "1", "--dry-run") == 0
    assert egnet(server, "promote", "--version", "1") == 0
    assert aliases(server) == {CHAMPION: "1", CHALLENGER: "1"}   # challenger stays: no delete with EDIT
    assert _register(server, work, make_checkpoint, "v2", 0.35) == 0
    assert egnet(server, "promote", "--version", "2") == 0
    assert aliases(server) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "2"}
    capsys.readouterr()
    before = aliases(server)
    assert egnet(server, "promote", "--rollback") == 2
    err = one_line_error(capsys)
    assert ("MLflow denied user 'egnet-pipeline' (HTTP 403): delete_registered_model_alias needs MANAGE "
            f"permission on registered model '{MODEL}'") in err
    assert aliases(server) == before
    # a better challenger for the reviewer to try
    assert _register(server, work, make_checkpoint, "v3", 0.40) == 0
    assert aliases(server) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "3"}


def test_the_reviewer_reads_versions_and_metrics_but_cannot_move_an_alias(server, as_user, capsys):
    import mlflow

    as_user("reviewer")
    capsys.readouterr()
    assert egnet(server, "models") == 0
    out = capsys.readouterr().out
    assert f"{MODEL}: 3 version(s)" in out and "0.4000" in out and "0.3500" in out
    client = mlflow.MlflowClient(server.uri, registry_uri=server.uri)
    runs = [client.get_model_version(MODEL, v).run_id for v in ("1", "2")]
    assert [m.value for m in client.get_metric_history(runs[1], "val_mIoU")] == [0.35]
    assert egnet(server, "compare", *runs) == 0
    assert "val_mIoU  0.3000    0.3500 (+0.0500)" in capsys.readouterr().out
    before = aliases(server)
    assert egnet(server, "promote") == 2   # v3 passes the gate; moving champion is not the reviewer's
    err = one_line_error(capsys)
    assert err == (f"egnet: error: promote {MODEL}: MLflow denied user 'alice' (HTTP 403): "
                   f"set_registered_model_alias needs EDIT permission on registered model '{MODEL}'; "
                   "an MLflow admin grants it (egnet registry grant, docs/registry.md)\n")
    assert aliases(server) == before
    # the reviewer's searches only show what it may read
    assert [e.name for e in client.search_experiments()] == [EXPERIMENT]


def test_ops_roll_back(server, as_user, capsys):
    as_user("ops")
    assert egnet(server, "promote", "--rollback") == 0
    assert aliases(server) == {CHAMPION: "1", PREVIOUS: "2", CHALLENGER: "3"}
    assert egnet(server, "promote") == 0       # ops may promote too: v3 beats v1
    assert aliases(server) == {CHAMPION: "3", PREVIOUS: "1", CHALLENGER: "3"}
    # rolling back v3 also drops its `challenger`, so a plain promote cannot bring it back
    assert egnet(server, "promote", "--rollback") == 0
    assert aliases(server) == {CHAMPION: "1", PREVIOUS: "3"}
    capsys.readouterr()
    assert egnet(server, "promote") == 2
    assert f"{MODEL}: no --version given and no 'challenger' alias" in one_line_error(capsys)
