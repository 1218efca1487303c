"""Small checkpoints: ``tf.data.Options().experimental_symbolic_checkpoint = True``.

A symbolic checkpoint saves positions (which inputs are open, how many elements
each has delivered) instead of buffered elements, so its size does not grow with
``buffer_output_elements``; restoring re-creates the nested iterators and skips
ahead.  Exactly-once in both modes: after a restore the remaining output is the
uninterrupted remainder (deterministic) or the multiset of elements not yet
returned (sloppy), each once.
"""

from __future__ import annotations

import collections
import glob
import os
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import tensorflow as tf

from pipelines import MAX_STEPS, STRIDE, Failure, drain_iterator, nested_values, sized_map_func, to_python, \
    bounded as _bounded, SLOPPY_MODES
from reference_model import interleave_order

TIMEOUT_SECONDS = 90.0


def bounded(fn: Callable[..., Any], *args: Any, timeout: float = TIMEOUT_SECONDS) -> Any:
    """``pipelines.bounded`` with this module's time limit."""
    return _bounded(fn, *args, timeout=timeout)


# ----------------------------------------------------------------------------- helpers



def with_options(dataset: tf.data.Dataset, symbolic: bool, inject_prefetch: bool = True) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_symbolic_checkpoint = symbolic
    options.experimental_optimization.inject_prefetch = inject_prefetch
    return dataset.with_options(options)


def value_of(element: Any) -> Any:
    return to_python(tf.nest.map_structure(lambda tensor: tensor.numpy(), element))


def take(iterator, count: int) -> List[Any]:
    values = []
    for _ in range(count):
        values.append(value_of(next(iterator)))
    return values


def drain(iterator) -> List[Any]:
    values = []
    for element in iterator:
        values.append(value_of(element))
        if len(values) > MAX_STEPS:
            raise AssertionError("iterator did not end")
    return values


def save(iterator, prefix: str) -> str:
    return tf.train.Checkpoint(iterator=iterator).save(prefix)


def restore(iterator, path: str) -> None:
    tf.train.Checkpoint(iterator=iterator).restore(path).assert_consumed()


def data_bytes(path: str) -> int:
    files = glob.glob(path + ".data-*")
    assert files, f"no data files for checkpoint {path}"
    return sum(os.path.getsize(name) for name in files)


def check_rest(sloppy: bool, expected: List[Any], taken: List[Any], rest: List[Any], where: str) -> None:
    if sloppy:
        assert collections.Counter(taken + rest) == collections.Counter(expected), where
        assert len(taken) + len(rest) == len(expected), f"{where}: duplicates or losses"
    else:
        assert taken == expected[:len(taken)], where
        assert rest == expected[len(taken):], where


def save_everywhere(make: Callable[[], tf.data.Dataset], positions: Sequence[int], directory: str
                    ) -> Tuple[List[Any], Dict[int, Tuple[str, List[Any]]]]:
    """Iterates one iterator to the end, saving at each of ``positions``.

    Returns the whole output and ``{position: (checkpoint path, elements taken so far)}``.
    """
    iterator = iter(make())
    taken: List[Any] = []
    saved: Dict[int, Tuple[str, List[Any]]] = {}
    wanted = sorted(set(positions))
    for position in wanted:
        taken.extend(take(iterator, position - len(taken)))
        saved[position] = (save(iterator, os.path.join(directory, f"at{position}", "ckpt")), list(taken))
    taken.extend(drain(iterator))
    return taken, saved


def restore_and_drain(make: Callable[[], tf.data.Dataset], path: str) -> List[Any]:
    iterator = iter(make())
    restore(iterator, path)
    return drain(iterator)


# ----------------------------------------------------------------------------- size


def big_elements_map_func(count: int, floats: int) -> Callable:
    """``count`` incompressible float32 vectors (``4 * floats`` bytes) per input, reproducible from
    the input element, so a symbolic restore can make them again."""

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.range(count).map(
            lambda position: tf.random.stateless_uniform([floats], seed=tf.stack([index, position])))

    return map_func


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_symbolic_checkpoint_size_does_not_grow_with_buffers(tfi: types.ModuleType, sloppy: bool,
                                                             tmp_path: Any) -> None:
    cycle_length, prefetch, floats = 2, 2, 1024  # 4 KB elements
    seats = cycle_length + prefetch
    import tf_interleave

    def checkpoint_size(buffer: int, symbolic: bool) -> int:
        dataset = with_options(tf.data.Dataset.range(4).apply(tfi.parallel_interleave(
            big_elements_map_func(80, floats), cycle_length=cycle_length, sloppy=sloppy,
            prefetch_input_elements=prefetch, buffer_output_elements=buffer)), symbolic, inject_prefetch=False)
        before = {entry["id"] for entry in tf_interleave.stats()}
        iterator = iter(dataset)
        take(iterator, 3)
        # Let the workers fill their buffers before saving.
        target = max(1, seats * buffer - 6)
        deadline = time.monotonic() + 15
        while True:
            (entry,) = [entry for entry in tf_interleave.stats() if entry["id"] not in before]
            if entry["buffered_elements"] >= target:
                break
            assert time.monotonic() < deadline, f"buffers did not fill: {entry['buffered_elements']} < {target}"
            time.sleep(0.01)
        path = save(iterator, str(tmp_path / f"{'symbolic' if symbolic else 'full'}_{buffer}" / "ckpt"))
        # The checkpoint restores: the next element is the one the saved iterator gives.
        expected_next = value_of(next(iterator))
        fresh = iter(dataset)
        restore(fresh, path)
        if not sloppy:
            assert value_of(next(fresh)) == expected_next
        return data_bytes(path)

    def measure() -> Dict[Tuple[bool, int], int]:
        return {(symbolic, buffer): checkpoint_size(buffer, symbolic)
                for symbolic in (False, True) for buffer in (1, 64)}

    sizes = bounded(measure)
    element_bytes = 4 * floats
    # A full checkpoint holds the buffered elements: ~200 elements of 4 KB with 64-element buffers.
    assert sizes[(False, 64)] >= sizes[(False, 1)] + 100 * element_bytes, sizes
    # A symbolic one holds positions only: the same size whatever the buffers hold.
    assert abs(sizes[(True, 64)] - sizes[(True, 1)]) <= 1024, sizes
    assert sizes[(True, 64)] <= 2 * element_bytes, sizes
    assert sizes[(True, 64)] * 50 <= sizes[(False, 64)], sizes


# ----------------------------------------------------------------------------- exactly once

SIZES = (3, 0, 5, 1, 4, 2, 6, 0, 2)
TOTAL = sum(SIZES)
# (cycle_length, block_length, prefetch_input_elements, buffer_output_elements)
CONFIGS = [(2, 1, None, None), (3, 2, 1, 3), (2, 3, 0, 1), (1, 2, 3, 2)]


def sized_dataset(tfi: types.ModuleType, sizes: Sequence[int], config: Tuple[int, int, Optional[int], Optional[int]],
                  sloppy: bool) -> tf.data.Dataset:
    cycle_length, block_length, prefetch, buffer = config
    return with_options(tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
        sized_map_func(sizes), cycle_length=cycle_length, block_length=block_length, sloppy=sloppy,
        prefetch_input_elements=prefetch, buffer_output_elements=buffer)), symbolic=True)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "c{}_b{}_p{}_o{}".format(*c))
def test_exactly_once_from_every_position(tfi: types.ModuleType, config: Tuple[int, int, Optional[int], Optional[int]],
                                          sloppy: bool, tmp_path: Any) -> None:
    expected = interleave_order(nested_values(SIZES), *config)
    make = lambda: sized_dataset(tfi, SIZES, config, sloppy)  # noqa: E731

    def go() -> None:
        whole, saved = save_everywhere(make, range(TOTAL + 1), str(tmp_path))
        check_rest(sloppy, expected, whole, [], "uninterrupted run")
        for position, (path, taken) in saved.items():
            rest = restore_and_drain(make, path)
            check_rest(sloppy, expected, taken, rest, f"restored at position {position}")

    bounded(go)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_exactly_once_across_repeated_restores(tfi: types.ModuleType, sloppy: bool, tmp_path: Any) -> None:
    """Restore, read a little, save again, restore again ...: still every element exactly once."""
    config = (3, 2, 2, 2)
    sizes = (7, 3, 0, 5, 6, 1, 4, 8)
    expected = interleave_order(nested_values(sizes), *config)
    make = lambda: sized_dataset(tfi, sizes, config, sloppy)  # noqa: E731

    def go() -> List[Any]:
        taken: List[Any] = []
        iterator = iter(make())
        for round_index, step in enumerate([4, 1, 6, 3, 5, 2, 7]):
            taken.extend(take(iterator, step))
            path = save(iterator, str(tmp_path / f"round{round_index}" / "ckpt"))
            iterator = iter(make())
            restore(iterator, path)
        return taken + drain(iterator)

    check_rest(sloppy, expected, bounded(go), [], "after repeated restores")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_exactly_once_with_skipped_inputs(tfi: types.ModuleType, sloppy: bool, tmp_path: Any) -> None:
    """``on_input_error="skip"``: after a restore skipped inputs stay skipped, failing ones fail again."""
    sizes = (5, 4, 6, 3, 5, 4)
    bad_at = (2, None, 0, None, 4, 1)
    size_list, bad_list = list(sizes), [-1 if bad is None else bad for bad in bad_at]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(size_list, tf.int64), index)
        bad = tf.gather(tf.constant(bad_list, tf.int64), index)
        base = tf.constant(STRIDE, tf.int64) * index
        return tf.data.Dataset.range(base, base + size).map(lambda value: tf.strings.to_number(
            tf.where(tf.equal(value - base, bad), tf.constant("bad"), tf.strings.as_string(value)), tf.int64))

    def make() -> tf.data.Dataset:
        return with_options(tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
            map_func, cycle_length=2, block_length=2, sloppy=sloppy, prefetch_input_elements=1,
            on_input_error="skip")), symbolic=True)

    truncated = [size if bad is None else min(size, bad) for size, bad in zip(sizes, bad_at)]
    expected = interleave_order(nested_values(truncated), 2, 2, 1, None)

    def go() -> None:
        whole, saved = save_everywhere(make, range(len(expected) + 1), str(tmp_path))
        check_rest(sloppy, expected, whole, [], "uninterrupted run")
        for position, (path, taken) in saved.items():
            check_rest(sloppy, expected, taken, restore_and_drain(make, path), f"restored at position {position}")

    bounded(go)


def _next_or_failure(iterator) -> Any:
    """The next element, or a ``Failure`` for an error delivered in its place."""
    try:
        return value_of(next(iterator))
    except tf.errors.OpError as error:
        return Failure(type(error).__name__)


def _trailing_failures(values: List[Any]) -> List[Any]:
    """The errors delivered since the last element of ``values``."""
    count = 0
    while count < len(values) and isinstance(values[-1 - count], Failure):
        count += 1
    return values[len(values) - count:]


def _parsed(texts: tf.Tensor) -> tf.Tensor:
    """``texts`` as int64; a parse error (InvalidArgumentError) for the text "bad"."""
    return tf.strings.to_number(texts, tf.int64)


def _failing_dataset(sizes: Sequence[int], bad_at: Sequence[Optional[int]], where: str
                     ) -> Tuple[tf.data.Dataset, Callable[[tf.Tensor], tf.data.Dataset]]:
    """An input and a ``map_func`` over nested datasets of ``sizes``, failing where ``bad_at`` says.

    ``where="nested"``: element ``bad_at[i]`` of nested dataset ``i`` fails; ``"map_func"``:
    ``map_func`` fails for the inputs ``i`` with ``bad_at[i] == 0``; ``"input"``: so does input
    element ``i`` itself. The failures are stateless parse errors, so a restore can make them again.
    """
    count = len(sizes)
    fails_whole = [bad == 0 for bad in bad_at]
    inputs = tf.data.Dataset.range(count)
    if where == "input":
        inputs = inputs.map(lambda index: _parsed(tf.where(tf.gather(tf.constant(fails_whole), index),
                                                           tf.constant("bad"), tf.strings.as_string(index))))
    size_texts = ["bad" if where == "map_func" and fails else str(size) for size, fails in zip(sizes, fails_whole)]
    bad_list = [-1 if bad is None or where != "nested" else bad for bad in bad_at]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = _parsed(tf.gather(tf.constant(size_texts), index))
        bad = tf.gather(tf.constant(bad_list, tf.int64), index)
        base = tf.constant(STRIDE, tf.int64) * index
        return tf.data.Dataset.range(base, base + size).map(lambda value: _parsed(
            tf.where(tf.equal(value - base, bad), tf.constant("bad"), tf.strings.as_string(value))))

    return inputs, map_func


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("where", ["nested", "map_func", "input"])
@pytest.mark.parametrize("config", [(2, 2, 1), (3, 1, 0)], ids=lambda c: "c{}_b{}_p{}".format(*c))
def test_delivered_errors_across_symbolic_restores(tfi: types.ModuleType, sloppy: bool, where: str,
                                                   config: Tuple[int, int, int], tmp_path: Any) -> None:
    """Errors stay at their place across a restore, and every element and error comes once.

    Saved right after errors, the restore delivers the errors since the last element once more
    before the rest: TensorFlow keeps no symbolic state from a call that fails (its ``map``
    replays an error the same way), so that checkpoint is the one of the last element.
    """
    sizes = (4, 3, 5, 2, 3)
    bad_at = (1, None, 0, 0, 2) if where == "nested" else (None, 0, None, 0, None)
    inputs, map_func = _failing_dataset(sizes, bad_at, where)

    cycle_length, block_length, prefetch = config

    def make() -> tf.data.Dataset:
        return with_options(inputs.apply(tfi.parallel_interleave(
            map_func, cycle_length, block_length, sloppy=sloppy, prefetch_input_elements=prefetch)), symbolic=True)

    failure = Failure("InvalidArgumentError")
    if where == "nested":
        nested = [[failure if offset == bad else STRIDE * index + offset for offset in range(size)]
                  for index, (size, bad) in enumerate(zip(sizes, bad_at))]
    else:
        nested = [[failure] if bad == 0 else [STRIDE * index + offset for offset in range(size)]
                  for index, (size, bad) in enumerate(zip(sizes, bad_at))]
    expected = interleave_order(nested, cycle_length, block_length, prefetch, None)

    def go() -> None:
        iterator = iter(make())
        whole: List[Any] = []
        saved = []
        for position in range(len(expected) + 1):
            saved.append((save(iterator, str(tmp_path / f"at{position}" / "ckpt")), list(whole)))
            if position < len(expected):
                whole.append(_next_or_failure(iterator))
        assert drain_iterator(iterator) == [], "iterator went on past the expected elements"
        check_rest(sloppy, expected, whole, [], "uninterrupted run")
        for path, taken in saved:
            replayed = _trailing_failures(taken)
            restored = iter(make())
            restore(restored, path)
            rest = drain_iterator(restored)
            if sloppy:
                assert collections.Counter(taken + rest) == collections.Counter(expected + replayed), len(taken)
            else:
                assert rest == replayed + whole[len(taken):], f"restored after {len(taken)} elements"

    bounded(go)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("symbolic", [False, True], ids=["full", "symbolic"])
def test_exactly_once_after_retried_opens(tfi: types.ModuleType, sloppy: bool, symbolic: bool, tmp_path: Any) -> None:
    """Inputs whose first open failed and was retried (``input_retries``) restore like the others."""
    line_counts = [3, 5, 2, 4, 6]
    late = {1, 3}  # These files appear when map_func runs for them a second time.
    names = [str(tmp_path / f"shard-{index}.txt") for index in range(len(line_counts))]
    nested = [[f"shard{index}-line{line}".encode() for line in range(count)]
              for index, count in enumerate(line_counts)]

    def write(index: int) -> None:
        with open(names[index], "wb") as file:
            file.write(b"".join(line + b"\n" for line in nested[index]))

    for index in range(len(names)):
        if index not in late:
            write(index)
    calls: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def arrive(name: tf.Tensor) -> tf.Tensor:
        index = names.index(name.numpy().decode())
        with lock:
            calls[index] += 1
            if calls[index] == 2 and index in late:
                write(index)
        return name

    def map_func(name: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TextLineDataset(tf.ensure_shape(tf.py_function(arrive, [name], tf.string), []))

    def make() -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices(names).apply(tfi.parallel_interleave(
            map_func, cycle_length=2, block_length=2, sloppy=sloppy, prefetch_input_elements=1, input_retries=2))
        options = tf.data.Options()
        # The Python function that makes the files appear is state outside the pipeline.
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        return with_options(dataset.with_options(options), symbolic=symbolic)

    expected = interleave_order(nested, 2, 2, 1, None)

    def go() -> None:
        whole, saved = save_everywhere(make, range(len(expected) + 1), str(tmp_path / "ckpt"))
        assert all(calls[index] == 2 for index in late), f"the late files were not retried: {calls}"
        check_rest(sloppy, expected, whole, [], "uninterrupted run")
        for position, (path, taken) in saved.items():
            check_rest(sloppy, expected, taken, restore_and_drain(make, path), f"restored at position {position}")

    bounded(go)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_exactly_once_over_text_files(tfi: types.ModuleType, sloppy: bool, tmp_path: Any) -> None:
    """The realistic case: input elements are file names, nested datasets read the files."""
    line_counts = [4, 7, 0, 3, 5, 2]
    names = []
    for index, count in enumerate(line_counts):
        path = tmp_path / f"shard-{index}.txt"
        path.write_text("".join(f"shard{index}-line{line}\n" for line in range(count)))
        names.append(str(path))
    nested = [[f"shard{index}-line{line}".encode() for line in range(count)]
              for index, count in enumerate(line_counts)]
    expected = interleave_order(nested, 2, 2, 2, 1)

    def make() -> tf.data.Dataset:
        return with_options(tf.data.Dataset.from_tensor_slices(names).apply(tfi.parallel_interleave(
            tf.data.TextLineDataset, cycle_length=2, block_length=2, sloppy=sloppy, prefetch_input_elements=2,
            buffer_output_elements=1)), symbolic=True)

    def go() -> None:
        whole, saved = save_everywhere(make, range(0, len(expected) + 1, 2), str(tmp_path / "ckpt"))
        check_rest(sloppy, expected, whole, [], "uninterrupted run")
        for position, (path, taken) in saved.items():
            check_rest(sloppy, expected, taken, restore_and_drain(make, path), f"restored at position {position}")

    bounded(go)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_restore_recreates_nested_iterators_and_skips_ahead(tfi: types.ModuleType, sloppy: bool,
                                                            tmp_path: Any) -> None:
    """Nested datasets that are slow to produce: the checkpoint is saved while every worker is mid-stream,
    with buffers in different states; the restored iterator re-makes them from the input elements."""
    sizes = (9, 9, 9, 9)
    opened: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def note_open(index: tf.Tensor) -> tf.Tensor:
        with lock:
            opened[int(index)] += 1
        return index

    def slow(value: tf.Tensor) -> tf.Tensor:
        time.sleep(0.002)
        return value

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        index = tf.reshape(tf.py_function(note_open, [index], tf.int64), [])
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + 9).map(
            lambda value: tf.reshape(tf.py_function(slow, [value], tf.int64), []))

    def make() -> tf.data.Dataset:
        return with_options(tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
            map_func, cycle_length=3, sloppy=sloppy, prefetch_input_elements=1, buffer_output_elements=4)),
            symbolic=True, inject_prefetch=False)

    expected = interleave_order(nested_values(sizes), 3, 1, 1, 4)

    def go() -> None:
        iterator = iter(make())
        taken = take(iterator, 11)
        time.sleep(0.05)
        path = save(iterator, str(tmp_path / "mid" / "ckpt"))
        del iterator
        with lock:
            opened.clear()
        rest = restore_and_drain(make, path)
        check_rest(sloppy, expected, taken, rest, "restored after 11 elements")
        # Inputs that had delivered elements were opened again (from their input element) to skip ahead.
        started = {value // STRIDE for value in taken}
        finished = {index for index in started if sum(1 for value in taken if value // STRIDE == index) == 9}
        with lock:
            reopened = set(opened)
        assert started - finished <= reopened, (started, finished, dict(opened))

    bounded(go)


def test_full_checkpoint_still_works_with_the_same_pipeline(tfi: types.ModuleType, tmp_path: Any) -> None:
    """Control: without the option the same pipeline saves a full checkpoint, also exactly once."""
    config = (3, 2, 1, 3)
    expected = interleave_order(nested_values(SIZES), *config)

    def make() -> tf.data.Dataset:
        cycle_length, block_length, prefetch, buffer = config
        return with_options(tf.data.Dataset.range(len(SIZES)).apply(tfi.parallel_interleave(
            sized_map_func(SIZES), cycle_length=cycle_length, block_length=block_length,
            prefetch_input_elements=prefetch, buffer_output_elements=buffer)), symbolic=False)

    def go() -> None:
        whole, saved = save_everywhere(make, [0, 5, 11, TOTAL], str(tmp_path))
        assert whole == expected
        for position, (path, taken) in saved.items():
            check_rest(False, expected, taken, restore_and_drain(make, path), f"restored at {position}")

    bounded(go)
