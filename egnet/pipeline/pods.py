"""A training job's pods as the launcher follows them: one line per pod problem (with the tail of
a failed container's log) and rank 0's log relayed into the step's log (``[rank0] ...``).
:class:`egnet.pipeline.jobs.TrainingJobs` reads the pods and logs; :class:`PodWatch` decides
what is new and worth a line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from egnet.core.errors import DataError

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
#: container waiting reasons worth a line (the others are transient: ContainerCreating, PodInitializing)
WAITING_PROBLEMS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                    "CreateContainerError", "InvalidImageName", "RunContainerError")


class JobPods(Protocol):
    """What :class:`PodWatch` reads (:class:`egnet.pipeline.jobs.TrainingJobs` has it)."""

    core: Any

    def where(self, name: str) -> str: ...

    def pods(self, name: str, rank0: bool = False) -> list[dict[str, Any]]: ...

    def log_text(self, pod: str, since_time: str | None = None, tail_lines: int | None = None,
                 previous: bool = False) -> str: ...


def completion_index(pod: dict[str, Any]) -> str | None:
    """The pod's Indexed Job completion index (a label since Kubernetes 1.28, else the annotation)."""
    meta = pod.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    return labels.get(COMPLETION_INDEX) or notes.get(COMPLETION_INDEX)


def pod_problems(pod: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """What is wrong with a pod, as (key, one line, container failed): a container that
    terminated non-zero (now or before its last restart), a waiting reason that will not go
    away by itself, an unschedulable pod, an evicted or failed pod. ``key`` identifies the
    event (pod, container, restart), so a problem is reported once."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = meta.get("name", "?")
    out: list[tuple[str, str, bool]] = []
    for c in status.get("containerStatuses") or []:
        restarts = c.get("restartCount", 0)
        state, last = c.get("state") or {}, c.get("lastState") or {}
        for when, term, n in (("", state.get("terminated"), restarts),
                              (" (before its restart)", last.get("terminated"), restarts - 1)):
            if term and term.get("exitCode", 0) != 0:
                detail = ": ".join(x for x in (term.get("reason"), (term.get("message") or "").strip()) if x)
                out.append((f"{name}/{c.get('name')}/{n}/exit",
                            f"pod {name}: container {c.get('name')} exited {term.get('exitCode')}{when}"
                            + (f" ({detail})" if detail else ""), True))
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in WAITING_PROBLEMS:
            out.append((f"{name}/{c.get('name')}/{restarts}/{waiting['reason']}",
                        f"pod {name}: container {c.get('name')} {waiting['reason']}"
                        + (f": {waiting['message']}" if waiting.get("message") else ""), False))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
            out.append((f"{name}/scheduling/{cond.get('message')}",
                        f"pod {name}: {cond['reason']}: {cond.get('message', '')}".rstrip(": "), False))
    if status.get("phase") == "Failed" and status.get("reason"):
        out.append((f"{name}/phase/{status['reason']}",
                    f"pod {name}: {status['reason']}: {status.get('message', '')}".rstrip(": "), False))
    return out


def _ts_key(ts: str) -> str:
    """An RFC 3339 timestamp with nanoseconds, comparable as a string (the kubelet trims zeros)."""
    head, _, frac = ts.rstrip("Z").partition(".")
    return f"{head}.{frac.ljust(9, '0')}"


class PodWatch:
    """Relays rank 0's new log lines and logs each new pod problem once (one poll per call)."""

    def __init__(self, jobs: JobPods, name: str, log: Callable[[str], None], first_lines: int = 200,
                 failed_tail: int = 20):
        self.jobs, self.name, self.log = jobs, name, log
        self.first_lines, self.failed_tail = first_lines, failed_tail
        self.seen: set[str] = set()
        self.last_ts: str | None = None     # the newest rank-0 log line relayed
        self.last_problem = ""
        self.off = jobs.core is None        # no CoreV1Api, or no RBAC for pods: job status only

    def poll(self) -> None:
        if self.off:
            return
        try:
            self._problems()
            self._relay()
        except DataError as exc:   # pods and logs are a help, never a reason to fail
            self.log(f"pods of {self.jobs.where(self.name)}: {exc}")
            if " 403 " in f"{exc} ":
                self.off = True
                self.log("no permission to read the job's pods and logs (Role egnet-pipeline: pods, "
                         "pods/log); following the job's status only")

    def _problems(self) -> None:
        for pod in self.jobs.pods(self.name):
            for key, line, failed in pod_problems(pod):
                if key in self.seen:
                    continue
                self.seen.add(key)
                self.last_problem = line
                self.log(line)
                if failed:
                    self._tail(pod)

    def _tail(self, pod: dict[str, Any]) -> None:
        """The end of the log of a container that failed: the traceback is usually there."""
        name = pod["metadata"]["name"]
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        previous = not any((c.get("state") or {}).get("terminated") for c in statuses)
        try:
            text = self.jobs.log_text(name, tail_lines=self.failed_tail, previous=previous)
        except DataError:
            return
        for line in text.splitlines():
            self.log(f"[{name}] {line.partition(' ')[2]}")

    def _relay(self) -> None:
        pods = self.jobs.pods(self.name, rank0=True)
        running = [p for p in pods if any(set(c.get("state") or {}) & {"running", "terminated"}
                                          for c in (p.get("status") or {}).get("containerStatuses") or [])]
        if not running:   # not started yet: a waiting container has no log to read
            return
        pod = running[-1]["metadata"]["name"]
        if self.last_ts is None:
            text = self.jobs.log_text(pod, tail_lines=self.first_lines)
        else:
            text = self.jobs.log_text(pod, since_time=self.last_ts.split(".")[0] + "Z")
        for line in text.splitlines():
            ts, _, msg = line.partition(" ")
            key = _ts_key(ts)
            if self.last_ts is not None and key <= _ts_key(self.last_ts):
                continue
            self.last_ts = ts
            self.log(f"[rank0] {msg}")
