"""Abandoning iterators mid-stream stops their workers: no hang, no leaked thread."""

from __future__ import annotations

import threading
import types
from typing import Callable, List, NamedTuple

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

from pipelines import STRIDE, settled_thread_count, sized_input, sized_map_func

pytestmark = pytest.mark.usefixtures("hang_guard")

# A sleep that only cancellation can cut short within the test's lifetime.
LONG_SLEEP_MICROSECONDS = 100_000_000
# How long dropping one iterator may take before the test calls it a hang.
DROP_TIMEOUT_SECONDS = 60.0
# How long worker threads get to exit after the last iterator is gone.
SETTLE_TIMEOUT_SECONDS = 30.0
ITERATOR_COUNT = 200


def _steady_thread_count() -> int:
    """The thread count once it has stopped changing (garbage collected between polls)."""
    return settled_thread_count(timeout=SETTLE_TIMEOUT_SECONDS, stable_polls=10)


def _thread_count_falling_to(limit: int) -> int:
    """Polls until the thread count is at most ``limit``; returns the last count seen."""
    return settled_thread_count(at_most=limit, timeout=SETTLE_TIMEOUT_SECONDS)


def _drop(holder: List[object]) -> None:
    """Drops the only reference to an iterator on a helper thread; fails if that hangs."""
    dropper = threading.Thread(target=holder.clear, name="iterator-dropper", daemon=True)
    dropper.start()
    dropper.join(DROP_TIMEOUT_SECONDS)
    if dropper.is_alive():
        pytest.fail(f"dropping an iterator did not finish within {DROP_TIMEOUT_SECONDS}s")


def _sleepy_map_func(sizes: List[int], slow: int) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """``sized_map_func(sizes)``, but input ``slow`` sleeps (cancellably) before each element."""
    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(sizes, tf.int64), index)
        pause = tf.where(tf.equal(index, slow), tf.constant(LONG_SLEEP_MICROSECONDS, tf.int64), 0)
        # The sleep comes first in the nested pipeline, directly on the source.
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size).apply(testing.sleep(pause))

    return map_func


class Variant(NamedTuple):
    """A pipeline and how many elements may be taken from it without waiting on a sleep."""

    name: str
    dataset: tf.data.Dataset
    safe_steps: int


def _variants(tfi: types.ModuleType) -> List[Variant]:
    sizes = [5] * 8
    slow_input = tf.data.Dataset.range(4).concatenate(
        tf.data.Dataset.range(4, 8).apply(testing.sleep(LONG_SLEEP_MICROSECONDS)))
    return [
        Variant("plain", sized_input(sizes).apply(tfi.parallel_interleave(sized_map_func(sizes), 3, 2)), 12),
        Variant("plain-sloppy", sized_input(sizes).apply(
            tfi.parallel_interleave(sized_map_func(sizes), 4, 1, sloppy=True)), 12),
        Variant("tiny-buffers", sized_input(sizes).apply(
            tfi.parallel_interleave(sized_map_func(sizes), 2, 1, buffer_output_elements=1,
                                    prefetch_input_elements=0)), 6),
        # Input 4 is staged (cycle 2 + prefetch 3) and its worker blocks in the sleep.
        Variant("slow-staged", sized_input(sizes).apply(
            tfi.parallel_interleave(_sleepy_map_func(sizes, 4), 2, 1, prefetch_input_elements=3)), 6),
        # Slot 1 blocks in the sleep; sloppy mode serves the other slots.
        Variant("slow-slot-sloppy", sized_input(sizes).apply(
            tfi.parallel_interleave(_sleepy_map_func(sizes, 1), 3, 1, sloppy=True)), 8),
        # Inputs from 4 on sleep: any read ahead of the input blocks.
        Variant("slow-input", slow_input.apply(
            tfi.parallel_interleave(sized_map_func(sizes), 2, 1, prefetch_input_elements=1)), 4),
    ]


def _abandon(variant: Variant, steps: int) -> None:
    iterator = iter(variant.dataset)
    for _ in range(min(steps, variant.safe_steps)):
        next(iterator)
    holder: List[object] = [iterator]
    del iterator
    _drop(holder)


def test_abandoned_iterators_leave_no_threads(tfi: types.ModuleType) -> None:
    variants = _variants(tfi)
    for variant in variants:  # warm-up: let TensorFlow create its shared thread pools
        _abandon(variant, variant.safe_steps)
    baseline = _steady_thread_count()
    for number in range(ITERATOR_COUNT):
        _abandon(variants[number % len(variants)], steps=number % 7)
    remaining = _thread_count_falling_to(baseline)
    assert remaining <= baseline, f"{remaining - baseline} threads still alive after all iterators were dropped"


def test_closing_session_stops_workers(tfi: types.ModuleType) -> None:
    def run_one_session() -> None:
        with tf.Graph().as_default():
            sizes = [5] * 8
            dataset = sized_input(sizes).apply(
                tfi.parallel_interleave(_sleepy_map_func(sizes, 4), 2, 1, prefetch_input_elements=3))
            iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
            next_element = iterator.get_next()
            session = tf.compat.v1.Session()
            session.run(iterator.initializer)
            for _ in range(3):
                session.run(next_element)
            closer = threading.Thread(target=session.close, daemon=True)
            closer.start()
            closer.join(DROP_TIMEOUT_SECONDS)
            assert not closer.is_alive(), "closing the session hung"

    run_one_session()
    baseline = _steady_thread_count()
    for _ in range(10):
        run_one_session()
    remaining = _thread_count_falling_to(baseline)
    assert remaining <= baseline, f"{remaining - baseline} threads still alive after the sessions closed"
