"""Argument validation, non-Dataset map_func, and errors delivered in place."""

from __future__ import annotations

import collections
import contextlib
import re
import types
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import numpy as np
import pytest
import tensorflow as tf

from pipelines import STRIDE, Failure, builtin_order_matches, collect, collect_in_mode, collect_with_errors, \
    nested_values, run_session_until_end, sized_input, sized_map_func
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")

VALID_ARGUMENTS = dict(cycle_length=2, block_length=1, buffer_output_elements=None, prefetch_input_elements=None)
BAD_ARGUMENTS = [
    ("cycle_length", 0), ("cycle_length", -3),
    ("block_length", 0), ("block_length", -4),
    ("buffer_output_elements", 0), ("buffer_output_elements", -5),
    ("prefetch_input_elements", -1), ("prefetch_input_elements", -6),
]
BAD_ARGUMENT_IDS = [f"{name}={value}" for name, value in BAD_ARGUMENTS]
INVALID = Failure("InvalidArgumentError")


def _assert_names_argument(error: BaseException, name: str, value: int) -> None:
    """The message names the argument and shows the bad value as a number of its own."""
    message = str(error)
    assert name in message, message
    # Drop TensorFlow's decorations ({{function_node ...device:CPU:0}}, [Op:...]), which contain digits.
    message = re.sub(r"\{\{.*?\}\}|\[Op:.*?\]|\[\[.*?\]\]", " ", message, flags=re.S)
    numbers = re.findall(r"(?<![\w.])-?\d+(?!\w|\.\d)", message)
    assert str(value) in numbers, message


def _arguments(name: str, value: Any) -> Dict[str, Any]:
    return dict(VALID_ARGUMENTS, **{name: value})


@pytest.mark.parametrize("name, value", BAD_ARGUMENTS, ids=BAD_ARGUMENT_IDS)
@pytest.mark.parametrize("as_tensor", [False, True], ids=["int", "tensor"])
def test_bad_argument_eager_raises_at_apply(tfi: types.ModuleType, name: str, value: int, as_tensor: bool) -> None:
    transformation = tfi.parallel_interleave(sized_map_func([1, 2]),
                                             **_arguments(name, tf.constant(value, tf.int64) if as_tensor else value))
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        sized_input([1, 2]).apply(transformation)
    _assert_names_argument(raised.value, name, value)


@pytest.mark.parametrize("name, value", BAD_ARGUMENTS, ids=BAD_ARGUMENT_IDS)
def test_bad_argument_graph_int(tfi: types.ModuleType, name: str, value: int) -> None:
    with tf.Graph().as_default():
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            dataset = sized_input([1, 2]).apply(tfi.parallel_interleave(sized_map_func([1, 2]),
                                                                        **_arguments(name, value)))
            next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
            with tf.compat.v1.Session() as session:
                session.run(next_element)
    _assert_names_argument(raised.value, name, value)


@pytest.mark.parametrize("name, value", BAD_ARGUMENTS, ids=BAD_ARGUMENT_IDS)
def test_bad_argument_graph_placeholder(tfi: types.ModuleType, name: str, value: int) -> None:
    with tf.Graph().as_default():
        fed = tf.compat.v1.placeholder(tf.int64, [])
        dataset = sized_input([1, 2]).apply(tfi.parallel_interleave(sized_map_func([1, 2]), **_arguments(name, fed)))
        iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        next_element = iterator.get_next()
        with tf.compat.v1.Session() as session:
            with pytest.raises(tf.errors.InvalidArgumentError) as raised:
                session.run(iterator.initializer, feed_dict={fed: value})
                session.run(next_element)
            _assert_names_argument(raised.value, name, value)
            # The same graph still works with a good value.
            session.run(iterator.initializer, feed_dict={fed: 3 if name != "prefetch_input_elements" else 0})
            assert sorted(run_session_until_end(session, next_element)) == [0, 1000, 1001]


@pytest.mark.parametrize("name, value", BAD_ARGUMENTS, ids=BAD_ARGUMENT_IDS)
def test_bad_argument_tf_function(tfi: types.ModuleType, name: str, value: int) -> None:
    @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
    def interleave_all(argument: tf.Tensor) -> tf.Tensor:
        dataset = sized_input([1, 2]).apply(tfi.parallel_interleave(sized_map_func([1, 2]),
                                                                    **_arguments(name, argument)))
        return dataset.batch(10).get_single_element()

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        interleave_all(tf.constant(value, tf.int64))
    _assert_names_argument(raised.value, name, value)


NON_SCALARS = [("cycle_length", [2, 3]), ("block_length", [[1]]), ("buffer_output_elements", [2, 2]),
               ("prefetch_input_elements", [0, 1, 2])]
READ_MODES = ["eager", "tf_function", "graph"]


def _error_of_argument(tfi: types.ModuleType, name: str, value: Any, dtype: tf.DType, mode: str) -> str:
    """Applies the transformation with ``name=value`` and reads it: the message of the error raised.

    Eager: a constant, checked at ``apply``. Otherwise a ``tf.function`` argument or a TF1 placeholder
    of unknown shape, so that only the kernel sees the value.
    """
    def apply(argument: Any) -> tf.data.Dataset:
        return sized_input([1, 2]).apply(tfi.parallel_interleave(sized_map_func([1, 2]),
                                                                 **_arguments(name, argument)))

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        if mode == "eager":
            apply(tf.constant(value, dtype))
        elif mode == "tf_function":
            tf.function(lambda argument: apply(argument).reduce(tf.constant(0, tf.int64), lambda a, b: a + b),
                        input_signature=[tf.TensorSpec(None, dtype)])(tf.constant(value, dtype))
        else:
            with tf.Graph().as_default():
                fed = tf.compat.v1.placeholder(dtype, None)
                iterator = tf.compat.v1.data.make_initializable_iterator(apply(fed))
                with tf.compat.v1.Session() as session:
                    session.run(iterator.initializer, feed_dict={fed: value})
    return str(raised.value)


@pytest.mark.parametrize("name, value", NON_SCALARS, ids=[name for name, _ in NON_SCALARS])
@pytest.mark.parametrize("mode", READ_MODES)
def test_non_scalar_argument_is_named_with_its_value(tfi: types.ModuleType, name: str, value: Any,
                                                      mode: str) -> None:
    message = _error_of_argument(tfi, name, value, tf.int64, mode)
    assert f"`{name}` must be a scalar" in message, message
    assert str(np.array(value)) in message, message


@pytest.mark.parametrize("mode", READ_MODES)
def test_uint64_beyond_int64_is_named_not_wrapped_around(tfi: types.ModuleType, mode: str) -> None:
    """2**64 - 1 would wrap around to -1 as an int64: the error shows the value that was passed."""
    message = _error_of_argument(tfi, "cycle_length", 2**64 - 1, tf.uint64, mode)
    assert "`cycle_length` must fit in int64" in message, message
    assert str(2**64 - 1) in message, message
    assert "-1" not in message, message


@pytest.mark.parametrize("arguments", [
    pytest.param(dict(cycle_length=np.array(2)), id="array-cycle_length"),
    pytest.param(dict(cycle_length=np.array(3), block_length=np.array(2), buffer_output_elements=np.array(1),
                      prefetch_input_elements=np.array(0)), id="array-every-count"),
    pytest.param(dict(cycle_length=2, sloppy=0), id="sloppy=0"),
    pytest.param(dict(cycle_length=2, sloppy=1), id="sloppy=1"),
])
@pytest.mark.parametrize("mode", READ_MODES)
def test_arguments_the_builtin_converts_work_alike(tfi: types.ModuleType, builtin_interleave: Callable,
                                                   arguments: Dict[str, Any], mode: str) -> None:
    """Existing pipelines change only their import: 0-d arrays and 1/0 for ``sloppy`` work as in the built-in."""
    sizes = [3, 1, 4, 2, 5]
    counts = {name: int(value) for name, value in arguments.items() if name != "sloppy"}
    expected = interleave_order(nested_values(sizes), **counts)
    ours = collect_in_mode(
        lambda: sized_input(sizes).apply(tfi.parallel_interleave(sized_map_func(sizes), **arguments)), mode)
    theirs = collect(sized_input(sizes).apply(builtin_interleave(sized_map_func(sizes), **arguments)))
    assert sorted(theirs) == sorted(expected)
    if arguments.get("sloppy"):
        assert sorted(ours) == sorted(expected)
    else:
        assert ours == expected


@pytest.mark.parametrize("sloppy", [2, -1, "true", np.int64(3)], ids=["2", "-1", "str", "numpy-3"])
def test_sloppy_other_than_bool_or_one_or_zero_is_a_type_error(tfi: types.ModuleType, sloppy: Any) -> None:
    with pytest.raises(TypeError, match=rf"`sloppy`.*{type(sloppy).__name__}: {re.escape(repr(sloppy))}"):
        tfi.parallel_interleave(sized_map_func([1]), cycle_length=2, sloppy=sloppy)


def _returns_none(index: tf.Tensor) -> None:
    del index


def _returns_list(index: tf.Tensor) -> List[tf.Tensor]:
    return [index, index]


@pytest.mark.parametrize("map_func, described", [
    pytest.param(_returns_none, "it returned None.", id="None"),
    pytest.param(_returns_list, "it returned a tuple or list of 2 values (a tf.Tensor", id="list"),
])
def test_map_func_result_is_described_as_returned(tfi: types.ModuleType, map_func: Callable,
                                                  described: str) -> None:
    """Tracing turns ``None`` into a ``NoneTensorSpec`` and a list into a tuple: the message says what was returned."""
    with pytest.raises(TypeError) as raised:
        tf.data.Dataset.range(3).apply(tfi.parallel_interleave(map_func, cycle_length=2))
    assert described in str(raised.value)


@pytest.mark.parametrize("map_func, returned_names", [
    pytest.param(lambda x: x, {"tensor"}, id="tensor"),
    pytest.param(lambda x: 3, {"tensor", "int"}, id="python-int"),
    pytest.param(lambda x: (tf.data.Dataset.range(x), x), {"tuple"}, id="tuple"),
    pytest.param(lambda x: {"nested": tf.data.Dataset.range(x)}, {"dict"}, id="dict"),
])
@pytest.mark.parametrize("graph_mode", [False, True], ids=["eager", "graph"])
def test_map_func_must_return_dataset(tfi: types.ModuleType, map_func: Callable, returned_names: Set[str],
                                      graph_mode: bool) -> None:
    with tf.Graph().as_default() if graph_mode else contextlib.nullcontext():
        with pytest.raises(TypeError) as raised:
            tf.data.Dataset.range(3).apply(tfi.parallel_interleave(map_func, cycle_length=2))
    message = str(raised.value).lower()
    assert "dataset" in message
    assert any(name in message for name in returned_names), message


@pytest.mark.parametrize("map_func", ["files", None, 3], ids=["str", "None", "int"])
def test_map_func_must_be_callable(tfi: types.ModuleType, map_func: object) -> None:
    """The built-in's type (``ValueError``, at ``apply``), naming the argument and the value."""
    transformation = tfi.parallel_interleave(map_func, cycle_length=2)
    with pytest.raises(ValueError, match=rf"`map_func`.*{type(map_func).__name__}: {map_func!r}"):
        tf.data.Dataset.range(3).apply(transformation)


# --- Errors delivered at their position -------------------------------------------------------------------------

def _text_nested(sizes: Sequence[int], bad: FrozenSet[Tuple[int, int]]) -> List[List[str]]:
    """Decimal strings of the sized values, with "bad" at the (input, position) pairs in ``bad``."""
    return [["bad" if (index, offset) in bad else str(STRIDE * index + offset) for offset in range(size)]
            for index, size in enumerate(sizes)]


def _parsing_map_func(texts: List[List[str]]) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """Maps input ``i`` to ``texts[i]`` parsed as numbers: each "bad" entry fails to parse."""
    flat = [text for row in texts for text in row]
    starts = [sum(len(row) for row in texts[:index]) for index in range(len(texts))]
    sizes = [len(row) for row in texts]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        start = tf.gather(tf.constant(starts, tf.int64), index)
        size = tf.gather(tf.constant(sizes, tf.int64), index)
        row = tf.slice(tf.constant(flat, tf.string), [start], [size])
        return tf.data.Dataset.from_tensor_slices(row).map(lambda text: tf.strings.to_number(text, tf.int64))

    return map_func


def _assert_builtin_order(theirs: tf.data.Dataset, expected: List[Any], block_length: int) -> None:
    """The built-in op delivers the same elements and errors in the same order (SPEC section 2)."""
    matched, observed = builtin_order_matches(theirs, expected, block_length)
    assert matched, f"model {expected} vs built-in runs {observed}"


def _model_nested(texts: List[List[str]]) -> List[List[Any]]:
    return [[INVALID if text == "bad" else int(text) for text in row] for row in texts]


NESTED_ERROR_CASES = [
    # (sizes, bad (input, position) pairs, cycle_length, prefetch_input_elements)
    pytest.param((3, 3, 3), {(1, 1)}, 2, None, id="middle"),
    pytest.param((2, 4, 1, 3, 2), {(0, 0), (3, 2), (4, 1)}, 2, 0, id="several"),
    pytest.param((4, 4), {(0, 0), (0, 1), (0, 2), (0, 3)}, 2, 1, id="whole-nested"),
    pytest.param((1, 2, 3, 4, 5, 0, 2), {(6, 1), (2, 0)}, 3, 2, id="refilled-slots"),
]


@pytest.mark.parametrize("sizes, bad, cycle_length, prefetch", NESTED_ERROR_CASES)
@pytest.mark.parametrize("block_length", [1, 2])
def test_nested_error_delivered_in_place(tfi: types.ModuleType, builtin_interleave: Callable,
                                         sizes: Tuple[int, ...], bad: Set[Tuple[int, int]], cycle_length: int,
                                         prefetch: Optional[int], block_length: int) -> None:
    texts = _text_nested(sizes, frozenset(bad))
    expected = interleave_order(_model_nested(texts), cycle_length, block_length, prefetch)
    kwargs = dict(cycle_length=cycle_length, block_length=block_length, prefetch_input_elements=prefetch)
    ours = sized_input(sizes).apply(tfi.parallel_interleave(_parsing_map_func(texts), **kwargs))
    assert collect_with_errors(ours) == expected
    theirs = sized_input(sizes).apply(builtin_interleave(_parsing_map_func(texts), **kwargs))
    _assert_builtin_order(theirs, expected, block_length)


@pytest.mark.parametrize("sizes, bad, cycle_length, prefetch", NESTED_ERROR_CASES)
def test_nested_error_sloppy_loses_nothing(tfi: types.ModuleType, sizes: Tuple[int, ...],
                                           bad: Set[Tuple[int, int]], cycle_length: int,
                                           prefetch: Optional[int]) -> None:
    texts = _text_nested(sizes, frozenset(bad))
    expected = interleave_order(_model_nested(texts), cycle_length, 1, prefetch)
    dataset = sized_input(sizes).apply(tfi.parallel_interleave(
        _parsing_map_func(texts), cycle_length, sloppy=True, prefetch_input_elements=prefetch))
    assert collections.Counter(collect_with_errors(dataset)) == collections.Counter(expected)


def test_ignore_errors_after_op_keeps_every_good_element(tfi: types.ModuleType) -> None:
    sizes, bad = (2, 4, 1, 3, 2), frozenset({(0, 0), (3, 2), (4, 1)})
    texts = _text_nested(sizes, bad)
    expected = [value for value in interleave_order(_model_nested(texts), 2, 2, 1) if value != INVALID]
    dataset = sized_input(sizes).apply(tfi.parallel_interleave(_parsing_map_func(texts), 2, 2,
                                                               prefetch_input_elements=1))
    assert collect(dataset.ignore_errors()) == expected


def _nested_failing_at(sizes: Sequence[int], failing: Set[int]) -> List[List[Any]]:
    """Model input: one error in place of each nested dataset in ``failing``."""
    return [[INVALID] if index in failing else [STRIDE * index + k for k in range(size)]
            for index, size in enumerate(sizes)]


def _map_func_failing_for(sizes: Sequence[int], failing: FrozenSet[int]) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """``sized_map_func(sizes)``, except that the call for each input in ``failing`` fails.

    The failure is a parse error of the looked-up size, so no control flow is involved.
    """
    size_texts = ["bad" if index in failing else str(size) for index, size in enumerate(sizes)]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.strings.to_number(tf.gather(tf.constant(size_texts), index), tf.int64)
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size)

    return map_func


@pytest.mark.parametrize("sizes, failing, cycle_length, prefetch", [
    pytest.param((2, 2, 2, 2, 2), {2}, 2, 0, id="refill"),
    pytest.param((2, 2, 2, 2, 2), {0}, 2, None, id="first"),
    pytest.param((3, 1, 2, 2, 4, 1), {1, 4, 5}, 3, 1, id="several"),
    pytest.param((4, 4, 2, 1), {0, 1}, 4, None, id="first-two-of-the-cycle"),
])
@pytest.mark.parametrize("block_length", [1, 3])
def test_map_func_error_delivered_in_place(tfi: types.ModuleType, builtin_interleave: Callable,
                                           sizes: Tuple[int, ...], failing: Set[int], cycle_length: int,
                                           prefetch: Optional[int], block_length: int) -> None:
    expected = interleave_order(_nested_failing_at(sizes, failing), cycle_length, block_length, prefetch)
    kwargs = dict(cycle_length=cycle_length, block_length=block_length, prefetch_input_elements=prefetch)
    map_func = _map_func_failing_for(sizes, frozenset(failing))
    assert collect_with_errors(sized_input(sizes).apply(tfi.parallel_interleave(map_func, **kwargs))) == expected
    theirs = sized_input(sizes).apply(builtin_interleave(map_func, **kwargs))
    _assert_builtin_order(theirs, expected, block_length)


def _failing_input(sizes: Sequence[int], failing: FrozenSet[int]) -> tf.data.Dataset:
    """``sized_input(sizes)`` whose elements at ``failing`` are parse errors."""
    texts = ["bad" if index in failing else str(index) for index in range(len(sizes))]
    return tf.data.Dataset.from_tensor_slices(texts).map(lambda text: tf.strings.to_number(text, tf.int64))


@pytest.mark.parametrize("sizes, failing, cycle_length, prefetch", [
    pytest.param((2, 2, 2, 2, 2), {2}, 2, 0, id="refill"),
    pytest.param((2, 2, 2, 2, 2), {2}, 2, None, id="at-start"),
    pytest.param((2, 2, 2, 2, 2), {0}, 2, 1, id="first"),
    pytest.param((1, 3, 2, 0, 2, 3, 1), {3, 4, 6}, 3, 1, id="several"),
])
@pytest.mark.parametrize("block_length", [1, 2])
def test_input_error_delivered_in_place(tfi: types.ModuleType, builtin_interleave: Callable,
                                        sizes: Tuple[int, ...], failing: Set[int], cycle_length: int,
                                        prefetch: Optional[int], block_length: int) -> None:
    expected = interleave_order(_nested_failing_at(sizes, failing), cycle_length, block_length, prefetch)
    kwargs = dict(cycle_length=cycle_length, block_length=block_length, prefetch_input_elements=prefetch)
    input_dataset = _failing_input(sizes, frozenset(failing))
    ours = input_dataset.apply(tfi.parallel_interleave(sized_map_func(sizes), **kwargs))
    assert collect_with_errors(ours) == expected
    theirs = input_dataset.apply(builtin_interleave(sized_map_func(sizes), **kwargs))
    _assert_builtin_order(theirs, expected, block_length)


def test_errors_in_graph_mode(tfi: types.ModuleType) -> None:
    sizes, bad = (3, 2, 3), frozenset({(0, 1), (2, 2)})
    texts = _text_nested(sizes, bad)
    expected = interleave_order(_model_nested(texts), 2, 1, None)
    with tf.Graph().as_default():
        dataset = sized_input(sizes).apply(tfi.parallel_interleave(_parsing_map_func(texts), 2))
        next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        observed: List[Any] = []
        with tf.compat.v1.Session() as session:
            while len(observed) <= len(expected):
                try:
                    observed.append(int(session.run(next_element)))
                except tf.errors.OutOfRangeError:
                    break
                except tf.errors.OpError as error:
                    observed.append(Failure(type(error).__name__))
    assert observed == expected
