"""The platform's MLflow commands, run for real (tests/deploy/test_k8s.py checks them statically).

The dev overlay's migration Job, MLflow Deployment and bootstrap Job are run with their exact
commands, arguments and environment (the kubelet's $(VAR) expansion done here, cluster names
mapped to local servers, Secrets filled with test values) against the session's throw-away
PostgreSQL (``postgres`` fixture, tests/conftest.py) and the moto S3 server: the schema wait
refuses an empty database, the Job migrates it, the wait then passes, MLflow starts with
basic-auth and refuses anonymous clients, the bootstrap creates the users, and the pipeline's
login logs a run and an artifact that lands in the bucket under mlflow/. Skipped where the
PostgreSQL server binaries, the psycopg driver or the pinned kubectl are not installed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support import BIN, REPO
from tests.support.k8s import K8S, NO_KUBECTL, find, kubectl, render
from tests.support.services import free_port

DEV = K8S / "overlays" / "dev"
ADMIN_PASSWORD = "admin-password-k8s-test"
PIPELINE = ("egnet-pipeline", "pipeline-password-k8s")

pytestmark = [pytest.mark.slow, pytest.mark.mlflow, pytest.mark.postgres, pytest.mark.s3,
              pytest.mark.skipif(kubectl() is None, reason=NO_KUBECTL)]


def _container(obj: dict, name: str) -> dict:
    spec = obj["spec"]["template"]["spec"]
    (c,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return c


def _env(c: dict, config: dict, local: dict, secrets: dict) -> dict[str, str]:
    """The container's environment as the kubelet would build it, cluster names mapped to ``local``."""
    env = {}
    for e in c.get("env", []):
        src = e.get("valueFrom", {})
        if "configMapKeyRef" in src:
            key = src["configMapKeyRef"]["key"]
            env[e["name"]] = local.get(key, config[key])
        elif "secretKeyRef" in src:
            env[e["name"]] = secrets[src["secretKeyRef"]["name"]][src["secretKeyRef"]["key"]]
        else:
            env[e["name"]] = e["value"]
    return env


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in args]


def _run(argv: list[str], env: dict[str, str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"   # the image's PATH has the venv first
    return subprocess.run(argv, env={**_base_env(), **env, "PATH": path}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PG"))}


def test_migration_then_mlflow_with_basic_auth_then_bootstrap(postgres, moto_s3, tmp_path):
    objs = render(DEV)
    config = find(objs, "ConfigMap", "egnet-platform")["data"]
    bucket = moto_s3.bucket()
    users = tmp_path / "mlflow-users"          # the Secret egnet-mlflow-users as its volume shows it
    users.mkdir()
    (users / f"pipeline.{PIPELINE[0]}").write_text(PIPELINE[1])
    (users / "reviewer.alice").write_text("reviewer-password-k8s")
    secrets = {
        "egnet-postgres": {"POSTGRES_USER": postgres["user"], "POSTGRES_PASSWORD": postgres["password"]},
        "egnet-s3-mlflow": {k: moto_s3.env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        "egnet-mlflow-server": {"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": ADMIN_PASSWORD,
                                "FLASK_SECRET_KEY": "f" * 64},
    }
    db = f"k8s_{os.urandom(4).hex()}"   # a fresh database: the migration starts from nothing
    postgres.database(db)
    port = free_port()
    local = {"POSTGRES_HOST": postgres["host"], "POSTGRES_PORT": postgres["port"], "POSTGRES_DB": db,
             "S3_BUCKET": bucket, "MLFLOW_S3_ENDPOINT_URL": moto_s3.endpoint,
             "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    # In the pods the working directory is read-only and HOME an emptyDir: start in an empty
    # folder and check at the end that nothing was written there.
    workdir, home = tmp_path / "workspace", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()

    # 1. MLflow's init container: an empty database is not current (run once, without --wait)
    dep = find(objs, "Deployment", "egnet-mlflow")
    wait = _container(dep, "wait-for-schema")
    wait_env = _env(wait, config, local, secrets)
    wait_argv = _expand(wait["command"] + wait["args"], wait_env)
    assert wait_argv[:4] == ["python", "-m", "egnet.tracking.schema", "--wait"]
    once = _run([sys.executable, *wait_argv[1:3], *wait_argv[4:]], {**wait_env, "HOME": str(home)}, workdir)
    assert once.returncode == 1 and "tracking schema empty" in once.stderr, once.stderr

    # 2. the migration Job's steps, in order
    job = find(objs, "Job", "egnet-mlflow-migrate")
    for name in ("upgrade-tracking", "upgrade-auth"):
        c = _container(job, name)
        env = _env(c, config, local, secrets)
        argv = _expand(c["command"] + c["args"], env)
        if argv[0] == "python":
            argv[0] = sys.executable
        done = _run(argv, {**env, "HOME": str(home)}, workdir)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"

    # 3. the wait passes now (the exact command, --wait included)
    waited = _run([sys.executable, *wait_argv[1:]], {**wait_env, "HOME": str(home)}, workdir, timeout=120)
    assert waited.returncode == 0 and "MLflow database is current" in waited.stdout, waited.stderr

    # 4. the server: the Deployment's exact command (writes the auth ini, then `exec mlflow server`)
    c = _container(dep, "mlflow")
    env = _env(c, config, local, secrets)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp_path / "basic_auth.ini")   # /tmp in the pod
    args = _expand(c["args"], env)
    args = ["--host=127.0.0.1" if a.startswith("--host=") else f"--port={port}" if a.startswith("--port=")
            else "--workers=1" if a.startswith("--workers=") else a for a in args]
    assert f"--backend-store-uri=postgresql+psycopg://127.0.0.1:{postgres['port']}/{db}" in args
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*c["command"], *args],
            env={**_base_env(), **env, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        ini = (tmp_path / "basic_auth.ini").read_text()
        assert "default_permission = NO_PERMISSIONS" in ini and postgres["password"] not in ini
        assert (tmp_path / "basic_auth.ini").stat().st_mode & 0o077 == 0, "the ini is private"
        # the kubelet's probe comes with Host: <pod IP>:5000 and no login; /health must answer it
        req = urllib.request.Request(f"{uri}/health", headers={"Host": "10.1.2.3:5000"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        # anonymous: refused; a rebinding attempt: refused; the run namespaces' name with a login: served
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(
                search, headers={"Host": f"egnet-mlflow.egnet-platform.svc:{port}"}), timeout=10)
        assert refused.value.code == 401
        import base64

        admin = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(
                search, headers={"Host": "evil.example.com", "Authorization": admin}), timeout=10)
        assert refused.value.code in (400, 403)
        req = urllib.request.Request(search, headers={"Host": f"egnet-mlflow.egnet-platform.svc:{port}",
                                                      "Authorization": admin})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

        # 5. the bootstrap Job's command: users and permissions from the users Secret
        boot = find(objs, "Job", "egnet-mlflow-bootstrap")
        c = _container(boot, "grant")
        env = _env(c, config, local, secrets)
        argv = [a.replace("/etc/egnet/mlflow-users", str(users)) for a in c["command"] + c["args"]]
        done = _run(argv, {**env, "HOME": str(home)},
                    cwd=REPO)   # the image's WORKDIR holds params.yaml
        assert done.returncode == 0, done.stderr[-3000:]
        assert "egnet-pipeline  pipeline" in done.stdout and "EDIT (granted)" in done.stdout

        # 6. a client as a pipeline pod sees it: tracking URI and its MLflow login, no S3 keys
        client_code = (
            "import mlflow, pathlib, sys\n"
            "mlflow.set_tracking_uri(sys.argv[1])\n"
            "mlflow.set_experiment('nightcity-egnet')\n"
            "p = pathlib.Path(sys.argv[2]); p.write_text('hello')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('test_mIoU', 0.5)\n"
            "    mlflow.log_artifact(str(p))\n"
            "print(run.info.run_id, run.info.artifact_uri)\n"
        )
        login = {"MLFLOW_TRACKING_USERNAME": PIPELINE[0], "MLFLOW_TRACKING_PASSWORD": PIPELINE[1]}
        client = subprocess.run([sys.executable, "-c", client_code, uri, str(tmp_path / "note.txt")],
                                env={**_base_env(), **login}, capture_output=True, text=True, timeout=180)
        assert client.returncode == 0, client.stderr[-3000:]
        run_id, artifact_uri = client.stdout.split()[-2:]
        assert artifact_uri.startswith("mlflow-artifacts:/")
        keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any(k.startswith("mlflow/") and k.endswith(f"{run_id}/artifacts/note.txt") for k in keys), keys
        assert list(workdir.iterdir()) == [], "something wrote into the (read-only in the pod) working dir"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
