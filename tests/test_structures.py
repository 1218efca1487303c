"""Element structures, captured state, and element_spec."""

from __future__ import annotations

import types
from typing import Any, Callable, List

import pytest
import tensorflow as tf

from pipelines import STRIDE, collect, nested_values, sized_input, sized_map_func, SLOPPY_MODES
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")

SIZES = (2, 4, 0, 3, 1)
CYCLE_LENGTH = 2
BLOCK_LENGTH = 2
MapFunc = Callable[..., tf.data.Dataset]


def _expected(transform: Callable[[int], Any], sizes=SIZES) -> List[Any]:
    """The model's order over ``sized_map_func`` values, each passed through ``transform``."""
    nested = [[transform(value) for value in values] for values in nested_values(sizes)]
    return interleave_order(nested, CYCLE_LENGTH, BLOCK_LENGTH)


def _interleave(tfi: types.ModuleType, input_dataset: tf.data.Dataset, map_func: MapFunc) -> tf.data.Dataset:
    return input_dataset.apply(tfi.parallel_interleave(map_func, CYCLE_LENGTH, BLOCK_LENGTH))


def _mapped(transform: Callable[[tf.Tensor], Any]) -> MapFunc:
    base_map_func = sized_map_func(SIZES)
    return lambda index: base_map_func(index).map(transform)


STRUCTURE_CASES = [
    pytest.param(lambda v: (v, tf.strings.as_string(v)), lambda v: (v, str(v).encode()), id="tuple"),
    pytest.param(lambda v: {"id": v, "half": tf.cast(v, tf.float32) / 2, "flag": v % 2 == 0},
                 lambda v: {"id": v, "half": v / 2, "flag": v % 2 == 0}, id="dict"),
    pytest.param(lambda v: tf.strings.as_string(v), lambda v: str(v).encode(), id="string"),
    pytest.param(lambda v: tf.range(v % STRIDE), lambda v: list(range(v % STRIDE)), id="vector-varying-length"),
    pytest.param(lambda v: (tf.fill([v % 3, 2], v), {"nested": (v,)}), lambda v: ([[v, v]] * (v % 3), {"nested": (v,)}),
                 id="tuple-of-matrix-and-dict"),
]


@pytest.mark.parametrize("transform, python_transform", STRUCTURE_CASES)
def test_element_structures(tfi: types.ModuleType, transform: Callable, python_transform: Callable) -> None:
    map_func = _mapped(transform)
    dataset = _interleave(tfi, sized_input(SIZES), map_func)
    assert dataset.element_spec == map_func(tf.constant(0, tf.int64)).element_spec
    assert collect(dataset) == _expected(python_transform)


def test_element_spec_has_unknown_dimension_for_varying_shapes(tfi: types.ModuleType) -> None:
    dataset = _interleave(tfi, sized_input(SIZES), _mapped(lambda v: tf.range(v % STRIDE)))
    assert dataset.element_spec == tf.TensorSpec([None], tf.int64)


def test_element_spec_equals_builtin(tfi: types.ModuleType, builtin_interleave) -> None:
    map_func = _mapped(lambda v: {"a": (v, tf.strings.as_string(v)), "b": tf.fill([2, v % 4], 1.0)})
    ours = sized_input(SIZES).apply(tfi.parallel_interleave(map_func, 2))
    theirs = sized_input(SIZES).apply(builtin_interleave(map_func, 2))
    assert ours.element_spec == theirs.element_spec
    assert collect(ours) == collect(theirs)


COMPOSITE_CASES = [
    pytest.param(lambda v: tf.sparse.SparseTensor([[0, v % 2]], [v], [2, 2]), id="sparse"),
    pytest.param(lambda v: tf.RaggedTensor.from_row_lengths(tf.range(v % 3 + 1), [v % 3 + 1]), id="ragged"),
]


def _as_lists(dataset: tf.data.Dataset) -> List[str]:
    """Each element as a hashable string, whatever composite tensor it is."""
    return [str(tf.nest.map_structure(
        lambda t: tf.sparse.to_dense(t).numpy().tolist() if isinstance(t, tf.sparse.SparseTensor) else t.to_list(),
        element)) for element in dataset]


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("transform", COMPOSITE_CASES)
def test_composite_elements_equal_builtin(tfi: types.ModuleType, builtin_interleave, transform: Callable,
                                         sloppy: bool) -> None:
    """Sparse and ragged elements pass through as the built-in passes them, spec and values."""
    map_func = _mapped(transform)
    ours = sized_input(SIZES).apply(tfi.parallel_interleave(map_func, CYCLE_LENGTH, BLOCK_LENGTH, sloppy=sloppy))
    theirs = sized_input(SIZES).apply(builtin_interleave(map_func, CYCLE_LENGTH, BLOCK_LENGTH, sloppy=sloppy))
    assert ours.element_spec == theirs.element_spec
    expected = _as_lists(theirs)
    assert len(expected) == sum(SIZES)
    actual = _as_lists(ours)
    assert (actual if not sloppy else sorted(actual)) == (expected if not sloppy else sorted(expected))


def test_is_dataset_subclass(tfi: types.ModuleType) -> None:
    dataset = _interleave(tfi, sized_input(SIZES), sized_map_func(SIZES))
    assert isinstance(dataset, tfi.ParallelInterleaveDataset)
    assert isinstance(dataset, tf.data.Dataset)


def test_tuple_input_elements_are_unpacked(tfi: types.ModuleType) -> None:
    starts = [STRIDE * index for index in range(len(SIZES))]
    input_dataset = tf.data.Dataset.from_tensor_slices((tf.constant(starts, tf.int64), tf.constant(SIZES, tf.int64)))
    dataset = _interleave(tfi, input_dataset, lambda start, size: tf.data.Dataset.range(start, start + size))
    assert collect(dataset) == _expected(lambda v: v)


def test_dict_input_elements(tfi: types.ModuleType) -> None:
    input_dataset = tf.data.Dataset.from_tensor_slices(
        {"start": tf.constant([STRIDE * index for index in range(len(SIZES))], tf.int64),
         "size": tf.constant(SIZES, tf.int64), "name": tf.constant([f"n{i}" for i in range(len(SIZES))])})

    def map_func(element: dict) -> tf.data.Dataset:
        values = tf.data.Dataset.range(element["start"], element["start"] + element["size"])
        return values.map(lambda v: (v, element["name"]))

    dataset = _interleave(tfi, input_dataset, map_func)
    assert collect(dataset) == _expected(lambda v: (v, f"n{v // STRIDE}".encode()))


def test_string_input_elements(tfi: types.ModuleType) -> None:
    input_dataset = tf.data.Dataset.from_tensor_slices([str(size) for size in SIZES]).enumerate()

    def map_func(index: tf.Tensor, size_text: tf.Tensor) -> tf.data.Dataset:
        size = tf.strings.to_number(size_text, tf.int64)
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size)

    assert collect(_interleave(tfi, input_dataset, map_func)) == _expected(lambda v: v)


def test_captured_tensor(tfi: types.ModuleType) -> None:
    shift = tf.constant(7, tf.int64)
    base_map_func = sized_map_func(SIZES)
    dataset = _interleave(tfi, sized_input(SIZES), lambda index: base_map_func(index).map(lambda v: v + shift))
    assert collect(dataset) == _expected(lambda v: v + 7)


@pytest.mark.parametrize("read_in", ["map_func", "nested_map"])
def test_captured_variable_is_read_at_run_time(tfi: types.ModuleType, read_in: str) -> None:
    shift = tf.Variable(5, dtype=tf.int64)
    base_map_func = sized_map_func(SIZES)

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        if read_in == "map_func":
            offset = shift.read_value()
            return base_map_func(index).map(lambda v: v + offset)
        return base_map_func(index).map(lambda v: v + shift)

    dataset = _interleave(tfi, sized_input(SIZES), map_func)
    assert collect(dataset) == _expected(lambda v: v + 5)
    shift.assign(40)
    assert collect(dataset) == _expected(lambda v: v + 40)


def test_map_func_updates_variable(tfi: types.ModuleType) -> None:
    calls = tf.Variable(0, dtype=tf.int64)
    base_map_func = sized_map_func(SIZES)

    def counting_map_func(index: tf.Tensor) -> tf.data.Dataset:
        calls.assign_add(1)
        return base_map_func(index)

    assert collect(_interleave(tfi, sized_input(SIZES), counting_map_func)) == _expected(lambda v: v)
    assert int(calls.numpy()) == len(SIZES)


def _identity_by_cond(index: tf.Tensor) -> tf.Tensor:
    return tf.cond(index >= 0, lambda: index, lambda: -index)


def _identity_by_while_loop(index: tf.Tensor) -> tf.Tensor:
    return tf.while_loop(lambda step, total: step < index, lambda step, total: (step + 1, total + 1),
                         (tf.constant(0, tf.int64), tf.constant(0, tf.int64)))[1]


@pytest.mark.parametrize("identity", [_identity_by_cond, _identity_by_while_loop], ids=["cond", "while_loop"])
def test_map_func_with_control_flow(tfi: types.ModuleType, identity: Callable[[tf.Tensor], tf.Tensor]) -> None:
    """Control flow in map_func itself (the built-in runs these)."""
    base_map_func = sized_map_func(SIZES)
    dataset = _interleave(tfi, sized_input(SIZES), lambda index: base_map_func(identity(index)))
    assert collect(dataset) == _expected(lambda v: v)


def test_nested_dataset_built_from_input_pipeline(tfi: types.ModuleType) -> None:
    """Nested datasets that are themselves multi-stage pipelines (batch, filter, interleave)."""
    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        values = tf.data.Dataset.range(STRIDE * index, STRIDE * index + 10).filter(lambda v: v % 2 == 0)
        return values.interleave(lambda v: tf.data.Dataset.from_tensors(v).repeat(2), cycle_length=1).batch(3)

    dataset = _interleave(tfi, tf.data.Dataset.range(3), map_func)
    nested = [[[2 * k + STRIDE * i for k in range(5) for _ in range(2)][j:j + 3] for j in range(0, 10, 3)]
              for i in range(3)]
    assert collect(dataset) == interleave_order(nested, CYCLE_LENGTH, BLOCK_LENGTH)
