"""Count the points where the training loop makes the host wait for the device.

On a GPU these calls block the CPU until the device has finished the work queued before
them, so the host cannot queue the next step while the device runs this one:
``Tensor.item``, ``.tolist``, ``.cpu``, ``.numpy``, ``bool()``/``float()``/``int()``/
``__index__`` of a tensor, and ``.to(device)`` without ``non_blocking=True``. On the CPU
they cost nothing, but they are the same calls: counting them here says what a GPU run
would wait on.

:class:`HostSyncCounter` wraps those methods and records every call made while counting,
with the phase of the training loop it fell in:

- ``loader``: inside the train loader's ``next()`` (host-side work on CPU tensors by
  construction: nothing there is on the device yet), not a device sync;
- ``step``: inside ``sgd_step`` (forward, loss, backward, optimizer);
- ``loop``: the rest of ``train_iterations`` (log window, stop flag, validation,
  checkpoints), attributed to the number of steps done so far.

It hooks ``egnet.training.train`` (``train_iterations``, ``sgd_step``) and
``egnet.training.run.make_loaders`` only, so the product code is what runs.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@dataclass
class SyncEvent:
    phase: str          # loader | step | loop
    iteration: int      # steps completed when it happened
    call: str           # e.g. "item", "to(blocking)"
    where: str          # the innermost egnet frame that made the call


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/egnet/" in frame.filename:
            return f"{frame.filename.split('/egnet/')[-1]}:{frame.lineno} {frame.line}"
    return "?"


def _has_device(args: tuple, kwargs: dict) -> bool:
    if "device" in kwargs:
        return True
    return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args)


@dataclass
class HostSyncCounter:
    events: list[SyncEvent] = field(default_factory=list)
    counting: bool = False
    phase: str = "loop"
    iteration: int = 0
    _undo: list[Callable[[], None]] = field(default_factory=list)

    # -- installing -------------------------------------------------------------------------------

    def _set(self, owner: Any, name: str, value: Any) -> None:
        old = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old))

    def _record(self, call: str) -> None:
        if self.counting:
            self.counting = False  # the bookkeeping below must not count itself
            try:
                self.events.append(SyncEvent(self.phase, self.iteration, call, _caller()))
            finally:
                self.counting = True

    def install(self) -> HostSyncCounter:
        import egnet.training.run as run_mod
        import egnet.training.train as train_mod

        for name in SYNC_METHODS:
            original = getattr(torch.Tensor, name)

            def wrapper(t, *args, _original=original, _name=name, **kwargs):
                self._record(_name)
                return _original(t, *args, **kwargs)

            self._set(torch.Tensor, name, wrapper)
        original_to = torch.Tensor.to

        def to(t, *args, **kwargs):
            non_blocking = kwargs.get("non_blocking", False) or any(a is True for a in args)
            if not non_blocking and _has_device(args, kwargs):
                self._record("to(blocking)")
            return original_to(t, *args, **kwargs)

        self._set(torch.Tensor, "to", to)

        iterations, step, make_loaders = train_mod.train_iterations, train_mod.sgd_step, run_mod.make_loaders

        def counted_iterations(*args, **kwargs):
            self.counting, self.phase = True, "loop"
            try:
                return iterations(*args, **kwargs)
            finally:
                self.counting = False

        def counted_step(*args, **kwargs):
            self.phase = "step"
            try:
                return step(*args, **kwargs)
            finally:
                self.phase = "loop"
                self.iteration += 1

        def phased_loaders(*args, **kwargs):
            train_loader, sampler, val_loader = make_loaders(*args, **kwargs)
            return _PhasedLoader(train_loader, self), sampler, val_loader

        self._set(train_mod, "train_iterations", counted_iterations)
        self._set(train_mod, "sgd_step", counted_step)
        self._set(run_mod, "make_loaders", phased_loaders)
        return self

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> HostSyncCounter:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- reading ----------------------------------------------------------------------------------

    def dump(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump([asdict(e) for e in self.events], fh)

    @staticmethod
    def load(path: str) -> list[SyncEvent]:
        with open(path) as fh:
            return [SyncEvent(**e) for e in json.load(fh)]


class _PhasedLoader:
    """The train loader, with its ``next()`` marked as the ``loader`` phase."""

    def __init__(self, loader: Any, counter: HostSyncCounter) -> None:
        self._loader, self._counter = loader, counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        it = iter(self._loader)
        while True:
            self._counter.phase = "loader"
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self._counter.phase = "loop"
            yield batch


def off_boundary(events: list[SyncEvent], log_every: int, iterations: int) -> list[SyncEvent]:
    """The device syncs between log boundaries: every one in a step, and every one in the loop
    after a step that is not a log boundary (``it % log_every`` or the last). Loader events are
    host work on host tensors and never count."""
    def boundary(it: int) -> bool:
        return it % log_every == 0 or it == iterations

    return [e for e in events
            if e.phase == "step" or (e.phase == "loop" and not boundary(e.iteration))]
