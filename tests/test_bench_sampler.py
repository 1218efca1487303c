"""The benchmark's thread counter (bench/run_one.py), which samples from a child process."""

import importlib.util
import os
import threading
import time
from types import ModuleType

import pytest

BENCH_RUN_ONE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "run_one.py")


@pytest.fixture(scope="module")
def run_one() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run_one", BENCH_RUN_ONE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_until_gone_from_proc(threads: list[threading.Thread], timeout_seconds: float = 30.0) -> None:
    """Waits until the kernel no longer lists the joined threads.

    `join()` returns once the Python side of a thread is done; the OS thread can still be
    listed in /proc/self/task for a moment after, and the sampler rightly counts it as left.
    """
    native_ids = {str(thread.native_id) for thread in threads}
    deadline = time.monotonic() + timeout_seconds
    while native_ids & set(os.listdir("/proc/self/task")):
        assert time.monotonic() < deadline, f"threads {sorted(native_ids)} still listed after {timeout_seconds} s"
        time.sleep(0.01)


def test_sampler_counts_threads_started_alive_and_left(run_one: ModuleType) -> None:
    # The threads are alive when the sampler stops, so its last sample sees them whatever the
    # machine's pace; they end only after, so they are counted as left until joined. A thread the
    # process starts after the sampler stopped (here `later`; in a test run, say, a runtime thread
    # of an earlier test's pipeline) is not the measured code's and is never counted as left.
    release = threading.Event()
    threads = [threading.Thread(target=release.wait) for _ in range(3)]
    later = threading.Thread(target=release.wait)
    with run_one.ThreadSampler() as sampler:
        for thread in threads:
            thread.start()
    later.start()
    try:
        assert sampler.result() == {"threads_started": 3, "threads_peak": 3, "threads_left": 3}
    finally:
        release.set()
        for thread in threads:
            thread.join()
        wait_until_gone_from_proc(threads)
    assert sampler.result() == {"threads_started": 3, "threads_peak": 3, "threads_left": 0}
    later.join()


def test_sampler_leaves_out_threads_alive_before_it_and_runs_outside_the_process(run_one: ModuleType) -> None:
    release = threading.Event()
    before = threading.Thread(target=release.wait)
    before.start()
    try:
        threads_before = set(os.listdir("/proc/self/task"))
        with run_one.ThreadSampler() as sampler:
            # No sampling thread here to take the GIL or add CPU time to the measurement. (A
            # runtime thread of an earlier test may end meanwhile, so none new, not all the same.)
            assert set(os.listdir("/proc/self/task")) - threads_before == set()
        assert sampler.result() == {"threads_started": 0, "threads_peak": 0, "threads_left": 0}
    finally:
        release.set()
        before.join()
