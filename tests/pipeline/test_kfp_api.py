"""`egnet pipeline submit | schedule` against a loopback stub of the KFP v2beta1 API.

No KFP server here: the stub implements the endpoints kfp.Client calls (healthz, pipeline
upload / upload_version / list, pipeline versions, experiments list / create, runs create,
recurring runs create), records every request, and the tests check what reached it: the
compiled pipeline spec, the run parameters, the cron and the schedule policy, the token.
"""

from __future__ import annotations

import email.parser
import json
import uuid

import pytest
import yaml

from egnet.cli import main
from egnet.core.config import load_config
from egnet.core.errors import ConfigError
from egnet.pipeline.client import check_cron, parse_params
from pipelines.nightcity_training import COMPILED
from tests.support import PARAMS
from tests.support.services import free_port

PARAMS_ARGS = ["--params", str(PARAMS)]
TYPES = {"nodes": "NUMBER_INTEGER", "data_rev": "STRING", "overrides": "LIST", "flag": "BOOLEAN"}


class FakeKFP:
    """The few /apis/v2beta1 endpoints kfp.Client uses, in memory."""

    def __init__(self) -> None:
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.tag_name = "2.17.0"           # what the backend's healthz reports (TAG_NAME of its image)

    def _upload(self, req) -> dict:
        ctype = req.headers["content-type"]
        msg = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + req.raw)
        (part,) = [p for p in msg.get_payload()
                   if p.get_param("name", header="content-disposition") == "uploadfile"]
        req.extra["uploaded"] = part.get_payload(decode=True).decode()
        return {"pipeline_version_id": str(uuid.uuid4()), "created_at": "2026-01-01T00:00:00Z"}

    def handle(self, req) -> tuple[int, dict]:
        path, q = req.path, req.query
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False, "tag_name": self.tag_name, "commit_sha": "0123abc"}
        if path == "/apis/v2beta1/pipelines" and req.method == "GET":
            want = json.loads(q["filter"][0])["predicates"][0]["stringValue"] if "filter" in q else None
            found = [p for p in self.pipelines.values() if want in (None, p["display_name"])]
            return 200, {"pipelines": found}
        if path == "/apis/v2beta1/pipelines/upload":
            pid = str(uuid.uuid4())
            v = {**self._upload(req), "pipeline_id": pid, "display_name": q["name"][0]}
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": q["name"][0]}
            self.versions[pid] = [v]
            return 200, self.pipelines[pid]
        if path == "/apis/v2beta1/pipelines/upload_version":
            pid = q["pipelineid"][0]
            if pid not in self.pipelines:
                return 404, {"error_message": "no such pipeline"}
            v = {**self._upload(req), "pipeline_id": pid, "display_name": q["name"][0]}
            self.versions[pid].insert(0, v)
            return 200, v
        if path.startswith("/apis/v2beta1/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[4]
            page_size = int(q.get("page_size", ["10"])[0])
            return 200, {"pipeline_versions": self.versions.get(pid, [])[:page_size]}
        if path == "/apis/v2beta1/experiments" and req.method == "GET":
            want = json.loads(q["filter"][0])["predicates"][0]["stringValue"]
            return 200, {"experiments": [e for e in self.experiments.values() if e["display_name"] == want]}
        if path == "/apis/v2beta1/experiments":
            e = {**req.json, "experiment_id": str(uuid.uuid4())}
            self.experiments[e["experiment_id"]] = e
            return 200, e
        if path == "/apis/v2beta1/runs":
            return 200, {**req.json, "run_id": str(uuid.uuid4())}
        if path == "/apis/v2beta1/recurringruns" and req.method == "GET":
            found = list(self.recurring.values())
            if "filter" in q:
                want = json.loads(q["filter"][0])["predicates"][0]["stringValue"]
                found = [r for r in found if r["display_name"] == want]
            # the proto field is camelCase: v2beta1 ListRecurringRunsResponse.recurringRuns
            return 200, {"recurringRuns": found, "total_size": len(found)}
        if path == "/apis/v2beta1/recurringruns":
            rec = {**req.json, "recurring_run_id": str(uuid.uuid4()),
                   "status": "ENABLED" if req.json.get("mode") == "ENABLE" else "DISABLED"}
            self.recurring[rec["recurring_run_id"]] = rec
            return 200, rec
        if path.startswith("/apis/v2beta1/recurringruns/"):
            rid, _, action = path.rsplit("/", 1)[1].partition(":")
            if rid not in self.recurring:
                return 404, {"error_message": f"no recurring run {rid}"}
            if req.method == "DELETE":
                del self.recurring[rid]
            elif action in ("enable", "disable"):
                self.recurring[rid].update(status=f"{action.upper()}D", mode=action.upper())
            return 200, self.recurring.get(rid, {})
        return 404, {"error_message": f"stub: no {req.method} {path}"}


@pytest.fixture
def kfp_server(json_stub):
    fake = FakeKFP()
    stub = json_stub(fake.handle)
    fake.url, fake.requests, fake.find = stub.url, stub.requests, stub.find
    return fake


@pytest.fixture(autouse=True)
def no_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads ~/.config/kfp/context.json: keep the user's out of the tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KFP_TOKEN", raising=False)


@pytest.mark.kfp
def test_submit_uploads_the_compiled_spec_and_starts_a_run(kfp_server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "secret-token")
    code = main(["pipeline", "submit", "--host", kfp_server.url, "--experiment", "weekly",
                 "--param", "nodes=2", "--param", "data_rev=v1.2", "--set", "train.lr=0.02", *PARAMS_ARGS])
    assert code == 0, capsys.readouterr().err
    (upload,) = kfp_server.find("POST", "/apis/v2beta1/pipelines/upload")
    assert upload.query["name"] == ["nightcity-egnet-training"]
    # the spec uploaded is the compiled pipeline (the committed YAML is current: test_pipeline_compile)
    assert upload.extra["uploaded"] == COMPILED.read_text()
    (exp,) = kfp_server.find("POST", "/apis/v2beta1/experiments")
    assert exp.json["display_name"] == "weekly"
    (run,) = kfp_server.find("POST", "/apis/v2beta1/runs")
    body = run.json
    version = kfp_server.versions[body["pipeline_version_reference"]["pipeline_id"]][0]
    assert body["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert body["experiment_id"] == exp_id(kfp_server, "weekly")
    # typed parameters; --set of a step section travels as the `overrides` parameter
    # (and the uploaded version's name, an MLflow tag of the training run)
    assert body["runtime_config"]["parameters"] == {"nodes": 2, "data_rev": "v1.2",
                                                    "overrides": ["train.lr=0.02"],
                                                    "pipeline_version": version["display_name"]}
    assert "pipeline_spec" not in body or body["pipeline_spec"] is None   # runs the uploaded version
    assert all(r.headers.get("authorization") == "Bearer secret-token" for r in kfp_server.requests)
    out = capsys.readouterr().out
    assert f"{kfp_server.url}/#/runs/details/" in out and "new pipeline" in out


def exp_id(fake: FakeKFP, name: str) -> str:
    (e,) = [e for e in fake.experiments.values() if e["display_name"] == name]
    return e["experiment_id"]


@pytest.mark.kfp
def test_second_submit_adds_a_version_and_reuses_the_experiment(kfp_server, capsys):
    args = ["pipeline", "submit", "--host", kfp_server.url, *PARAMS_ARGS]
    assert main(args) == 0 and main(args) == 0
    assert len(kfp_server.find("POST", "/apis/v2beta1/pipelines/upload")) == 1
    (upv,) = kfp_server.find("POST", "/apis/v2beta1/pipelines/upload_version")
    (pid,) = kfp_server.pipelines
    assert upv.query["pipelineid"] == [pid]
    assert upv.query["name"][0].startswith("nightcity-egnet-training-")
    assert upv.extra["uploaded"] == COMPILED.read_text()
    runs = kfp_server.find("POST", "/apis/v2beta1/runs")
    assert [r.json["pipeline_version_reference"]["pipeline_version_id"] for r in runs] == [
        v["pipeline_version_id"] for v in reversed(kfp_server.versions[pid])]
    assert len(kfp_server.find("POST", "/apis/v2beta1/experiments")) == 1   # created once, then found
    assert runs[1].json["runtime_config"]["parameters"] == {"pipeline_version": upv.query["name"][0]}
    assert "new version" in capsys.readouterr().out


@pytest.mark.kfp
def test_schedule_creates_a_weekly_recurring_run(kfp_server, capsys):
    code = main(["pipeline", "schedule", "--host", kfp_server.url, "--cron", "0 0 3 * * 0",
                 "--param", "data_rev=main", "--profile", "paper", *PARAMS_ARGS])
    assert code == 0, capsys.readouterr().err
    (rec,) = kfp_server.find("POST", "/apis/v2beta1/recurringruns")
    body = rec.json
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"data_rev": "main",
                                                    "pipeline_version": "nightcity-egnet-training"}
    (upload,) = kfp_server.find("POST", "/apis/v2beta1/pipelines/upload")
    assert upload.extra["uploaded"] == COMPILED.read_text()
    assert body["pipeline_version_reference"]["pipeline_id"] == next(iter(kfp_server.pipelines))
    assert "0 0 3 * * 0" in capsys.readouterr().out


@pytest.mark.kfp
def test_compile_time_params_shape_the_uploaded_spec(kfp_server):
    assert main(["pipeline", "submit", "--host", kfp_server.url, *PARAMS_ARGS,
                 "--set", "pipeline.image=registry.example.com/team/egnet:abc123"]) == 0
    (upload,) = kfp_server.find("POST", "/apis/v2beta1/pipelines/upload")
    spec = next(yaml.safe_load_all(upload.extra["uploaded"]))
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == \
        "registry.example.com/team/egnet:abc123"
    (run,) = kfp_server.find("POST", "/apis/v2beta1/runs")
    # pipeline.* is compile time only: the run gets no parameter but the version's name
    assert run.json["runtime_config"]["parameters"] == {"pipeline_version": "nightcity-egnet-training"}


def test_unreachable_host_is_one_clear_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["pipeline", "submit", "--host", url, *PARAMS_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"egnet: error: KFP at {url} is not reachable")


def test_bad_cron_and_unknown_param_fail_before_any_request(kfp_server, capsys):
    assert main(["pipeline", "schedule", "--host", kfp_server.url, "--cron", "0 3 * * 0", *PARAMS_ARGS]) == 2
    assert "6 fields" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--host", kfp_server.url, "--param", "epochs=3", *PARAMS_ARGS]) == 2
    err = capsys.readouterr().err
    assert "not a parameter of the pipeline" in err and "nodes" in err
    assert kfp_server.requests == []


def test_parse_params_types():
    given = ["nodes=4", "data_rev=007", "overrides=[train.lr=0.1, train.iterations=10]", "flag=true"]
    assert parse_params(given, TYPES) == {"nodes": 4, "data_rev": "007",
                                          "overrides": ["train.lr=0.1", "train.iterations=10"], "flag": True}
    assert parse_params(["overrides=train.lr=0.1"], TYPES) == {"overrides": ["train.lr=0.1"]}
    with pytest.raises(ConfigError, match="expected an integer"):
        parse_params(["nodes=two"], TYPES)
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_params(["nodes"], TYPES)
    assert check_cron(" 0  0 3 * * 0 ") == "0 0 3 * * 0"


def test_package_option_uploads_that_file(kfp_server, tmp_path):
    cfg = load_config(PARAMS)
    assert cfg.pipeline.name == "nightcity-egnet-training"
    assert main(["pipeline", "submit", "--host", kfp_server.url, "--package", str(COMPILED),
                 *PARAMS_ARGS]) == 0
    (upload,) = kfp_server.find("POST", "/apis/v2beta1/pipelines/upload")
    assert upload.extra["uploaded"] == COMPILED.read_text()
