"""core.files.pool_context: fork only while one thread runs (a forked child inherits the other
threads' held locks but not the threads), else forkserver; a pool from it computes the same."""

from __future__ import annotations

import threading

from egnet.core.files import pool_context


def _square(x: int) -> int:
    return x * x


def test_fork_only_when_this_process_runs_one_thread() -> None:
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    expected = "fork" if not others else "forkserver"
    assert pool_context().get_start_method() == expected
    stop = threading.Event()
    extra = threading.Thread(target=stop.wait, daemon=True)
    extra.start()
    try:
        ctx = pool_context(preload=("egnet.core.files",))   # the fork server imports it once
        assert ctx.get_start_method() == "forkserver"
        with ctx.Pool(2) as pool:
            assert pool.map(_square, range(5)) == [0, 1, 4, 9, 16]
    finally:
        stop.set()
        extra.join()
