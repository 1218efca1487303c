"""tf.data service: the dataset graph is shipped to worker processes that ``import tf_interleave``.

A dispatcher runs in the test process; two workers run in their own processes
(``helpers/service_worker.py``) on loopback. ``parallel_epochs`` gives every
element once per worker; ``distributed_epoch`` splits the op's input among the
workers, so every element arrives once. Every wait has a deadline and the
workers are killed in teardown, whatever happened.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import types
from typing import Any, List

import pytest
import tensorflow as tf

from pipelines import MAX_STEPS, nested_values, sized_input, sized_map_func, to_python, SLOPPY_MODES

SIZES = (3, 0, 5, 1, 4, 2, 6, 0, 2, 7)
WORKERS = 2
HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
STARTUP_SECONDS = 90.0
READ_SECONDS = 60.0


def _subprocess_env() -> dict:
    env = dict(os.environ)
    # The parent's sys.path: the workers import the same tf_interleave (in-place build or installed).
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _log_tail(process: subprocess.Popen) -> str:
    log = getattr(process, "log", None)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


def _read_ready_line(process: subprocess.Popen, deadline: float) -> str:
    """Returns the worker's ``READY`` line, or fails once ``deadline`` passes or the worker dies."""
    lines: "queue.Queue[str]" = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
            if line.startswith("READY"):
                return
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"service worker {process.pid} did not start in time:\n{_log_tail(process)}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line.startswith("READY"):
            return line.strip()
        if line == "":
            raise AssertionError(f"service worker exited ({process.wait()}) before it was ready:\n"
                                 f"{_log_tail(process)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            process.stdin.close()  # The worker exits when its stdin closes.
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def service():
    """A dispatcher in this process and two worker processes; yields the service address."""
    import tf_interleave  # noqa: F401  (the dispatcher reads the graph to split the input)

    dispatcher = tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=0))
    port = int(dispatcher._address.rsplit(":", 1)[1])  # pylint: disable=protected-access
    address = f"127.0.0.1:{port}"
    workers: List[subprocess.Popen] = []
    try:
        for _ in range(WORKERS):
            log = tempfile.TemporaryFile()
            worker = subprocess.Popen(
                [sys.executable, os.path.join(HELPERS, "service_worker.py"), "--dispatcher", address,
                 "--max-seconds", "240"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=_subprocess_env())
            worker.log = log
            workers.append(worker)
        deadline = time.monotonic() + STARTUP_SECONDS
        for worker in workers:
            _read_ready_line(worker, deadline)
        while dispatcher._num_workers() < WORKERS:  # pylint: disable=protected-access
            assert time.monotonic() < deadline, "the workers did not register with the dispatcher"
            for worker in workers:
                assert worker.poll() is None, (f"worker {worker.pid} exited with {worker.returncode}:\n"
                                               f"{_log_tail(worker)}")
            time.sleep(0.05)
        yield types.SimpleNamespace(target=f"grpc://{address}", workers=workers)
    finally:
        for worker in workers:
            _stop(worker)
            worker.log.close()
        dispatcher._stop()  # pylint: disable=protected-access


def _read_with_deadline(dataset: tf.data.Dataset, seconds: float = READ_SECONDS) -> List[Any]:
    """Drains ``dataset`` in a daemon thread, so a stuck service fails the test instead of hanging it."""
    outcome: dict = {}

    def read() -> None:
        try:
            values = []
            for element in dataset.as_numpy_iterator():
                values.append(to_python(element))
                if len(values) > MAX_STEPS:
                    raise AssertionError(f"more than {MAX_STEPS} elements")
            outcome["values"] = values
        except BaseException as error:  # noqa: BLE001  (re-raised in the test's thread)
            outcome["error"] = error

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"reading from the tf.data service took more than {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["values"]


def _pipeline(tfi: types.ModuleType, sloppy: bool) -> tf.data.Dataset:
    return sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), cycle_length=3, block_length=2,
                                                            sloppy=sloppy, prefetch_input_elements=1))


def _all_elements() -> List[int]:
    return [value for values in nested_values(SIZES) for value in values]


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_parallel_epochs(tfi: types.ModuleType, service, sloppy: bool) -> None:
    """Each worker runs the whole pipeline: every element arrives once per worker."""
    dataset = _pipeline(tfi, sloppy).apply(tf.data.experimental.service.distribute(
        processing_mode="parallel_epochs", service=service.target))
    values = _read_with_deadline(dataset)
    assert collections.Counter(values) == collections.Counter(_all_elements() * WORKERS)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_distributed_epoch(tfi: types.ModuleType, service, sloppy: bool) -> None:
    """The op's input is split among the workers: every element arrives exactly once."""
    dataset = _pipeline(tfi, sloppy).apply(tf.data.experimental.service.distribute(
        processing_mode="distributed_epoch", service=service.target))
    values = _read_with_deadline(dataset)
    assert collections.Counter(values) == collections.Counter(_all_elements())


def test_registered_dataset_read_by_id(tfi: types.ModuleType, service) -> None:
    """``register_dataset`` ships the serialized graph; ``from_dataset_id`` reads it back through the workers."""
    dataset = _pipeline(tfi, False).map(lambda value: value * 10)
    dataset_id = tf.data.experimental.service.register_dataset(service.target, dataset)
    read = tf.data.experimental.service.from_dataset_id(
        processing_mode="distributed_epoch", service=service.target, dataset_id=dataset_id,
        element_spec=dataset.element_spec)
    values = _read_with_deadline(read)
    assert sorted(values) == sorted(10 * value for value in _all_elements())
    for worker in service.workers:
        assert worker.poll() is None, "a worker died while serving the op"
