"""`egnet pipeline schedule | schedules` and the backend-version gate, against the loopback KFP API stub
(tests/pipeline/test_kfp_api.py's FakeKFP: healthz with ``tag_name``, recurring runs list / create /
enable / disable / delete).

- ``schedule`` is idempotent by name: twice (even with another cron) leaves one recurring run.
- ``--pause`` / ``--resume`` / ``--delete`` act on it without uploading; ``schedules`` lists them.
- A backend older than the pipeline needs is refused with one line before anything is uploaded;
  one that does not say its version (``unknown``) earns a warning. The version comes from
  ``tag_name`` of ``/apis/v2beta1/healthz`` (kubeflow/pipelines ``backend/src/apiserver/main.go``
  ``newHealthzResponse``), which ``kfp.Client.get_kfp_healthz()`` drops.
"""

from __future__ import annotations

import pytest

from egnet.cli import main
from egnet.pipeline.client import parse_version
from pipelines.nightcity_training import MIN_BACKEND
from tests.pipeline.test_kfp_api import kfp_server, no_kfp_context  # noqa: F401, F811 - fixtures
from tests.support import PARAMS as PARAMS_FILE

pytestmark = pytest.mark.kfp        # every test compiles the pipeline (or reads its module)
PARAMS = ["--params", str(PARAMS_FILE)]
WEEKLY = ["--cron", "0 0 3 * * 0"]


def schedule(server, *args: str) -> int:
    return main(["pipeline", "schedule", "--host", server.url, *args, *PARAMS])


def test_schedule_twice_leaves_one_recurring_run(kfp_server, capsys):  # noqa: F811 (fixture)
    assert schedule(kfp_server, *WEEKLY) == 0
    (first,) = kfp_server.recurring.values()
    assert first["display_name"] == "nightcity-egnet-training"       # named after the pipeline
    assert schedule(kfp_server, "--cron", "0 30 2 * * 1", "--param", "data_rev=main") == 0
    (only,) = kfp_server.recurring.values()                          # replaced, not doubled
    assert only["recurring_run_id"] != first["recurring_run_id"]
    assert only["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1"
    assert only["runtime_config"]["parameters"]["data_rev"] == "main"
    # created before the old one was deleted: a failure in between never leaves no schedule
    calls = [(r.method, r.path) for r in kfp_server.requests
             if "recurringruns" in r.path and r.method != "GET"]
    assert calls[-2:] == [("POST", "/apis/v2beta1/recurringruns"),
                          ("DELETE", f"/apis/v2beta1/recurringruns/{first['recurring_run_id']}")]
    assert f"replaced {first['recurring_run_id']}" in capsys.readouterr().out
    # another name is another schedule
    assert schedule(kfp_server, *WEEKLY, "--run-name", "nightly") == 0
    assert sorted(r["display_name"] for r in kfp_server.recurring.values()) == ["nightcity-egnet-training",
                                                                                "nightly"]


def test_pause_resume_delete_and_list(kfp_server, capsys):  # noqa: F811 (fixture)
    assert schedule(kfp_server, *WEEKLY) == 0
    (rid,) = kfp_server.recurring
    uploads = len(kfp_server.find("POST", "/apis/v2beta1/pipelines/upload"))
    assert schedule(kfp_server, "--pause") == 0
    assert kfp_server.recurring[rid]["status"] == "DISABLED"
    capsys.readouterr()
    assert main(["pipeline", "schedules", "--host", kfp_server.url, *PARAMS]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "state", "cron", "id", "pipeline_version_id"]
    assert table[2].split()[:2] == ["nightcity-egnet-training", "paused"] and rid in table[2]
    assert schedule(kfp_server, "--resume") == 0
    assert kfp_server.recurring[rid]["status"] == "ENABLED"
    assert schedule(kfp_server, "--delete") == 0
    assert kfp_server.recurring == {}
    assert len(kfp_server.find("POST", "/apis/v2beta1/pipelines/upload")) == uploads   # no upload for these
    capsys.readouterr()
    assert schedule(kfp_server, "--pause") == 2
    assert "no recurring run named 'nightcity-egnet-training'" in capsys.readouterr().err
    assert schedule(kfp_server, "--pause", *WEEKLY) == 2
    assert schedule(kfp_server) == 2                              # neither --cron nor an action


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_an_older_backend_is_refused_before_anything_is_uploaded(kfp_server, capsys, command):  # noqa: F811
    kfp_server.tag_name = "2.15.0"      # optional Secrets work, PipelineConfig and securityContext do not
    args = ["pipeline", command, "--host", kfp_server.url, *PARAMS,
            *(WEEKLY if command == "schedule" else [])]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"egnet: error: KFP at {kfp_server.url} runs backend 2.15.0; this pipeline needs "
                   f"{MIN_BACKEND} or newer (docs/pipeline.md, \"Backend version\")"]
    assert [r.path for r in kfp_server.requests] == ["/apis/v2beta1/healthz"]


def test_a_backend_of_unknown_version_is_a_warning(kfp_server, capsys):  # noqa: F811 (fixture)
    kfp_server.tag_name = "unknown"     # a custom build (backend/Dockerfile: ARG TAG_NAME=unknown)
    assert main(["pipeline", "submit", "--host", kfp_server.url, *PARAMS]) == 0
    assert "does not say its version" in capsys.readouterr().err
    assert kfp_server.find("POST", "/apis/v2beta1/runs")


def test_submit_derives_the_cpu_image_from_image(kfp_server):  # noqa: F811 (fixture)
    assert main(["pipeline", "submit", "--host", kfp_server.url, "--param", "image=reg.example.com/egnet:v7",
                 *PARAMS]) == 0
    (run,) = kfp_server.find("POST", "/apis/v2beta1/runs")
    params = run.json["runtime_config"]["parameters"]
    assert params["image"] == "reg.example.com/egnet:v7"
    assert params["cpu_image"] == "reg.example.com/egnet:v7-cpu"


def test_parse_version():
    assert parse_version("2.17.0") == parse_version("v2.17.0-rc.1") == (2, 17, 0)
    assert parse_version("2.4.10") > parse_version("2.4.9")
    assert parse_version("unknown") is None and parse_version("") is None
    assert parse_version(MIN_BACKEND) == (2, 17, 0)
