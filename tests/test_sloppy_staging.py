"""Sloppy mode takes staged inputs' elements while the cycle has none ready.

Staged inputs (``prefetch_input_elements``) are open and fill their buffers
anyway. When no input of the cycle has an element ready, a sloppy iterator
emits a staged input's element instead of waiting; a staged input that ends
before its turn gives its seat to the next input. Deterministic mode keeps
the exact order. The elements, the buffers' bounds and checkpoints are as
before: only the order changes, which sloppy mode does not promise.
"""

from __future__ import annotations

import collections
import types
from typing import Any, Dict, List, Sequence

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

from pipelines import READ_MODES, Straggler, bounded, collect_in_mode, drain_holding_straggler, \
    drain_with_late_straggler, live_stats_ids, nested_values, run_session_until_end, sized_input, take_with_stats, the_new_stats_entry, to_python, \
    SLOPPY_MODES
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")


def _dataset(tfi: types.ModuleType, sizes: Sequence[int], straggler: Straggler, held: int, sloppy: bool,
             cycle_length: int, prefetch_input_elements: int, buffer_output_elements: int = 2,
             held_in_open: bool = False) -> tf.data.Dataset:
    map_func = straggler.open_map_func(sizes, held) if held_in_open else straggler.map_func(sizes, held)
    return sized_input(sizes).apply(tfi.parallel_interleave(
        map_func, cycle_length, sloppy=sloppy,
        buffer_output_elements=buffer_output_elements, prefetch_input_elements=prefetch_input_elements))


@tf.function
def _take(iterator: Any, count: int) -> tf.Tensor:
    """Takes ``count`` int64 elements (or batches) of ``iterator`` in one ``tf.function`` call."""
    values = tf.TensorArray(tf.int64, size=count)
    for i in tf.range(count):
        values = values.write(i, next(iterator))
    return values.stack()


def _others(sizes: Sequence[int], held: int) -> List[int]:
    return sorted(value for index, values in enumerate(nested_values(sizes)) if index != held
                  for value in values)


SETUPS = [
    # The cycle's one slot holds the held input; two staged inputs give
    # everything they have.
    pytest.param(dict(sizes=(4, 3, 3), cycle_length=1, prefetch_input_elements=2), id="one-slot"),
    # More inputs than seats: staged inputs that end while staged make room
    # for the next ones.
    pytest.param(dict(sizes=(3,) * 7, cycle_length=1, prefetch_input_elements=2), id="seats-recycled"),
    # Two slots, one held: the other slot and staging both give.
    pytest.param(dict(sizes=(3,) * 9, cycle_length=2, prefetch_input_elements=2), id="two-slots"),
    # One element of buffer: each staged input is emptied and refilled.
    pytest.param(dict(sizes=(2, 5, 4, 1, 3), cycle_length=1, prefetch_input_elements=1,
                      buffer_output_elements=1), id="buffer-of-one"),
]


@pytest.mark.parametrize("setup", SETUPS)
def test_sloppy_takes_staged_elements_while_the_cycle_waits(tfi: types.ModuleType, setup: Dict[str, Any]
                                                            ) -> None:
    sizes = setup["sizes"]
    straggler = Straggler()
    dataset = _dataset(tfi, straggler=straggler, held=0, sloppy=True, **setup)
    others = _others(sizes, held=0)
    before, after = bounded(drain_holding_straggler, dataset, straggler, len(others))
    assert not straggler.timed_out, "sloppy mode waited for the cycle while staged inputs had elements"
    assert sorted(before) == others
    assert after == nested_values(sizes)[0]


@pytest.mark.parametrize("setup", SETUPS)
def test_sloppy_takes_staged_elements_while_a_cycle_input_opens(tfi: types.ModuleType, setup: Dict[str, Any]
                                                                ) -> None:
    # An open under way blocks the cycle like a long call: map_func of input
    # 0 waits before its dataset exists, and the staged inputs give meanwhile.
    sizes = setup["sizes"]
    straggler = Straggler()
    dataset = _dataset(tfi, straggler=straggler, held=0, sloppy=True, held_in_open=True, **setup)
    others = _others(sizes, held=0)
    before, after = bounded(drain_holding_straggler, dataset, straggler, len(others))
    assert not straggler.timed_out, "sloppy mode waited for an opening input while staged inputs had elements"
    assert sorted(before) == others
    assert after == nested_values(sizes)[0]


@pytest.mark.parametrize("setup", SETUPS)
def test_deterministic_keeps_the_order(tfi: types.ModuleType, setup: Dict[str, Any]) -> None:
    sizes = setup["sizes"]
    straggler = Straggler()
    dataset = _dataset(tfi, straggler=straggler, held=0, sloppy=False, **setup)
    order = bounded(drain_with_late_straggler, dataset, straggler)
    assert order == interleave_order(nested_values(sizes), setup["cycle_length"], 1,
                                     setup["prefetch_input_elements"])


def test_stats_count_staged_elements(tfi: types.ModuleType) -> None:
    sizes = (4, 3, 3)
    straggler = Straggler()
    dataset = _dataset(tfi, sizes, straggler, held=0, sloppy=True, cycle_length=1, prefetch_input_elements=2)

    def go() -> Dict[str, Any]:
        before = live_stats_ids(tfi)
        iterator = iter(dataset)
        try:
            taken = [int(next(iterator)) for _ in range(6)]
            entry = the_new_stats_entry(tfi, before)
        finally:
            straggler.release()
        assert sorted(taken) == _others(sizes, held=0)
        rest = [int(value) for value in iterator]
        assert rest == nested_values(sizes)[0]
        return entry

    entry = bounded(go)
    assert not straggler.timed_out
    assert entry["staged_elements"] == 6, entry


def test_stats_count_no_staged_elements_when_deterministic(tfi: types.ModuleType) -> None:
    sizes = (4, 3, 3)
    straggler = Straggler()
    dataset = _dataset(tfi, sizes, straggler, held=0, sloppy=False, cycle_length=1, prefetch_input_elements=2)

    def go() -> Dict[str, Any]:
        before = live_stats_ids(tfi)
        timer = straggler.release_later(0.2)
        try:
            iterator = iter(dataset)
            values = [int(value) for value in iterator]
            entry = the_new_stats_entry(tfi, before)
        finally:
            timer.cancel()
            straggler.release()
        assert values == interleave_order(nested_values(sizes), 1, 1, 2)
        return entry

    assert bounded(go)["staged_elements"] == 0


@pytest.mark.parametrize("symbolic", [False, True], ids=["full", "symbolic"])
def test_checkpoint_after_staged_elements_keeps_each_element_once(tfi: types.ModuleType, tmp_path,
                                                                   symbolic: bool) -> None:
    """A checkpoint taken after staged inputs gave elements (some of them
    ended while staged) restores exactly the elements not yet returned."""
    sizes = (5, 2, 4, 3, 4)
    straggler = Straggler()
    dataset = _dataset(tfi, sizes, straggler, held=0, sloppy=True, cycle_length=1, prefetch_input_elements=2)
    options = tf.data.Options()
    options.experimental_symbolic_checkpoint = symbolic
    # The gate is a `tf.py_function`: state outside TensorFlow.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    dataset = dataset.with_options(options)
    everything = collections.Counter(value for values in nested_values(sizes) for value in values)

    def go() -> None:
        iterator = iter(dataset)
        try:
            # Input 1 ends while staged; inputs 2 and 3 have given some.
            taken = [int(next(iterator)) for _ in range(7)]
        finally:
            straggler.release()
        assert all(value // 1000 != 0 for value in taken), taken
        checkpoint = tf.train.Checkpoint(iterator=iterator)
        path = checkpoint.save(str(tmp_path / "ckpt"))
        rest = [int(value) for value in iterator]
        assert collections.Counter(taken + rest) == everything
        restored = iter(dataset)
        tf.train.Checkpoint(iterator=restored).restore(path).assert_consumed()
        rest_after_restore = [int(value) for value in restored]
        assert collections.Counter(taken + rest_after_restore) == everything

    bounded(go)
    assert not straggler.timed_out


@pytest.mark.parametrize("held_in_open", [False, True], ids=["held-element", "held-open"])
def test_tf_function_and_graph_mode_take_staged_elements(tfi: types.ModuleType, held_in_open: bool) -> None:
    """The same in a `tf.function` loop and in a TF1 session."""
    sizes = (3, 2, 2)
    others = _others(sizes, held=0)

    straggler = Straggler()
    dataset = _dataset(tfi, sizes, straggler, held=0, sloppy=True, cycle_length=1, prefetch_input_elements=2,
                       held_in_open=held_in_open)

    def in_function() -> List[int]:
        iterator = iter(dataset)
        try:
            before = [int(value) for value in _take(iterator, len(others))]
        finally:
            straggler.release()
        return before + [int(value) for value in iterator]

    values = bounded(in_function)
    assert not straggler.timed_out
    assert sorted(values[:len(others)]) == others and values[len(others):] == nested_values(sizes)[0]

    graph_straggler = Straggler()

    def in_graph() -> List[int]:
        with tf.Graph().as_default():
            graph_dataset = _dataset(tfi, sizes, graph_straggler, held=0, sloppy=True, cycle_length=1,
                                     prefetch_input_elements=2, held_in_open=held_in_open)
            next_element = tf.compat.v1.data.make_one_shot_iterator(graph_dataset).get_next()
            with tf.compat.v1.Session() as session:
                try:
                    before = [to_python(session.run(next_element)) for _ in range(len(others))]
                finally:
                    graph_straggler.release()
                return before + run_session_until_end(session, next_element)

    values = bounded(in_graph)
    assert not graph_straggler.timed_out
    assert sorted(values[:len(others)]) == others and values[len(others):] == nested_values(sizes)[0]


# Elements that each take this long: a short call, as when an input only waits for a core. Under 1 ms on
# average and far from a 10 ms call, so the cycle is busy, not blocked.
SHORT_CALL_MICROSECONDS = 200
PER_INPUT = 200
BATCH = 10
# How many staged elements preempted calls (over 10 ms, or a few over 1 ms in a row, on a loaded machine)
# may let through; without the rule, the staged input gives nearly all of its elements while the first one
# is read.
STAGED_ALLOWANCE = PER_INPUT // 4


def _short_calls_dataset(tfi: types.ModuleType) -> tf.data.Dataset:
    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        # The sleep comes first in the nested pipeline, directly on the source.
        return tf.data.Dataset.range(index * 1000, index * 1000 + PER_INPUT).apply(
            testing.sleep(SHORT_CALL_MICROSECONDS))

    # A batch keeps the consumer quick (it asks again at once); without the injected prefetch the
    # interleave has given exactly the batches taken so far, so it is still alive before the last one.
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    return tf.data.Dataset.range(2).apply(tfi.parallel_interleave(
        map_func, 1, sloppy=True, buffer_output_elements=2, prefetch_input_elements=1)
    ).batch(BATCH).with_options(options)


@pytest.mark.parametrize("mode", READ_MODES)
def test_busy_but_not_blocked_cycle_keeps_staged_inputs_waiting(tfi: types.ModuleType, mode: str) -> None:
    """Sloppy mode reads a staged input only while the cycle blocks; an input whose calls are merely short
    keeps its turn (taking the staged input's elements then would only spread the reading over more memory)."""
    expected = sorted(list(range(PER_INPUT)) + list(range(1000, 1000 + PER_INPUT)))
    # Every batch but the last, then the stats entry, then the last batch.
    first_batches = len(expected) // BATCH - 1
    entry, batches = bounded(take_with_stats, tfi, lambda: _short_calls_dataset(tfi), first_batches, mode)
    values = [value for batch in batches for value in batch]
    assert sorted(values) == expected
    assert entry["elements"] == len(expected) - BATCH, entry
    assert entry["staged_elements"] <= STAGED_ALLOWANCE, entry


# Input 0 fails to open this many times before it reads: retry delays of 50, 100, 200 and 400 ms.
OPEN_FAILURES = 4


def _late_input_dataset(tfi: types.ModuleType, sloppy: bool) -> tf.data.Dataset:
    """Input 0 is in the cycle and waits out its retry delays; inputs 1 and 2 are staged and ready."""
    failures_left = [OPEN_FAILURES]

    def open_input(index: tf.Tensor) -> tf.Tensor:
        if int(index) == 0 and failures_left[0] > 0:
            failures_left[0] -= 1
            raise ValueError("input 0 is not there yet")
        return index

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        opened = tf.reshape(tf.py_function(open_input, [index], tf.int64), [])
        return tf.data.Dataset.range(10 * opened, 10 * opened + 3)

    return tf.data.Dataset.range(3).apply(tfi.parallel_interleave(
        map_func, cycle_length=1, sloppy=sloppy, prefetch_input_elements=2, input_retries=OPEN_FAILURES))


@pytest.mark.parametrize("mode", READ_MODES)
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_an_input_waiting_to_retry_lets_staged_inputs_give(tfi: types.ModuleType, sloppy: bool, mode: str) -> None:
    """An input waiting out a retry delay (~0.75 s in all) blocks the cycle: in sloppy mode the staged
    inputs' ready elements come meanwhile; deterministic mode keeps the order."""
    values = [int(value) for value in bounded(collect_in_mode, lambda: _late_input_dataset(tfi, sloppy), mode)]
    if not sloppy:
        assert values == [0, 1, 2, 10, 11, 12, 20, 21, 22]
        return
    assert sorted(values[:6]) == [10, 11, 12, 20, 21, 22], values
    assert values[6:] == [0, 1, 2], values
