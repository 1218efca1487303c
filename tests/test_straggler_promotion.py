"""Sloppy mode lets stragglers waiting in staging into the cycle ahead of faster inputs.

The slowest inputs decide when a finite pipeline ends, so a slow input that waits in
staging behind fast ones only delays the end. Deterministic mode keeps the input order.

One slot (`cycle_length=1`) and two staged inputs: input 0 holds the slot for 30 x 10 ms,
input 1 (staging's front) is long and costs 10 ms per element, input 2 is a straggler
(100 ms per element). Staged inputs give elements while the slot's input sleeps (see
test_sloppy_staging.py), so every input advances from the start; the rule shows when input
0 ends at ~300 ms: the straggler, measured by then (two calls, ~200 ms) and 10 times costlier
than input 1 (a call preempted for up to 15 ms on a busy machine still leaves it more than 4
times costlier), takes the slot ahead of input 1, which then enters when the straggler ends
(~0.9 s), well before its own end (~1.5 s).
"""

from __future__ import annotations

import collections
import types
from typing import Any, Dict, List, Tuple

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

from pipelines import bounded, live_stats_ids, run_session_until_end, the_new_stats_entry, to_python, SLOPPY_MODES

pytestmark = pytest.mark.usefixtures("hang_guard")

SIZES = (30, 150, 8)
LATENCIES_US = (10_000, 10_000, 100_000)
NESTED = [list(range(1000 * index, 1000 * index + size)) for index, size in enumerate(SIZES)]
EVERYTHING = sorted(value for values in NESTED for value in values)
DETERMINISTIC_ORDER = NESTED[0] + NESTED[1] + NESTED[2]


def _paced_map_func(index: tf.Tensor) -> tf.data.Dataset:
    size = tf.gather(tf.constant(SIZES, tf.int64), index)
    latency = tf.gather(tf.constant(LATENCIES_US, tf.int64), index)
    # The sleep comes first in the nested pipeline (see bench/README.md).
    return tf.data.Dataset.range(index * 1000, index * 1000 + size).apply(testing.sleep(latency))


def _dataset(tfi: types.ModuleType, sloppy: bool, symbolic: bool = False) -> tf.data.Dataset:
    dataset = tf.data.Dataset.range(len(SIZES)).apply(tfi.parallel_interleave(
        _paced_map_func, cycle_length=1, sloppy=sloppy, prefetch_input_elements=2))
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    options.experimental_symbolic_checkpoint = symbolic
    return dataset.with_options(options)


def _check_sloppy(values: List[int]) -> None:
    """Every element once, and each input's elements in their order."""
    assert sorted(values) == EVERYTHING
    for nested in NESTED:
        assert [value for value in values if value in nested] == nested


def _drain_with_stats(tfi: types.ModuleType, dataset: tf.data.Dataset) -> Tuple[List[int], Dict[str, Any]]:
    before = live_stats_ids(tfi)
    iterator = iter(dataset)
    # Stop one short of the end: the iterator leaves stats() once it has ended.
    order = [to_python(next(iterator)) for _ in range(sum(SIZES) - 1)]
    entry = the_new_stats_entry(tfi, before)
    order += [to_python(element) for element in iterator]
    return order, entry


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_stragglers_enter_the_cycle_first_only_in_sloppy_mode(tfi: types.ModuleType, sloppy: bool) -> None:
    order, entry = bounded(_drain_with_stats, tfi, _dataset(tfi, sloppy))
    if sloppy:
        _check_sloppy(order)
        assert entry["promoted_inputs"] == 1, entry
        # Every input advances at its own pace: the straggler ends first.
        assert order.index(NESTED[2][-1]) < order.index(NESTED[1][-1])
    else:
        assert order == DETERMINISTIC_ORDER
        assert entry["promoted_inputs"] == 0
        assert entry["staged_elements"] == 0


def test_promotion_in_a_tf_function_and_a_graph(tfi: types.ModuleType) -> None:
    dataset = _dataset(tfi, sloppy=True)

    @tf.function
    def all_elements() -> tf.Tensor:
        return dataset.batch(sum(SIZES)).get_single_element()

    _check_sloppy([int(value) for value in bounded(all_elements)])

    def in_graph() -> List[int]:
        with tf.Graph().as_default():
            next_element = tf.compat.v1.data.make_one_shot_iterator(_dataset(tfi, sloppy=True)).get_next()
            with tf.compat.v1.Session() as session:
                return run_session_until_end(session, next_element)

    _check_sloppy(bounded(in_graph))


# Saved before the promotion (20), around it (60: input 0 has about ended, the straggler
# takes the slot) and after it (120: the straggler holds the slot ahead of its turn).
@pytest.mark.parametrize("symbolic", [False, True], ids=["full", "symbolic"])
@pytest.mark.parametrize("taken", [20, 60, 120])
def test_checkpoint_after_a_promotion(tfi: types.ModuleType, taken: int, symbolic: bool, tmp_path: Any) -> None:
    """The restored iterator delivers exactly the elements not yet returned, each once and
    in order within its input (sloppy mode promises no more: the restored iterator
    measures its inputs afresh)."""

    def go() -> Dict[str, Any]:
        iterator = iter(_dataset(tfi, sloppy=True, symbolic=symbolic))
        head = [int(next(iterator)) for _ in range(taken)]
        path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "ckpt"))
        restored_iterator = iter(_dataset(tfi, sloppy=True, symbolic=symbolic))
        tf.train.Checkpoint(iterator=restored_iterator).read(path).assert_consumed()
        rest = [int(element) for element in restored_iterator]
        return {"head": head, "rest": rest}

    result = bounded(go)
    head, rest = result["head"], result["rest"]
    _check_sloppy(head + rest)
    assert collections.Counter(head + rest) == collections.Counter(EVERYTHING)
