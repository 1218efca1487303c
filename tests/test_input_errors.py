"""Bad-input isolation: ``on_input_error``, ``max_skipped_inputs`` and ``input_retries``.

* ``on_input_error="skip"``: an error of a nested dataset or of ``map_func`` drops the
  rest of that input; in deterministic mode the output is exactly the order of a
  run where that input had ended at the failing element (the reference model on
  the truncated nested sizes); in sloppy mode the same multiset.  Each skipped input
  is recorded in ``stats()`` (label, element index, error text) and logged once.
* ``max_skipped_inputs``: one skip more than allowed is delivered as an error that
  lists the inputs skipped so far.
* ``input_retries``: a transient error is overcome by reopening the input and
  passing over what it already produced, so the output equals the error-free run.

Errors at known positions come from ``tf.strings.to_number`` on the string "bad";
transient errors from a ``tf.py_function`` with a Python-side counter.
"""

from __future__ import annotations

import collections
import pathlib
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import tensorflow as tf

from pipelines import STRIDE, MAX_STEPS, Failure, SLOPPY_MODES, nested_values, to_python, bounded, drain_iterator, \
    run_child_script
from reference_model import interleave_order

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def drain(iterator) -> List[Any]:
    """Reads ``iterator`` to its end; each delivered error becomes a ``Failure``."""
    return drain_iterator(iterator)


def drain_with_messages(iterator) -> Tuple[List[Any], List[str]]:
    """Like ``drain``, also returning the messages of the delivered errors."""
    values: List[Any] = []
    messages: List[str] = []
    for _ in range(MAX_STEPS):
        try:
            element = next(iterator)
        except StopIteration:
            return values, messages
        except tf.errors.OpError as error:
            values.append(Failure(type(error).__name__))
            messages.append(error.message)
        else:
            values.append(to_python(element.numpy()))
    raise AssertionError(f"iterator did not end within {MAX_STEPS} steps")


def new_stats_entry(before_ids: set) -> Dict[str, Any]:
    """The stats of the one iterator that appeared since ``before_ids`` was taken."""
    import tf_interleave

    fresh = [entry for entry in tf_interleave.stats() if entry["id"] not in before_ids]
    assert len(fresh) == 1, f"expected one new live iterator in stats(), got {fresh}"
    return fresh[0]


def live_ids() -> set:
    import tf_interleave

    return {entry["id"] for entry in tf_interleave.stats()}


def failing_map_func(sizes: Sequence[int], bad_at: Sequence[Optional[int]]) -> Callable:
    """Input ``i`` yields ``STRIDE * i + j`` for ``j < sizes[i]``; element ``bad_at[i]`` is an error.

    The error comes from parsing the string "bad" as a number inside the nested
    dataset's ``map``, so only that element fails and the nested iterator goes on
    afterwards (the legacy semantics of a ``map`` error).
    """
    size_list = [int(size) for size in sizes]
    bad_list = [-1 if bad is None else int(bad) for bad in bad_at]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(size_list, tf.int64), index)
        bad = tf.gather(tf.constant(bad_list, tf.int64), index)
        base = tf.constant(STRIDE, tf.int64) * index

        def parse(value: tf.Tensor) -> tf.Tensor:
            text = tf.where(tf.equal(value - base, bad), tf.constant("bad"), tf.strings.as_string(value))
            return tf.strings.to_number(text, tf.int64)

        return tf.data.Dataset.range(base, base + size).map(parse)

    return map_func


def truncated(sizes: Sequence[int], bad_at: Sequence[Optional[int]]) -> List[int]:
    """Nested sizes as if each failing input had ended at its bad element."""
    return [size if bad is None or bad >= size else bad for size, bad in zip(sizes, bad_at)]


def failing_inputs(sizes: Sequence[int], bad_at: Sequence[Optional[int]]) -> Dict[int, int]:
    """``{input index: element index of its error}`` for the inputs that do fail."""
    return {index: bad for index, (size, bad) in enumerate(zip(sizes, bad_at)) if bad is not None and bad < size}


class FlakyElements:
    """A nested-dataset map step that raises once (or always) at chosen positions.

    ``fail_at[i]`` is the element position of input ``i`` that fails; with
    ``times`` the number of consecutive attempts that fail there (None: always).
    The attempt counter lives in this process (``tf.py_function`` runs here).
    """

    def __init__(self, fail_at: Dict[int, int], times: Optional[int] = 1) -> None:
        self.fail_at = dict(fail_at)
        self.times = times
        self.attempts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def _check(self, index: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        index, value = int(index), int(value)
        if self.fail_at.get(index) == value - STRIDE * index:
            with self.lock:
                self.attempts[index] += 1
                attempt = self.attempts[index]
            if self.times is None or attempt <= self.times:
                raise RuntimeError(f"transient read error in input {index} (attempt {attempt})")
        return tf.constant(value, tf.int64)

    def map_func(self, sizes: Sequence[int]) -> Callable:
        size_list = [int(size) for size in sizes]

        def map_func(index: tf.Tensor) -> tf.data.Dataset:
            size = tf.gather(tf.constant(size_list, tf.int64), index)
            base = tf.constant(STRIDE, tf.int64) * index
            return tf.data.Dataset.range(base, base + size).map(
                lambda value: tf.reshape(tf.py_function(self._check, [index, value], tf.int64), []))

        return map_func


def with_marker(nested: List[List[Any]], where: Dict[int, int], marker: Any, replace: bool) -> List[List[Any]]:
    """Puts ``marker`` at ``where[i]`` of each nested list (replacing or inserting)."""
    out = [list(values) for values in nested]
    for index, position in where.items():
        if replace:
            out[index][position] = marker
        else:
            out[index].insert(position, marker)
    return out


def check_output(sloppy: bool, got: List[Any], expected: List[Any]) -> None:
    if sloppy:
        assert collections.Counter(got) == collections.Counter(expected), (got, expected)
        assert len(got) == len(expected)
    else:
        assert got == expected


def run(tfi: types.ModuleType, sizes: Sequence[int], map_func: Callable, **kwargs: Any
        ) -> Tuple[List[Any], Dict[str, Any]]:
    """Drains the interleave of ``range(len(sizes))``; returns the output and the final stats."""
    dataset = tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(map_func, **kwargs))

    def go() -> Tuple[List[Any], Dict[str, Any]]:
        before = live_ids()
        iterator = iter(dataset)
        values = drain(iterator)
        entry = new_stats_entry(before)
        del iterator
        return values, entry

    return bounded(go)


# ----------------------------------------------------------------------------- arguments


BAD_VALUES = [
    # (keyword arguments, exception type, text the message must contain)
    (dict(on_input_error="ignore"), tf.errors.InvalidArgumentError, ["on_input_error", "ignore"]),
    (dict(on_input_error="SKIP"), tf.errors.InvalidArgumentError, ["on_input_error", "SKIP"]),
    (dict(on_input_error=""), tf.errors.InvalidArgumentError, ["on_input_error"]),
    (dict(on_input_error=1), TypeError, ["on_input_error", "1"]),
    (dict(on_input_error=None), TypeError, ["on_input_error", "None"]),
    (dict(on_input_error="skip", max_skipped_inputs=-2), tf.errors.InvalidArgumentError,
     ["max_skipped_inputs", "-2"]),
    (dict(on_input_error="skip", max_skipped_inputs=-1), tf.errors.InvalidArgumentError,
     ["max_skipped_inputs", "-1"]),
    (dict(on_input_error="skip", max_skipped_inputs=2.5), TypeError, ["max_skipped_inputs", "2.5"]),
    (dict(on_input_error="skip", max_skipped_inputs="3"), TypeError, ["max_skipped_inputs", "3"]),
    (dict(on_input_error="skip", max_skipped_inputs=True), TypeError, ["max_skipped_inputs", "True"]),
    # A limit on skips makes no sense when nothing is skipped.
    (dict(max_skipped_inputs=3), tf.errors.InvalidArgumentError, ["max_skipped_inputs", "on_input_error"]),
    (dict(input_retries=-1), tf.errors.InvalidArgumentError, ["input_retries", "-1"]),
    (dict(input_retries=-7), tf.errors.InvalidArgumentError, ["input_retries", "-7"]),
    (dict(input_retries=1.5), TypeError, ["input_retries", "1.5"]),
    (dict(input_retries="2"), TypeError, ["input_retries", "2"]),
    (dict(input_retries=False), TypeError, ["input_retries", "False"]),
    (dict(produce_inline="no"), TypeError, ["produce_inline", "no"]),
    (dict(produce_inline=None), TypeError, ["produce_inline", "None"]),
    (dict(produce_inline=0), TypeError, ["produce_inline", "0"]),
    # Too big for the op's int64 attrs: said so, not "must be >= ...".
    (dict(input_retries=2**70), tf.errors.InvalidArgumentError, ["input_retries", "int64", str(2**70)]),
    (dict(memory_budget_bytes=2**63), tf.errors.InvalidArgumentError,
     ["memory_budget_bytes", "int64", str(2**63)]),
    (dict(stall_warning_seconds=float("inf")), tf.errors.InvalidArgumentError,
     ["stall_warning_seconds", "finite", "inf"]),
]


@pytest.mark.parametrize("kwargs, error_type, words", BAD_VALUES,
                         ids=[repr(kwargs) for kwargs, _, _ in BAD_VALUES])
@pytest.mark.parametrize("graph_mode", [False, True], ids=["eager", "graph"])
def test_invalid_arguments_are_rejected(tfi: types.ModuleType, kwargs: Dict[str, Any], error_type: type,
                                        words: List[str], graph_mode: bool) -> None:
    def build() -> None:
        tf.data.Dataset.range(3).apply(
            tfi.parallel_interleave(failing_map_func([2, 2, 2], [None] * 3), cycle_length=2, **kwargs))

    if graph_mode:
        with tf.Graph().as_default():
            with pytest.raises(error_type) as raised:
                build()
    else:
        with pytest.raises(error_type) as raised:
            build()
    message = str(raised.value)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("kwargs", [
    dict(on_input_error="raise"),
    dict(on_input_error="skip"),
    dict(on_input_error="skip", max_skipped_inputs=0),
    dict(on_input_error="skip", max_skipped_inputs=None, input_retries=0),
    dict(input_retries=0),
    dict(input_retries=None),
    dict(input_retries=3),
    dict(on_input_error="skip", max_skipped_inputs=5, input_retries=2),
    dict(produce_inline=False),
    dict(produce_inline=True),
], ids=repr)
def test_valid_arguments_accepted_and_output_unchanged(tfi: types.ModuleType, kwargs: Dict[str, Any]) -> None:
    sizes = [3, 1, 4, 2]
    values, _ = run(tfi, sizes, failing_map_func(sizes, [None] * 4), cycle_length=2, block_length=2, **kwargs)
    assert values == interleave_order(nested_values(sizes), 2, 2)


# ----------------------------------------------------------------------------- on_input_error="raise"


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_raise_is_the_default_and_delivers_errors_in_place(tfi: types.ModuleType, sloppy: bool) -> None:
    sizes = [4, 3, 5, 2, 4]
    bad_at = [1, None, 0, None, 3]
    errors = failing_inputs(sizes, bad_at)
    expected = interleave_order(
        with_marker(nested_values(sizes), errors, Failure("InvalidArgumentError"), replace=True), 2, 1)
    for kwargs in (dict(), dict(on_input_error="raise")):
        values, entry = run(tfi, sizes, failing_map_func(sizes, bad_at), cycle_length=2, sloppy=sloppy, **kwargs)
        check_output(sloppy, values, expected)
        assert entry["skipped_inputs"] == []
        assert entry["retries"] == 0


# ----------------------------------------------------------------------------- on_input_error="skip"

# (sizes, bad element per input): errors at the first element, mid-stream, at the last
# element, past the end (never reached), and inputs without errors.
SKIP_CASES = [
    ((5, 3, 6, 0, 4, 7, 2, 5), (2, None, 0, None, 3, 6, None, 9)),
    ((4, 4, 4, 4, 4, 4), (0, 1, 2, 3, None, 0)),
    ((6, 2, 1, 7, 3), (None, None, 0, 5, 1)),
]
# (cycle_length, block_length, prefetch_input_elements, buffer_output_elements)
SKIP_CONFIGS = [
    (2, 1, None, None),
    (3, 2, 1, 1),
    (2, 3, 0, 4),
    (1, 2, 2, 1),
    (4, 1, 2, 3),
]


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", SKIP_CONFIGS, ids=lambda c: "c{}_b{}_p{}_o{}".format(*c))
@pytest.mark.parametrize("case", range(len(SKIP_CASES)), ids=lambda i: f"case{i}")
def test_skip_is_as_if_the_input_had_ended_there(tfi: types.ModuleType, case: int,
                                                 config: Tuple[int, int, Optional[int], Optional[int]],
                                                 sloppy: bool) -> None:
    sizes, bad_at = SKIP_CASES[case]
    cycle_length, block_length, prefetch, buffer = config
    values, entry = run(tfi, sizes, failing_map_func(sizes, bad_at), cycle_length=cycle_length,
                        block_length=block_length, sloppy=sloppy, prefetch_input_elements=prefetch,
                        buffer_output_elements=buffer, on_input_error="skip")
    expected = interleave_order(nested_values(truncated(sizes, bad_at)), cycle_length, block_length, prefetch,
                                buffer)
    check_output(sloppy, values, expected)

    # Every skipped input is recorded once, with its label, element index and error text.
    errors = failing_inputs(sizes, bad_at)
    recorded = {(skipped["label"], skipped["element_index"]) for skipped in entry["skipped_inputs"]}
    assert len(entry["skipped_inputs"]) == len(errors), entry["skipped_inputs"]
    assert recorded == {(f"input #{index}", position) for index, position in errors.items()}
    for skipped in entry["skipped_inputs"]:
        assert "bad" in skipped["error"], skipped
        assert skipped["source"] == int(skipped["label"].split("#")[1])
    states = {item["label"]: item["state"] for item in entry["inputs"]}
    for index in errors:
        assert states.get(f"input #{index}") == "skipped", entry["inputs"]
    for index in set(range(len(sizes))) - set(errors):
        assert states.get(f"input #{index}") == "done", entry["inputs"]


def named_inputs_map_func(names: Sequence[str]) -> Callable:
    """Input elements are file-like names "<count>.txt"; ``map_func`` parses the count.

    Parsing fails for a name that is not a number, so ``map_func`` itself raises
    for that input (no nested dataset is made at all).
    """

    def map_func(name: tf.Tensor) -> tf.data.Dataset:
        count = tf.strings.to_number(tf.strings.regex_replace(name, r"\.txt$", ""), tf.int64)
        return tf.data.Dataset.range(count).map(
            lambda j: tf.strings.join([name, tf.constant("#"), tf.strings.as_string(j)]))

    return map_func


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("block_length", [1, 2])
def test_skip_map_func_error_drops_the_whole_input(tfi: types.ModuleType, sloppy: bool, block_length: int) -> None:
    names = ["3.txt", "2.txt", "oops.txt", "4.txt", "0.txt", "?.txt", "5.txt", "1.txt"]
    failing = {"oops.txt", "?.txt"}
    dataset = tf.data.Dataset.from_tensor_slices(names).apply(tfi.parallel_interleave(
        named_inputs_map_func(names), cycle_length=3, block_length=block_length, sloppy=sloppy,
        prefetch_input_elements=1, on_input_error="skip"))

    def go() -> Tuple[List[Any], Dict[str, Any]]:
        before = live_ids()
        iterator = iter(dataset)
        values = drain(iterator)
        return values, new_stats_entry(before)

    values, entry = bounded(go)
    nested = [[] if name in failing else [f"{name}#{j}".encode() for j in range(int(name[:-4]))] for name in names]
    check_output(sloppy, values, interleave_order(nested, 3, block_length, 1, None))
    skipped = sorted((item["label"], item["element_index"]) for item in entry["skipped_inputs"])
    assert skipped == sorted((name, 0) for name in failing)
    for item in entry["skipped_inputs"]:
        # The error text is the one map_func raised: it names the string it could not parse.
        assert "could not correctly convert string: " + item["label"][:-4] in item["error"], item


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_skip_in_tf_function_and_graph_mode(tfi: types.ModuleType, sloppy: bool) -> None:
    sizes = [3, 5, 2, 4]
    bad_at = [None, 2, 0, 3]
    expected = interleave_order(nested_values(truncated(sizes, bad_at)), 2, 1)

    def make() -> tf.data.Dataset:
        return tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
            failing_map_func(sizes, bad_at), cycle_length=2, sloppy=sloppy, on_input_error="skip"))

    @tf.function
    def total() -> tf.Tensor:
        return make().reduce(tf.constant(0, tf.int64), lambda state, value: state + value)

    assert int(bounded(total)) == sum(expected)

    def in_graph() -> List[int]:
        with tf.Graph().as_default():
            next_element = tf.compat.v1.data.make_one_shot_iterator(make()).get_next()
            values = []
            with tf.compat.v1.Session() as session:
                for _ in range(MAX_STEPS):
                    try:
                        values.append(int(session.run(next_element)))
                    except tf.errors.OutOfRangeError:
                        return values
        raise AssertionError("graph iterator did not end")

    check_output(sloppy, bounded(in_graph), expected)


# ----------------------------------------------------------------------------- max_skipped_inputs


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("limit", [0, 1, 3])
def test_one_skip_more_than_allowed_raises_listing_the_skipped_inputs(tfi: types.ModuleType, sloppy: bool,
                                                                      limit: int) -> None:
    # limit + 1 inputs fail; the others are fine.
    names = [f"part-{index}.rec" for index in range(limit + 3)]
    sizes = [4] * len(names)
    bad_at: List[Optional[int]] = [2 if index <= limit else None for index in range(len(names))]
    dataset = tf.data.Dataset.from_tensor_slices(names).apply(tfi.parallel_interleave(
        named_failing_map_func(names, sizes, bad_at), cycle_length=2, sloppy=sloppy, on_input_error="skip",
        max_skipped_inputs=limit))

    def go() -> Tuple[List[Any], List[str], Dict[str, Any]]:
        before = live_ids()
        iterator = iter(dataset)
        values, messages = drain_with_messages(iterator)
        return values, messages, new_stats_entry(before)

    values, messages, entry = bounded(go)
    assert len(messages) == 1, messages
    assert values.count(Failure("InvalidArgumentError")) == 1, values
    skipped_labels = [item["label"] for item in entry["skipped_inputs"]]
    assert len(skipped_labels) == limit, entry["skipped_inputs"]
    assert set(skipped_labels) <= set(names[:limit + 1])
    message = messages[0]
    assert "max_skipped_inputs" in message, message
    for label in skipped_labels:
        assert label in message, (label, message)
    # The input that hit the limit is the one failing input not skipped, and it is named.
    (raising,) = set(names[:limit + 1]) - set(skipped_labels)
    assert raising in message, message
    # Nothing else is lost: every element before each input's error is delivered.
    good = [value for value in values if not isinstance(value, Failure)]
    expected = [STRIDE * index + j for index, size in enumerate(truncated(sizes, bad_at)) for j in range(size)]
    assert sorted(good) == sorted(expected)


def named_failing_map_func(names: Sequence[str], sizes: Sequence[int], bad_at: Sequence[Optional[int]],
                           delays: Optional[Sequence[float]] = None) -> Callable:
    """``failing_map_func`` for string inputs (looked up by name), optionally slowed down per input."""
    by_index = failing_map_func(sizes, bad_at)
    name_list = list(names)
    delay_list = [0.0] * len(names) if delays is None else [float(delay) for delay in delays]

    def sleep(value: tf.Tensor, seconds: tf.Tensor) -> tf.Tensor:
        if float(seconds) > 0:
            time.sleep(float(seconds))
        return value

    def map_func(name: tf.Tensor) -> tf.data.Dataset:
        index = tf.reduce_min(tf.where(tf.equal(tf.constant(name_list), name))[:, 0])
        delay = tf.gather(tf.constant(delay_list, tf.float64), index)
        dataset = by_index(index)
        if delays is None:
            return dataset
        return dataset.map(lambda value: tf.reshape(tf.py_function(sleep, [value, delay], tf.int64), []))

    return map_func


def test_skip_limit_counts_skips_in_the_deterministic_order(tfi: types.ModuleType) -> None:
    """Which input is skipped and which one raises must not depend on worker timing.

    cycle_length=1: input "first.rec" (slow: 50 ms per element) is read before
    "second.rec" (instant, prefetched).  Both fail; max_skipped_inputs=1.  In the
    deterministic order "first.rec" fails first, so it is the skipped one and
    "second.rec" raises, after its two good elements -- even though the worker of
    "second.rec" reaches its error long before the worker of "first.rec" does.
    """
    names = ["first.rec", "second.rec"]
    sizes = [6, 6]
    bad_at = [4, 2]
    dataset = tf.data.Dataset.from_tensor_slices(names).apply(tfi.parallel_interleave(
        named_failing_map_func(names, sizes, bad_at, delays=[0.05, 0.0]), cycle_length=1,
        prefetch_input_elements=1, buffer_output_elements=4, sloppy=False, on_input_error="skip",
        max_skipped_inputs=1))

    def go() -> Tuple[List[Any], List[str]]:
        return drain_with_messages(iter(dataset))

    values, messages = bounded(go)
    limit_error = Failure("InvalidArgumentError")
    assert values == [0, 1, 2, 3, 1000, 1001, limit_error], (values, messages)
    assert "second.rec" in messages[0] and "first.rec" in messages[0], messages


# ----------------------------------------------------------------------------- input_retries

RETRY_SIZES = (6, 4, 7, 3, 5, 8)
# Input -> element position that fails once (input 3 never fails).
RETRY_FAILURES = {0: 2, 1: 0, 2: 6, 4: 4, 5: 5}


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("on_input_error", ["raise", "skip"])
@pytest.mark.parametrize("config", [(2, 1, None, 8), (3, 2, 1, 2), (1, 3, 2, 6)],
                         ids=lambda c: "c{}_b{}_p{}_o{}".format(*c))
def test_retry_makes_a_transient_error_invisible(tfi: types.ModuleType, sloppy: bool, on_input_error: str,
                                                 config: Tuple[int, int, Optional[int], int]) -> None:
    cycle_length, block_length, prefetch, buffer = config
    flaky = FlakyElements(RETRY_FAILURES, times=1)
    values, entry = run(tfi, RETRY_SIZES, flaky.map_func(RETRY_SIZES), cycle_length=cycle_length,
                        block_length=block_length, prefetch_input_elements=prefetch, buffer_output_elements=buffer,
                        sloppy=sloppy, on_input_error=on_input_error, input_retries=1)
    expected = interleave_order(nested_values(RETRY_SIZES), cycle_length, block_length, prefetch, buffer)
    check_output(sloppy, values, expected)
    assert dict(flaky.attempts) == {index: 2 for index in RETRY_FAILURES}
    assert entry["retries"] == len(RETRY_FAILURES)
    assert entry["skipped_inputs"] == []
    retries = {item["label"]: item["retries"] for item in entry["inputs"]}
    assert retries == {f"input #{index}": (1 if index in RETRY_FAILURES else 0) for index in range(len(RETRY_SIZES))}


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_retry_of_a_transient_map_func_error(tfi: types.ModuleType, sloppy: bool) -> None:
    """``map_func`` itself fails once for some inputs: the retry re-runs it on the same input element."""
    sizes = [3, 5, 2, 4, 1]
    flaky_inputs = {1, 3, 4}
    calls: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def size_of(index: tf.Tensor) -> tf.Tensor:
        index = int(index)
        with lock:
            calls[index] += 1
            first = calls[index] == 1
        if index in flaky_inputs and first:
            raise RuntimeError(f"cannot open input {index} yet")
        return tf.constant(sizes[index], tf.int64)

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.reshape(tf.py_function(size_of, [index], tf.int64), [])
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size)

    values, entry = run(tfi, sizes, map_func, cycle_length=2, block_length=2, sloppy=sloppy, input_retries=2)
    check_output(sloppy, values, interleave_order(nested_values(sizes), 2, 2))
    assert entry["retries"] == len(flaky_inputs)
    retries = {item["label"]: item["retries"] for item in entry["inputs"]}
    assert retries == {f"input #{index}": int(index in flaky_inputs) for index in range(len(sizes))}


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_without_retries_a_transient_error_is_delivered(tfi: types.ModuleType, sloppy: bool) -> None:
    failures = {0: 2, 2: 0, 4: 4}
    flaky = FlakyElements(failures, times=1)
    values, entry = run(tfi, RETRY_SIZES, flaky.map_func(RETRY_SIZES), cycle_length=2, sloppy=sloppy,
                        input_retries=0)
    # The failed element is replaced by its error; the nested dataset goes on after it.
    got_kinds = {value.kind for value in values if isinstance(value, Failure)}
    assert len(got_kinds) == 1, values
    (kind,) = got_kinds
    nested = with_marker(nested_values(RETRY_SIZES), failures, Failure(kind), replace=True)
    check_output(sloppy, values, interleave_order(nested, 2, 1))
    assert entry["retries"] == 0


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_retries_exhausted_then_raise_delivers_the_error_in_place(tfi: types.ModuleType, sloppy: bool) -> None:
    failures = {1: 2, 3: 0}
    flaky = FlakyElements(failures, times=None)  # a permanent error
    values, entry = run(tfi, RETRY_SIZES, flaky.map_func(RETRY_SIZES), cycle_length=3, block_length=2,
                        sloppy=sloppy, input_retries=2)
    kinds = {value.kind for value in values if isinstance(value, Failure)}
    assert len(kinds) == 1, values
    nested = with_marker(nested_values(RETRY_SIZES), failures, Failure(kinds.pop()), replace=True)
    check_output(sloppy, values, interleave_order(nested, 3, 2))
    assert entry["retries"] == 2 * len(failures)
    # Two retries plus the attempt that is finally delivered.
    assert dict(flaky.attempts) == {index: 3 for index in failures}


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_retries_exhausted_then_skip_with_exponential_backoff(tfi: types.ModuleType, sloppy: bool) -> None:
    failures = {2: 1}
    flaky = FlakyElements(failures, times=None)
    start = time.monotonic()
    values, entry = run(tfi, RETRY_SIZES, flaky.map_func(RETRY_SIZES), cycle_length=2, sloppy=sloppy,
                        on_input_error="skip", input_retries=3)
    elapsed = time.monotonic() - start
    sizes = list(RETRY_SIZES)
    sizes[2] = 1
    check_output(sloppy, values, interleave_order(nested_values(sizes), 2, 1))
    assert flaky.attempts[2] == 4
    assert entry["retries"] == 3
    (skipped,) = entry["skipped_inputs"]
    assert (skipped["label"], skipped["element_index"]) == ("input #2", 1)
    assert "transient read error in input 2" in skipped["error"]
    retries = {item["label"]: item["retries"] for item in entry["inputs"]}
    assert retries["input #2"] == 3
    # Backoff from 50 ms, doubling: 50 + 100 + 200 ms at least.
    assert elapsed >= 0.35, elapsed


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_retry_passes_over_elements_already_delivered(tfi: types.ModuleType, sloppy: bool) -> None:
    """The error strikes after the consumer has taken part of the input: nothing is repeated."""
    sizes = [10, 10]
    flaky = FlakyElements({0: 7, 1: 8}, times=2)
    dataset = tf.data.Dataset.range(2).apply(tfi.parallel_interleave(
        flaky.map_func(sizes), cycle_length=2, sloppy=sloppy, buffer_output_elements=1,
        prefetch_input_elements=0, input_retries=2))

    def go() -> List[Any]:
        iterator = iter(dataset)
        head = [int(next(iterator)) for _ in range(6)]
        time.sleep(0.05)
        return head + drain(iterator)

    values = bounded(go)
    check_output(sloppy, values, interleave_order(nested_values(sizes), 2, 1, 0, 1))


# ----------------------------------------------------------------------------- logging (stderr)

_LOG_SCRIPT = r"""
import json, os, sys
import tensorflow as tf
import tf_interleave

STRIDE = 1000

def map_func_for(names, sizes, bad_at):
    def map_func(name):
        index = tf.reduce_min(tf.where(tf.equal(tf.constant(names), name))[:, 0])
        size = tf.gather(tf.constant(sizes, tf.int64), index)
        bad = tf.gather(tf.constant(bad_at, tf.int64), index)
        base = tf.constant(STRIDE, tf.int64) * index
        def parse(value):
            text = tf.where(tf.equal(value - base, bad), tf.constant("bad"), tf.strings.as_string(value))
            return tf.strings.to_number(text, tf.int64)
        return tf.data.Dataset.range(base, base + size).map(parse)
    return map_func

results = {}
for mode, sloppy in (("det", False), ("sloppy", True)):
    names = [f"{mode}-{i}.rec" for i in range(6)]
    sizes = [5, 5, 5, 5, 5, 5]
    bad_at = [1, -1, 3, -1, 0, 4]
    dataset = tf.data.Dataset.from_tensor_slices(names).apply(tf_interleave.parallel_interleave(
        map_func_for(names, sizes, bad_at), cycle_length=2, sloppy=sloppy, on_input_error="skip",
        input_retries=1))
    results[mode] = sorted(int(value) for value in dataset)
print("RESULT " + json.dumps(results), flush=True)
"""


def test_each_skipped_input_is_logged_once(tfi: types.ModuleType) -> None:
    completed, results = run_child_script(tfi, _LOG_SCRIPT)
    sizes = [1, 5, 3, 5, 0, 4]
    expected = sorted(STRIDE * index + j for index, size in enumerate(sizes) for j in range(size))
    for mode in ("det", "sloppy"):
        assert results[mode] == expected, mode
        for index, failing in enumerate([True, False, True, False, True, True]):
            label = f"{mode}-{index}.rec"
            # One log line per skipped input (its retry is logged separately, not as a skip).
            skip_lines = [line for line in completed.stderr.splitlines()
                          if "skipping" in line and f"'{label}'" in line]
            assert len(skip_lines) == (1 if failing else 0), (label, skip_lines)
            if failing:
                assert "bad" in skip_lines[0], skip_lines[0]
