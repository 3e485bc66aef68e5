"""Registry hardening: the cross-process lock (file and S3 lease), 5 racing register+promote
processes against a real `mlflow server` on its PostgreSQL backend store, and
`egnet register` killed between logging the model and registering it.

The racing processes register cheap runs: MLflow runs made here, each with an untrained
resnet18 checkpoint in the egnet format (one file, copied) and a hand-written evaluation
(metrics.json with its own test mIoU). Registering needs a valid checkpoint, not a trained one.
Most runs come with the checkpoint already logged as their MLflow model (as a register that
died after logging leaves them; the racers then only find-or-create and promote); LOGGING_RACERS
of them log their model themselves, at the same time as the others race.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from egnet.cli import main
from egnet.core.errors import ConfigError
from egnet.registry.locking import LOCK_ENV, LockSpec, LockTimeout, S3Lease, held
from egnet.tracking.registered import CHALLENGER, CHAMPION, PREVIOUS
from tests.support import BIN, REPO, subprocess_env, tiny_args
from tests.support.evidence import log_evidence

RACERS = 5
LOGGING_RACERS = 2  # of the RACERS, these log their model (pickle: seconds of CPU each) while racing

# A child process: take the lock, write "start <id>", pause, write "end <id>", release.
HOLDER = textwrap.dedent("""
    import sys, time
    from egnet.registry.locking import LockSpec, held
    uri, log, ident = sys.argv[1:4]
    with held(LockSpec(uri, ttl_s=30, timeout_s=120), "test"):
        with open(log, "a") as fh:
            fh.write(f"start {ident}\\n"); fh.flush()
        time.sleep(0.15)
        with open(log, "a") as fh:
            fh.write(f"end {ident}\\n")
""")


def _assert_never_overlapped(log: Path, n: int) -> None:
    words = log.read_text().splitlines()
    assert len(words) == 2 * n, words
    for start, end in zip(words[0::2], words[1::2], strict=True):
        # a holder's start is followed by its own end: nobody else got in between
        assert start.startswith("start ") and end == "end " + start.split()[1], words


def _race_holders(uri: str, tmp_path: Path, n: int, env: dict[str, str] | None = None) -> None:
    log = tmp_path / "holders.log"
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, uri, str(log), str(i)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    _assert_never_overlapped(log, n)


# --------------------------------------------------------------------------- the lock


def test_lock_spec_expands_variables_and_the_env_wins(monkeypatch) -> None:
    monkeypatch.delenv(LOCK_ENV, raising=False)
    monkeypatch.setenv("S3_BUCKET", "models")
    assert LockSpec.resolve("s3://$S3_BUCKET/locks/egnet.lock", 120, 900).uri == "s3://models/locks/egnet.lock"
    assert LockSpec.resolve("", 120, 900).uri == ""
    with pytest.raises(ConfigError, match="not set"):
        LockSpec.resolve("s3://$NO_SUCH_VARIABLE_EGNET/x.lock", 120, 900)
    with pytest.raises(ConfigError, match="expected file:///path or s3://bucket/key"):
        LockSpec.resolve("http://example.com/lock", 120, 900)
    with pytest.raises(ConfigError, match="expected s3://bucket/key"):
        LockSpec.resolve("s3://bucket-only", 120, 900)
    monkeypatch.setenv(LOCK_ENV, "/tmp/from-env.lock")
    assert LockSpec.resolve("s3://models/x.lock", 5, 7) == LockSpec("/tmp/from-env.lock", 5, 7)


def test_file_lock_serialises_processes_and_is_reentrant(tmp_path) -> None:
    _race_holders(f"file://{tmp_path / 'sub' / 'registry.lock'}", tmp_path, 4)
    spec = LockSpec(str(tmp_path / "r.lock"), ttl_s=120, timeout_s=0.3)
    with held(spec), held(spec):  # promote holds it around the move, which takes it again
        # another thread is a different holder: it must time out, not slip in
        failed: list[BaseException] = []
        t = threading.Thread(target=lambda: _try(spec, failed))
        t.start()
        t.join()
        assert len(failed) == 1 and isinstance(failed[0], LockTimeout)
    with held(spec):  # released by the outer block: free again
        pass


def _try(spec: LockSpec, failed: list[BaseException]) -> None:
    try:
        with held(spec):
            pass
    except BaseException as exc:  # noqa: BLE001 - collected for the assertion
        failed.append(exc)


@pytest.mark.s3
def test_s3_lease_serialises_processes(s3_env, tmp_path) -> None:
    bucket = s3_env.bucket()
    _race_holders(f"s3://{bucket}/locks/egnet.lock", tmp_path, 4)
    assert "Contents" not in s3_env.client().list_objects_v2(Bucket=bucket)  # every lease deleted


@pytest.mark.s3
def test_s3_lease_expired_is_taken_over_and_a_live_one_is_not(s3_env, caplog) -> None:
    bucket = s3_env.bucket()
    s3 = s3_env.client()
    key = "locks/egnet.lock"
    dead = {"owner": "pod-a:1:dead", "what": "registry m", "acquired_at": time.time() - 100,
            "expires_at": time.time() - 10}
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(dead).encode())
    with caplog.at_level("WARNING"), held(LockSpec(f"s3://{bucket}/{key}", ttl_s=30, timeout_s=5)):
        lease = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert lease["owner"] != dead["owner"] and lease["expires_at"] > time.time()
    assert "pod-a:1:dead" in caplog.text and "taking it over" in caplog.text

    live = {**dead, "owner": "pod-b:2:live", "expires_at": time.time() + 600}
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(live).encode())
    with pytest.raises(LockTimeout, match=r"held by pod-b:2:live \(registry m\) since .*gave up after"):
        with held(LockSpec(f"s3://{bucket}/{key}", ttl_s=30, timeout_s=0.5)):
            pass
    assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["owner"] == "pod-b:2:live"


@pytest.mark.s3
def test_s3_lease_is_renewed_while_held_and_release_spares_a_successor(s3_env) -> None:
    bucket = s3_env.bucket()
    uri = f"s3://{bucket}/locks/egnet.lock"
    s3 = s3_env.client()
    first = S3Lease(LockSpec(uri, ttl_s=0.6, timeout_s=5), "first")
    first.acquire()
    expires0 = json.loads(s3.get_object(Bucket=bucket, Key="locks/egnet.lock")["Body"].read())["expires_at"]
    # held for 3 lifetimes: renewals keep a waiter out (it does not see an expired lease)
    with pytest.raises(LockTimeout):
        S3Lease(LockSpec(uri, ttl_s=0.6, timeout_s=1.8), "second").acquire()
    renewed = json.loads(s3.get_object(Bucket=bucket, Key="locks/egnet.lock")["Body"].read())
    assert renewed["owner"] == first.owner and renewed["expires_at"] > expires0
    # the holder stalls past its lease (renewals stop); a successor takes over
    first._stop.set()
    first._renewer.join()
    time.sleep(0.7)
    second = S3Lease(LockSpec(uri, ttl_s=30, timeout_s=5), "second")
    second.acquire()
    first.release()  # late release of a lost lease: must not delete the successor's
    lease = json.loads(s3.get_object(Bucket=bucket, Key="locks/egnet.lock")["Body"].read())
    assert lease["owner"] == second.owner
    second.release()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


# --------------------------------------------------------------------------- 8 racing processes


def _racer_script(i: int, name: str, run: dict, root: Path, args: list[str]) -> str:
    egnet = str(BIN / "egnet")
    quoted = " ".join(f"'{a}'" for a in args)
    out = root / f"registered{i}.json"
    read_version = 'import json,sys; print(json.load(open(sys.argv[1]))["version"])'
    version = f"$({sys.executable} -c '{read_version}' {out})"
    return (f"{egnet} register --train-dir {run['train']} --eval-dir {run['eval']} --name {name} --out {out} "
            f"{quoted} && {egnet} promote --name {name} --version {version} {quoted}")


def _decisions(client, name: str) -> list[dict]:
    """Every recorded decision once (it is written on each version involved), in time order."""
    seen: dict[str, dict] = {}
    for mv in client.search_model_versions(f"name = '{name}'"):
        for key, text in (mv.tags or {}).items():
            if key.startswith("promotion."):
                seen[key + json.loads(text)["candidate"]] = {"key": key, **json.loads(text)}
    return sorted(seen.values(), key=lambda d: d["key"])


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.postgres
@pytest.mark.s3
def test_racing_register_and_promote_leave_one_explained_champion(mlflow_postgres_server, s3_env, cheap_runs,
                                                                  tmp_path) -> None:
    """5 processes `egnet register ... && egnet promote --version <theirs>` on different runs at
    once, serialised by the S3 lease: one champion (the best run), a previous-champion that is
    not the champion, one version per run, and a decision history that explains every move.
    Against the PostgreSQL store, the one a cluster runs (the lock does not depend on the store;
    the sequential registry tests run on both stores)."""
    import mlflow

    mlflow_backend = mlflow_postgres_server
    uri = mlflow_backend.uri
    exp, runs = cheap_runs(uri, tmp_path, RACERS + 1, prelogged=RACERS + 1 - LOGGING_RACERS)
    name = f"race-{mlflow_backend.backend}-{uuid.uuid4().hex[:6]}"
    lock = f"s3://{s3_env.bucket()}/locks/egnet-nightcity.lock"
    args = tiny_args(f"tracking.uri={uri}", "register.serialization_format=pickle",
                     f"register.lock_uri={lock}")
    env = {**os.environ, **s3_env.env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(LOCK_ENV, None)
    evidence_client = mlflow.MlflowClient(uri)
    for run in runs:  # the gate compares per-image evidence on one test set: give each run its own
        log_evidence(evidence_client, run["run_id"], run["mIoU"], tmp_path / "evidence")
    # a champion before the race (the worst run): the best racer then always has one to replace
    base = runs.pop(0)
    assert base["mIoU"] == min(r["mIoU"] for r in [base, *runs])
    assert main(["register", "--train-dir", str(base["train"]), "--eval-dir", str(base["eval"]),
                 "--name", name, *args]) == 0
    assert main(["promote", "--name", name, *args]) == 0
    procs = []
    try:
        for i, run in enumerate(runs):
            procs.append(subprocess.Popen(["bash", "-c", _racer_script(i, name, run, tmp_path, args)],
                                          cwd=tmp_path, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for code, out, err in results:
        # promoted (0), or refused by the gate (1) because a better racer was champion already
        assert code == 0 or (code == 1 and "gate refused promotion" in err), \
            f"exit {code}\n{out}\n{err[-3000:]}"
    assert sum("logged and registered" in out for _, out, _ in results) == LOGGING_RACERS

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
        assert sorted(int(v.version) for v in versions) == list(range(1, RACERS + 2))
        assert sorted(v.run_id for v in versions) == sorted(r["run_id"] for r in [base, *runs])  # one per run
        by_version = {v.version: v for v in versions}
        miou = {v.version: float(v.tags["test_mIoU"]) for v in versions}
        aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
        champion, previous = aliases[CHAMPION], aliases[PREVIOUS]
        assert previous != champion
        # the newest version keeps `challenger` (it may be the champion: promote sets, never deletes)
        assert aliases.get(CHALLENGER) == str(RACERS + 1)
        assert miou[champion] == max(miou.values())  # serialised gate: the best run wins
        assert by_version[champion].run_id == max(runs, key=lambda r: r["mIoU"])["run_id"]

        decisions = _decisions(client, name)
        assert len(decisions) == RACERS + 1
        assert sorted(d["candidate"] for d in decisions) == sorted(by_version)
        current = previous_expected = None
        for d in decisions:  # replay the history: each decision was made against the champion of its time
            assert d["champion_before"] == current, decisions
            if d["outcome"] == "promoted":
                assert current is None or miou[d["candidate"]] >= miou[current]
                previous_expected, current = current, d["candidate"]
            else:
                assert d["outcome"] == "refused" and miou[d["candidate"]] < miou[current]
        assert current == champion and previous_expected == previous
        promoted = sum(d["outcome"] == "promoted" for d in decisions)
        assert promoted == 1 + sum(code == 0 for code, _, _ in results)
    finally:
        _drop_artifacts(mlflow_backend, s3_env, exp)


def _drop_artifacts(server, s3, exp: str) -> None:
    """The racers' models are ~100 MB each in moto's memory: free them for the rest of the session."""
    bucket, _, prefix = server.artifacts_destination[len("s3://"):].partition("/")
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{exp}/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


# --------------------------------------------------------------------------- register killed


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
def test_register_killed_between_logging_and_registering_completes_on_rerun(
        mlflow_server, cheap_runs, tmp_path, capsys) -> None:
    import mlflow

    from egnet.tracking.registered import logged_model_id

    uri = mlflow_server.uri
    exp, (run,) = cheap_runs(uri, tmp_path, 1, prelogged=0)
    name = f"killed-{uuid.uuid4().hex[:6]}"
    argv = ["register", "--train-dir", str(run["train"]), "--eval-dir", str(run["eval"]), "--name", name,
            *tiny_args(f"tracking.uri={uri}", "register.serialization_format=pickle")]
    die_after_logging = textwrap.dedent("""
        import os, sys
        import egnet.registry.register as registry
        real = registry.log_model
        def log_then_die(*args, **kwargs):
            model_id = real(*args, **kwargs)
            print("logged", model_id, flush=True)
            os._exit(137)  # as if SIGKILLed: no clean-up, the version never registered
        registry.log_model = log_then_die
        from egnet.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    killed = subprocess.run([sys.executable, "-c", die_after_logging, *argv], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=subprocess_env())
    assert killed.returncode == 137, killed.stderr[-3000:]
    model_id = killed.stdout.split()[-1]
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    assert client.search_model_versions(f"name = '{name}'") == []
    capsys.readouterr()
    assert main(argv) == 0                                   # the re-run completes it ...
    assert f"registered the run's logged model as {name} version 1" in capsys.readouterr().out
    assert main(argv) == 0                                   # ... and a third run changes nothing
    assert f"is already {name} version 1" in capsys.readouterr().out
    (version,) = client.search_model_versions(f"name = '{name}'")
    assert version.run_id == run["run_id"] and logged_model_id(version) == model_id
    assert {a: str(v) for a, v in client.get_registered_model(name).aliases.items()} == {"challenger": "1"}
    logged = client.search_logged_models([exp], filter_string=f"source_run_id = '{run['run_id']}'")
    assert [m.model_id for m in logged] == [model_id]       # logged once, registered once
