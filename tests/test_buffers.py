"""SPEC section 4: bounded per-slot buffers, and staged iterators that produce ahead."""

from __future__ import annotations

import collections
import threading
import time
import types
from typing import Callable, Dict, Sequence

import pytest
import tensorflow as tf

from pipelines import sized_input, sized_map_func, SLOPPY_MODES

pytestmark = pytest.mark.usefixtures("hang_guard")

# Polling limits: waits end as soon as their condition holds; the limits only bound a failing run.
QUIET_SECONDS = 0.2
POLL_LIMIT_SECONDS = 20.0


class ProductionCounter:
    """Counts, per input index, the nested elements that have been produced so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Dict[int, int] = collections.Counter()

    def _record(self, index: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        with self._lock:
            self._counts[int(index)] += 1
        return value

    def snapshot(self) -> Dict[int, int]:
        with self._lock:
            return dict(self._counts)

    def map_func(self, sizes: Sequence[int]) -> Callable[[tf.Tensor], tf.data.Dataset]:
        base_map_func = sized_map_func(sizes)

        def map_func(index: tf.Tensor) -> tf.data.Dataset:
            return base_map_func(index).map(
                lambda value: tf.reshape(tf.py_function(self._record, [index, value], tf.int64), []))

        return map_func

    def wait_until_quiet(self) -> Dict[int, int]:
        """Waits until no element has been produced for ``QUIET_SECONDS`` (or the poll limit)."""
        deadline = time.monotonic() + POLL_LIMIT_SECONDS
        previous = self.snapshot()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            current = self.snapshot()
            if current != previous:
                previous, quiet_since = current, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                break
        return previous


def _no_extra_buffering() -> tf.data.Options:
    """Options without the prefetch that tf.data otherwise appends to the pipeline."""
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    return options


_NO_EXTRA_BUFFERING = _no_extra_buffering()


@pytest.mark.parametrize("cycle_length, buffer_output_elements, prefetch_input_elements", [
    (2, 1, 0), (2, 3, 1), (3, 2, 2), (1, 1, 3)])
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_buffered_elements_are_bounded(tfi: types.ModuleType, cycle_length: int, buffer_output_elements: int,
                                       prefetch_input_elements: int, sloppy: bool) -> None:
    sizes = [40] * 8
    counter = ProductionCounter()
    dataset = sized_input(sizes).apply(tfi.parallel_interleave(
        counter.map_func(sizes), cycle_length, sloppy=sloppy, buffer_output_elements=buffer_output_elements,
        prefetch_input_elements=prefetch_input_elements))
    iterator = iter(dataset.with_options(_NO_EXTRA_BUFFERING))
    slots = cycle_length + prefetch_input_elements
    consumed = 0
    for target in (1, 5, 17):
        while consumed < target:
            next(iterator)
            consumed += 1
        produced = sum(counter.wait_until_quiet().values())
        # Each worker may also hold one element it has pulled but not yet buffered.
        assert produced - consumed <= slots * (buffer_output_elements + 1), (produced, consumed)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_staged_iterators_produce_before_entering_cycle(tfi: types.ModuleType, sloppy: bool) -> None:
    sizes = [10] * 6
    counter = ProductionCounter()
    dataset = sized_input(sizes).apply(tfi.parallel_interleave(
        counter.map_func(sizes), cycle_length=2, sloppy=sloppy, buffer_output_elements=2,
        prefetch_input_elements=2))
    iterator = iter(dataset.with_options(_NO_EXTRA_BUFFERING))
    next(iterator)
    deadline = time.monotonic() + POLL_LIMIT_SECONDS
    while time.monotonic() < deadline and not all(counter.snapshot().get(index, 0) > 0 for index in (2, 3)):
        time.sleep(0.02)
    produced = counter.snapshot()
    assert produced.get(2, 0) > 0 and produced.get(3, 0) > 0, f"staged inputs 2 and 3 produced nothing: {produced}"
    assert produced.get(4, 0) == 0 and produced.get(5, 0) == 0, f"inputs beyond prefetch were opened: {produced}"
