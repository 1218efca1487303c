"""Iterator checkpoints: ``SaveInternal`` / ``RestoreInternal`` (SPEC section 6).

After a restore the remaining output must be exactly the elements not yet
returned, each once: in deterministic mode the same sequence as an
uninterrupted run (the reference model's order), in sloppy mode the same
multiset.  Checkpoints are taken at every position (before the first element,
in the middle of blocks, after the last element), with nested iterators
mid-stream, with buffered elements and staged (prefetched) inputs, with an
error buffered but not yet delivered, and through every saving mechanism:
``tf.train.Checkpoint`` in eager mode, iteration driven by ``tf.function``,
in-graph ``SerializeIterator`` / ``DeserializeIterator``, and a
``tf.compat.v1.train.Saver`` in a TF1 graph.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import threading
import time
import types
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pytest
import tensorflow as tf

from pipelines import MAX_STEPS, STRIDE, Straggler, nested_values, sized_input, sized_map_func, to_python, SLOPPY_MODES
from reference_model import interleave_order

# Includes empty nested datasets (0), one-element ones and ones longer than any block.
SIZES = (3, 0, 5, 1, 4, 2, 6, 0, 2)
TOTAL = sum(SIZES)


@dataclasses.dataclass(frozen=True)
class Config:
    cycle_length: int
    block_length: int
    buffer_output_elements: Optional[int]
    prefetch_input_elements: Optional[int]

    def __str__(self) -> str:
        return (f"c{self.cycle_length}_b{self.block_length}"
                f"_o{self.buffer_output_elements}_p{self.prefetch_input_elements}")

    def kwargs(self, sloppy: bool) -> dict:
        return dict(cycle_length=self.cycle_length, block_length=self.block_length, sloppy=sloppy,
                    buffer_output_elements=self.buffer_output_elements,
                    prefetch_input_elements=self.prefetch_input_elements)

    def order(self, nested: Sequence[Sequence[Any]]) -> List[Any]:
        return interleave_order(nested, self.cycle_length, self.block_length, self.prefetch_input_elements,
                                self.buffer_output_elements)


CONFIGS = [
    Config(2, 1, None, None),  # defaults: 4 staged inputs, 2 buffered elements per source
    Config(3, 2, 1, 2),  # blocks, one buffered element, staged inputs
    Config(2, 3, 4, 0),  # long blocks ending mid-block, no staging
    Config(1, 2, 1, 3),  # a single slot with many staged inputs
]
CONFIG_IDS = [str(config) for config in CONFIGS]


@dataclasses.dataclass(frozen=True)
class Delivered:
    """An error delivered in place of an element.

    ``token`` is the bad string the error message names, so the test knows *which*
    error arrived, not only that one did.
    """

    kind: str
    token: str


_TOKEN = re.compile(r"bad_[A-Za-z0-9_]+")


def _as_delivered(error: tf.errors.OpError) -> Delivered:
    match = _TOKEN.search(error.message)
    return Delivered(type(error).__name__, match.group(0) if match else error.message)


def _next(iterator) -> Tuple[bool, Any]:
    """One ``next`` call: (False, None) at the end, else (True, value or Delivered)."""
    try:
        element = next(iterator)
    except StopIteration:
        return False, None
    except tf.errors.OpError as error:
        return True, _as_delivered(error)
    return True, to_python(tf.nest.map_structure(lambda tensor: tensor.numpy(), element))


def _take(iterator, count: int) -> List[Any]:
    values = []
    for _ in range(count):
        more, value = _next(iterator)
        if not more:
            raise AssertionError(f"iterator ended after {len(values)} of {count} elements")
        values.append(value)
    return values


def _drain(iterator) -> List[Any]:
    values = []
    for _ in range(MAX_STEPS):
        more, value = _next(iterator)
        if not more:
            return values
        values.append(value)
    raise AssertionError(f"iterator did not end within {MAX_STEPS} steps")


def _save(iterator, path: str) -> str:
    return tf.train.Checkpoint(iterator=iterator).write(path)


def _restore(iterator, path: str) -> None:
    tf.train.Checkpoint(iterator=iterator).read(path).assert_consumed()


def _check_rest(sloppy: bool, expected: List[Any], taken: List[Any], rest: List[Any], where: str) -> None:
    if sloppy:
        assert collections.Counter(taken + rest) == collections.Counter(expected), where
        assert len(taken) + len(rest) == len(expected), where
    else:
        assert taken == expected[:len(taken)], where
        assert rest == expected[len(taken):], where


def _sized_dataset(tfi: types.ModuleType, config: Config, sloppy: bool, sizes: Sequence[int] = SIZES
                   ) -> tf.data.Dataset:
    return sized_input(sizes).apply(tfi.parallel_interleave(sized_map_func(sizes), **config.kwargs(sloppy)))


def _with_python_state(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Lets a pipeline with ``tf.py_function`` (state outside TensorFlow) be checkpointed."""
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return dataset.with_options(options)


def _settle(position: int) -> None:
    """Lets the workers fill their buffers before some save points, not before others.

    Saving right after ``next`` catches seats in the middle of a call; saving after
    a pause catches full buffers, staged sources holding elements and ended sources.
    """
    if position % 2:
        time.sleep(0.02)


def _save_restore_everywhere(make: Callable[[], tf.data.Dataset], expected: List[Any], sloppy: bool,
                             directory: str, positions: Optional[Sequence[int]] = None) -> None:
    """Saves after every position in ``positions`` and checks what a fresh iterator restores."""
    if positions is None:
        positions = range(len(expected) + 1)
    for position in positions:
        iterator = iter(make())
        taken = _take(iterator, position)
        _settle(position)
        path = _save(iterator, os.path.join(directory, f"at_{position}"))
        del iterator
        restored = iter(make())
        _restore(restored, path)
        rest = _drain(restored)
        _check_rest(sloppy, expected, taken, rest, f"checkpoint after {position} elements")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_eager_checkpoint_at_every_position(tfi: types.ModuleType, tmp_path, config: Config, sloppy: bool
                                            ) -> None:
    expected = config.order(nested_values(SIZES))
    assert len(expected) == TOTAL
    # Every position in deterministic mode; every other one (both ends included) in sloppy mode.
    positions = sorted(set(range(0, TOTAL + 1, 2 if sloppy else 1)) | {TOTAL})
    _save_restore_everywhere(lambda: _sized_dataset(tfi, config, sloppy), expected, sloppy, str(tmp_path),
                             positions)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_checkpoint_of_a_cycle_far_longer_than_the_input(tfi: types.ModuleType, tmp_path, sloppy: bool
                                                         ) -> None:
    """``cycle_length=10**6`` (three million seats by default) over nine inputs: the cycle saved is as long
    as the input (a sloppy one grows as inputs come), and restores at every position."""
    if tfi.__name__ == "builtin":
        pytest.skip("the legacy op allocates every seat up front")
    config = Config(10**6, 1, None, None)
    expected = config.order(nested_values(SIZES))
    _save_restore_everywhere(lambda: _sized_dataset(tfi, config, sloppy), expected, sloppy, str(tmp_path))


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_checkpoint_after_end_of_sequence(tfi: types.ModuleType, tmp_path, sloppy: bool) -> None:
    config = CONFIGS[1]
    iterator = iter(_sized_dataset(tfi, config, sloppy))
    values = _drain(iterator)
    assert len(values) == TOTAL
    path = _save(iterator, str(tmp_path / "ended"))
    restored = iter(_sized_dataset(tfi, config, sloppy))
    _restore(restored, path)
    assert _drain(restored) == []
    assert _drain(restored) == []


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_restore_rewinds_an_iterator_that_went_on(tfi: types.ModuleType, tmp_path, sloppy: bool) -> None:
    config = CONFIGS[1]
    expected = config.order(nested_values(SIZES))
    for position in (0, 5, 11, TOTAL - 1):
        iterator = iter(_sized_dataset(tfi, config, sloppy))
        taken = _take(iterator, position)
        path = _save(iterator, str(tmp_path / f"rewind_{position}"))
        _take(iterator, min(3, TOTAL - position))
        _restore(iterator, path)
        _check_rest(sloppy, expected, taken, _drain(iterator), f"rewound to {position}")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", [CONFIGS[1]], ids=[CONFIG_IDS[1]])
def test_chained_checkpoints(tfi: types.ModuleType, tmp_path, config: Config, sloppy: bool) -> None:
    """Restored state is saved again: right after the restore (no element read) and later on."""
    expected = config.order(nested_values(SIZES))
    make = lambda: _sized_dataset(tfi, config, sloppy)  # noqa: E731
    for first, second in ((0, 0), (1, 4), (4, 1), (7, 9), (10, TOTAL - 10)):
        iterator = iter(make())
        taken = _take(iterator, first)
        path = _save(iterator, str(tmp_path / f"first_{first}_{second}"))
        iterator = iter(make())
        _restore(iterator, path)
        # Saved again before the restored iterator produced anything.
        path = _save(iterator, str(tmp_path / f"again_{first}_{second}"))
        iterator = iter(make())
        _restore(iterator, path)
        taken += _take(iterator, second)
        time.sleep(0.01)
        path = _save(iterator, str(tmp_path / f"second_{first}_{second}"))
        iterator = iter(make())
        _restore(iterator, path)
        _check_rest(sloppy, expected, taken, _drain(iterator), f"checkpoints after {first} and {second}")


# --- tf.function -----------------------------------------------------------------------------------------


@tf.function
def _take_in_function(iterator, count):
    """Takes up to ``count`` elements (all when ``count < 0``) inside a graph."""
    values = tf.TensorArray(tf.int64, size=0, dynamic_size=True)
    taken = tf.constant(0)
    while count < 0 or taken < count:
        optional = iterator.get_next_as_optional()
        if not optional.has_value():
            break
        values = values.write(taken, optional.get_value())
        taken += 1
    return values.stack()


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]], ids=[CONFIG_IDS[0], CONFIG_IDS[2]])
def test_checkpoint_around_tf_function_consumption(tfi: types.ModuleType, tmp_path, config: Config,
                                                   sloppy: bool) -> None:
    """Iterators made outside a ``tf.function`` that consumes them; saved and restored between calls."""
    expected = config.order(nested_values(SIZES))
    for position in (0, 1, 2, 5, 8, 12, 16, 19, TOTAL - 1, TOTAL):
        iterator = iter(_sized_dataset(tfi, config, sloppy))
        taken = _take_in_function(iterator, tf.constant(position)).numpy().tolist()
        assert len(taken) == position
        _settle(position // 2)
        path = _save(iterator, str(tmp_path / f"at_{position}"))
        restored = iter(_sized_dataset(tfi, config, sloppy))
        _restore(restored, path)
        rest = _take_in_function(restored, tf.constant(-1)).numpy().tolist()
        _check_rest(sloppy, expected, taken, rest, f"checkpoint after {position} elements")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_tf_function_calling_next_on_a_captured_iterator(tfi: types.ModuleType, tmp_path, sloppy: bool) -> None:
    config = CONFIGS[1]
    expected = config.order(nested_values(SIZES))
    iterator = iter(_sized_dataset(tfi, config, sloppy))

    @tf.function
    def step():
        return next(iterator)

    taken = [int(step()) for _ in range(7)]
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.write(str(tmp_path / "captured"))
    taken_later = [int(step()) for _ in range(4)]
    if not sloppy:
        assert taken + taken_later == expected[:11]
    # Restoring into the captured iterator rewinds what `step` reads.
    checkpoint.read(path).assert_consumed()
    rest = []
    for _ in range(MAX_STEPS):
        try:
            rest.append(int(step()))
        except (StopIteration, tf.errors.OutOfRangeError):
            break
    _check_rest(sloppy, expected, taken, rest, "after restoring the captured iterator")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_serialize_and_deserialize_inside_tf_function(tfi: types.ModuleType, sloppy: bool) -> None:
    """Iterator state saved and restored by graph ops (what ``tf.train.Checkpoint`` runs), in ``tf.function``."""
    config = CONFIGS[1]
    expected = config.order(nested_values(SIZES))
    for position in (0, 3, 8, TOTAL):
        iterator = iter(_sized_dataset(tfi, config, sloppy))

        @tf.function
        def take_and_save(count):
            values = _take_in_function(iterator, count)
            with tf.control_dependencies([values]):
                state = tf.raw_ops.SerializeIterator(resource_handle=iterator._iterator_resource,  # noqa: B023
                                                     external_state_policy=0)
            return values, state

        taken, state = take_and_save(tf.constant(position))
        restored = iter(_sized_dataset(tfi, config, sloppy))

        @tf.function
        def restore_and_drain(serialized):
            restore = tf.raw_ops.DeserializeIterator(resource_handle=restored._iterator_resource,  # noqa: B023
                                                     serialized=serialized)
            with tf.control_dependencies([restore]):
                return _take_in_function(restored, tf.constant(-1))  # noqa: B023

        rest = restore_and_drain(state).numpy().tolist()
        _check_rest(sloppy, expected, taken.numpy().tolist(), rest, f"state after {position} elements")


# --- TF1 graph mode and tf.compat.v1.train.Saver ----------------------------------------------------------


def _graph_session_run(make: Callable[[], tf.data.Dataset], path: str, take: Optional[int]) -> List[Any]:
    """In a fresh TF1 graph: takes ``take`` elements and saves, or (``take=None``) restores and drains."""
    graph = tf.Graph()
    with graph.as_default():
        iterator = tf.compat.v1.data.make_initializable_iterator(make())
        next_element = iterator.get_next()
        saveable = tf.data.experimental.make_saveable_from_iterator(iterator)
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS, saveable)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(iterator.initializer)
            values: List[Any] = []
            if take is not None:
                for _ in range(take):
                    values.append(to_python(session.run(next_element)))
                time.sleep(0.01)
                saver.save(session, path)
                return values
            saver.restore(session, path)
            for _ in range(MAX_STEPS):
                try:
                    values.append(to_python(session.run(next_element)))
                except tf.errors.OutOfRangeError:
                    return values
            raise AssertionError("restored iterator did not end")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[2]], ids=[CONFIG_IDS[1], CONFIG_IDS[2]])
def test_tf1_saver(tfi: types.ModuleType, tmp_path, config: Config, sloppy: bool) -> None:
    expected = config.order(nested_values(SIZES))
    make = lambda: _sized_dataset(tfi, config, sloppy)  # noqa: E731
    for position in (0, 4, 11, TOTAL):
        path = str(tmp_path / f"tf1_{position}" / "model")
        taken = _graph_session_run(make, path, position)
        rest = _graph_session_run(make, path, None)
        _check_rest(sloppy, expected, taken, rest, f"Saver checkpoint after {position} elements")


def test_tf1_saver_rejects_other_arguments(tfi: types.ModuleType, tmp_path) -> None:
    config = CONFIGS[1]
    path = str(tmp_path / "tf1" / "model")
    _graph_session_run(lambda: _sized_dataset(tfi, config, False), path, 5)
    other = dataclasses.replace(config, cycle_length=config.cycle_length + 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="cycle_length"):
        _graph_session_run(lambda: _sized_dataset(tfi, other, False), path, None)


# --- arguments that differ from the checkpoint's ---------------------------------------------------------


@pytest.mark.parametrize("change, name", [
    (dict(cycle_length=3), "cycle_length"),
    (dict(block_length=3), "block_length"),
    (dict(buffer_output_elements=2), "buffer_output_elements"),
    (dict(prefetch_input_elements=1), "prefetch_input_elements"),
    (dict(sloppy=True), "sloppy"),
], ids=["cycle_length", "block_length", "buffer_output_elements", "prefetch_input_elements", "sloppy"])
def test_restore_with_other_arguments_is_a_clear_error(tfi: types.ModuleType, tmp_path, change: dict, name: str
                                                       ) -> None:
    saved_args = dict(cycle_length=2, block_length=2, sloppy=False, buffer_output_elements=1,
                      prefetch_input_elements=2)
    iterator = iter(sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), **saved_args)))
    _take(iterator, 5)
    path = _save(iterator, str(tmp_path / "saved"))
    other = iter(sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES),
                                                                  **{**saved_args, **change})))
    with pytest.raises(tf.errors.InvalidArgumentError, match=name):
        tf.train.Checkpoint(iterator=other).read(path)
    # The failed restore leaves nothing broken: a matching iterator still restores it.
    matching = iter(sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), **saved_args)))
    _restore(matching, path)
    expected = interleave_order(nested_values(SIZES), 2, 2, 2, 1)
    assert _drain(matching) == expected[5:]


_NOT_OUR_RECORDS = (r"no tf_interleave checkpoint format under \S+TfInterleave\S*: it was written by "
                    r"another op .*parallel_interleave")


@pytest.mark.parametrize("sloppy", [False, True], ids=["deterministic", "sloppy"])
def test_checkpoint_of_the_builtin_is_refused_by_name(tfi: types.ModuleType, tmp_path, sloppy: bool) -> None:
    # A pipeline moved from the legacy op to tf_interleave cannot resume from the legacy op's
    # checkpoint: the two keep different records. The restore says so instead of a missing key.
    config = CONFIGS[1]
    builtin = iter(_sized_dataset(tf.data.experimental, config, sloppy))
    _take(builtin, 3)
    path = _save(builtin, str(tmp_path / "builtin"))
    ours = iter(_sized_dataset(tfi, config, sloppy))
    with pytest.raises(tf.errors.FailedPreconditionError, match=_NOT_OUR_RECORDS):
        tf.train.Checkpoint(iterator=ours).read(path)


def test_builtin_state_is_refused_inside_tf_function(tfi: types.ModuleType) -> None:
    config = CONFIGS[1]
    builtin = iter(_sized_dataset(tf.data.experimental, config, False))
    _take(builtin, 3)
    state = tf.raw_ops.SerializeIterator(resource_handle=builtin._iterator_resource, external_state_policy=0)
    ours = iter(_sized_dataset(tfi, config, False))

    @tf.function
    def restore(serialized):
        tf.raw_ops.DeserializeIterator(resource_handle=ours._iterator_resource, serialized=serialized)

    with pytest.raises(tf.errors.FailedPreconditionError, match=_NOT_OUR_RECORDS):
        restore(state)


def test_tf1_saver_refuses_a_builtin_checkpoint(tfi: types.ModuleType, tmp_path) -> None:
    config = CONFIGS[1]
    path = str(tmp_path / "tf1" / "model")
    _graph_session_run(lambda: _sized_dataset(tf.data.experimental, config, False), path, 3)
    with pytest.raises(tf.errors.FailedPreconditionError, match=_NOT_OUR_RECORDS):
        _graph_session_run(lambda: _sized_dataset(tfi, config, False), path, None)


# --- errors buffered but not yet delivered --------------------------------------------------------------

# Nested element (i, j) is the string of STRIDE * i + j, except these, which fail `to_number`.
BAD_NESTED = {(0, 1), (2, 0), (2, 4), (6, 5), (8, 1)}
# Inputs whose `map_func` itself fails: their nested dataset is a single error.
BAD_INPUTS = (3, 5)


def _error_nested(bad_inputs: Sequence[int]) -> List[List[Any]]:
    nested = []
    for index, size in enumerate(SIZES):
        if index in bad_inputs:
            nested.append([Delivered("InvalidArgumentError", f"bad_input_{index}")])
            continue
        nested.append([Delivered("InvalidArgumentError", f"bad_{index}_{offset}")
                       if (index, offset) in BAD_NESTED else STRIDE * index + offset for offset in range(size)])
    return nested


def _error_map_func(bad_inputs: Sequence[int]) -> Callable[[tf.Tensor], tf.data.Dataset]:
    strings, starts = [], []
    for index, size in enumerate(SIZES):
        starts.append(len(strings))
        strings += [f"bad_{index}_{offset}" if (index, offset) in BAD_NESTED else str(STRIDE * index + offset)
                    for offset in range(size)]
    starts.append(len(strings))
    sizes_as_strings = [f"bad_input_{index}" if index in bad_inputs else str(size)
                        for index, size in enumerate(SIZES)]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        # Fails for the inputs in `bad_inputs`, before any nested dataset exists.
        size = tf.strings.to_number(tf.gather(tf.constant(sizes_as_strings), index), tf.int64)
        start = tf.gather(tf.constant(starts, tf.int64), index)
        values = tf.constant(strings)[start:start + size]
        return tf.data.Dataset.from_tensor_slices(values).map(lambda text: tf.strings.to_number(text, tf.int64))

    return map_func


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[3]], ids=[CONFIG_IDS[1], CONFIG_IDS[3]])
def test_undelivered_errors_survive_a_checkpoint(tfi: types.ModuleType, tmp_path, config: Config, sloppy: bool
                                                 ) -> None:
    """An error buffered at save time is delivered at its place after the restore, and iteration goes on.

    The errors come from nested datasets (``to_number`` of a bad string) and from
    ``map_func`` itself (an input whose nested dataset cannot be made).
    """
    bad_inputs = BAD_INPUTS
    expected = config.order(_error_nested(bad_inputs))
    errors = [value for value in expected if isinstance(value, Delivered)]
    assert len(errors) == len(BAD_INPUTS) + len([1 for index, _ in BAD_NESTED if index not in BAD_INPUTS])

    def make() -> tf.data.Dataset:
        return sized_input(SIZES).apply(tfi.parallel_interleave(_error_map_func(bad_inputs),
                                                                **config.kwargs(sloppy)))

    # An uninterrupted run first, so a failure here is told apart from a checkpoint failure.
    uninterrupted = _drain(iter(make()))
    _check_rest(sloppy, expected, [], uninterrupted, "uninterrupted run")
    # Saves right before each error too, after pausing so that the error sits in a buffer.
    positions = sorted(set(range(0, len(expected) + 1, 2 if sloppy else 1)) | {len(expected)})
    for position in positions:
        iterator = iter(make())
        taken = _take(iterator, position)
        time.sleep(0.02 if position % 3 else 0.0)
        path = _save(iterator, str(tmp_path / f"at_{position}"))
        del iterator
        restored = iter(make())
        _restore(restored, path)
        _check_rest(sloppy, expected, taken, _drain(restored), f"checkpoint after {position} elements")


# --- what the checkpoint holds ---------------------------------------------------------------------------


class _ProductionCounter:
    """Counts the nested elements computed, through a ``tf.py_function`` in the nested datasets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def _bump(self, value):
        with self._lock:
            self.count += 1
        return value

    def map_func(self, sizes: Sequence[int]) -> Callable[[tf.Tensor], tf.data.Dataset]:
        base = sized_map_func(sizes)

        def map_func(index: tf.Tensor) -> tf.data.Dataset:
            return base(index).map(lambda value: tf.reshape(tf.py_function(self._bump, [value], tf.int64), []))

        return map_func

    def settle(self, quiet_seconds: float = 0.1, limit_seconds: float = 5.0) -> int:
        """Waits until no element has been computed for ``quiet_seconds``; returns the count."""
        deadline = time.monotonic() + limit_seconds
        last, quiet_since = self.count, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.01)
            if self.count != last:
                last, quiet_since = self.count, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_seconds:
                break
        return last


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3]], ids=[CONFIG_IDS[0], CONFIG_IDS[3]])
def test_buffered_elements_and_nested_positions_are_in_the_checkpoint(tfi: types.ModuleType, tmp_path,
                                                                     config: Config, sloppy: bool) -> None:
    """The restored iterator computes only the nested elements that were never computed.

    Elements sitting in buffers at save time come back from the checkpoint, and
    nested iterators (in the cycle and staged) resume where they stood, instead
    of being recomputed or replayed.
    """
    expected = config.order(nested_values(SIZES))
    counter = _ProductionCounter()

    def make() -> tf.data.Dataset:
        return _with_python_state(
            sized_input(SIZES).apply(tfi.parallel_interleave(counter.map_func(SIZES), **config.kwargs(sloppy))))

    buffered_seen = 0
    for position in (0, 3, 10, TOTAL - 1):
        for attempt in range(3):
            counter.count = 0
            iterator = iter(make())
            taken = _take(iterator, position)
            computed = counter.settle(quiet_seconds=0.1 * (attempt + 1))
            path = _save(iterator, str(tmp_path / f"at_{position}_{attempt}"))
            del iterator  # Stops its workers; none may have computed anything since the quiet period.
            if counter.count == computed:
                break
            # A worker computed after the quiet period: the save point was not settled; try again.
        else:
            raise AssertionError(f"the workers never went quiet after {position} elements")
        buffered_seen = max(buffered_seen, computed - position)
        restored = iter(make())
        _restore(restored, path)
        rest = _drain(restored)
        _check_rest(sloppy, expected, taken, rest, f"checkpoint after {position} elements")
        recomputed = counter.count - computed
        assert recomputed == TOTAL - computed, (
            f"after {position} elements ({computed} computed at save time) the restored iterator computed "
            f"{recomputed} nested elements; {TOTAL - computed} were never computed")
    assert buffered_seen > 0, "no save point had buffered elements; the test did not exercise them"


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_save_while_a_nested_iterator_is_busy(tfi: types.ModuleType, tmp_path, sloppy: bool) -> None:
    """A save that comes while a seat is inside a slow nested ``GetNext`` waits for it and loses nothing."""
    config = Config(3, 1, 2, 2)
    straggler_input = 2
    expected = config.order(nested_values(SIZES))
    straggler = Straggler()

    def make() -> tf.data.Dataset:
        return _with_python_state(sized_input(SIZES).apply(
            tfi.parallel_interleave(straggler.map_func(SIZES, straggler_input), **config.kwargs(sloppy))))

    # Deterministic mode can read up to the straggler's first element; sloppy mode reads past it.
    first_held = expected.index(STRIDE * straggler_input)
    position = first_held + 4 if sloppy else first_held
    iterator = iter(make())
    taken = _take(iterator, position)
    timer = straggler.release_later(0.3)
    try:
        path = _save(iterator, str(tmp_path / "busy"))
    finally:
        timer.cancel()
        straggler.release()
    assert not straggler.timed_out
    restored = iter(make())
    _restore(restored, path)
    _check_rest(sloppy, expected, taken, _drain(restored), "checkpoint taken during a slow nested GetNext")
    if sloppy:
        assert STRIDE * straggler_input not in taken


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_nested_parallel_interleave_mid_stream(tfi: types.ModuleType, tmp_path, sloppy: bool) -> None:
    """``map_func`` returns a pipeline that uses the op itself; both levels are checkpointed mid-stream."""
    inner_sizes = (2, 0, 3, 1)

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        def inner(j: tf.Tensor) -> tf.data.Dataset:
            size = tf.gather(tf.constant(inner_sizes, tf.int64), j)
            start = 100 * index + 10 * j
            return tf.data.Dataset.range(start, start + size)

        return tf.data.Dataset.range(len(inner_sizes)).apply(
            tfi.parallel_interleave(inner, cycle_length=2, block_length=2, sloppy=sloppy))

    outer_count = 5
    nested = [interleave_order([[100 * i + 10 * j + t for t in range(size)] for j, size in enumerate(inner_sizes)],
                               2, 2) for i in range(outer_count)]
    expected = interleave_order(nested, 2, 3, 1, 2)

    def make() -> tf.data.Dataset:
        return tf.data.Dataset.range(outer_count).apply(
            tfi.parallel_interleave(map_func, cycle_length=2, block_length=3, sloppy=sloppy,
                                    buffer_output_elements=2, prefetch_input_elements=1))

    count = len(expected)
    _save_restore_everywhere(make, expected, sloppy, str(tmp_path),
                             positions=(0, 1, 3, 6, 8, 11, count // 2 + 1, count - 4, count - 1, count))


def test_checkpoint_of_a_longer_pipeline(tfi: types.ModuleType, tmp_path) -> None:
    """The op between other stateful transformations: upstream and downstream state restore with it."""
    config = CONFIGS[1]
    sizes = SIZES * 2

    def make() -> tf.data.Dataset:
        inputs = tf.data.Dataset.range(len(sizes)).shuffle(len(sizes), seed=7, reshuffle_each_iteration=False)
        return (inputs.apply(tfi.parallel_interleave(sized_map_func(sizes), **config.kwargs(False)))
                .map(lambda value: value * 2).batch(3).prefetch(2))

    expected = [to_python(batch) for batch in make().as_numpy_iterator()]
    assert sorted(value for batch in expected for value in batch) == sorted(
        2 * value for values in nested_values(sizes) for value in values)
    _save_restore_everywhere(make, expected, False, str(tmp_path), positions=range(0, len(expected) + 1, 2))
