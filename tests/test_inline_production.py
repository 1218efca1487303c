"""Inputs whose elements are cheap are produced by the consumer itself.

The consumer produces an element inline when the input's measured pace says a
hand-off to a worker costs more than the element (see cc/kernels/source_pace.h).
These tests drive the cases where that choice matters for correctness: inputs
that turn from cheap to blocking (here: the call that finds the end of a nested
dataset waits, as a remote read confirming the end of a file would), several at
once, with a memory budget, with retries (which keep inputs with the workers),
and a sloppy input that blocks after a long cheap run. The output must be
exactly the reference order (deterministic) or the same multiset (sloppy).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

import tf_interleave
from pipelines import STRIDE, Straggler, bounded, collect, live_stats_ids, nested_values, run_session_until_end, \
    the_new_stats_entry
from reference_model import interleave_order

# More elements than it takes an input to count as cheap (and, for sloppy
# mode, as proven), so that most of them are produced inline.
SIZES = [150, 90, 0, 200, 130, 75, 160, 110, 95, 140]
CYCLE_LENGTH = 3
BLOCKING_MICROS = 20_000


def blocking_at_end_map_func(sizes: List[int]):
    """Input ``i``: ``sizes[i]`` cheap elements; the calls before the first and after the last wait."""
    size_list = [int(size) for size in sizes]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(size_list, tf.int64), index)
        opened = tf.data.Dataset.range(1).apply(testing.sleep(BLOCKING_MICROS))
        return opened.flat_map(lambda _: tf.data.Dataset.range(STRIDE * index, STRIDE * index + size))

    return map_func


def run(sloppy: bool, **options: Any) -> List[int]:
    dataset = tf.data.Dataset.range(len(SIZES)).apply(
        tf_interleave.parallel_interleave(blocking_at_end_map_func(SIZES), CYCLE_LENGTH, sloppy=sloppy, **options))
    return bounded(collect, dataset)


@pytest.mark.parametrize("options", [{}, {"memory_budget_bytes": 64}, {"input_retries": 2}, {"produce_inline": False}],
                         ids=["default", "memory_budget", "retries", "no_inline"])
@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
def test_inputs_that_block_at_their_end(sloppy: bool, options: dict) -> None:
    expected = interleave_order(nested_values(SIZES), CYCLE_LENGTH)
    values = run(sloppy, **options)
    if sloppy:
        assert sorted(values) == sorted(expected)
    else:
        assert values == expected


def test_sloppy_input_that_blocks_after_a_long_cheap_run() -> None:
    # Input 0 yields 300 cheap elements, then one that takes 300 ms; the others never block.
    per_input = 301

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        cheap = tf.data.Dataset.range(STRIDE * index, STRIDE * index + per_input - 1)
        delay = tf.where(tf.equal(index, 0), tf.constant(300_000, tf.int64), tf.constant(0, tf.int64))
        last = tf.data.Dataset.range(STRIDE * index + per_input - 1, STRIDE * index + per_input)
        return cheap.concatenate(last.apply(testing.sleep(delay)))

    dataset = tf.data.Dataset.range(6).apply(tf_interleave.parallel_interleave(map_func, 3, sloppy=True))
    values = bounded(collect, dataset)
    assert sorted(values) == sorted(v for vs in nested_values([per_input] * 6) for v in vs)


def test_without_inline_production_a_sloppy_consumer_is_not_held_by_a_blocking_read() -> None:
    """``produce_inline=False``: an input that blocks after a long cheap run holds no ready element.

    Input 0 yields 300 cheap elements, then one that waits for a release; the other inputs never
    block. With inline production the consumer would be reading input 0 itself when it blocks;
    here every read is a worker's, so the consumer takes the other inputs' elements meanwhile.
    """
    per_input, held = 400, 300
    straggler = Straggler()

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        # Only element `held` goes through a function: the others stay cheap enough to be read inline.
        first = STRIDE * index
        gated = tf.data.Dataset.range(first + held, first + held + 1).map(
            lambda value: tf.cond(tf.equal(index, 0), lambda: straggler.gate(value, tf.constant(True)),
                                  lambda: value))
        return (tf.data.Dataset.range(first, first + held).concatenate(gated)
                .concatenate(tf.data.Dataset.range(first + held + 1, first + per_input)))

    inputs = 4
    dataset = tf.data.Dataset.range(inputs).apply(
        tf_interleave.parallel_interleave(map_func, 2, sloppy=True, produce_inline=False))
    iterator = iter(dataset)
    try:
        # Everything but input 0 from its held element on: all of it must come while held.
        before = [int(next(iterator)) for _ in range(inputs * per_input - (per_input - held))]
        assert not straggler.timed_out, "the consumer waited for the held element"
        assert held not in before
    finally:
        straggler.release()
    after = [int(value) for value in iterator]
    assert sorted(before + after) == sorted(v for vs in nested_values([per_input] * inputs) for v in vs)


def nested_with_pace(pace: str):
    """``map_func`` for input ``x``: 500 elements that are cheap, cost some CPU each, or wait 200 us each."""

    def map_func(x: tf.Tensor) -> tf.data.Dataset:
        values = tf.data.Dataset.range(STRIDE * x, STRIDE * x + 500)
        if pace == "costly":  # more than a hand-off to a worker, less than a blocking call
            return values.map(lambda v: v + tf.reduce_sum(tf.range(20_000, dtype=tf.int64)) * 0)
        if pace == "slow":
            return values.apply(testing.sleep(200))
        return values

    return map_func


@pytest.mark.parametrize("mode", ["eager", "tf_function", "graph"])
@pytest.mark.parametrize("pace", ["cheap", "costly", "slow"])
@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
def test_buffers_fill_while_the_consumer_is_away(sloppy: bool, pace: str, mode: str) -> None:
    # Eight inputs, all open at once (cycle 4 + prefetch 8 seats): once the consumer stops calling,
    # every buffer fills up, whoever produces an input's elements (the consumer itself for cheap ones,
    # a worker topping up an empty buffer for costly ones, a worker as soon as there is room for slow
    # ones) and whether the buffer was left empty or half full.
    inputs, per_input, buffer_size, consumed = 8, 500, 2, 300

    def make_dataset() -> tf.data.Dataset:
        dataset = tf.data.Dataset.range(inputs).apply(tf_interleave.parallel_interleave(
            nested_with_pace(pace), 4, sloppy=sloppy, buffer_output_elements=buffer_size))
        options = tf.data.Options()
        options.autotune.enabled = False  # no prefetch of tf.data's own in front of the op
        return dataset.with_options(options)

    earlier = {s["id"] for s in tf_interleave.stats()}  # iterators of other tests still alive

    def buffered() -> int:
        mine = [s for s in tf_interleave.stats() if s["id"] not in earlier]
        assert len(mine) == 1, tf_interleave.stats()
        return mine[0]["buffered_elements"]

    def wait_for_full_buffers() -> None:
        deadline = time.monotonic() + 10.0
        while buffered() < inputs * buffer_size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert buffered() == inputs * buffer_size

    # Long enough for cheap inputs to count as cheap (and proven), then away.
    if mode == "graph":
        with tf.Graph().as_default():
            next_element = tf.compat.v1.data.make_one_shot_iterator(make_dataset()).get_next()
            with tf.compat.v1.Session() as session:
                for _ in range(consumed):
                    session.run(next_element)
                wait_for_full_buffers()
                rest = run_session_until_end(session, next_element)
    else:
        iterator = iter(make_dataset())
        step = tf.function(lambda: next(iterator)) if mode == "tf_function" else (lambda: next(iterator))
        for _ in range(consumed):
            step()
        wait_for_full_buffers()
        rest = [int(v) for v in iterator]
    assert len(rest) == inputs * per_input - consumed


@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
def test_inputs_that_block_at_their_end_in_a_graph(sloppy: bool) -> None:
    # The same pipeline run by a TF1 session: the consumer is then a session's thread.
    expected = interleave_order(nested_values(SIZES), CYCLE_LENGTH)
    graph = tf.Graph()
    with graph.as_default():
        dataset = tf.data.Dataset.range(len(SIZES)).apply(
            tf_interleave.parallel_interleave(blocking_at_end_map_func(SIZES), CYCLE_LENGTH, sloppy=sloppy))
        next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        with tf.compat.v1.Session(graph=graph) as session:
            values = bounded(run_session_until_end, session, next_element)
    values = [int(v) for v in values]
    if sloppy:
        assert sorted(values) == sorted(expected)
    else:
        assert values == expected


@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
def test_inputs_that_block_at_their_end_in_a_tf_function(sloppy: bool) -> None:
    expected = interleave_order(nested_values(SIZES), CYCLE_LENGTH)
    dataset = tf.data.Dataset.range(len(SIZES)).apply(
        tf_interleave.parallel_interleave(blocking_at_end_map_func(SIZES), CYCLE_LENGTH, sloppy=sloppy))

    @tf.function
    def drain() -> tf.Tensor:
        return dataset.reduce(tf.constant([], tf.int64), lambda acc, x: tf.concat([acc, [x]], 0))

    values = [int(v) for v in bounded(drain).numpy()]
    if sloppy:
        assert sorted(values) == sorted(expected)
    else:
        assert values == expected


def _entry_and_values(dataset: tf.data.Dataset, taken: int) -> Tuple[Dict[str, Any], List[Any]]:
    """The dataset's stats entry, read once ``taken`` elements are taken, and all of its elements."""
    earlier = live_stats_ids(tf_interleave)
    iterator = iter(dataset)
    values = [next(iterator).numpy() for _ in range(taken)]
    entry = the_new_stats_entry(tf_interleave, earlier)
    return entry, values + [value.numpy() for value in iterator]


def _entry_and_values_in_graph(dataset_fn: Callable[[], tf.data.Dataset], taken: int
                               ) -> Tuple[Dict[str, Any], List[Any]]:
    """``_entry_and_values`` with the dataset built and read by a TF1 session."""
    with tf.Graph().as_default():
        next_element = tf.compat.v1.data.make_one_shot_iterator(dataset_fn()).get_next()
        with tf.compat.v1.Session() as session:
            earlier = live_stats_ids(tf_interleave)
            values = [session.run(next_element) for _ in range(taken)]
            entry = the_new_stats_entry(tf_interleave, earlier)
            return entry, values + run_session_until_end(session, next_element)


def _entry_and_values_in_tf_function(dataset: tf.data.Dataset, taken: int) -> Tuple[Dict[str, Any], List[Any]]:
    """``_entry_and_values`` with the first ``taken`` elements read inside one ``tf.function`` call."""
    earlier = live_stats_ids(tf_interleave)
    iterator = iter(dataset)

    @tf.function
    def take() -> tf.Tensor:
        values = tf.TensorArray(tf.int64, size=taken)
        for i in tf.range(taken):
            values = values.write(i, next(iterator))
        return values.stack()

    values = list(take().numpy())
    entry = the_new_stats_entry(tf_interleave, earlier)
    return entry, values + [value.numpy() for value in iterator]


@pytest.mark.parametrize("mode", ["eager", "tf_function", "graph"])
@pytest.mark.parametrize("produce_inline", [True, False], ids=["inline", "no_inline"])
@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
def test_stats_count_elements_produced_inline(sloppy: bool, produce_inline: bool, mode: str) -> None:
    # Cheap inputs, long enough to count as cheap (and, sloppy, as proven): the consumer produces
    # some of their elements itself, never more than it was given; none with produce_inline=False.
    # In a TF1 session the consumer is one of the session's threads.
    inputs, per_input = 4, 400

    def make_dataset() -> tf.data.Dataset:
        return tf.data.Dataset.range(inputs).apply(tf_interleave.parallel_interleave(
            lambda x: tf.data.Dataset.range(STRIDE * x, STRIDE * x + per_input), 2, sloppy=sloppy,
            produce_inline=produce_inline))

    taken = inputs * per_input - 10
    if mode == "graph":
        entry, values = bounded(_entry_and_values_in_graph, make_dataset, taken)
    elif mode == "tf_function":
        entry, values = bounded(_entry_and_values_in_tf_function, make_dataset(), taken)
    else:
        entry, values = bounded(_entry_and_values, make_dataset(), taken)
    values = [int(value) for value in values]
    assert sorted(values) == sorted(v for vs in nested_values([per_input] * inputs) for v in vs)
    # tf.data's injected prefetch may have taken a few more than the test.
    assert entry["elements"] >= taken, entry
    if produce_inline:
        assert 0 < entry["inline_elements"] <= entry["elements"] + entry["buffered_elements"], entry
    else:
        assert entry["inline_elements"] == 0, entry
    if not sloppy:
        assert entry["inline_pauses"] == 0, entry


PAUSE_ATTEMPTS = 3


@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
def test_stats_count_a_pause_after_an_inline_call_that_blocked(sloppy: bool) -> None:
    # Input 0 yields 300 cheap elements, then one that takes 300 ms. Read inline, that call keeps the
    # consumer away from the other inputs' ready elements: a sloppy consumer then leaves every input
    # to the workers for a while and counts the pause. The deterministic order waits for that element
    # anyway, so a deterministic consumer never pauses.
    inputs, per_input, cheap = 6, 301, 300

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        delay = tf.where(tf.equal(index, 0), tf.constant(300_000, tf.int64), tf.constant(0, tf.int64))
        last = tf.data.Dataset.range(STRIDE * index + cheap, STRIDE * index + per_input).apply(testing.sleep(delay))
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + cheap).concatenate(last)

    # One batch of all elements but the last keeps the consumer calling (a worker takes over a cheap
    # input's reading while the consumer is away); without tf.data's prefetch the interleave is still
    # alive after that batch, for its stats entry.
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    total = inputs * per_input
    dataset = tf.data.Dataset.range(inputs).apply(tf_interleave.parallel_interleave(map_func, 3, sloppy=sloppy)
                                                  ).batch(total - 1).with_options(options)
    expected = sorted(v for vs in nested_values([per_input] * inputs) for v in vs)
    # Only an inline call can pause, and on a busy machine preempted calls may keep input 0 away from
    # the consumer (two calls over 1 ms leave an input to the workers for good): a few attempts.
    pauses = []
    for _ in range(PAUSE_ATTEMPTS):
        entry, batches = bounded(_entry_and_values, dataset, 1)
        assert entry["elements"] == total - 1, entry
        assert sorted(int(value) for batch in batches for value in batch) == expected
        pauses.append(entry["inline_pauses"])
        if not sloppy:
            assert entry["inline_pauses"] == 0, entry
        elif entry["inline_pauses"] >= 1:
            break
    if sloppy:
        assert max(pauses) >= 1, pauses
