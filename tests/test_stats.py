"""Live statistics (``tf_interleave.stats()``) and ``stall_warning_seconds``.

``stats()`` returns plain Python data, one dict per live iterator, in eager mode,
with ``tf.function`` and in TF1 graph mode: elements and bytes per input with a
human label (the input element when it is a scalar string, else ``input #k``),
the time the consumer waited and on which input, sloppy skips, buffer fill, the
inputs skipped and retried.  ``stall_warning_seconds`` logs a warning naming the
input when the consumer waits on one input longer than that (a
``LOG(WARNING)`` line on stderr, checked in a subprocess) and counts it in
``stats()["stall_warnings"]``.
"""

from __future__ import annotations

import collections
import gc
import json
import math
import pathlib
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import tensorflow as tf

from pipelines import STRIDE, Straggler, nested_values, bounded, live_stats_ids, new_stats_entries, \
    run_child_script, the_new_stats_entry, SLOPPY_MODES
from reference_model import interleave_order

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
INT64_BYTES = 8

TOP_LEVEL_KEYS = {
    "elements": int, "bytes": int, "buffered_elements": int, "buffered_bytes": int,
    "memory_budget_bytes": int, "consumer_wait_seconds": float, "sloppy_skips": int, "promoted_inputs": int,
    "staged_elements": int, "inline_elements": int, "inline_pauses": int,
    "retries": int,
    "stall_warnings": int, "skipped_inputs": list, "inputs": list,
}
INPUT_KEYS = {
    "label": str, "state": str, "elements": int, "bytes": int, "buffered_elements": int, "buffered_bytes": int,
    "consumer_wait_seconds": float, "retries": int,
}


# ----------------------------------------------------------------------------- helpers



live_ids = live_stats_ids
new_entries = new_stats_entries
the_new_entry = the_new_stats_entry


def drain_with_entry(tfi: types.ModuleType, dataset: tf.data.Dataset) -> Tuple[List[int], Dict[str, Any]]:
    """Reads every int element of ``dataset``, then the stats entry of the iterator that read them."""
    before = live_ids(tfi)
    iterator = iter(dataset)
    values = [int(value) for value in iterator]
    return values, the_new_entry(tfi, before)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def wait_for_entry(tfi: types.ModuleType, before: set, predicate: Callable[[Dict[str, Any]], bool], what: str
                   ) -> Dict[str, Any]:
    """Polls the stats of the one new iterator until ``predicate`` holds; returns them."""

    def check() -> Optional[Dict[str, Any]]:
        entry = the_new_entry(tfi, before)
        return entry if predicate(entry) else None

    return wait_until(check, what=what)


def by_label(entry: Dict[str, Any], key: str) -> Dict[str, Any]:
    return {item["label"]: item[key] for item in entry["inputs"]}


def without_injected_prefetch(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """So that the op's element counts are exactly what the test has taken."""
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    return dataset.with_options(options)


def named_map_func(names: Sequence[str], sizes: Sequence[int]) -> Callable:
    """Input ``names[i]`` (a scalar string) yields ``STRIDE * i + j`` for ``j < sizes[i]``."""
    name_list = list(names)
    size_list = [int(size) for size in sizes]

    def map_func(name: tf.Tensor) -> tf.data.Dataset:
        index = tf.reduce_min(tf.where(tf.equal(tf.constant(name_list), name))[:, 0])
        size = tf.gather(tf.constant(size_list, tf.int64), index)
        base = tf.constant(STRIDE, tf.int64) * index
        return tf.data.Dataset.range(base, base + size)

    return map_func


def named_input(names: Sequence[str]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(list(names))


def held_map_func(names: Sequence[str], sizes: Sequence[int], straggler: Straggler, held: str) -> Callable:
    """``named_map_func`` whose input ``held`` holds each of its elements until the straggler's release."""
    base = named_map_func(names, sizes)

    def map_func(name: tf.Tensor) -> tf.data.Dataset:
        return base(name).map(lambda value: straggler.gate(value, tf.equal(name, held)))

    return map_func


def check_plain(value: Any, path: str = "stats()") -> None:
    """Only JSON-like Python values: dict (str keys), list, str, int, float, bool, None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r}"
            check_plain(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_plain(item, f"{path}[{index}]")
    else:
        assert value is None or isinstance(value, (str, int, float, bool)), f"{path}: {type(value).__name__}"
        if isinstance(value, float):
            assert math.isfinite(value), path


# ----------------------------------------------------------------------------- shape of the data


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_stats_are_plain_data_with_every_documented_field(tfi: types.ModuleType, sloppy: bool) -> None:
    names = ["a.rec", "b.rec", "c.rec"]
    dataset = without_injected_prefetch(named_input(names).apply(tfi.parallel_interleave(
        named_map_func(names, [3, 4, 2]), cycle_length=2, block_length=2, sloppy=sloppy)))

    def go() -> Dict[str, Any]:
        before = live_ids(tfi)
        iterator = iter(dataset)
        next(iterator)
        stats = tfi.stats()
        check_plain(stats)
        assert isinstance(stats, list)
        assert json.loads(json.dumps(stats)) == stats
        return the_new_entry(tfi, before)

    entry = bounded(go)
    for key, kind in TOP_LEVEL_KEYS.items():
        assert key in entry, key
        assert isinstance(entry[key], kind) and not isinstance(entry[key], bool), (key, entry[key])
    assert "waiting_on" in entry
    assert entry["waiting_on"] is None or isinstance(entry["waiting_on"], str)
    assert entry["sloppy"] is sloppy
    assert (entry["cycle_length"], entry["block_length"]) == (2, 2)
    assert entry["inputs"], entry
    for item in entry["inputs"]:
        for key, kind in INPUT_KEYS.items():
            assert isinstance(item[key], kind) and not isinstance(item[key], bool), (key, item)


def test_no_live_iterator_no_entry(tfi: types.ModuleType) -> None:
    before = live_ids(tfi)
    dataset = tf.data.Dataset.range(3).apply(tfi.parallel_interleave(
        lambda index: tf.data.Dataset.range(index), cycle_length=2))
    # A dataset alone is not an iterator.
    assert live_ids(tfi) - before == set()
    del dataset


# ----------------------------------------------------------------------------- eager, tf.function, graph


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_eager_counts_and_labels_then_gone_after_delete(tfi: types.ModuleType, sloppy: bool) -> None:
    names = ["train-0.tfrecord", "train-1.tfrecord", "train-2.tfrecord", "train-3.tfrecord"]
    sizes = [5, 3, 0, 4]
    dataset = without_injected_prefetch(named_input(names).apply(tfi.parallel_interleave(
        named_map_func(names, sizes), cycle_length=2, sloppy=sloppy)))

    def go() -> None:
        before = live_ids(tfi)
        iterator = iter(dataset)
        taken = [int(next(iterator)) for _ in range(5)]
        entry = the_new_entry(tfi, before)
        assert entry["elements"] == 5
        assert entry["bytes"] == 5 * INT64_BYTES
        # Per input: what the consumer took from it, under the input's file name.
        per_input = collections.Counter(names[value // STRIDE] for value in taken)
        elements = by_label(entry, "elements")
        assert set(elements) <= set(names), elements
        assert {label: count for label, count in elements.items() if count} == dict(per_input)
        for item in entry["inputs"]:
            assert item["bytes"] == INT64_BYTES * item["elements"], item

        rest = [int(value) for value in iterator]
        entry = the_new_entry(tfi, before)
        assert entry["elements"] == sum(sizes) == len(taken) + len(rest)
        assert entry["bytes"] == INT64_BYTES * sum(sizes)
        assert entry["inputs_opened"] == len(names) and entry["input_ended"] is True
        assert by_label(entry, "elements") == dict(zip(names, sizes))
        assert set(by_label(entry, "state").values()) == {"done"}
        assert entry["buffered_elements"] == 0 and entry["buffered_bytes"] == 0

        # Deleting the iterator removes it from the registry.
        del iterator
        gc.collect()
        wait_until(lambda: not new_entries(tfi, before), what="the deleted iterator to leave stats()")

    bounded(go)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_tf_function_iteration(tfi: types.ModuleType, sloppy: bool) -> None:
    sizes = [4, 4, 4]
    dataset = without_injected_prefetch(tf.data.Dataset.range(3).apply(tfi.parallel_interleave(
        lambda index: tf.data.Dataset.range(STRIDE * index, STRIDE * index + 4), cycle_length=3, sloppy=sloppy)))

    def go() -> None:
        before = live_ids(tfi)
        iterator = iter(dataset)

        @tf.function
        def step() -> tf.Tensor:
            return next(iterator)

        for _ in range(7):
            step()
        entry = the_new_entry(tfi, before)
        assert entry["elements"] == 7
        assert sum(by_label(entry, "elements").values()) == 7
        assert set(by_label(entry, "elements")) <= {f"input #{index}" for index in range(len(sizes))}

    bounded(go)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_graph_mode_session(tfi: types.ModuleType, sloppy: bool) -> None:
    names = ["x.csv", "y.csv", "z.csv"]
    sizes = [4, 2, 3]

    def go() -> None:
        before = live_ids(tfi)
        graph = tf.Graph()
        with graph.as_default():
            dataset = without_injected_prefetch(named_input(names).apply(tfi.parallel_interleave(
                named_map_func(names, sizes), cycle_length=2, sloppy=sloppy)))
            next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
            session = tf.compat.v1.Session(graph=graph)
            try:
                taken = [int(session.run(next_element)) for _ in range(5)]
                # Read from Python, outside any TensorFlow op.
                entry = the_new_entry(tfi, before)
                assert entry["elements"] == 5
                assert entry["bytes"] == 5 * INT64_BYTES
                elements = {label: count for label, count in by_label(entry, "elements").items() if count}
                assert elements == dict(collections.Counter(names[value // STRIDE] for value in taken))
                assert entry["sloppy"] is sloppy
            finally:
                session.close()
        del session, next_element, dataset, graph
        gc.collect()
        wait_until(lambda: not new_entries(tfi, before), what="the closed session's iterator to leave stats()")

    bounded(go)


def test_one_entry_per_live_iterator_oldest_first(tfi: types.ModuleType) -> None:
    dataset = without_injected_prefetch(tf.data.Dataset.range(4).apply(tfi.parallel_interleave(
        lambda index: tf.data.Dataset.range(5), cycle_length=2)))

    def go() -> None:
        before = live_ids(tfi)
        first, second = iter(dataset), iter(dataset)
        for _ in range(2):
            next(first)
        for _ in range(6):
            next(second)
        fresh = new_entries(tfi, before)
        assert [entry["elements"] for entry in fresh] == [2, 6]
        assert fresh[0]["id"] < fresh[1]["id"]
        del first
        gc.collect()
        remaining = wait_until(lambda: len(new_entries(tfi, before)) == 1 and new_entries(tfi, before),
                               what="the first iterator to leave stats()")
        assert remaining[0]["elements"] == 6
        del second

    bounded(go)


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("kind", ["int", "string_vector", "tuple"])
def test_label_is_input_index_unless_the_input_is_a_scalar_string(tfi: types.ModuleType, kind: str,
                                                                  sloppy: bool) -> None:
    sizes = [2, 3, 1]
    size_of = lambda index: tf.gather(tf.constant(sizes, tf.int64), index)  # noqa: E731
    if kind == "int":
        inputs = tf.data.Dataset.range(3)

        def map_func(index: tf.Tensor) -> tf.data.Dataset:
            return tf.data.Dataset.range(size_of(index))
    elif kind == "string_vector":
        # Strings, but not scalars.
        inputs = tf.data.Dataset.from_tensor_slices([["a", "x"], ["b", "y"], ["c", "z"]])

        def map_func(pair: tf.Tensor) -> tf.data.Dataset:
            index = tf.reduce_min(tf.where(tf.equal(tf.constant(["a", "b", "c"]), pair[0]))[:, 0])
            return tf.data.Dataset.range(size_of(index))
    else:
        # A scalar string inside a tuple.
        inputs = tf.data.Dataset.from_tensor_slices((["a.txt", "b.txt", "c.txt"], [0, 1, 2]))

        def map_func(name: tf.Tensor, index: tf.Tensor) -> tf.data.Dataset:
            return tf.data.Dataset.range(size_of(index))
    dataset = inputs.apply(tfi.parallel_interleave(map_func, cycle_length=2, sloppy=sloppy))

    def go() -> Dict[str, Any]:
        before = live_ids(tfi)
        iterator = iter(dataset)
        assert len(list(iterator)) == sum(sizes)
        return the_new_entry(tfi, before)

    entry = bounded(go)
    assert by_label(entry, "elements") == {f"input #{index}": size for index, size in enumerate(sizes)}


def test_long_string_label_is_kept_readable(tfi: types.ModuleType) -> None:
    long_name = "gs://bucket/" + "d" * 400 + "/part-00000.tfrecord"
    dataset = tf.data.Dataset.from_tensor_slices([long_name]).apply(tfi.parallel_interleave(
        lambda name: tf.data.Dataset.range(2), cycle_length=1))

    def go() -> Dict[str, Any]:
        before = live_ids(tfi)
        iterator = iter(dataset)
        list(iterator)
        return the_new_entry(tfi, before)

    (item,) = bounded(go)["inputs"]
    assert item["label"] and long_name.startswith(item["label"])
    assert item["elements"] == 2


# ----------------------------------------------------------------------------- buffer fill


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_buffer_fill(tfi: types.ModuleType, sloppy: bool) -> None:
    names = ["p0", "p1", "p2"]
    dataset = without_injected_prefetch(named_input(names).apply(tfi.parallel_interleave(
        named_map_func(names, [10, 10, 10]), cycle_length=2, sloppy=sloppy, prefetch_input_elements=1,
        buffer_output_elements=3)))

    def go() -> Dict[str, Any]:
        before = live_ids(tfi)
        iterator = iter(dataset)
        first = int(next(iterator))

        untouched = [name for name in names if name != names[first // STRIDE]]
        entry = wait_for_entry(
            tfi, before, lambda e: all(by_label(e, "buffered_elements").get(name) == 3 for name in untouched),
            "the untouched inputs' buffers to fill")
        for item in entry["inputs"]:
            assert 0 <= item["buffered_elements"] <= 3, item
            assert item["buffered_bytes"] == INT64_BYTES * item["buffered_elements"], item
        assert entry["buffered_elements"] == sum(item["buffered_elements"] for item in entry["inputs"])
        assert entry["buffered_bytes"] == INT64_BYTES * entry["buffered_elements"]
        assert 6 <= entry["buffered_elements"] <= 9
        assert by_label(entry, "elements")[names[first // STRIDE]] == 1
        assert set(by_label(entry, "state").values()) == {"open"}
        del iterator
        return entry

    bounded(go)


# ----------------------------------------------------------------------------- waits and sloppy skips


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_consumer_wait_on_the_only_input_is_timed_and_named(tfi: types.ModuleType, sloppy: bool) -> None:
    """One input, "slow.rec", whose first element is held for a while: the consumer waits on it."""
    names, sizes = ["slow.rec"], [3]
    straggler = Straggler()
    dataset = without_injected_prefetch(named_input(names).apply(tfi.parallel_interleave(
        held_map_func(names, sizes, straggler, "slow.rec"), cycle_length=1, sloppy=sloppy,
        prefetch_input_elements=0, buffer_output_elements=1)))
    held_seconds = 0.4

    def go() -> Tuple[Optional[str], Dict[str, Any]]:
        before = live_ids(tfi)
        iterator = iter(dataset)
        result: Dict[str, Any] = {}
        reader = threading.Thread(target=lambda: result.setdefault("value", int(next(iterator))), daemon=True)
        start = time.monotonic()
        reader.start()
        try:
            entry = wait_for_entry(tfi, before, lambda e: e["waiting_on"] not in (None, "the input dataset"),
                                   "the consumer to wait on an input")
            waiting_on = entry["waiting_on"]
            time.sleep(max(0.0, held_seconds - (time.monotonic() - start)))
        finally:
            straggler.release()
        reader.join(20)
        assert result.get("value") == 0
        rest = [int(value) for value in iterator]
        assert rest == [1, 2]
        return waiting_on, the_new_entry(tfi, before)

    waiting_on, entry = bounded(go)
    assert not straggler.timed_out
    assert waiting_on == "slow.rec", waiting_on
    assert entry["waiting_on"] is None
    assert entry["consumer_wait_seconds"] >= held_seconds * 0.9, entry
    assert by_label(entry, "consumer_wait_seconds")["slow.rec"] >= held_seconds * 0.9, entry["inputs"]


def test_deterministic_wait_names_the_input_in_turn(tfi: types.ModuleType) -> None:
    names, sizes = ["a.rec", "b.rec", "c.rec"], [4, 4, 4]
    straggler = Straggler()
    dataset = without_injected_prefetch(named_input(names).apply(tfi.parallel_interleave(
        held_map_func(names, sizes, straggler, "b.rec"), cycle_length=3, sloppy=False)))

    def go() -> Tuple[List[int], Dict[str, Any]]:
        before = live_ids(tfi)
        iterator = iter(dataset)
        first = int(next(iterator))
        reader_result: List[int] = []
        reader = threading.Thread(target=lambda: reader_result.append(int(next(iterator))), daemon=True)
        reader.start()
        try:
            wait_for_entry(tfi, before, lambda e: e["waiting_on"] == "b.rec", "waiting_on == 'b.rec'")
            time.sleep(0.2)
        finally:
            straggler.release()
        reader.join(20)
        values = [first] + reader_result + [int(value) for value in iterator]
        return values, the_new_entry(tfi, before)

    values, entry = bounded(go)
    assert values == interleave_order(nested_values(sizes), 3, 1)
    waits = by_label(entry, "consumer_wait_seconds")
    assert waits["b.rec"] >= 0.2 and waits["b.rec"] <= entry["consumer_wait_seconds"] + 1e-6, entry
    assert entry["sloppy_skips"] == 0


def test_sloppy_skips_are_counted(tfi: types.ModuleType) -> None:
    names, sizes = ["held.rec", "a.rec", "b.rec"], [3, 5, 5]
    straggler = Straggler()
    dataset = without_injected_prefetch(named_input(names).apply(tfi.parallel_interleave(
        held_map_func(names, sizes, straggler, "held.rec"), cycle_length=3, sloppy=True)))

    def go() -> Tuple[List[int], Dict[str, Any], Dict[str, Any]]:
        before = live_ids(tfi)
        iterator = iter(dataset)
        try:
            head = [int(next(iterator)) for _ in range(6)]
            during = the_new_entry(tfi, before)
        finally:
            straggler.release()
        values = head + [int(value) for value in iterator]
        return values, during, the_new_entry(tfi, before)

    values, during, after = bounded(go)
    assert sorted(values) == sorted(value for nested in nested_values(sizes) for value in nested)
    assert all(value // STRIDE != 0 for value in values[:6]), values
    assert during["sloppy_skips"] >= 1, during
    assert after["sloppy_skips"] >= during["sloppy_skips"]


def test_deterministic_mode_never_counts_sloppy_skips(tfi: types.ModuleType) -> None:
    names, sizes = ["held.rec", "a.rec", "b.rec"], [3, 5, 5]
    straggler = Straggler()
    dataset = named_input(names).apply(tfi.parallel_interleave(
        held_map_func(names, sizes, straggler, "held.rec"), cycle_length=3, sloppy=False))

    def go() -> Dict[str, Any]:
        before = live_ids(tfi)
        timer = straggler.release_later(0.2)
        try:
            iterator = iter(dataset)
            values = [int(value) for value in iterator]
        finally:
            timer.cancel()
            straggler.release()
        assert values == interleave_order(nested_values(sizes), 3, 1)
        return the_new_entry(tfi, before)

    entry = bounded(go)
    assert entry["sloppy_skips"] == 0
    assert entry["consumer_wait_seconds"] > 0


# ----------------------------------------------------------------------------- skipped and retried inputs


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_skipped_and_retried_inputs_are_listed(tfi: types.ModuleType, sloppy: bool) -> None:
    names = ["ok.rec", "flaky.rec", "broken.rec", "fine.rec"]
    sizes = [4, 5, 6, 3]
    attempts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def check(index: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        index, position = int(index), int(value) - STRIDE * int(index)
        if (index, position) in ((1, 1), (2, 2)):
            with lock:
                attempts[index] += 1
                attempt = attempts[index]
            if index == 2 or attempt == 1:  # "flaky" fails once, "broken" always
                raise RuntimeError(f"read error in {names[index]} at {position}")
        return value

    def map_func(name: tf.Tensor) -> tf.data.Dataset:
        index = tf.reduce_min(tf.where(tf.equal(tf.constant(names), name))[:, 0])
        size = tf.gather(tf.constant(sizes, tf.int64), index)
        base = tf.constant(STRIDE, tf.int64) * index
        return tf.data.Dataset.range(base, base + size).map(
            lambda value: tf.reshape(tf.py_function(check, [index, value], tf.int64), []))

    dataset = named_input(names).apply(tfi.parallel_interleave(
        map_func, cycle_length=2, sloppy=sloppy, on_input_error="skip", input_retries=1))

    values, entry = bounded(drain_with_entry, tfi, dataset)
    expected = interleave_order(nested_values([4, 5, 2, 3]), 2, 1)
    assert (sorted(values) == sorted(expected)) if sloppy else (values == expected)
    assert entry["retries"] == 2
    assert by_label(entry, "retries") == {"ok.rec": 0, "flaky.rec": 1, "broken.rec": 1, "fine.rec": 0}
    assert by_label(entry, "state") == {"ok.rec": "done", "flaky.rec": "done", "broken.rec": "skipped",
                                        "fine.rec": "done"}
    assert by_label(entry, "elements") == {"ok.rec": 4, "flaky.rec": 5, "broken.rec": 2, "fine.rec": 3}
    (skipped,) = entry["skipped_inputs"]
    assert skipped["label"] == "broken.rec"
    assert skipped["element_index"] == 2
    assert "read error in broken.rec at 2" in skipped["error"]


# ----------------------------------------------------------------------------- stall warnings


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, float("nan"), float("inf")], ids=repr)
def test_stall_warning_seconds_must_be_positive(tfi: types.ModuleType, value: float) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        tf.data.Dataset.range(2).apply(tfi.parallel_interleave(
            lambda index: tf.data.Dataset.range(index), cycle_length=2, stall_warning_seconds=value))
    assert "stall_warning_seconds" in str(raised.value)
    assert repr(value) in str(raised.value) or str(value) in str(raised.value)


@pytest.mark.parametrize("value", ["1", True, [1.0]], ids=repr)
def test_stall_warning_seconds_must_be_a_number(tfi: types.ModuleType, value: Any) -> None:
    with pytest.raises(TypeError) as raised:
        tf.data.Dataset.range(2).apply(tfi.parallel_interleave(
            lambda index: tf.data.Dataset.range(index), cycle_length=2, stall_warning_seconds=value))
    assert "stall_warning_seconds" in str(raised.value)


def _stall_dataset(tfi: types.ModuleType, sloppy: bool, straggler: Straggler, threshold: float
                   ) -> Tuple[tf.data.Dataset, List[str], List[int]]:
    # Deterministic: the consumer waits on "slow.rec" while "fast.rec" has elements.
    # Sloppy: "slow.rec" is the only input, so the consumer can only wait on it.
    names, sizes = (["slow.rec"], [3]) if sloppy else (["fast.rec", "slow.rec"], [3, 3])
    dataset = named_input(names).apply(tfi.parallel_interleave(
        held_map_func(names, sizes, straggler, "slow.rec"), cycle_length=len(names), sloppy=sloppy,
        stall_warning_seconds=threshold))
    return dataset, names, sizes


def _drain_released_later(tfi: types.ModuleType, dataset: tf.data.Dataset, straggler: Straggler,
                          release_after_seconds: float) -> Tuple[List[int], Dict[str, Any]]:
    """Drains ``dataset`` while a timer releases the straggler; returns the values and the iterator's stats.

    Not ``pipelines.drain_with_late_straggler``: the iterator must still be alive when its stats
    entry is read (``stats()`` lists live iterators only).
    """
    def go() -> Tuple[List[int], Dict[str, Any]]:
        before = live_ids(tfi)
        timer = straggler.release_later(release_after_seconds)
        try:
            iterator = iter(dataset)
            values = [int(value) for value in iterator]
        finally:
            timer.cancel()
            straggler.release()
        return values, the_new_entry(tfi, before)

    return bounded(go)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_stall_is_counted_once_per_long_wait(tfi: types.ModuleType, sloppy: bool) -> None:
    straggler = Straggler()
    dataset, names, sizes = _stall_dataset(tfi, sloppy, straggler, threshold=0.15)
    values, entry = _drain_released_later(tfi, dataset, straggler, release_after_seconds=0.7)
    assert sorted(values) == sorted(value for nested in nested_values(sizes) for value in nested)
    # One wait of ~0.7 s on "slow.rec" (the held elements are released together): one warning.
    assert entry["stall_warnings"] == 1, entry


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_no_stall_warning_below_the_threshold(tfi: types.ModuleType, sloppy: bool) -> None:
    straggler = Straggler()
    dataset, _, _ = _stall_dataset(tfi, sloppy, straggler, threshold=10.0)
    _, entry = _drain_released_later(tfi, dataset, straggler, release_after_seconds=0.2)
    assert entry["stall_warnings"] == 0, entry


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_a_stall_through_retry_delays_is_warned_about(tfi: types.ModuleType, sloppy: bool) -> None:
    """The only input fails to open five times, then reads: ~1.5 s of retry delays.

    No call runs meanwhile, yet the input blocks the cycle. A sloppy consumer is
    woken as each delay begins (staged inputs may give then): the stall spans
    those waits and is warned about once, as in deterministic mode.
    """
    failures_left = [5]

    def open_or_fail(value: tf.Tensor) -> tf.Tensor:
        if failures_left[0] > 0:
            failures_left[0] -= 1
            raise ValueError("the file is not there yet")
        return value

    def map_func(name: tf.Tensor) -> tf.data.Dataset:
        first = tf.reshape(tf.py_function(open_or_fail, [tf.constant(0, tf.int64)], tf.int64), [])
        return tf.data.Dataset.range(3).map(lambda value: value + first)

    dataset = named_input(["late.rec"]).apply(tfi.parallel_interleave(
        map_func, cycle_length=1, sloppy=sloppy, input_retries=6, stall_warning_seconds=0.3))

    values, entry = bounded(drain_with_entry, tfi, dataset)
    assert values == [0, 1, 2]
    assert entry["retries"] == 5, entry
    assert entry["stall_warnings"] == 1, entry


_STALL_SCRIPT = r"""
import json, time
import tensorflow as tf
import tf_interleave

def sleepy(value, seconds):
    time.sleep(float(seconds))
    return value

def map_func_for(names, delays):
    def map_func(name):
        index = tf.reduce_min(tf.where(tf.equal(tf.constant(names), name))[:, 0])
        delay = tf.gather(tf.constant(delays, tf.float64), index)
        # Only the first element of an input is slow.
        return tf.data.Dataset.range(3).map(lambda value: tf.reshape(tf.py_function(
            sleepy, [value, tf.where(tf.equal(value, 0), delay, tf.constant(0.0, tf.float64))], tf.int64), []))
    return map_func

scenarios = {
    # Deterministic: the consumer waits on "det-slow.rec" while "det-fast.rec" is ready.
    "det": (["det-fast.rec", "det-slow.rec"], [0.0, 1.2], False, 0.3),
    # Sloppy: "sloppy-slow.rec" is the only input.
    "sloppy": (["sloppy-slow.rec"], [1.2], True, 0.3),
    # Below the threshold: no warning.
    "quiet": (["quiet-a.rec", "quiet-b.rec"], [0.0, 0.2], False, 5.0),
}
results = {}
for key, (names, delays, sloppy, threshold) in scenarios.items():
    dataset = tf.data.Dataset.from_tensor_slices(names).apply(tf_interleave.parallel_interleave(
        map_func_for(names, delays), cycle_length=len(names), sloppy=sloppy,
        stall_warning_seconds=threshold))
    iterator = iter(dataset)
    count = len(list(iterator))
    (entry,) = [e for e in tf_interleave.stats() if any(i["label"] in names for i in e["inputs"])]
    results[key] = {"count": count, "stall_warnings": entry["stall_warnings"]}
    del iterator
print("RESULT " + json.dumps(results), flush=True)
"""


def test_stall_warning_is_logged_naming_the_input(tfi: types.ModuleType) -> None:
    completed, results = run_child_script(tfi, _STALL_SCRIPT)
    warnings = [line for line in completed.stderr.splitlines()
                if "tf_interleave: the consumer has waited" in line]
    problems = []
    for key, label in (("det", "det-slow.rec"), ("sloppy", "sloppy-slow.rec")):
        if results[key]["count"] != 3 * (2 if key == "det" else 1):
            problems.append(f"{key}: {results[key]['count']} elements")
        named = [line for line in warnings if label in line]
        if len(named) != 1:
            problems.append(f"{key}: expected one warning naming {label!r}, got {named}")
        if results[key]["stall_warnings"] != 1:
            problems.append(f"{key}: stats()['stall_warnings'] == {results[key]['stall_warnings']}, expected 1")
    assert not [line for line in warnings if "quiet" in line or "fast" in line], warnings
    assert results["quiet"]["stall_warnings"] == 0
    assert not problems, (problems, warnings)
