"""Fault injection: errors at seeded random places in the input, in ``map_func`` and in the nested datasets.

Each case builds a pipeline whose faults are known in advance:

* a nested dataset parses strings with ``tf.strings.to_number``; the string ``bad-<input>-<position>`` at a
  chosen position fails to parse, and the nested iterator goes on after it;
* the input dataset asserts (``tf.debugging.Assert``) that its element is not one of the chosen ones;
* ``map_func`` asserts the same for its argument before it builds the nested dataset, so opening that input fails.

Every error message names its fault, so the test checks not only that the right number of errors arrives but
that each one arrives at its own place.  The expected sequence comes from the pure-Python reference model,
extended with one marker per fault: an input or ``map_func`` fault behaves like a nested dataset whose only
element is an error.  Some nested datasets sleep a little before each element (the sleep comes first in the
nested pipeline), so workers finish in varying orders.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
import threading
import types
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

from pipelines import MAX_STEPS, STRIDE, SLOPPY_MODES
from reference_model import interleave_order

# A hung test ends the run with every thread's stack instead of a silent CI timeout.
pytestmark = pytest.mark.usefixtures("hang_guard")

SEEDS = range(40)
FEW_SEEDS = range(0, 40, 5)


@dataclasses.dataclass(frozen=True)
class NestedFault:
    """A nested dataset failed at one element."""

    input: int
    position: int


@dataclasses.dataclass(frozen=True)
class InputFault:
    """The input dataset failed to produce element ``input``."""

    input: int


@dataclasses.dataclass(frozen=True)
class MapFault:
    """``map_func`` failed for input element ``input``."""

    input: int


@dataclasses.dataclass(frozen=True)
class Unexpected:
    """An error the test did not inject."""

    kind: str
    message: str


_NESTED_PATTERN = re.compile(r"convert string: bad-(\d+)-(\d+)")
_INPUT_PATTERN = re.compile(r"\[bad-input\] \[(\d+)\]")
_MAP_PATTERN = re.compile(r"\[bad-map\] \[(\d+)\]")


def classify(error: tf.errors.OpError) -> Any:
    """Maps an error to the fault it reports (or to ``Unexpected``)."""
    message = str(error)
    if isinstance(error, tf.errors.InvalidArgumentError):
        match = _NESTED_PATTERN.search(message)
        if match:
            return NestedFault(int(match.group(1)), int(match.group(2)))
        match = _INPUT_PATTERN.search(message)
        if match:
            return InputFault(int(match.group(1)))
        match = _MAP_PATTERN.search(message)
        if match:
            return MapFault(int(match.group(1)))
    return Unexpected(type(error).__name__, message[:300])


@dataclasses.dataclass(frozen=True)
class FaultCase:
    """A pipeline configuration and where it fails."""

    sizes: Tuple[int, ...]
    nested_faults: FrozenSet[Tuple[int, int]]
    input_faults: FrozenSet[int]
    map_faults: FrozenSet[int]
    # Microseconds each input's nested dataset sleeps before each of its elements.
    sleeps: Tuple[int, ...]
    cycle_length: int
    block_length: int
    prefetch_input_elements: Optional[int]
    buffer_output_elements: Optional[int]

    def kwargs(self, sloppy: bool) -> Dict[str, Any]:
        return dict(cycle_length=self.cycle_length, block_length=self.block_length, sloppy=sloppy,
                    prefetch_input_elements=self.prefetch_input_elements,
                    buffer_output_elements=self.buffer_output_elements)

    def nested_model(self, skip: bool = False) -> List[List[Any]]:
        """What each input contributes, faults included.

        With ``skip`` (``on_input_error="skip"``) a nested or ``map_func`` fault ends its input silently;
        input faults are still delivered.
        """
        nested: List[List[Any]] = []
        for index, size in enumerate(self.sizes):
            if index in self.input_faults:
                nested.append([InputFault(index)])
            elif index in self.map_faults:
                nested.append([] if skip else [MapFault(index)])
            else:
                row: List[Any] = []
                for position in range(size):
                    if (index, position) in self.nested_faults:
                        if skip:
                            break
                        row.append(NestedFault(index, position))
                    else:
                        row.append(STRIDE * index + position)
                nested.append(row)
        return nested

    def expected(self, skip: bool = False) -> List[Any]:
        return interleave_order(self.nested_model(skip), self.cycle_length, self.block_length,
                                self.prefetch_input_elements, self.buffer_output_elements)


PROFILES = ("nested", "input", "map", "all")


def random_case(seed: int) -> FaultCase:
    """A seeded random case; ``seed % 4`` picks which kinds of faults it has."""
    rng = random.Random(seed)
    profile = PROFILES[seed % len(PROFILES)]
    count = rng.randint(1, 10)
    sizes = tuple(rng.randint(0, 6) for _ in range(count))
    rate = rng.choice([0.1, 0.25, 0.5])
    nested_faults, input_faults, map_faults = set(), set(), set()
    if profile in ("nested", "all"):
        nested_faults = {(index, position) for index, size in enumerate(sizes) for position in range(size)
                         if rng.random() < rate}
        if not nested_faults and any(sizes):
            index = rng.choice([index for index, size in enumerate(sizes) if size])
            nested_faults.add((index, rng.randrange(sizes[index])))
    if profile in ("input", "all"):
        input_faults = {index for index in range(count) if rng.random() < rate} or {rng.randrange(count)}
    if profile in ("map", "all"):
        candidates = [index for index in range(count) if index not in input_faults]
        map_faults = {index for index in candidates if rng.random() < rate}
        if not map_faults and candidates:
            map_faults.add(rng.choice(candidates))
    sleeps = tuple(rng.choice([0, 0, 0, 200, 1000, 3000]) for _ in range(count))
    return FaultCase(
        sizes=sizes,
        nested_faults=frozenset(nested_faults),
        input_faults=frozenset(input_faults),
        map_faults=frozenset(map_faults),
        sleeps=sleeps,
        cycle_length=rng.randint(1, 5),
        block_length=rng.randint(1, 3),
        prefetch_input_elements=rng.choice([None, 0, 1, 2, 4]),
        buffer_output_elements=rng.choice([None, 1, 2, 3]),
    )


def fault_input(case: FaultCase) -> tf.data.Dataset:
    """``range(len(sizes))`` whose elements in ``input_faults`` fail an assertion."""
    dataset = tf.data.Dataset.range(len(case.sizes))
    if not case.input_faults:
        return dataset
    bad = tf.constant(sorted(case.input_faults), tf.int64)

    def check(index: tf.Tensor) -> tf.Tensor:
        ok = tf.reduce_all(tf.not_equal(index, bad))
        with tf.control_dependencies([tf.debugging.Assert(ok, ["bad-input", index])]):
            return tf.identity(index)

    return dataset.map(check)


def fault_map_func(case: FaultCase):
    """Maps input ``i`` to its parsed strings, failing for ``map_faults`` and at ``nested_faults``."""
    texts = [["bad-%d-%d" % (index, position) if (index, position) in case.nested_faults
              else str(STRIDE * index + position) for position in range(size)]
             for index, size in enumerate(case.sizes)]
    flat = [text for row in texts for text in row] or [""]
    starts = [sum(case.sizes[:index]) for index in range(len(case.sizes))]
    bad_inputs = sorted(case.map_faults) or [-1]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        ok = tf.reduce_all(tf.not_equal(index, tf.constant(bad_inputs, tf.int64)))
        with tf.control_dependencies([tf.debugging.Assert(ok, ["bad-map", index])]):
            start = tf.gather(tf.constant(starts, tf.int64), index)
        size = tf.gather(tf.constant(case.sizes, tf.int64), index)
        row = tf.slice(tf.constant(flat, tf.string), tf.reshape(start, [1]), tf.reshape(size, [1]))
        pause = tf.gather(tf.constant(case.sleeps, tf.int64), index)
        # The sleep comes first, right on the source.
        return (tf.data.Dataset.from_tensor_slices(row).apply(testing.sleep(pause))
                .map(lambda text: tf.strings.to_number(text, tf.int64)))

    return map_func


def fault_dataset(tfi: types.ModuleType, case: FaultCase, sloppy: bool, **extra: Any) -> tf.data.Dataset:
    return fault_input(case).apply(tfi.parallel_interleave(fault_map_func(case), **case.kwargs(sloppy), **extra))


def drain(dataset: tf.data.Dataset) -> List[Any]:
    """Reads ``dataset`` to its end, recording each error as its fault marker and carrying on."""
    observed: List[Any] = []
    iterator = iter(dataset)
    for _ in range(MAX_STEPS):
        try:
            element = next(iterator)
        except StopIteration:
            return observed
        except tf.errors.OpError as error:
            observed.append(classify(error))
        else:
            observed.append(int(element))
    raise AssertionError(f"the dataset did not end within {MAX_STEPS} steps")


def owner(item: Any) -> int:
    """The input an element or a fault belongs to."""
    return item // STRIDE if isinstance(item, int) else item.input


def per_input(sequence: Sequence[Any]) -> Dict[int, List[Any]]:
    """Splits a sequence into each input's subsequence (order kept)."""
    split: Dict[int, List[Any]] = collections.defaultdict(list)
    for item in sequence:
        split[owner(item)].append(item)
    return dict(split)


def assert_same_multiset(observed: List[Any], expected: List[Any], case: FaultCase) -> None:
    missing = collections.Counter(expected) - collections.Counter(observed)
    extra = collections.Counter(observed) - collections.Counter(expected)
    assert not missing and not extra, f"{case}: missing {dict(missing)}, unexpected {dict(extra)}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_deterministic(tfi: types.ModuleType, seed: int) -> None:
    case = random_case(seed)
    expected = case.expected()
    assert drain(fault_dataset(tfi, case, sloppy=False)) == expected, case


@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_sloppy(tfi: types.ModuleType, seed: int) -> None:
    case = random_case(seed)
    expected = case.expected()
    observed = drain(fault_dataset(tfi, case, sloppy=True))
    assert_same_multiset(observed, expected, case)
    # Each nested dataset is still read in its own order.
    assert per_input(observed) == per_input(expected), case


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_random_faults_skipped(tfi: types.ModuleType, seed: int, sloppy: bool) -> None:
    """``on_input_error="skip"``: a failed nested dataset or ``map_func`` ends its input silently."""
    case = random_case(seed)
    expected = case.expected(skip=True)
    observed = drain(fault_dataset(tfi, case, sloppy, on_input_error="skip"))
    if sloppy:
        assert_same_multiset(observed, expected, case)
        assert per_input(observed) == per_input(expected), case
    else:
        assert observed == expected, case


@pytest.mark.parametrize("seed", FEW_SEEDS)
def test_ignore_errors_after_op_keeps_every_good_element(tfi: types.ModuleType, seed: int) -> None:
    case = random_case(seed)
    expected = [item for item in case.expected() if isinstance(item, int)]
    observed = [int(value) for value in fault_dataset(tfi, case, sloppy=False).ignore_errors()]
    assert observed == expected, case


@pytest.mark.parametrize("seed", FEW_SEEDS)
def test_random_faults_in_tf_function(tfi: types.ModuleType, seed: int) -> None:
    """``get_next`` inside a ``tf.function``: the same sequence of elements and faults."""
    case = random_case(seed)

    @tf.function
    def next_element(iterator):
        return iterator.get_next()

    iterator = iter(fault_dataset(tfi, case, sloppy=False))
    observed: List[Any] = []
    for _ in range(MAX_STEPS):
        try:
            observed.append(int(next_element(iterator)))
        except tf.errors.OutOfRangeError:
            break
        except tf.errors.OpError as error:
            observed.append(classify(error))
    assert observed == case.expected(), case


@pytest.mark.parametrize("seed", FEW_SEEDS)
def test_random_faults_in_graph_mode(tfi: types.ModuleType, seed: int) -> None:
    case = random_case(seed)
    with tf.Graph().as_default():
        next_element = tf.compat.v1.data.make_one_shot_iterator(fault_dataset(tfi, case, sloppy=False)).get_next()
        observed: List[Any] = []
        with tf.compat.v1.Session() as session:
            for _ in range(MAX_STEPS):
                try:
                    observed.append(int(session.run(next_element)))
                except tf.errors.OutOfRangeError:
                    break
                except tf.errors.OpError as error:
                    observed.append(classify(error))
    assert observed == case.expected(), case


# --- Transient faults and retries ----------------------------------------------------------------------------

class FlakyElements:
    """Nested datasets whose chosen elements fail a given number of times, then succeed.

    The failure is raised in a ``tf.py_function``; a reopened nested dataset reads the element again, so
    ``input_retries`` can hide it.
    """

    def __init__(self, sizes: Sequence[int], failures: Dict[Tuple[int, int], int]) -> None:
        self.sizes = tuple(sizes)
        self._remaining = dict(failures)
        self._lock = threading.Lock()

    def _read(self, value: tf.Tensor) -> tf.Tensor:
        key = divmod(int(value), STRIDE)
        with self._lock:
            left = self._remaining.get(key, 0)
            if left:
                self._remaining[key] = left - 1
        if left:
            raise ValueError("flaky-%d-%d" % key)
        return value

    def map_func(self, index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(self.sizes, tf.int64), index)
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size).map(
            lambda value: tf.reshape(tf.py_function(self._read, [value], tf.int64), []))


_FLAKY_PATTERN = re.compile(r"flaky-(\d+)-(\d+)")


def drain_flaky(dataset: tf.data.Dataset) -> List[Any]:
    observed: List[Any] = []
    iterator = iter(dataset)
    for _ in range(MAX_STEPS):
        try:
            observed.append(int(next(iterator)))
        except StopIteration:
            return observed
        except tf.errors.OpError as error:
            match = _FLAKY_PATTERN.search(str(error))
            observed.append(NestedFault(int(match.group(1)), int(match.group(2))) if match
                            else Unexpected(type(error).__name__, str(error)[:300]))
    raise AssertionError(f"the dataset did not end within {MAX_STEPS} steps")


def random_flaky_case(seed: int, retries: int, exceed: bool) -> Tuple[List[int], Dict[Tuple[int, int], int]]:
    """Sizes and failure counts; each failing input has one flaky element.

    With ``exceed`` the element fails once more than ``retries``, so exactly one error is delivered for it.
    """
    rng = random.Random(1000 + seed)
    sizes = [rng.randint(1, 5) for _ in range(rng.randint(2, 7))]
    flaky_inputs = rng.sample(range(len(sizes)), rng.randint(1, min(3, len(sizes))))
    failures = {(index, rng.randrange(sizes[index])): (retries + 1 if exceed else rng.randint(1, retries))
                for index in flaky_inputs}
    return sizes, failures


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_transient_faults_hidden_by_retries(tfi: types.ModuleType, seed: int, sloppy: bool) -> None:
    retries = 2
    sizes, failures = random_flaky_case(seed, retries, exceed=False)
    flaky = FlakyElements(sizes, failures)
    rng = random.Random(seed)
    cycle_length, block_length = rng.randint(1, 4), rng.randint(1, 3)
    dataset = tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
        flaky.map_func, cycle_length, block_length, sloppy=sloppy, input_retries=retries))
    expected = interleave_order([[STRIDE * index + k for k in range(size)] for index, size in enumerate(sizes)],
                                cycle_length, block_length)
    observed = drain_flaky(dataset)
    if sloppy:
        assert sorted(observed) == sorted(expected), (sizes, failures)
    else:
        assert observed == expected, (sizes, failures)


@pytest.mark.parametrize("seed", range(4))
def test_persistent_fault_delivered_once_after_retries(tfi: types.ModuleType, seed: int) -> None:
    retries = 1
    sizes, failures = random_flaky_case(seed, retries, exceed=True)
    flaky = FlakyElements(sizes, failures)
    nested = [[NestedFault(index, k) if (index, k) in failures else STRIDE * index + k for k in range(size)]
              for index, size in enumerate(sizes)]
    dataset = tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
        flaky.map_func, 2, 1, input_retries=retries))
    assert drain_flaky(dataset) == interleave_order(nested, 2, 1), (sizes, failures)


# --- max_skipped_inputs in the deterministic order -----------------------------------------------------------

def _two_failing_inputs(tfi: types.ModuleType, slow_input: int) -> List[Any]:
    """Input 0 fails at its first element, input 1 at its second; ``slow_input`` sleeps 0.3 s per element."""
    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        texts = tf.where(tf.equal(index, 0), tf.constant(["bad-0-0", "1"]), tf.constant(["1000", "bad-1-1"]))
        pause = tf.where(tf.equal(index, slow_input), tf.constant(300_000, tf.int64), 0)
        return (tf.data.Dataset.from_tensor_slices(texts).apply(testing.sleep(pause))
                .map(lambda text: tf.strings.to_number(text, tf.int64)))

    dataset = tf.data.Dataset.range(2).apply(tfi.parallel_interleave(
        map_func, 2, sloppy=False, on_input_error="skip", max_skipped_inputs=1))
    return drain(dataset)


def test_max_skipped_inputs_deterministic_order_ignores_timing(tfi: types.ModuleType) -> None:
    # In the deterministic order input 0's failure comes first (position 0), so input 0 is the one skipped
    # and input 1's failure (after its element 1000) is the one delivered, whichever input is slower.
    expected = [1000, NestedFault(1, 1)]
    assert _two_failing_inputs(tfi, slow_input=0) == expected
    assert _two_failing_inputs(tfi, slow_input=1) == expected
