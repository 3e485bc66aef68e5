"""Multi-node training on one machine: the manifest `egnet pipeline render-job` prints (the train
step's own builder), run as two "nodes" (two process groups, one gloo process each) with exactly
the command and environment each controller gives its pods (tests/support/operators.py says which
source lines), and a node's worker killed mid-run recovered by torchrun's elastic restart.

Shared by the tests: the tiny profile, 8 iterations, a checkpoint every 3, deterministic
algorithms, global batch 4 (2 per process); output on S3 (moto, shared by the nodes as the
cluster's ``train_out`` must be), MLflow a real ``mlflow server``. The reference is one node with
two processes (``torchrun --standalone --nproc_per_node=2``) on the same global batch: the same
ranks see the same samples, so the final weights must be bit-identical.

Node 1 reaches S3 and MLflow through recording proxies (the same servers; only its route
differs), so the tests see that rank 0 alone writes checkpoints, the model, the summary and MLflow.
Rank 0 is node 0's process: c10d orders the nodes by (host name, agent pid), the host name is the
same here and node 0's agent starts first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from egnet.core.config import load_config
from egnet.core.storage import Location
from egnet.training.checkpoint import read_checkpoint
from tests.support import PARAMS, REPO, sets, subprocess_env, train_argv, wait_for
from tests.support.operators import local_pods
from tests.support.services import free_port
from tests.training.conftest import S3FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.s3]

OVER = ("train.iterations=8", "train.checkpoint_every=3", "train.deterministic=true")
RUN_ID = "3f0c5d1e-1111-4a4a-9999-000000000018"
WRITES = ("PUT", "POST", "DELETE")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(synth_root, split_dir, tmp_path_factory, tracking_db) -> Path:
    """One node, two processes, the same global batch: ``model.pt`` of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "egnet.cli", *train_argv(synth_root, split_dir, out, *OVER)],
                       cwd=REPO, env=subprocess_env(tracking_db), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "model.pt"


def render(kind: str, data: Path, split: Path, out: str, experiment: str) -> dict:
    """`egnet pipeline render-job --nodes 2 --gpus-per-node 1 --kind KIND`, parsed."""
    from egnet.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["pipeline", "render-job", "--nodes", "2", "--gpus-per-node", "1", "--kind", kind,
                     "--run-id", RUN_ID, "--data", str(data), "--split", str(split), "--out", out,
                     "--params", str(PARAMS), "--profile", "tiny",
                     *sets(*OVER, f"tracking.experiment={experiment}")])
    assert code == 0
    return yaml.safe_load(buf.getvalue())


class Cluster:
    """The two pods of a rendered job as local process groups, with their own routes to S3/MLflow."""

    def __init__(self, manifest: dict, moto, mlflow_uri: str, bucket: str, tmp: Path):
        self.tmp, self.port = tmp, free_port()
        self.s3_proxy = S3FaultProxy(moto.endpoint).__enter__()
        self.mlflow_proxy = S3FaultProxy(mlflow_uri).__enter__()
        secrets = {"egnet-s3": {k: moto.env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
        self.pods = []
        for node in range(2):  # the endpoints ConfigMap as each node's network sees it
            cm = {"egnet-endpoints": {
                "MLFLOW_TRACKING_URI": mlflow_uri if node == 0 else self.mlflow_proxy.endpoint,
                "S3_BUCKET": bucket, "AWS_DEFAULT_REGION": moto.env["AWS_DEFAULT_REGION"],
                "AWS_ENDPOINT_URL": moto.endpoint if node == 0 else self.s3_proxy.endpoint}}
            self.pods.append(local_pods(manifest, configmaps=cm, secrets=secrets, port=self.port)[node])
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for node, (argv, env) in enumerate(self.pods):
            home = self.tmp / f"home{node}"   # the pod's HOME emptyDir
            home.mkdir(exist_ok=True)
            full = {**subprocess_env(), **env, "TORCH_HOME": str(home / ".cache" / "torch")}
            log = open(self.tmp / f"node{node}.log", "w")  # noqa: SIM115 - closed with the process
            self.procs.append(subprocess.Popen(argv, cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
            if node == 0:  # node 0's agent hosts the c10d store, as on the cluster (DNS name = node 0)
                wait_for(lambda: _listening(self.port), self.procs[0], timeout=120,
                         what="node 0's rendezvous store")

    def wait(self, timeout: float = 600) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        return [p.returncode for p in self.procs]

    def logs(self) -> str:
        return "\n".join(f"--- node {i}\n" + (self.tmp / f"node{i}.log").read_text()[-2500:]
                         for i in range(2))

    def close(self) -> None:
        import psutil

        for p in self.procs:  # torchrun starts its workers in sessions of their own
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(p.pid).children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        self.s3_proxy.__exit__(None, None, None)
        self.mlflow_proxy.__exit__(None, None, None)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def cluster(moto_s3, mlflow_server, tmp_path):
    made: list[Cluster] = []

    def make(manifest: dict, bucket: str) -> Cluster:
        made.append(Cluster(manifest, moto_s3, mlflow_server.uri, bucket, tmp_path))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _one_run(uri: str, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_two_nodes_train_like_one_node_with_two_processes(kind, synth_root, split_dir, moto_s3, mlflow_server,
                                                          reference, cluster, monkeypatch):
    """The rendered job's two pods rendezvous over 127.0.0.1, shard the data and train; rank 0
    alone writes the checkpoints, model.pt, train_summary.json (world size 2) and the one MLflow
    run; the weights equal the one-node two-process run's bit for bit."""
    bucket = moto_s3.bucket()
    out, experiment = f"s3://{bucket}/runs/{kind}", f"multinode-{kind}"
    manifest = render(kind, synth_root, split_dir, out, experiment)
    c = cluster(manifest, bucket)
    c.start()
    assert c.wait() == [0, 0], c.logs()

    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    loc = Location.from_str(out)
    summary = json.loads(loc.read_text("train_summary.json"))
    assert (summary["world_size"], summary["per_process_batch"], summary["iteration"]) == (2, 2, 8)
    assert "checkpoints/ckpt_8.pt" in loc.list("checkpoints")
    local = c.tmp / "model.pt"
    loc.get("model.pt", local)
    assert_same_weights(_weights(reference), _weights(local))

    client, run = _one_run(mlflow_server.uri, experiment)
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["restarts"] == "0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_total")] == list(range(1, 9))
    # node 1 (rank 1) wrote nothing to S3 and never called MLflow
    assert [r for r in c.s3_proxy.log if r[0] in WRITES] == []
    assert c.mlflow_proxy.log == []


def _workers(agent: int) -> list[int]:
    """The training processes a torchrun agent started (its children running egnet.cli)."""
    import psutil

    return [p.pid for p in psutil.Process(agent).children() if "egnet.cli" in p.cmdline()]


def test_pytorchjob_elastic_policy_reaches_torchrun_as_the_operator_sets_it(synth_root, split_dir):
    """The restart below runs live on the TrainJob (the cluster path the docs lead with; 50 s).
    The PyTorchJob carries ``train.max_restarts`` as elasticPolicy, which Training Operator v1.9
    hands to torchrun as PET_* variables (tests/support/operators.py, from its Go source): the
    two-node test runs torchrun from exactly these, and the restart itself is torchrun's."""
    restarts = load_config(PARAMS, "tiny", list(OVER)).train.max_restarts
    assert restarts > 0
    manifest = render("pytorchjob", synth_root, split_dir, "s3://b/runs/x", "e")
    assert manifest["spec"]["elasticPolicy"]["maxRestarts"] == restarts
    cm = {"egnet-endpoints": dict.fromkeys(
        ("MLFLOW_TRACKING_URI", "S3_BUCKET", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"), "x")}
    secrets = {"egnet-s3": dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "x")}
    for _, env in local_pods(manifest, configmaps=cm, secrets=secrets, port=free_port()):
        assert env["PET_MAX_RESTARTS"] == str(restarts) and env["PET_RDZV_BACKEND"] == "c10d", env
        assert env["PET_NNODES"] == "2:2" and env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1", env


def test_a_killed_worker_restarts_the_group_which_resumes_and_ends_bit_identical(
        synth_root, split_dir, moto_s3, mlflow_server, reference, cluster, monkeypatch):
    """``train.max_restarts`` in the manifest (TrainJob: torchrun --max-restarts with a c10d
    rendezvous on node 0; the PyTorchJob's elasticPolicy is checked above, without a run):
    node 1's worker process is SIGKILLed after the first checkpoint. Its agent restarts its
    worker, node 0's agent restarts its own (the rendezvous has a node waiting, or its worker
    failed on the broken collective), the group resumes from the last checkpoint and finishes:
    the weights are the uninterrupted run's bit for bit, and MLflow has one run with
    ``restarts`` = 1 (TORCHELASTIC_RESTART_COUNT, the largest over the ranks)."""
    kind = "trainjob"
    restarts = load_config(PARAMS, "tiny", list(OVER)).train.max_restarts
    bucket = moto_s3.bucket()
    out, experiment = f"s3://{bucket}/runs/{kind}-elastic", f"multinode-elastic-{kind}"
    manifest = render(kind, synth_root, split_dir, out, experiment)
    command = manifest["spec"]["trainer"]["command"]
    assert f"--max-restarts={restarts}" in command and "--rdzv-backend=c10d" in command
    c = cluster(manifest, bucket)
    c.start()
    s3 = moto_s3.client()

    def first_checkpoint() -> bool:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{kind}-elastic/checkpoints/")
        return listing.get("KeyCount", 0) > 0

    wait_for(first_checkpoint, c.procs[0], timeout=300, what="the first checkpoint")
    (worker,) = _workers(c.procs[1].pid)           # node 1's torchrun agent -> its one worker
    os.kill(worker, signal.SIGKILL)
    assert c.wait() == [0, 0], c.logs()

    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    loc = Location.from_str(out)
    summary = json.loads(loc.read_text("train_summary.json"))
    assert summary["world_size"] == 2 and summary["iteration"] == 8
    assert summary["start_iteration"] in (3, 6), summary["start_iteration"]
    assert summary["resumed_from"].endswith(f"ckpt_{summary['start_iteration']}.pt")
    local = c.tmp / "model.pt"
    loc.get("model.pt", local)
    assert_same_weights(_weights(reference), _weights(local))

    client, run = _one_run(mlflow_server.uri, experiment)
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["restarts"] == "1"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "restarts")] == [
        (summary["start_iteration"], 1.0)]
    assert [r for r in c.s3_proxy.log if r[0] in WRITES] == []
    assert c.mlflow_proxy.log == []
