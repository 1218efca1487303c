"""Cycles longer than the old bound of 4096 seats: seats made on demand, worker threads capped.

``cycle_length + prefetch_input_elements`` may now reach 65536 (a pipeline with
``cycle_length=len(files)`` over thousands of files). Seats are made as inputs are pulled, so a long
cycle over a short input costs only the seats it fills; worker threads stay at 4096 at most however
many sources block at once (the legacy op starts one thread per seat).
"""

from __future__ import annotations

import threading
import types
from typing import Callable, List

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

from pipelines import (READ_MODES, collect, collect_in_mode, nested_values, settled_thread_count, sized_input,
                       sized_map_func, thread_count)
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")

SIZES = [2, 0, 3, 1, 2, 4, 1]
MAX_SEATS = 2**16
MAX_WORKERS = 4096
# Threads of TensorFlow and of the sampler that may start beside the workers.
OTHER_THREADS = 40


@pytest.mark.parametrize("mode", READ_MODES)
@pytest.mark.parametrize("cycle_length,prefetch", [(5000, None), (MAX_SEATS, 0), (1, MAX_SEATS - 1)])
def test_long_cycle_over_a_short_input_keeps_the_order(tfi: types.ModuleType, mode: str, cycle_length: int,
                                                       prefetch) -> None:
    """A cycle longer than the input is as long as the input (SPEC section 2), whatever ``cycle_length`` says."""
    expected = interleave_order(nested_values(SIZES), cycle_length, 1, prefetch)
    for sloppy in (False, True):
        def make_dataset() -> tf.data.Dataset:
            return sized_input(SIZES).apply(tfi.parallel_interleave(
                sized_map_func(SIZES), cycle_length, sloppy=sloppy, prefetch_input_elements=prefetch))

        values = collect_in_mode(make_dataset, mode)
        if sloppy:
            assert sorted(values) == sorted(expected)
        else:
            assert values == expected


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


@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
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


def test_seat_bound_names_both_arguments(tfi: types.ModuleType) -> None:
    """Beyond 65536 seats: an InvalidArgumentError naming both values, and saying when one is a default."""
    if tfi.__name__ == "builtin":
        pytest.skip("the legacy op has no seat bound")
    map_func = sized_map_func(SIZES)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"at most 65536, got cycle_length=65537 and prefetch_input_elements=0\."):
        tfi.parallel_interleave(map_func, MAX_SEATS + 1, prefetch_input_elements=0)(sized_input(SIZES))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"got cycle_length=21846 and prefetch_input_elements=43692 "
                             r"\(the default, 2 \* cycle_length\)"):
        tfi.parallel_interleave(map_func, 21846)(sized_input(SIZES))


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
