"""The console of `egnet pipeline run --local`: one line per step, a bar while training, logs in files.

kfp.local streams every task's output (its executor input JSON, artifact URIs, MLflow INFO
lines) to stdout. :class:`StepConsole` takes that stream instead: each step's full output
goes to ``<run folder>/logs/<step>.log`` (and everything, in order, to ``pipeline.log``);
the terminal gets a line per step when it ends (name, status, wall time and the step's key
output, read from the artifacts it wrote), a progress bar while ``train`` runs (tqdm, fed
by the ``iteration N: loss ...`` lines the train step logs), and on failure the failing
step's last lines and the path of its log. ``verbose`` also streams everything as it comes.

It hooks kfp.local's task dispatch (``kfp.local.task_dispatcher.run_single_task_implementation``,
the call each task goes through) to learn when a task starts and ends and what it output;
:func:`steps_hooked` restores it afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: what the train step logs per log window / validation (egnet/training/run.py)
TRAIN_LINE = re.compile(r"iteration (\d+): loss ([0-9.eE+-]+|nan)")
VAL_LINE = re.compile(r"val at iteration (\d+): mIoU ([0-9.]+)")
TAIL_LINES = 15
#: kfp.local's own lines around a task's output (kfp/local/task_dispatcher.py)
KFP_STREAM_START = re.compile(r" - INFO - Streamed logs:")
KFP_TASK_END = re.compile(r" - (INFO|ERROR) - Task '[^']+' finished with status")
#: the format kfp's executor gives the component's logging, and the executor's own messages
KFP_LOG_PREFIX = re.compile(r"^\[KFP Executor [^\]]*\]: ")
KFP_OWN = re.compile(r"Looking for component|Loading KFP component|Got executor_input|Wrote executor output")
#: kfp.local prints a task's own output indented by this much
KFP_INDENT = "    "


def duration(seconds: float) -> str:
    """``0.8s``, ``12.3s``, ``4m05s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _open_log(path: Path) -> TextIO:
    """Line-buffered, so `tail -f` follows a running step; closed by StepConsole.end/close."""
    return open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115


class _Stream(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr while the pipeline runs: text goes to the console."""

    def __init__(self, console: StepConsole):
        self.console = console

    def write(self, text: str) -> int:
        self.console.feed(text)
        return len(text)

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"


#: why a conditional step did not run (the pipeline's dsl.If / dsl.Else branches)
SKIPPED_WHY = {"promote": "gate refused: nothing to promote",
               "evaluate-champion": "nothing to re-evaluate",
               "champion-ready": "the champion was re-evaluated instead"}


class StepConsole:
    """One line per step on ``out``; every step's output in ``<run folder>/logs/``."""

    def __init__(self, out: TextIO, total: int, iterations: int, verbose: bool = False):
        self.out, self.total, self.iterations, self.verbose = out, total, iterations, verbose
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.run_dir: Path | None = None
        self.step: str | None = None
        self.done: list[str] = []
        self.failed: str | None = None
        self._partial = ""
        self._early: list[str] = []            # output before the run folder is known
        self._all: TextIO | None = None        # logs/pipeline.log
        self._log: TextIO | None = None        # logs/<step>.log
        self._tail: list[str] = []
        self._bar: Any = None
        self._last: dict[str, str] = {}        # the step's last line, gate FAIL rows, last val mIoU
        self._streaming = self._executor_input = False

    # ------------------------------------------------------------------ text from kfp and the steps

    @property
    def logs(self) -> Path | None:
        return self.run_dir / "logs" if self.run_dir else None

    def feed(self, text: str) -> None:
        if self.verbose:
            self.out.write(text)
            self.out.flush()
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(ANSI.sub("", line).removeprefix(KFP_INDENT).rstrip("\r"))

    def _line(self, line: str) -> None:
        if self._all is None:
            self._early.append(line)
        else:
            self._all.write(line + "\n")
        if self._log is None:
            return
        self._log.write(line + "\n")
        # the step's own output: between kfp's "Streamed logs:" and "Task ... finished with status"
        if KFP_STREAM_START.search(line):
            self._streaming = True
        elif KFP_TASK_END.search(line):
            self._streaming = False
        elif self._executor_input:  # kfp's executor prints its input JSON first; "}" closes it
            self._executor_input = line != "}"
        elif self._streaming:
            text = KFP_LOG_PREFIX.sub("", line)  # the component's logging goes through kfp's format
            if KFP_OWN.match(text):
                self._executor_input = text.startswith("Got executor_input")
            else:
                self._own(text)

    def _own(self, line: str) -> None:
        """A line the step itself printed (or logged)."""
        self._tail = [*self._tail[-200:], line]
        if line.rstrip().endswith(" FAIL"):  # a refused row of the promotion gate's table
            self._last["fail"] = "; ".join(filter(None, [self._last.get("fail"), _gate_row(line)]))
        if line.strip():
            self._last["line"] = line.strip()
        if self.step == "train" and self._bar is not None:
            self._progress(line)

    def _progress(self, line: str) -> None:
        if m := TRAIN_LINE.search(line):
            it = int(m.group(1))
            self._bar.update(max(0, it - self._bar.n))
            self._bar.set_postfix_str(f"loss {m.group(2)}" + self._last.get("val", ""), refresh=True)
        elif m := VAL_LINE.search(line):
            self._last["val"] = f", val mIoU {m.group(2)}"

    # ------------------------------------------------------------------ steps

    def start(self, step: str, run_dir: Path) -> None:
        if self.run_dir is None:
            self.run_dir = run_dir
            self.logs.mkdir(parents=True, exist_ok=True)
            self._all = _open_log(self.logs / "pipeline.log")
            self._all.write("".join(f"{line}\n" for line in self._early))
            self._say(f"    step logs: {shown(self.logs)}/<step>.log"
                      + ("" if self.verbose else " (--verbose streams them here)"))
        self.step, self._tail, self._last = step, [], {}
        self._streaming = self._executor_input = False
        self._log = _open_log(self.logs / f"{step}.log")
        self._t0 = time.perf_counter()
        if self.verbose or not self.tty:
            return
        if step == "train":
            from tqdm import tqdm

            self._bar = tqdm(total=self.iterations, desc=f"{self._prefix(step)}", unit="it", file=self.out,
                             leave=False, dynamic_ncols=True,
                             bar_format="{desc} {bar} {n}/{total} it [{elapsed}<{remaining}{postfix}]")
        else:
            self.out.write(f"{self._prefix(step)} ...")
            self.out.flush()

    def end(self, step: str, ok: bool, outputs: dict[str, Any] | None) -> None:
        seconds = time.perf_counter() - self._t0
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._log is not None:
            self._log.close()
            self._log = None
        try:
            note = key_output(step, outputs or {}, self._last) if ok else ""
        except Exception as exc:  # a summary line must never fail the run
            note = f"(no summary: {type(exc).__name__})"
        status = "ok" if ok else "FAILED"
        self._say(f"{self._prefix(step)} {status:<6} {duration(seconds):>7}  {note}".rstrip(), replace=True)
        self.done.append(step)
        if not ok:
            self.failed = step
            self._say("\n".join(f"    | {_cut(line)}" for line in failure_tail(self._tail)))
            self._say(f"    full log: {shown(self.step_log(step))}")
        self.step = None

    def skipped(self, steps: list[str], why: str | None = None) -> None:
        """Steps a ``dsl.If``/``dsl.Else`` left out, each with ``why`` or its reason in SKIPPED_WHY."""
        for step in steps:
            reason = why or SKIPPED_WHY.get(step, "its condition was false")
            self._say(f"{self._prefix(step)} {'skipped':<6} {'':>7}  {reason}".rstrip())
            self.done.append(step)

    def step_log(self, step: str) -> Path:
        return self.logs / f"{step}.log" if self.logs else Path(f"{step}.log")

    def close(self) -> None:
        if self._partial:
            self._line(ANSI.sub("", self._partial))
            self._partial = ""
        if self._bar is not None:
            self._bar.close()
        for fh in (self._log, self._all):
            if fh is not None:
                fh.close()
        self._log = self._all = None

    def _prefix(self, step: str) -> str:
        n = len(self.done) + 1
        return f"[{n:>2}/{self.total}] {step:<17}"

    def _say(self, text: str, replace: bool = False) -> None:
        if replace and self.tty and not self.verbose:
            self.out.write("\r\x1b[K")
        self.out.write(text + "\n")
        self.out.flush()

    # ------------------------------------------------------------------ capture

    @contextlib.contextmanager
    def captured(self) -> Iterator[StepConsole]:
        """sys.stdout and sys.stderr into this console while the pipeline runs."""
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = _Stream(self)
        try:
            yield self
        finally:
            sys.stdout, sys.stderr = saved
            self.close()


@contextlib.contextmanager
def steps_hooked(console: StepConsole) -> Iterator[None]:
    """Route kfp.local's per-task dispatch through ``console`` (start line, log file, end line)."""
    import inspect

    from kfp.local import task_dispatcher
    from kfp.local.executor_input_utils import get_local_task_resource_name

    original = task_dispatcher.run_single_task_implementation
    signature = inspect.signature(original)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        call = signature.bind(*args, **kwargs).arguments
        step = get_local_task_resource_name(call["component_name"])
        console.start(step, Path(call["pipeline_root"]) / call["pipeline_resource_name"])
        try:
            outputs, status = original(*args, **kwargs)
        except BaseException:
            console.end(step, False, None)
            raise
        console.end(step, getattr(status, "name", str(status)) == "SUCCESS", outputs)
        return outputs, status

    task_dispatcher.run_single_task_implementation = hooked
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original


# ---------------------------------------------------------------------- the key output of each step


def _cut(line: str, width: int = 240) -> str:
    return line if len(line) <= width else line[:width - 3] + "..."


def failure_tail(lines: list[str], n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` lines a failed step printed, its closing traceback folded to the exception
    line (the step's own error line comes before it; the whole traceback is in the log)."""
    lines = [line for line in lines if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if starts and not lines[-1].startswith((" ", "\t")):
        lines = [*lines[:starts[-1]], lines[-1]]
    return lines[-n:]


def _meta(outputs: dict[str, Any], name: str) -> dict[str, Any]:
    art = outputs.get(name)
    return dict(getattr(art, "metadata", None) or {})


def _path(outputs: dict[str, Any], name: str) -> Path:
    return Path(outputs[name].path)


def _num(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/a"


def _int(v: Any) -> str:
    """KFP metadata turns counts into floats (12.0): print them as counts."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _gate_row(line: str) -> str:
    """A FAIL row of the gate table (check, champion, candidate, delta, rule, FAIL) in a few words."""
    if line.strip().startswith("rule "):            # "rule <name>: <what it found>: FAIL"
        name, _, found = line.strip().removeprefix("rule ").removesuffix(": FAIL").partition(": ")
        m = re.search(r"difference (\S+), (\d+% CI \[[^]]+\]); (lower bound [<>] \S+)", found)
        if m:
            return f"{name} {m[1]}, {m[2]}, needs {m[3]}"
        return f"{name}: " + re.sub(r" \(register\.\w+\)", "", found)
    cells = re.split(r"\s{2,}", line.strip())
    if len(cells) == 6:
        return f"{cells[0]} {cells[3]}, needs {cells[4]}"
    return re.sub(r"\s+", " ", line.strip()).removesuffix(" FAIL")


def key_output(step: str, outputs: dict[str, Any], last: dict[str, str]) -> str:
    """The few words that say what ``step`` produced, from its KFP outputs (and log lines)."""
    if step == "resolve-data":
        commit = outputs.get("commit")
        if commit:
            return f"data at commit {str(commit)[:12]}"
        return "no data repo: the data path as it is"
    if step == "materialise":
        m = _meta(outputs, "data")
        return f"{m.get('data_version', '?')} at {shown(Path(m.get('root', '?')))}"
    if step == "validate":
        m = _meta(outputs, "validated")
        bad = (m.get("num_pairs") or 0) - (m.get("num_good") or 0)
        quarantined = f", {_int(bad)} quarantined" if bad else ""
        return f"{_int(m.get('num_good'))}/{_int(m.get('num_pairs'))} pairs good{quarantined}"
    if step == "split":
        folder = _path(outputs, "split")
        n = {s: len((folder / f"{s}.txt").read_text().split()) for s in ("train", "test")}
        report = json.loads((folder / "split_report.json").read_text())
        return (f"train {n['train']} / test {n['test']} images ({report.get('mode', '?')}), "
                f"JS exposure {_num(report.get('js_exposure'))}")
    if step == "stats":
        stats = json.loads((_path(outputs, "stats") / "stats.json").read_text())
        dark = {s: sum(stats["exposure_fraction"][s][:2]) for s in ("train", "test")}
        n = stats["num_images"]
        return (f"{n['train']} + {n['test']} images; pixels with V < 0.2: "
                f"train {dark['train']:.0%}, test {dark['test']:.0%}")
    if step == "drift":
        doc = json.loads(_path(outputs, "drift").joinpath("drift.json").read_text())
        if doc.get("status") == "skipped":
            return "skipped: no champion to compare with yet"
        failed = doc.get("failed") or []
        return f"{doc.get('status')}" + (f": {', '.join(failed)} over threshold" if failed else
                                          ": every measure within its threshold")
    if step == "train-resources":
        return (f"cluster pod: {_int(outputs.get('gpus'))} GPU, {outputs.get('cpu_request')} CPU, "
                f"{outputs.get('memory_request')} (ignored here)")
    if step == "train":
        model, m = _meta(outputs, "model"), _meta(outputs, "metrics")
        val = f", val mIoU {_num(m['val_mIoU'], 3)}" if "val_mIoU" in m else ""
        return (f"{_int(model.get('iterations'))} iterations, loss {_num(m.get('loss_total'), 3)}{val}; "
                f"MLflow run {str(model.get('mlflow_run_id', '?'))[:12]}")
    if step == "evaluate":
        m = _meta(outputs, "evaluation")
        return f"test mIoU {_num(m.get('mIoU'))}, mEF1 {_num(m.get('mEF1'))}"
    if step == "register":
        m = _meta(outputs, "registration")
        return f"{m.get('name')} v{_int(m.get('version'))} (alias challenger)"
    if step == "champion-check":                   # "like with like: <why>; <what happens>"
        return last.get("line", "").removeprefix("like with like: ")
    if step == "champion-ready":
        return "nothing to re-evaluate"
    if step == "evaluate-champion":
        run = str(outputs.get("Output", "?"))[:12]
        return f"champion evaluated on this run's test data, MLflow run {run}"
    if step == "gate":
        if outputs.get("Output") == "promote":
            return "passed: promote the challenger"
        return "refused: champion kept" + (f" ({last['fail']})" if last.get("fail") else "")
    if step in ("promote", "finalize"):
        return last.get("line", "")
    return ""
