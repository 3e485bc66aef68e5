"""The MLflow Deployment's command, run for real (tests/deploy/test_k8s.py checks it statically).

`mlflow server` is started with the exact arguments and environment of the dev
overlay's Deployment (the kubelet's $(VAR) expansion done here, cluster names mapped to
local servers) against the session's throw-away PostgreSQL (``postgres`` fixture, in
tests/conftest.py) and the moto S3 server. Skipped where the PostgreSQL server binaries or
the psycopg driver are not installed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from tests.support import BIN
from tests.support.k8s import K8S, find, render
from tests.support.services import free_port

DEV = K8S / "overlays" / "dev"


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.postgres
@pytest.mark.s3
def test_mlflow_deployment_command_serves_runs_and_proxied_artifacts(postgres, moto_s3, tmp_path):
    """Run `mlflow server` with the dev Deployment's exact args and env (the kubelet's
    $(VAR) expansion done here) against PostgreSQL and an S3 server; a client with no
    S3 keys logs a run and an artifact, which lands in the bucket."""
    import subprocess
    import urllib.error
    import urllib.request

    objs = render(DEV)
    config = find(objs, "ConfigMap", "egnet-endpoints")["data"]
    c = find(objs, "Deployment", "egnet-mlflow")["spec"]["template"]["spec"]["containers"][0]
    bucket = moto_s3.bucket()
    secrets = {"egnet-postgres": {"POSTGRES_USER": postgres["user"],
                                  "POSTGRES_PASSWORD": postgres["password"]},
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
        server = subprocess.Popen([str(BIN / "mlflow"), "server", *args],
                                  env={**base_env, **env, "HOME": str(home)}, cwd=workdir,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
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
