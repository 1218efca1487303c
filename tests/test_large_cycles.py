"""Long cycles: seats made on demand, worker threads capped.

``cycle_length + prefetch_input_elements`` may be any number (a pipeline with
``cycle_length=len(files)`` over many thousands of files). Seats, and a sloppy cycle's slots, are made
as inputs are pulled, so a long cycle over a short input costs only the seats it fills; worker threads
stay at 4096 at most however many sources block at once (the legacy op starts one thread per seat,
and runs out of memory from about 10**8 seats).
"""

from __future__ import annotations

import threading
import types
from typing import Callable, List

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

from pipelines import (READ_MODES, collect, collect_in_mode, nested_values, settled_thread_count, sized_input,
                       sized_map_func, thread_count, SLOPPY_MODES)
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")

SIZES = [2, 0, 3, 1, 2, 4, 1]
MANY_SEATS = 2**16
INT64_MAX = 2**63 - 1
MAX_WORKERS = 4096
# Threads of TensorFlow and of the sampler that may start beside the workers.
OTHER_THREADS = 40


# (cycle_length, prefetch_input_elements, whether the legacy op can run it): it allocates every seat up
# front, so the huge counts are ours alone (a segmentation fault from 10**8 seats).
LONG_CYCLES = [
    (5000, None, True), (MANY_SEATS, 0, True), (1, MANY_SEATS - 1, True),
    (10**6, None, False), (MANY_SEATS + 1, 0, False), (1, 10**9, False), (2**62, None, False),
    (INT64_MAX, INT64_MAX, False)]


@pytest.mark.parametrize("mode", READ_MODES)
@pytest.mark.parametrize("cycle_length,prefetch,legacy_runs", LONG_CYCLES)
def test_long_cycle_over_a_short_input_keeps_the_order(tfi: types.ModuleType, mode: str, cycle_length: int,
                                                       prefetch, legacy_runs: bool) -> None:
    """A cycle longer than the input is as long as the input (SPEC section 2), whatever ``cycle_length`` says.

    No bound on ``cycle_length + prefetch_input_elements``: up to twice the int64 maximum, a short input
    reads at once, in the legacy order when deterministic, given as Python ints and as tensors (whose sum
    would overflow int64).
    """
    if tfi.__name__ == "builtin" and not legacy_runs:
        pytest.skip("the legacy op allocates every seat up front")
    expected = interleave_order(nested_values(SIZES), min(cycle_length, len(SIZES)), 1, 0)
    # The legacy op raises a TypeError for tensor counts with default buffers (a bug of its own).
    tensor_forms = (False,) if tfi.__name__ == "builtin" else (False, True)
    for sloppy in (False, True):
        for as_tensor in tensor_forms:
            def make_dataset() -> tf.data.Dataset:
                def arg(value):
                    return tf.constant(value, tf.int64) if as_tensor and value is not None else value

                return sized_input(SIZES).apply(tfi.parallel_interleave(
                    sized_map_func(SIZES), arg(cycle_length), sloppy=sloppy,
                    prefetch_input_elements=arg(prefetch)))

            values = collect_in_mode(make_dataset, mode)
            if sloppy:
                assert sorted(values) == sorted(expected)
            else:
                assert values == expected, (cycle_length, prefetch, as_tensor)


def test_long_cycle_matches_the_legacy_op(tfi: types.ModuleType, builtin_interleave) -> None:
    """Many inputs and a cycle of 3,000 (9,000 seats with the default prefetching): the legacy order."""
    sizes = [index % 3 for index in range(3000)]

    def order(interleave) -> List[int]:
        return collect(sized_input(sizes).apply(interleave(sized_map_func(sizes), 3000)))

    assert order(tfi.parallel_interleave) == order(builtin_interleave)


def _peak_new_threads(run: Callable[[], List[int]]) -> tuple:
    """Runs ``run`` while sampling this process's threads; returns its result and the most new threads seen."""
    baseline = thread_count()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], thread_count() - baseline)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return result, peak[0]


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_sources_that_all_block_share_at_most_4096_workers(tfi: types.ModuleType, sloppy: bool) -> None:
    """4,500 sources that each sleep 200 ms before their element, all in the cycle at once."""
    if tfi.__name__ == "builtin":
        pytest.skip("the legacy op starts one thread per seat")
    inputs = 4500
    before = thread_count()

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.range(index, index + 1).apply(testing.sleep(200_000))

    dataset = tf.data.Dataset.range(inputs).apply(tfi.parallel_interleave(
        map_func, inputs, sloppy=sloppy, prefetch_input_elements=0))
    values, peak = _peak_new_threads(lambda: collect(dataset))
    if sloppy:
        values = sorted(values)
    assert values == list(range(inputs))
    assert peak <= MAX_WORKERS + OTHER_THREADS, f"{peak} threads ran at once"
    assert settled_thread_count(at_most=before + 4) <= before + 4


def test_a_million_slot_sloppy_cycle_costs_only_its_inputs(tfi: types.ModuleType) -> None:
    """Sloppy with ``cycle_length=10**6`` over 2,000 inputs: every element, and no more threads than the
    worker cap (the cycle's slots are made as inputs come: a million scanned for each element would
    not finish within the hang limit)."""
    if tfi.__name__ == "builtin":
        pytest.skip("the legacy op starts a thread per input here")
    sizes = [index % 4 for index in range(2000)]
    expected = sorted(value for values in nested_values(sizes) for value in values)

    def run() -> List[int]:
        return sorted(collect(sized_input(sizes).apply(tfi.parallel_interleave(
            sized_map_func(sizes), 10**6, sloppy=True))))

    values, peak = _peak_new_threads(run)
    assert values == expected
    assert peak <= MAX_WORKERS + OTHER_THREADS, f"{peak} threads ran at once"


def test_huge_block_length_saturates_its_default_buffer(tfi: types.ModuleType) -> None:
    """``block_length=2**62`` as a Python int gives what the same tensor gives (its default buffer is capped
    at the int64 maximum), not an error about ``buffer_output_elements``, which the caller never passed."""
    if tfi.__name__ == "builtin":
        pytest.skip("the legacy op raises a ValueError here")
    map_func = sized_map_func(SIZES)
    from_int = collect(sized_input(SIZES).apply(tfi.parallel_interleave(map_func, 2, 2**62)))
    from_tensor = collect(sized_input(SIZES).apply(
        tfi.parallel_interleave(map_func, 2, tf.constant(2**62, tf.int64))))
    assert from_int == from_tensor == interleave_order(nested_values(SIZES), 2, 2**62)
