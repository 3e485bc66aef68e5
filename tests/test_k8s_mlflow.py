"""The MLflow Deployment's command, run for real (tests/test_k8s.py checks it statically).

`mlflow server` is started with the exact arguments and environment of the dev
overlay's Deployment (the kubelet's $(VAR) expansion done here, cluster names mapped to
local servers) against a throw-away PostgreSQL and the moto S3 server. Skipped where the
PostgreSQL server binaries or the psycopg driver are not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from tests._k8s import K8S, find, render
from tests._servers import moto_s3  # noqa: F401  (fixture)

DEV = K8S / "overlays" / "dev"


def _pg_bin() -> Path | None:
    """Folder of initdb/postgres: on PATH, or Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return debian[-1].parent if debian else None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL on 127.0.0.1 with password login (user mlflow)."""
    import pwd
    import subprocess
    import tempfile

    from tests._servers import free_port

    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries not installed")
    pytest.importorskip("psycopg", reason="psycopg (the MLflow server's driver) not installed")
    user = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` user to run the server as")
    # Not under pytest's tmp_path: as root that sits in a 0700 folder the server's user cannot enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="egnet-pg-"))
    data, sock = tmp_path / "pgdata", tmp_path / "pgsock"
    sock.mkdir()
    pwfile = tmp_path / "pw"
    password = "pw-" + os.urandom(8).hex()
    pwfile.write_text(password)
    if user:
        for p in (tmp_path, sock, pwfile):
            os.chown(p, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    init = subprocess.run([str(pg / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=scram-sha-256",
                           f"--pwfile={pwfile}"], capture_output=True, text=True, timeout=120, **run_as)
    assert init.returncode == 0, init.stdout + init.stderr
    port = free_port()
    proc = subprocess.Popen([str(pg / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                             "-k", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **run_as)
    try:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg.connect(host="127.0.0.1", port=port, user="mlflow", password=password,
                                       dbname="postgres", autocommit=True)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        conn.execute("CREATE DATABASE mlflow")
        conn.close()
        yield {"host": "127.0.0.1", "port": str(port), "user": "mlflow", "password": password}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_mlflow_deployment_command_serves_runs_and_proxied_artifacts(postgres, moto_s3, tmp_path):  # noqa: F811
    """Run `mlflow server` with the dev Deployment's exact args and env (the kubelet's
    $(VAR) expansion done here) against PostgreSQL and an S3 server; a client with no
    S3 keys logs a run and an artifact, which lands in the bucket."""
    import subprocess
    import urllib.error
    import urllib.request

    from tests._servers import BIN, free_port

    objs = render(DEV)
    config = find(objs, "ConfigMap", "egnet-endpoints")["data"]
    c = find(objs, "Deployment", "egnet-mlflow")["spec"]["template"]["spec"]["containers"][0]
    bucket = moto_s3.bucket()
    secrets = {"egnet-postgres": {"POSTGRES_USER": postgres["user"], "POSTGRES_PASSWORD": postgres["password"]},
               "egnet-s3": {k: moto_s3.env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    # where the cluster's names resolve to this machine's servers
    local = {"POSTGRES_HOST": postgres["host"], "POSTGRES_PORT": postgres["port"], "S3_BUCKET": bucket,
             "MLFLOW_S3_ENDPOINT_URL": moto_s3.endpoint}
    env = {}
    for e in c["env"]:
        src = e.get("valueFrom", {})
        if "configMapKeyRef" in src:
            key = src["configMapKeyRef"]["key"]
            env[e["name"]] = local.get(key, config[key])
        elif "secretKeyRef" in src:
            env[e["name"]] = secrets[src["secretKeyRef"]["name"]][src["secretKeyRef"]["key"]]
        else:
            env[e["name"]] = e["value"]
    port = free_port()
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in c["args"]]
    args = ["--host=127.0.0.1" if a.startswith("--host=") else f"--port={port}" if a.startswith("--port=")
            else "--workers=1" if a.startswith("--workers=") else a for a in args]
    assert args[3] == f"--backend-store-uri=postgresql+psycopg://127.0.0.1:{postgres['port']}/mlflow"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PG"))}
    log = tmp_path / "server.log"
    # In the pod the working directory (/workspace) is read-only and HOME an emptyDir:
    # start in an empty folder and check at the end that the server wrote nothing there.
    workdir, home = tmp_path / "workspace", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    with open(log, "wb") as out:
        server = subprocess.Popen([str(BIN / "mlflow"), "server", *args], env={**base_env, **env, "HOME": str(home)},
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
        # the kubelet's probe comes with Host: <pod IP>:5000; /health must answer it
        req = urllib.request.Request(f"{uri}/health", headers={"Host": "10.1.2.3:5000"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        # a rebinding attempt is refused; the in-cluster name is served
        req = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": "evil.example.com"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code in (400, 403)
        req = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": "egnet-mlflow:5000"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

        # a client as a pipeline pod sees it: tracking URI only, no S3 keys
        client_code = (
            "import mlflow, pathlib, sys\n"
            "mlflow.set_tracking_uri(sys.argv[1])\n"
            "mlflow.set_experiment('k8s-check')\n"
            "p = pathlib.Path(sys.argv[2]); p.write_text('hello')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('test_mIoU', 0.5)\n"
            "    mlflow.log_artifact(str(p))\n"
            "print(run.info.run_id, run.info.artifact_uri)\n"
        )
        client = subprocess.run([sys.executable, "-c", client_code, uri, str(tmp_path / "note.txt")],
                                env=base_env, capture_output=True, text=True, timeout=180)
        assert client.returncode == 0, client.stderr[-3000:]
        run_id, artifact_uri = client.stdout.split()[-2:]
        assert artifact_uri.startswith("mlflow-artifacts:/")
        keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any(k.startswith("mlflow/") and k.endswith(f"{run_id}/artifacts/note.txt") for k in keys), keys
        assert list(workdir.iterdir()) == [], "the server wrote into its (read-only in the pod) working dir"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
