"""The console of `egnet pipeline run --local`: a line per step, logs in files, a failing step's tail.

- StepConsole fed kfp.local-shaped text (as task_dispatcher prints it): the step's lines go to
  its log, kfp's executor JSON does not count as the step's output, the training bar follows
  the train step's log lines, a gate refusal is summarised, a failure shows the step's error.
- A real local run that fails at validate (the data's size is not data.image_size): one line
  per step that ran, the failing step's error line and log path, nothing of kfp's own output,
  and a one-line error naming the step and its log.
(tests/pipeline/test_pipeline_local.py checks the console of a whole successful run.)
"""

from __future__ import annotations

import io
import re

import pytest

from egnet.cli import main
from egnet.pipeline.progress import StepConsole, _gate_row, duration, failure_tail, key_output
from tests.support import PARAMS

STEP_LINE = re.compile(r"^\[\s*(\d+)/(\d+)\] (\S+)\s+(ok|FAILED|skipped)\b")
EXECUTOR = "[KFP Executor 2026-01-01 10:00:00,000 INFO]: "  # kfp's format of a component's logging


def _task(step: str, own: list[str], status: str = "SUCCESS") -> str:
    """What kfp.local prints for one task (colours, indentation, executor input JSON)."""
    return "\n".join([
        f"10:00:00.000 - INFO - Executing task \x1b[96m'{step}'\x1b[0m",
        "10:00:00.001 - INFO - Streamed logs:", "",
        f"    {EXECUTOR}Looking for component `x` in --component_module_path",
        f"    {EXECUTOR}Got executor_input:",
        "    {", '        "inputs": {', '            "parameterValues": {"x": "FAIL"}', "        }", "    }",
        *(f"    {line}" for line in own),
        f"    {EXECUTOR}Wrote executor output file to /x/executor_output.json.",
        "", "",
        f"10:00:01.000 - INFO - Task \x1b[96m'{step}'\x1b[0m finished with status \x1b[92m{status}\x1b[0m",
        "-" * 80, ""])


class _Bar:
    def __init__(self):
        self.n, self.postfix = 0, ""

    def update(self, k):
        self.n += k

    def set_postfix_str(self, s, refresh=True):
        self.postfix = s

    def close(self):
        pass


def test_console_writes_logs_and_reads_the_steps_own_lines(tmp_path):
    out = io.StringIO()
    console = StepConsole(out, total=3, iterations=20)
    run_dir = tmp_path / "run"
    with console.captured():
        print("10:00:00.000 - INFO - Running pipeline: 'p'")           # before any task: pipeline.log only
        console.start("train", run_dir)
        console._bar = _Bar()   # what a terminal gets; here the parsing behind it
        print(_task("train", [f"{EXECUTOR}iteration 10: loss 1.2500, lr 0.01",
                              f"{EXECUTOR}val at iteration 10: mIoU 0.1200",
                              f"{EXECUTOR}iteration 20: loss 0.9000, lr 0"]))
        bar = console._bar
        assert "iteration 20" in (run_dir / "logs" / "train.log").read_text()   # `tail -f` sees it now
        console.end("train", True, {})
        console.start("gate", run_dir)
        print(_task("gate", ["check      champion v1  candidate v2  delta    rule               ",
                             "test mIoU  0.2000       0.1500        -0.0500  delta >= +0.0000   FAIL",
                             "test mEF1  0.3000       0.3100        +0.0100  delta >= -0.0100   ok",
                             "gate: egnet-nightcity v2: gate would refuse (see table)"]))
        console.end("gate", True, {"Output": "keep"})
        console.start("promote", run_dir)
        print(_task("promote", ["boom", "egnet: error: the registry is locked",
                                "Traceback (most recent call last):", '  File "x.py", line 1, in f',
                                "StepFailed: `egnet promote ...` exited with 1"], status="FAILURE"))
        console.end("promote", False, None)

    assert (bar.n, bar.postfix) == (20, "loss 0.9000, val mIoU 0.1200")
    lines = out.getvalue().splitlines()
    steps = [STEP_LINE.match(line).groups() for line in lines if STEP_LINE.match(line)]
    assert steps == [("1", "3", "train", "ok"), ("2", "3", "gate", "ok"), ("3", "3", "promote", "FAILED")]
    assert "refused: champion kept (test mIoU -0.0500, needs delta >= +0.0000)" in lines[2]
    assert lines[-4:] == ["    | boom", "    | egnet: error: the registry is locked",
                          "    | StepFailed: `egnet promote ...` exited with 1",
                          f"    full log: {run_dir / 'logs' / 'promote.log'}"]
    assert "executor_input" not in out.getvalue() and "parameterValues" not in out.getvalue()
    console.skipped(["promote2"], "gate refused: nothing to promote")          # a step dsl.If left out
    last = out.getvalue().splitlines()[-1]
    assert STEP_LINE.match(last).groups() == ("4", "3", "promote2", "skipped")
    assert last.endswith("gate refused: nothing to promote")
    console.skipped(["evaluate-champion"])                  # the If branch the champion check left out
    last = out.getvalue().splitlines()[-1]
    assert STEP_LINE.match(last).groups()[2:] == ("evaluate-champion", "skipped")
    assert last.endswith("  nothing to re-evaluate")

    logs = run_dir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["gate.log", "pipeline.log", "promote.log", "train.log"]
    assert "iteration 20: loss 0.9000" in (logs / "train.log").read_text()
    assert "\x1b[" not in (logs / "gate.log").read_text()              # colours stripped
    everything = (logs / "pipeline.log").read_text()
    assert everything.index("Running pipeline") < everything.index("iteration 10") < everything.index("boom")


def test_key_outputs_and_helpers(tmp_path):
    class Art:
        def __init__(self, path="", **metadata):
            self.path, self.metadata = str(path), metadata

    assert key_output("validate", {"validated": Art(num_pairs=12.0, num_good=11.0)}, {}) == \
        "11/12 pairs good, 1 quarantined"
    assert key_output("evaluate", {"evaluation": Art(mIoU=0.12345, mEF1=0.5)}, {}) == \
        "test mIoU 0.1235, mEF1 0.5000"
    assert key_output("register", {"registration": Art(name="m", version=3.0)}, {}) == \
        "m v3 (alias challenger)"
    assert key_output("gate", {"Output": "promote"}, {}) == "passed: promote the challenger"
    assert key_output("champion-check", {"Output": "ready"},
                      {"line": "like with like: no champion to compare with; nothing to re-evaluate"}) == \
        "no champion to compare with; nothing to re-evaluate"
    assert key_output("resolve-data", {"commit": "0123456789abcdef0123", "data_key": "git:x"}, {}) == \
        "data at commit 0123456789ab"
    # the gate's rule lines (egnet/registry/promotion.py) in a few words
    assert _gate_row("rule mIoU: champion 0.8000 -> challenger 0.8100, difference +0.0100, 90% CI "
                     "[-0.0080, +0.0260]; lower bound > +0.0000 (register.min_delta_miou): FAIL") == \
        "mIoU +0.0100, 90% CI [-0.0080, +0.0260], needs lower bound > +0.0000"
    assert _gate_row("rule EF1 per bin: drops by more than 0.0200 (register.max_bin_ef1_drop) in "
                     "[0.9,1.0] (-0.0289): FAIL") == \
        "EF1 per bin: drops by more than 0.0200 in [0.9,1.0] (-0.0289)"
    assert [duration(s) for s in (0.04, 59.94, 61, 3725)] == ["0.0s", "59.9s", "1m01s", "1h02m"]
    assert failure_tail(["a", "Traceback (most recent call last):", "  File x", "ValueError: y"]) == \
        ["a", "ValueError: y"]


@pytest.mark.kfp
def test_a_failing_local_run_names_the_step_its_error_and_its_log(tmp_path, monkeypatch, capsys, recwarn):
    from tests.support.data import make_dataset

    make_dataset(tmp_path / "data", 3, size=(64, 32))    # data.image_size below says 128x64: all pairs bad
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(["pipeline", "run", "--local", "--data", str(tmp_path / "data"),
                 "--workdir", str(tmp_path / "w"), "--params", str(PARAMS),
                 "--set", "data.image_size=[128,64]"])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    lines = captured.out.splitlines()
    steps = [STEP_LINE.match(line).groups()[2:] for line in lines if STEP_LINE.match(line)]
    # kfp.local still runs what does not depend on validate (train-resources), nothing after it
    # but the exit handler (finalize)
    assert steps[:3] == [("resolve-data", "ok"), ("materialise", "ok"), ("validate", "FAILED")]
    assert {s for s, _ in steps[3:]} <= {"train-resources", "finalize"}
    (log,) = (tmp_path / "w" / "kfp").glob("*/logs/validate.log")
    tail = lines[lines.index(next(line for line in lines if "FAILED" in line)) + 1:]
    assert "min_good_pairs" in next(line for line in tail if line.startswith("    | egnet: error:"))
    assert f"    full log: {log.relative_to(tmp_path)}" in tail
    assert "egnet: error:" in log.read_text() and "Got executor_input" in log.read_text()
    assert captured.err.strip() == (f"egnet: error: local pipeline run failed at step validate; "
                                    f"its log: {log.relative_to(tmp_path)}")
    assert "executor_input" not in captured.out and " - INFO - " not in captured.out
    assert not [w for w in recwarn if "have no effect" in str(w.message)]   # kfp.local's per-step noise
