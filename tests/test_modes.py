"""The same pipeline in eager mode, inside tf.function, and in TF1 graph mode."""

from __future__ import annotations

import types
from typing import List, Optional, Sequence

import pytest
import tensorflow as tf

from pipelines import collect, collect_in_tf_function, nested_values, run_session_until_end, sized_input, \
    sized_map_func
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")

SIZES = (3, 0, 5, 1, 4, 2, 6)
# (cycle_length, block_length, buffer_output_elements, prefetch_input_elements); None means the default.
PARAMETERS = [(2, 1, None, None), (3, 2, 1, 0), (4, 3, None, 1), (1, 2, 2, None), (8, 1, 3, 4)]
PARAMETER_IDS = [f"c{c}_b{b}_o{o}_p{p}" for c, b, o, p in PARAMETERS]


def _expected(cycle_length: int, block_length: int, prefetch: Optional[int], sizes: Sequence[int] = SIZES
              ) -> List[int]:
    return interleave_order(nested_values(sizes), cycle_length, block_length, prefetch)


@pytest.mark.parametrize("cycle_length, block_length, buffer, prefetch", PARAMETERS, ids=PARAMETER_IDS)
def test_eager(tfi: types.ModuleType, cycle_length: int, block_length: int, buffer: Optional[int],
               prefetch: Optional[int]) -> None:
    dataset = sized_input(SIZES).apply(
        tfi.parallel_interleave(sized_map_func(SIZES), cycle_length, block_length,
                                buffer_output_elements=buffer, prefetch_input_elements=prefetch))
    assert collect(dataset) == _expected(cycle_length, block_length, prefetch)


@pytest.mark.parametrize("cycle_length, block_length, buffer, prefetch", PARAMETERS, ids=PARAMETER_IDS)
def test_tf_function_with_tensor_arguments(tfi: types.ModuleType, cycle_length: int, block_length: int,
                                           buffer: Optional[int], prefetch: Optional[int]) -> None:
    scalar = tf.TensorSpec([], tf.int64)

    @tf.function(input_signature=[scalar, scalar])
    def interleave_all(cycle: tf.Tensor, block: tf.Tensor) -> tf.Tensor:
        # buffer/prefetch stay None here when the case uses defaults: then they are computed from tensors.
        dataset = sized_input(SIZES).apply(
            tfi.parallel_interleave(sized_map_func(SIZES), cycle, block, buffer_output_elements=buffer,
                                    prefetch_input_elements=prefetch))
        return dataset.batch(1000).get_single_element()

    result = interleave_all(tf.constant(cycle_length, tf.int64), tf.constant(block_length, tf.int64))
    assert result.numpy().tolist() == _expected(cycle_length, block_length, prefetch)


def test_tf_function_traced_once_serves_many_arguments(tfi: types.ModuleType) -> None:
    scalar = tf.TensorSpec([], tf.int64)

    @tf.function(input_signature=[scalar] * 4)
    def interleave_all(cycle: tf.Tensor, block: tf.Tensor, buffer: tf.Tensor, prefetch: tf.Tensor) -> tf.Tensor:
        dataset = sized_input(SIZES).apply(
            tfi.parallel_interleave(sized_map_func(SIZES), cycle, block, buffer_output_elements=buffer,
                                    prefetch_input_elements=prefetch))
        return dataset.batch(1000).get_single_element()

    for cycle_length, block_length, buffer, prefetch in [(2, 1, 1, 0), (3, 2, 2, 1), (5, 4, 1, 3)]:
        result = interleave_all(*(tf.constant(v, tf.int64) for v in (cycle_length, block_length, buffer, prefetch)))
        assert result.numpy().tolist() == _expected(cycle_length, block_length, prefetch)
    assert interleave_all.experimental_get_tracing_count() == 1


def test_dataset_iterated_inside_tf_function(tfi: types.ModuleType) -> None:
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), 3, 2))

    assert collect_in_tf_function(dataset) == _expected(3, 2, None)


def test_iterator_stepped_inside_tf_function(tfi: types.ModuleType) -> None:
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), 2, 3))
    iterator = iter(dataset)

    @tf.function
    def next_value() -> tf.Tensor:
        return next(iterator)

    expected = _expected(2, 3, None)
    assert [int(next_value()) for _ in expected] == expected


@pytest.mark.parametrize("cycle_length, block_length, buffer, prefetch", PARAMETERS, ids=PARAMETER_IDS)
def test_graph_one_shot_iterator(tfi: types.ModuleType, cycle_length: int, block_length: int,
                                 buffer: Optional[int], prefetch: Optional[int]) -> None:
    with tf.Graph().as_default():
        dataset = sized_input(SIZES).apply(
            tfi.parallel_interleave(sized_map_func(SIZES), cycle_length, block_length,
                                    buffer_output_elements=buffer, prefetch_input_elements=prefetch))
        next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        with tf.compat.v1.Session() as session:
            assert run_session_until_end(session, next_element) == _expected(cycle_length, block_length, prefetch)


def test_graph_initializable_iterator_with_placeholders(tfi: types.ModuleType) -> None:
    with tf.Graph().as_default():
        cycle = tf.compat.v1.placeholder(tf.int64, [], name="cycle_length")
        block = tf.compat.v1.placeholder(tf.int64, [], name="block_length")
        # Default buffer_output_elements / prefetch_input_elements computed from placeholders.
        dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), cycle, block))
        iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        next_element = iterator.get_next()
        with tf.compat.v1.Session() as session:
            for cycle_length, block_length in [(2, 2), (3, 1), (1, 4), (5, 3), (2, 2)]:
                session.run(iterator.initializer, feed_dict={cycle: cycle_length, block: block_length})
                assert run_session_until_end(session, next_element) == _expected(cycle_length, block_length,
                                                                                  None)


def test_graph_placeholders_for_every_argument(tfi: types.ModuleType) -> None:
    with tf.Graph().as_default():
        names = ("cycle_length", "block_length", "buffer_output_elements", "prefetch_input_elements")
        feeds = {name: tf.compat.v1.placeholder(tf.int64, [], name=name) for name in names}
        dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), **feeds))
        iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        next_element = iterator.get_next()
        with tf.compat.v1.Session() as session:
            for values in [(3, 2, 1, 0), (2, 1, 3, 4), (4, 4, 2, 2)]:
                session.run(iterator.initializer, feed_dict=dict(zip(feeds.values(), values)))
                cycle_length, block_length, _, prefetch = values
                assert run_session_until_end(session, next_element) == _expected(cycle_length, block_length,
                                                                                  prefetch)


def test_graph_abandoned_mid_stream_then_reinitialized(tfi: types.ModuleType) -> None:
    with tf.Graph().as_default():
        cycle = tf.compat.v1.placeholder(tf.int64, [])
        dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), cycle, 2))
        iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        next_element = iterator.get_next()
        with tf.compat.v1.Session() as session:
            session.run(iterator.initializer, feed_dict={cycle: 3})
            assert [session.run(next_element) for _ in range(4)] == _expected(3, 2, None)[:4]
            session.run(iterator.initializer, feed_dict={cycle: 2})
            assert run_session_until_end(session, next_element) == _expected(2, 2, None)
