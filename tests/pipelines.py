"""Shared helpers: build interleave pipelines from nested sizes and collect their output."""

from __future__ import annotations

import dataclasses
import gc
import os
import pathlib
import random
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import tensorflow as tf

from reference_model import interleave_order

# Element ``j`` of the nested dataset made from input ``i`` has the value ``STRIDE * i + j``.
STRIDE = 1000
# The two orders every behaviour is checked in: ``@pytest.mark.parametrize("sloppy", SLOPPY_MODES)``.
SLOPPY_MODES = (pytest.param(False, id="deterministic"), pytest.param(True, id="sloppy"))
# Upper bound on ``get_next`` calls when draining a pipeline, so a broken op cannot loop forever.
MAX_STEPS = 10_000
# Longest time a straggler waits for its release before giving up (keeps a broken op from hanging).
STRAGGLER_WAIT_SECONDS = 20.0

MapFunc = Callable[..., tf.data.Dataset]


def nested_values(sizes: Sequence[int]) -> List[List[int]]:
    """The element lists that ``sized_map_func(sizes)`` yields for each input element."""
    return [[STRIDE * index + offset for offset in range(size)] for index, size in enumerate(sizes)]


def sized_input(sizes: Sequence[int]) -> tf.data.Dataset:
    """The input dataset ``0 .. len(sizes) - 1``."""
    return tf.data.Dataset.range(len(sizes))


def sized_map_func(sizes: Sequence[int]) -> MapFunc:
    """Maps input ``i`` to ``range(STRIDE * i, STRIDE * i + sizes[i])``.

    The sizes constant is built inside the traced function, so the result works
    in eager mode, in ``tf.function`` and in a TF1 graph alike.
    """
    size_list = [int(size) for size in sizes]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(size_list, tf.int64), index)
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size)

    return map_func


def to_python(element: Any) -> Any:
    """Converts a numpy element (any nested structure) to plain Python values."""
    return tf.nest.map_structure(lambda leaf: leaf.tolist() if isinstance(leaf, (np.ndarray, np.generic)) else leaf,
                                 element)


def collect(dataset: tf.data.Dataset) -> List[Any]:
    """Drains ``dataset`` eagerly into a list of Python values."""
    values = []
    for element in dataset.as_numpy_iterator():
        values.append(to_python(element))
        if len(values) > MAX_STEPS:
            raise AssertionError(f"dataset yielded more than {MAX_STEPS} elements")
    return values


def collect_in_tf_function(dataset: tf.data.Dataset) -> List[Any]:
    """Drains ``dataset`` inside a ``tf.function`` loop; returns Python values."""

    @tf.function
    def gather_all() -> tf.Tensor:
        values = tf.TensorArray(dataset.element_spec.dtype, size=0, dynamic_size=True)
        for value in dataset:
            values = values.write(values.size(), value)
        return values.stack()

    return gather_all().numpy().tolist()


def live_stats_ids(tfi: Any) -> set:
    """Ids of the iterators ``tfi.stats()`` lists now."""
    return {entry["id"] for entry in tfi.stats()}


def new_stats_entries(tfi: Any, before: set) -> List[Dict[str, Any]]:
    """``tfi.stats()`` entries of iterators not in ``before``."""
    return [entry for entry in tfi.stats() if entry["id"] not in before]


def the_new_stats_entry(tfi: Any, before: set) -> Dict[str, Any]:
    """The one ``tfi.stats()`` entry of an iterator not in ``before``."""
    fresh = new_stats_entries(tfi, before)
    assert len(fresh) == 1, f"expected one new live iterator in stats(), got {fresh}"
    return fresh[0]


# How a test reads a pipeline: eagerly, in ``tf.function`` calls, or with a TF1 session.
READ_MODES = ("eager", "tf_function", "graph")


def collect_in_mode(make_dataset: Callable[[], tf.data.Dataset], mode: str) -> List[Any]:
    """Drains the pipeline ``make_dataset()`` builds, read as ``mode`` (one of ``READ_MODES``) says."""
    if mode == "eager":
        return collect(make_dataset())
    if mode == "tf_function":
        return collect_in_tf_function(make_dataset())
    if mode != "graph":
        raise ValueError(f"mode must be one of {READ_MODES}, got {mode!r}")
    with tf.Graph().as_default():
        next_element = tf.compat.v1.data.make_one_shot_iterator(make_dataset()).get_next()
        with tf.compat.v1.Session() as session:
            return run_session_until_end(session, next_element)


def take_with_stats(tfi: Any, make_dataset: Callable[[], tf.data.Dataset], taken: int, mode: str
                    ) -> Tuple[Dict[str, Any], List[Any]]:
    """Takes ``taken`` elements, reads the iterator's stats entry, then drains the rest.

    Args:
      tfi: the ``tf_interleave`` module.
      make_dataset: builds the pipeline (called inside the graph in ``"graph"`` mode).
      taken: how many int64 elements (or batches) to take before the stats are read.
      mode: one of ``READ_MODES``; in ``"tf_function"`` mode the first ``taken``
        elements are read by one ``tf.function`` call.

    Returns:
      The stats entry of the one iterator this created, and every element as Python values.
    """
    if mode == "graph":
        with tf.Graph().as_default():
            next_element = tf.compat.v1.data.make_one_shot_iterator(make_dataset()).get_next()
            with tf.compat.v1.Session() as session:
                before = live_stats_ids(tfi)
                values = [to_python(session.run(next_element)) for _ in range(taken)]
                entry = the_new_stats_entry(tfi, before)
                return entry, values + run_session_until_end(session, next_element)
    dataset = make_dataset()
    before = live_stats_ids(tfi)
    iterator = iter(dataset)
    if mode == "tf_function":

        @tf.function
        def take() -> tf.Tensor:
            elements = tf.TensorArray(tf.int64, size=taken)
            for i in tf.range(taken):
                elements = elements.write(i, next(iterator))
            return elements.stack()

        values = [to_python(value) for value in take().numpy()]
    elif mode == "eager":
        values = [to_python(next(iterator).numpy()) for _ in range(taken)]
    else:
        raise ValueError(f"mode must be one of {READ_MODES}, got {mode!r}")
    entry = the_new_stats_entry(tfi, before)
    return entry, values + [to_python(value.numpy()) for value in iterator]


@dataclasses.dataclass(frozen=True)
class Failure:
    """An error delivered in place of an element; ``kind`` is the exception class name."""

    kind: str


def collect_with_errors(dataset: tf.data.Dataset) -> List[Any]:
    """Drains ``dataset`` eagerly, recording each error as a ``Failure`` and carrying on."""
    return drain_iterator(iter(dataset))


def drain_iterator(iterator, pause_seconds: float = 0.0) -> List[Any]:
    """Reads an eager iterator to its end; each delivered error becomes a ``Failure``.

    ``pause_seconds`` is slept before each call, as a slow consumer would.
    """
    values: List[Any] = []
    for _ in range(MAX_STEPS):
        if pause_seconds:
            time.sleep(pause_seconds)
        try:
            element = next(iterator)
        except StopIteration:
            return values
        except tf.errors.OpError as error:
            values.append(Failure(type(error).__name__))
        else:
            values.append(to_python(tf.nest.map_structure(lambda t: t.numpy(), element)))
    raise AssertionError(f"iterator did not end within {MAX_STEPS} steps")


def run_session_until_end(session: tf.compat.v1.Session, next_element: Any) -> List[Any]:
    """Evaluates ``next_element`` in a TF1 session until ``OutOfRangeError``."""
    values = []
    for _ in range(MAX_STEPS):
        try:
            values.append(to_python(session.run(next_element)))
        except tf.errors.OutOfRangeError:
            return values
    raise AssertionError(f"iterator did not end within {MAX_STEPS} steps")


def is_subsequence(needle: Sequence[Any], haystack: Iterable[Any]) -> bool:
    """True if ``needle`` appears in ``haystack`` in order (not necessarily contiguously)."""
    remaining = iter(haystack)
    return all(any(item == candidate for candidate in remaining) for item in needle)


class Straggler:
    """A gate that holds back chosen pipeline elements until ``release()``.

    Each held element waits in a ``tf.py_function``; the wait gives up after
    ``STRAGGLER_WAIT_SECONDS`` (recorded in ``timed_out``) so that a test whose op
    blocks where it must not fails instead of hanging.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.timed_out = False

    def release(self) -> None:
        self._event.set()

    def rearm(self) -> None:
        """Holds the gate again, for a second pipeline over the same datasets."""
        self._event.clear()
        self.timed_out = False

    def release_later(self, delay_seconds: float) -> threading.Timer:
        """Releases from a timer thread; the caller must ``cancel()`` the timer when done."""
        timer = threading.Timer(delay_seconds, self._event.set)
        timer.daemon = True
        timer.start()
        return timer

    def _wait_if(self, value: tf.Tensor, hold: tf.Tensor) -> tf.Tensor:
        if bool(hold) and not self._event.wait(STRAGGLER_WAIT_SECONDS):
            self.timed_out = True
        return value

    def gate(self, value: tf.Tensor, hold: tf.Tensor) -> tf.Tensor:
        """Returns ``value``, first waiting for the release when ``hold`` is true.

        The decision is taken in Python, so the graph holds no control flow.
        """
        return tf.reshape(tf.py_function(self._wait_if, [value, hold], value.dtype), [])

    def map_func(self, sizes: Sequence[int], straggler: int) -> MapFunc:
        """``sized_map_func(sizes)`` whose input ``straggler`` holds each of its elements."""
        base_map_func = sized_map_func(sizes)

        def map_func(index: tf.Tensor) -> tf.data.Dataset:
            return base_map_func(index).map(lambda value: self.gate(value, tf.equal(index, straggler)))

        return map_func

    def open_map_func(self, sizes: Sequence[int], straggler: int) -> MapFunc:
        """``sized_map_func(sizes)`` that holds input ``straggler`` while opening it.

        The wait is in ``map_func`` itself, before the nested dataset exists (a
        slow file open), not in the nested dataset's elements.
        """
        base_map_func = sized_map_func(sizes)

        def map_func(index: tf.Tensor) -> tf.data.Dataset:
            return base_map_func(self.gate(index, tf.equal(index, straggler)))

        return map_func

    def input(self, sizes: Sequence[int], held_index: int) -> tf.data.Dataset:
        """``sized_input(sizes)`` that holds back its element ``held_index``."""
        return sized_input(sizes).map(lambda index: self.gate(index, tf.equal(index, held_index)))


def drain_holding_straggler(dataset: tf.data.Dataset, straggler: Straggler, held_steps: int
                            ) -> Tuple[List[Any], List[Any]]:
    """Takes ``held_steps`` elements while the straggler is held, then releases it and drains.

    Returns the elements taken before and after the release.
    """
    iterator = dataset.as_numpy_iterator()
    try:
        before = [to_python(next(iterator)) for _ in range(held_steps)]
    finally:
        straggler.release()
    return before, [to_python(element) for element in iterator]


def drain_with_late_straggler(dataset: tf.data.Dataset, straggler: Straggler, delay_seconds: float = 0.2
                              ) -> List[Any]:
    """Drains ``dataset`` while a timer releases the straggler after ``delay_seconds``."""
    timer = straggler.release_later(delay_seconds)
    try:
        return collect(dataset)
    finally:
        timer.cancel()
        straggler.release()


@dataclasses.dataclass(frozen=True)
class Case:
    """One differential-test configuration."""

    sizes: Tuple[int, ...]
    cycle_length: int
    block_length: int
    prefetch_input_elements: Optional[int]
    buffer_output_elements: Optional[int]
    tensor_args: bool = False

    def __str__(self) -> str:
        sizes = "-".join(map(str, self.sizes)) or "empty"
        kind = "t" if self.tensor_args else "i"
        return (f"s{sizes}_c{self.cycle_length}_b{self.block_length}"
                f"_p{self.prefetch_input_elements}_o{self.buffer_output_elements}_{kind}")

    def expected(self) -> List[int]:
        """The reference model's deterministic order for this case."""
        return interleave_order(nested_values(self.sizes), self.cycle_length, self.block_length,
                                self.prefetch_input_elements, self.buffer_output_elements)

    def interleave_kwargs(self, sloppy: Optional[bool] = False) -> dict:
        """Keyword arguments for ``parallel_interleave`` (tensors if ``tensor_args``)."""
        def arg(value: Optional[int]) -> Any:
            if value is None or not self.tensor_args:
                return value
            return tf.constant(value, tf.int64)

        return dict(cycle_length=arg(self.cycle_length), block_length=arg(self.block_length), sloppy=sloppy,
                    buffer_output_elements=arg(self.buffer_output_elements),
                    prefetch_input_elements=arg(self.prefetch_input_elements))

    def builtin_kwargs(self) -> dict:
        """Keyword arguments for the built-in, always Python ints with defaults resolved."""
        return dict(cycle_length=self.cycle_length, block_length=self.block_length, sloppy=False,
                    buffer_output_elements=(2 * self.block_length if self.buffer_output_elements is None
                                            else self.buffer_output_elements),
                    prefetch_input_elements=(2 * self.cycle_length if self.prefetch_input_elements is None
                                             else self.prefetch_input_elements))


def random_cases(seed: int, count: int) -> List[Case]:
    """Seeded random cases over the parameter grid of the differential tests."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        sizes = tuple(rng.randint(0, 6) for _ in range(rng.randint(0, 12)))
        cases.append(Case(
            sizes=sizes,
            cycle_length=rng.randint(1, 8),
            block_length=rng.randint(1, 4),
            prefetch_input_elements=rng.choice([None, 0, 1, 2, 3, 4]),
            buffer_output_elements=rng.choice([None, 1, 2, 3]),
            tensor_args=rng.random() < 0.25,
        ))
    return cases


def builtin_order_matches(dataset: tf.data.Dataset, expected: List[Any], block_length: int,
                          max_runs: int = 8) -> Tuple[bool, List[List[Any]]]:
    """Runs the built-in op's ``dataset`` until its order equals ``expected``.

    Errors count as ``Failure`` entries in the order.  With ``block_length == 1``
    the built-in's order never varies, so one run decides.  Otherwise it can
    reset its block count when its consumer waits on a nested dataset (SPEC
    section 2), so its order depends on timing: after a first run at full
    speed, each further run pauses before every element, which lets its buffers
    fill, and any of ``max_runs`` runs may equal ``expected``.  Returns the
    verdict and the orders observed.
    """
    runs = 1 if block_length == 1 else max_runs
    observed = []
    for run in range(runs):
        observed.append(drain_iterator(iter(dataset), pause_seconds=0.0 if run == 0 else 0.01))
        if observed[-1] == expected:
            return True, observed
    return False, observed


def builtin_matches(case: Case, expected: List[int], max_runs: int = 8) -> Tuple[bool, List[List[int]]]:
    """``builtin_order_matches`` for a differential ``case`` run by the built-in op."""
    dataset = sized_input(case.sizes).apply(
        tf.data.experimental.parallel_interleave(sized_map_func(case.sizes), **case.builtin_kwargs()))
    return builtin_order_matches(dataset, expected, case.block_length, max_runs)


def bounded(fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
    """Runs ``fn(*args)`` in a daemon thread; a hang fails the test instead of blocking it."""
    result: Dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{getattr(fn, '__name__', fn)} did not finish within {timeout} s (hung?)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def run_child_script(package: Any, script: str) -> Tuple[Any, Dict[str, Any]]:
    """Runs ``script`` in a fresh Python with C++ logging on; returns it and its ``RESULT`` JSON.

    The child imports the package this process tests (installed or built in place); it runs
    outside the source tree so that the tree's unbuilt package cannot shadow it.
    """
    import json  # pylint: disable=g-import-not-at-top
    import os  # pylint: disable=g-import-not-at-top
    import pathlib  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    import tempfile  # pylint: disable=g-import-not-at-top
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(package.__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                               timeout=180, cwd=tempfile.gettempdir())
    assert completed.returncode == 0, completed.stderr[-4000:]
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    return completed, json.loads(line[len("RESULT "):])


def thread_count() -> int:
    """Threads of this process right now."""
    return len(os.listdir("/proc/self/task"))


def settled_thread_count(at_most: Optional[int] = None, timeout: float = 20.0, stable_polls: int = 3) -> int:
    """Polls the thread count until it is ``<= at_most`` (or, without a bound, until it has not changed
    for ``stable_polls`` polls), collecting garbage now and then; gives the last count after ``timeout``."""
    deadline = time.monotonic() + timeout
    previous, stable, polls = -1, 0, 0
    while True:
        if polls % 20 == 0:
            gc.collect()
        polls += 1
        count = thread_count()
        stable = stable + 1 if count == previous else 0
        if (at_most is not None and count <= at_most) or (at_most is None and stable >= stable_polls):
            return count
        if time.monotonic() > deadline:
            return count
        previous = count
        time.sleep(0.05)


def source_lists() -> Dict[str, Any]:
    """The lists of `cc/sources.bzl` (Starlark that is also valid Python): what setup.py and Bazel build."""
    namespace: Dict[str, Any] = {}
    path = pathlib.Path(__file__).resolve().parents[1] / "cc" / "sources.bzl"
    exec(compile(path.read_text(), "sources.bzl", "exec"), namespace)
    return namespace
