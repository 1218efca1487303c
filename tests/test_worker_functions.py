"""Functions that a worker's calls run execute on the worker, not on the runner's pool.

A slow ``map_func`` (a remote file open done in Python) or a nested dataset's Python
function would otherwise queue on the thread pool that tf.data runs functions on, whose
few threads (one per core by default) cap how many of them run at once, whatever
``cycle_length`` says. The pool's size is set with
``tf.data.Options().threading.private_threadpool_size``, so the cases do not depend on
the machine's cores. Every call waits at a gate until ``wanted`` calls run at the same
time (or a timeout passes); the gate records the most that ever ran together.

The built-in runs these functions on the pool, so against it (see ``conftest.py``) the
one-thread-pool cases fail: that is the improvement these tests pin down.

Workers also ask for the tightest timer slack; reading it from a function tells which
kind of thread ran the function, including under nested datasets (``concatenate``,
``zip``) that pass the context they opened with to calls that another worker makes.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import types
from typing import Callable, List

import pytest
import tensorflow as tf

from pipelines import collect_in_tf_function, run_session_until_end, SLOPPY_MODES

pytestmark = pytest.mark.usefixtures("hang_guard")

CYCLE_LENGTH = 4
# Long enough for four calls on four workers to meet on a loaded machine; calls that run
# one after the other each wait this long and the test fails.
GATE_TIMEOUT_SECONDS = 10.0
RUN_MODES = ["eager", "tf.function", "graph"]


class Gate:
    """Counts the calls running at once; each waits until ``wanted`` of them run together."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.running = 0
        self.peak = 0
        self._cond = threading.Condition()

    def _call(self, value: tf.Tensor) -> tf.Tensor:
        with self._cond:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.peak >= self.wanted, timeout=GATE_TIMEOUT_SECONDS)
            self.running -= 1
        return value

    def op(self, value: tf.Tensor) -> tf.Tensor:
        """The gate as a TensorFlow op (a ``py_function``) on an int64 scalar."""
        return tf.py_function(self._call, [value], tf.int64)


def _elements(tfi: types.ModuleType, inputs: int, map_func: Callable, cycle_length: int,
              sloppy: bool, pool_threads: int, run_mode: str) -> List[int]:
    """The interleave's elements, sorted, iterated in eager mode, a ``tf.function`` or a TF1 graph."""
    def make() -> tf.data.Dataset:
        dataset = tf.data.Dataset.range(inputs).apply(
            tfi.parallel_interleave(map_func, cycle_length, sloppy=sloppy, prefetch_input_elements=0))
        options = tf.data.Options()
        options.threading.private_threadpool_size = pool_threads
        return dataset.with_options(options)

    return sorted(_iterate(make, run_mode))


def _iterate(make: Callable[[], tf.data.Dataset], run_mode: str) -> List[int]:
    """The elements of ``make()``, in eager mode, a ``tf.function`` or a TF1 graph (made inside it)."""
    if run_mode == "eager":
        return [int(x) for x in make()]
    if run_mode == "tf.function":
        return collect_in_tf_function(make())
    with tf.Graph().as_default():
        next_element = tf.compat.v1.data.make_one_shot_iterator(make()).get_next()
        with tf.compat.v1.Session() as session:
            return [int(x) for x in run_session_until_end(session, next_element)]


@pytest.mark.parametrize("run_mode", RUN_MODES)
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_slow_map_funcs_run_side_by_side_with_a_one_thread_pool(tfi: types.ModuleType, run_mode: str,
                                                                 sloppy: bool) -> None:
    gate = Gate(CYCLE_LENGTH)
    # `map_func` itself waits before its dataset exists (a file open done in Python).
    elements = _elements(tfi, CYCLE_LENGTH, lambda x: tf.data.Dataset.from_tensors(gate.op(x)),
                         CYCLE_LENGTH, sloppy, pool_threads=1, run_mode=run_mode)
    assert elements == list(range(CYCLE_LENGTH))
    assert gate.peak == CYCLE_LENGTH


@pytest.mark.parametrize("run_mode", RUN_MODES)
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_nested_functions_run_side_by_side_with_a_one_thread_pool(tfi: types.ModuleType, run_mode: str,
                                                                  sloppy: bool) -> None:
    gate = Gate(CYCLE_LENGTH)
    # A nested dataset's own function waits (a read done in Python).
    elements = _elements(tfi, CYCLE_LENGTH, lambda x: tf.data.Dataset.from_tensors(x).map(gate.op),
                         CYCLE_LENGTH, sloppy, pool_threads=1, run_mode=run_mode)
    assert elements == list(range(CYCLE_LENGTH))
    assert gate.peak == CYCLE_LENGTH


@pytest.mark.parametrize("run_mode", RUN_MODES)
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_nested_parallel_map_keeps_the_pool(tfi: types.ModuleType, run_mode: str, sloppy: bool) -> None:
    gate = Gate(CYCLE_LENGTH)
    # One input, whose parallel map schedules its calls from its own threads: they still
    # run side by side on the pool rather than one after the other on the worker.
    elements = _elements(
        tfi, 1,
        lambda x: tf.data.Dataset.range(CYCLE_LENGTH).map(gate.op, num_parallel_calls=CYCLE_LENGTH),
        1, sloppy, pool_threads=CYCLE_LENGTH, run_mode=run_mode)
    assert elements == list(range(CYCLE_LENGTH))
    assert gate.peak == CYCLE_LENGTH


# prctl(2): reads the calling thread's timer slack, in nanoseconds (Linux's default: 50,000).
_PR_GET_TIMERSLACK = 30
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
SLACK_READERS = {
    # `map_func` itself (the open).
    "map_func": lambda x: tf.data.Dataset.from_tensors(_timer_slack_nanos(x)),
    # The nested dataset's own function, on each of its elements.
    "nested_map": lambda x: tf.data.Dataset.range(3).map(_timer_slack_nanos),
    # Nested datasets that make contexts for their inputs when they open (on the worker
    # that opens them) and pass those to every later call, whichever worker makes it.
    "nested_concatenate": lambda x: tf.data.Dataset.range(3).map(_timer_slack_nanos).concatenate(
        tf.data.Dataset.range(0)),
    "nested_zip": lambda x: tf.data.Dataset.zip(
        (tf.data.Dataset.range(3).map(_timer_slack_nanos), tf.data.Dataset.range(3))).map(lambda a, _: a),
}


def _timer_slack_nanos(value: tf.Tensor) -> tf.Tensor:
    """The timer slack of the thread that runs this op (a ``py_function`` runs on its caller)."""
    def read(_: tf.Tensor) -> int:
        return _LIBC.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)

    slack = tf.py_function(read, [value], tf.int64)
    slack.set_shape([])
    return slack


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timer slack is a Linux setting")
@pytest.mark.parametrize("reader", sorted(SLACK_READERS))
@pytest.mark.parametrize("run_mode", RUN_MODES)
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_workers_wait_with_a_tight_timer_slack(tfi: types.ModuleType, run_mode: str, sloppy: bool,
                                               reader: str) -> None:
    # A latency-bound input (a sleep, a poll with a timeout) waits on a worker; with the
    # default slack each wait ends up to 50 us late. `produce_inline=False` keeps every
    # element off the consumer's thread, which is the caller's and keeps its own slack.
    def make() -> tf.data.Dataset:
        return tf.data.Dataset.range(2 * CYCLE_LENGTH).apply(
            tfi.parallel_interleave(SLACK_READERS[reader], CYCLE_LENGTH, sloppy=sloppy, produce_inline=False))

    slacks = _iterate(make, run_mode)
    assert len(slacks) == 2 * CYCLE_LENGTH * (1 if reader == "map_func" else 3)
    assert max(slacks) <= 1_000, slacks
