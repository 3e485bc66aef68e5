"""core.files.pool_context: fork only while one thread runs (a forked child inherits the other
threads' held locks but not the threads), else forkserver; a pool from it computes the same."""

from __future__ import annotations

import io
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


def test_a_progress_bar_does_not_send_later_pools_to_the_fork_server() -> None:
    """tqdm starts a monitor thread with its first bar; pool_context stops it (and tqdm starts no
    other), so a process that showed a bar still forks its next pool."""
    import tqdm

    interval = tqdm.tqdm.monitor_interval
    tqdm.tqdm.monitor_interval = 10
    try:
        with tqdm.tqdm(total=2, disable=False, file=io.StringIO()) as bar:
            bar.update(1)
        assert tqdm.tqdm.monitor is not None and tqdm.tqdm.monitor.is_alive()
        monitor = tqdm.tqdm.monitor
        others = {t for t in threading.enumerate() if t is not threading.main_thread()} - {monitor}
        ctx = pool_context()
        assert not monitor.is_alive() and tqdm.tqdm.monitor is None
        assert ctx.get_start_method() == ("fork" if not others else "forkserver")
        with tqdm.tqdm(total=1, disable=False, file=io.StringIO()) as bar:
            bar.update(1)
        assert tqdm.tqdm.monitor is None                    # no new monitor either
    finally:
        tqdm.tqdm.monitor_interval = interval
