"""``memory_budget_bytes``: a bound on the bytes held in all buffers together.

Workers pause when the budget is reached; the buffer of the input the consumer
waits on may always take one element, so the pipeline never deadlocks, even when a
single element is bigger than the whole budget.  So the bytes buffered, sampled
from ``tf_interleave.stats()["buffered_bytes"]`` while the pipeline runs, never
exceed ``budget + the largest element``; and the output is unchanged (exactly the
reference order in deterministic mode, the same multiset in sloppy mode).
"""

from __future__ import annotations

import collections
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import tensorflow as tf

from pipelines import STRIDE, Straggler, nested_values, bounded, SLOPPY_MODES
from reference_model import interleave_order

FLOAT_BYTES = 4


def tensor_map_func(sizes: Sequence[int], floats: Sequence[int]) -> Callable:
    """Input ``i`` yields ``sizes[i]`` float32 vectors of ``floats[i]`` values ``STRIDE * i + j``."""
    size_list = [int(size) for size in sizes]
    float_list = [int(count) for count in floats]

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(size_list, tf.int64), index)
        length = tf.gather(tf.constant(float_list, tf.int64), index)
        base = tf.constant(STRIDE, tf.int64) * index
        return tf.data.Dataset.range(base, base + size).map(
            lambda value: tf.fill(tf.reshape(length, [1]), tf.cast(value, tf.float32)))

    return map_func


def without_injected_prefetch(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The consumer of the op is the test itself, not an autotuned prefetch buffer."""
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    return dataset.with_options(options)


def live_ids() -> set:
    import tf_interleave

    return {entry["id"] for entry in tf_interleave.stats()}


class BufferSampler:
    """Samples the stats of the iterators created after ``start()`` from a background thread."""

    def __init__(self) -> None:
        self.before: set = set()
        self.samples: List[Dict[str, Any]] = []
        self.inconsistent: List[Dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "BufferSampler":
        self.before = live_ids()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        import tf_interleave

        for entry in tf_interleave.stats():
            if entry["id"] in self.before:
                continue
            self.samples.append({key: entry[key] for key in ("buffered_bytes", "buffered_elements",
                                                               "memory_budget_bytes")})
            per_input = sum(item["buffered_bytes"] for item in entry["inputs"])
            if per_input != entry["buffered_bytes"]:
                self.inconsistent.append(entry)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.0005)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def peak_bytes(self) -> int:
        return max((sample["buffered_bytes"] for sample in self.samples), default=0)


def element_key(element: tf.Tensor) -> Tuple[int, int]:
    values = element.numpy()
    return int(values[0]), int(values.shape[0])


def expected_keys(sizes: Sequence[int], floats: Sequence[int]) -> List[List[Tuple[int, int]]]:
    return [[(value, floats[index]) for value in values] for index, values in enumerate(nested_values(sizes))]


def check_output(sloppy: bool, got: List[Any], expected: List[Any]) -> None:
    if sloppy:
        assert collections.Counter(got) == collections.Counter(expected)
        assert len(got) == len(expected)
    else:
        assert got == expected


def drain_sampling(dataset: tf.data.Dataset, pause_seconds: float = 0.001
                   ) -> Tuple[List[Tuple[int, int]], BufferSampler]:
    """Drains ``dataset`` slowly (so workers run ahead) while sampling its buffers."""
    sampler = BufferSampler().start()
    try:
        def go() -> List[Tuple[int, int]]:
            keys = []
            iterator = iter(dataset)
            for element in iterator:
                keys.append(element_key(element))
                sampler.sample()
                time.sleep(pause_seconds)
            return keys

        keys = bounded(go)
    finally:
        sampler.stop()
    return keys, sampler


def first_input_held_map_func(sizes: Sequence[int], floats: Sequence[int], straggler: Straggler) -> Callable:
    """``tensor_map_func(sizes, floats)`` whose input 0 holds each element until the straggler's release."""
    base_map_func = tensor_map_func(sizes, floats)

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        def hold(element: tf.Tensor) -> tf.Tensor:
            first = straggler.gate(element[0], tf.equal(index, 0))
            return tf.concat([tf.reshape(first, [1]), element[1:]], 0)

        return base_map_func(index).map(hold)

    return map_func


def keys_and_buffers_while_held(dataset: tf.data.Dataset, straggler: Straggler, release_after_seconds: float
                                ) -> Tuple[List[Tuple[int, int]], BufferSampler]:
    """Drains ``dataset`` while sampling its buffers; a timer releases the straggler meanwhile."""
    sampler = BufferSampler().start()
    timer = straggler.release_later(release_after_seconds)
    try:
        keys = bounded(lambda: [element_key(element) for element in dataset])
    finally:
        timer.cancel()
        straggler.release()
        sampler.stop()
    return keys, sampler


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("value", [0, -1, -4096])
def test_budget_must_be_positive(tfi: types.ModuleType, value: int) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        tf.data.Dataset.range(2).apply(tfi.parallel_interleave(
            tensor_map_func([1, 1], [4, 4]), cycle_length=2, memory_budget_bytes=value))
    assert "memory_budget_bytes" in str(raised.value)
    assert str(value) in str(raised.value)


@pytest.mark.parametrize("value", [1.5, "4096", True, 4096.0])
def test_budget_must_be_an_int(tfi: types.ModuleType, value: Any) -> None:
    with pytest.raises(TypeError) as raised:
        tf.data.Dataset.range(2).apply(tfi.parallel_interleave(
            tensor_map_func([1, 1], [4, 4]), cycle_length=2, memory_budget_bytes=value))
    assert "memory_budget_bytes" in str(raised.value)
    assert repr(value) in str(raised.value) or str(value) in str(raised.value)


@pytest.mark.parametrize("budget", [None, 1, 12345])
def test_stats_report_the_budget(tfi: types.ModuleType, budget: Optional[int]) -> None:
    dataset = tf.data.Dataset.range(3).apply(tfi.parallel_interleave(
        tensor_map_func([2, 2, 2], [8, 8, 8]), cycle_length=2, memory_budget_bytes=budget))

    def go() -> int:
        before = live_ids()
        iterator = iter(dataset)
        next(iterator)
        import tf_interleave

        (entry,) = [entry for entry in tf_interleave.stats() if entry["id"] not in before]
        return entry["memory_budget_bytes"]

    assert bounded(go) == (budget or 0)


# ----------------------------------------------------------------------------- the bound

# (name, nested sizes, floats per element for each input, budget in bytes)
BUDGET_CASES = [
    # Elements of 1-4 KB, budget about three of them.
    ("small_elements", (12, 12, 12, 12, 12, 12, 12, 12), (256, 512, 1024, 256, 768, 1024, 512, 256), 10_000),
    # Every element (4 KB) is bigger than the whole budget.
    ("elements_bigger_than_budget", (10, 10, 10, 10, 10, 10), (1024,) * 6, 1_000),
    # Mixed: some inputs' elements exceed the budget, others are tiny.
    ("mixed", (8, 12, 6, 10, 9, 7, 11), (2048, 16, 128, 1500, 64, 3000, 32), 6_000),
]
# (cycle_length, block_length, prefetch_input_elements, buffer_output_elements)
BUDGET_CONFIGS = [(3, 1, 3, 8), (2, 3, 1, 4), (4, 2, 0, 16)]


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", BUDGET_CONFIGS, ids=lambda c: "c{}_b{}_p{}_o{}".format(*c))
@pytest.mark.parametrize("case", BUDGET_CASES, ids=[case[0] for case in BUDGET_CASES])
def test_buffered_bytes_stay_within_budget_plus_one_element(
        tfi: types.ModuleType, case: Tuple[str, Sequence[int], Sequence[int], int],
        config: Tuple[int, int, int, int], sloppy: bool) -> None:
    _, sizes, floats, budget = case
    cycle_length, block_length, prefetch, buffer = config
    dataset = without_injected_prefetch(tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
        tensor_map_func(sizes, floats), cycle_length=cycle_length, block_length=block_length, sloppy=sloppy,
        prefetch_input_elements=prefetch, buffer_output_elements=buffer, memory_budget_bytes=budget)))
    keys, sampler = drain_sampling(dataset)

    # No deadlock and nothing lost: the output is exactly the one without a budget.
    check_output(sloppy, keys, interleave_order(expected_keys(sizes, floats), cycle_length, block_length,
                                                prefetch, buffer))
    largest = FLOAT_BYTES * max(floats)
    assert sampler.samples, "stats() never listed the iterator"
    assert all(sample["memory_budget_bytes"] == budget for sample in sampler.samples)
    over = sorted({sample["buffered_bytes"] for sample in sampler.samples if sample["buffered_bytes"] > budget + largest})
    assert not over, (f"buffered_bytes exceeded budget ({budget}) + largest element ({largest}) = "
                      f"{budget + largest}: peak {sampler.peak_bytes}, over-budget values {over[:10]}")
    assert not sampler.inconsistent, "per-input buffered_bytes do not add up to the total"


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_workers_still_buffer_ahead_within_the_budget(tfi: types.ModuleType, sloppy: bool) -> None:
    """The budget bounds buffering; it does not switch it off."""
    sizes, floats, budget = (20,) * 4, (256,) * 4, 8 * 1024  # 1 KB elements, room for 8
    dataset = without_injected_prefetch(tf.data.Dataset.range(4).apply(tfi.parallel_interleave(
        tensor_map_func(sizes, floats), cycle_length=2, sloppy=sloppy, prefetch_input_elements=2,
        buffer_output_elements=10, memory_budget_bytes=budget)))
    import tf_interleave

    def go() -> Tuple[int, int]:
        before = live_ids()
        iterator = iter(dataset)
        next(iterator)
        deadline = time.monotonic() + 10
        filled = 0
        while time.monotonic() < deadline:
            (entry,) = [entry for entry in tf_interleave.stats() if entry["id"] not in before]
            filled = entry["buffered_bytes"]
            if filled >= budget - 1024:
                break
            time.sleep(0.01)
        time.sleep(0.1)  # Give the workers time to overshoot, if they would.
        (entry,) = [entry for entry in tf_interleave.stats() if entry["id"] not in before]
        return filled, entry["buffered_bytes"]

    filled, settled = bounded(go)
    assert filled >= budget - 1024, f"workers buffered only {filled} bytes of an {budget}-byte budget"
    assert settled <= budget + 1024, (f"with the consumer idle, {settled} bytes are buffered: more than the "
                                      f"budget ({budget}) + one element (1024)")


def test_without_a_budget_the_same_pipeline_buffers_more(tfi: types.ModuleType) -> None:
    """Control for the sampling: the bound checked above is not met by chance."""
    sizes, floats = (12,) * 8, (256, 512, 1024, 256, 768, 1024, 512, 256)
    dataset = without_injected_prefetch(tf.data.Dataset.range(8).apply(tfi.parallel_interleave(
        tensor_map_func(sizes, floats), cycle_length=3, prefetch_input_elements=3, buffer_output_elements=8)))
    keys, sampler = drain_sampling(dataset, pause_seconds=0.003)
    assert keys == interleave_order(expected_keys(sizes, floats), 3, 1, 3, 8)
    assert sampler.peak_bytes > 10_000 + 4096, sampler.peak_bytes


# ----------------------------------------------------------------------------- no deadlock


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
@pytest.mark.parametrize("config", [(1, 1, 0, 1), (2, 3, 2, 2), (4, 2, 4, 8), (3, 1, 0, 5)],
                         ids=lambda c: "c{}_b{}_p{}_o{}".format(*c))
def test_one_byte_budget_completes(tfi: types.ModuleType, config: Tuple[int, int, int, int], sloppy: bool) -> None:
    cycle_length, block_length, prefetch, buffer = config
    sizes, floats = (5, 0, 7, 3, 6, 1, 4), (64, 64, 300, 8, 1024, 2, 100)
    dataset = tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
        tensor_map_func(sizes, floats), cycle_length=cycle_length, block_length=block_length, sloppy=sloppy,
        prefetch_input_elements=prefetch, buffer_output_elements=buffer, memory_budget_bytes=1))
    keys = bounded(lambda: [element_key(element) for element in dataset])
    check_output(sloppy, keys, interleave_order(expected_keys(sizes, floats), cycle_length, block_length, prefetch,
                                                buffer))


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_slow_input_gets_its_element_while_the_budget_is_full(tfi: types.ModuleType, sloppy: bool) -> None:
    """Fast inputs fill the budget while the consumer waits on a slow one: it must still get through."""
    sizes, floats, budget = (4, 6, 6, 6, 6), (1024,) * 5, 3 * 4096
    straggler = Straggler()
    dataset = without_injected_prefetch(tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
        first_input_held_map_func(sizes, floats, straggler), cycle_length=3, sloppy=sloppy,
        prefetch_input_elements=2, buffer_output_elements=4, memory_budget_bytes=budget)))
    keys, sampler = keys_and_buffers_while_held(dataset, straggler, release_after_seconds=0.4)
    assert not straggler.timed_out
    check_output(sloppy, keys, interleave_order(expected_keys(sizes, floats), 3, 1, 2, 4))
    assert sampler.peak_bytes <= budget + 4096, (f"buffered_bytes peaked at {sampler.peak_bytes}, more than the "
                                                 f"budget ({budget}) + one element (4096)")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_staged_inputs_respect_the_budget_while_the_consumer_waits(tfi: types.ModuleType, sloppy: bool) -> None:
    """cycle_length=1: the consumer waits on the slow input 0 while three prefetched (staged) inputs are fast.

    The staged inputs are not what the consumer waits on (they cannot be emitted
    before input 0 ends), so together they may only fill the budget (5000 bytes:
    one 4 KB element), never one element per staged input.
    """
    sizes, floats, budget = (3, 4, 4, 4), (1024,) * 4, 5000
    straggler = Straggler()
    dataset = without_injected_prefetch(tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
        first_input_held_map_func(sizes, floats, straggler), cycle_length=1, sloppy=sloppy,
        prefetch_input_elements=3, buffer_output_elements=4, memory_budget_bytes=budget)))
    keys, sampler = keys_and_buffers_while_held(dataset, straggler, release_after_seconds=0.5)
    check_output(sloppy, keys, interleave_order(expected_keys(sizes, floats), 1, 1, 3, 4))
    assert sampler.peak_bytes <= budget + 4096, (
        f"buffered_bytes peaked at {sampler.peak_bytes} while the consumer waited on input 0: more than the "
        f"budget ({budget}) + one element (4096)")


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_budget_in_graph_mode(tfi: types.ModuleType, sloppy: bool) -> None:
    sizes, floats = (3, 5, 2, 4), (2048, 16, 1024, 512)

    def go() -> List[Tuple[int, int]]:
        with tf.Graph().as_default():
            dataset = tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
                tensor_map_func(sizes, floats), cycle_length=2, block_length=2, sloppy=sloppy,
                memory_budget_bytes=4096))
            next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
            keys = []
            with tf.compat.v1.Session() as session:
                while True:
                    try:
                        values = session.run(next_element)
                    except tf.errors.OutOfRangeError:
                        return keys
                    keys.append((int(values[0]), int(values.shape[0])))

    check_output(sloppy, bounded(go), interleave_order(expected_keys(sizes, floats), 2, 2))


# ----------------------------------------------------------------------------- where the budget goes


def settled_stats(before: set, quiet_seconds: float = 0.2, timeout: float = 20.0) -> Dict[str, Any]:
    """The new iterator's stats once its buffers have stopped changing for ``quiet_seconds``."""
    import tf_interleave

    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        (entry,) = [entry for entry in tf_interleave.stats() if entry["id"] not in before]
        fill = sorted((item["source"], item["buffered_elements"]) for item in entry["inputs"])
        if fill != last:
            last, since = fill, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            return entry
        time.sleep(0.01)
    raise AssertionError(f"the buffers kept changing for {timeout} s with the consumer idle")


@pytest.mark.parametrize("block_length", [1, 2])
def test_a_tight_budget_holds_the_blocks_read_next(tfi: types.ModuleType, block_length: int) -> None:
    """Deterministic, with a budget for fewer elements than there are inputs in the cycle.

    The budget (20 elements of 1 KB) goes to the next blocks of the inputs: no
    input holds an element of a later block, read a whole cycle of 48 inputs
    later, which would keep out the next block of an input read before it.
    """
    inputs, per_input, cycle_length, budget = 48, 12, 48, 20 * 1024
    sizes, floats = (per_input,) * inputs, (256,) * inputs
    dataset = without_injected_prefetch(tf.data.Dataset.range(inputs).apply(tfi.parallel_interleave(
        tensor_map_func(sizes, floats), cycle_length=cycle_length, block_length=block_length,
        prefetch_input_elements=0, memory_budget_bytes=budget)))
    expected = interleave_order(expected_keys(sizes, floats), cycle_length, block_length, 0, 2 * block_length)
    read = 3 * cycle_length * block_length + block_length + 1  # Into a block, in the 4th pass.

    def go() -> Tuple[List[Tuple[int, int]], Dict[str, Any]]:
        before = live_ids()
        iterator = iter(dataset)
        keys = [element_key(next(iterator)) for _ in range(read)]
        entry = settled_stats(before)
        keys += [element_key(element) for element in iterator]
        return keys, entry

    keys, entry = bounded(go)
    assert keys == expected
    fill = {item["source"]: item["buffered_elements"] for item in entry["inputs"]}
    assert sum(fill.values()) <= budget // 1024 + 1, fill
    over = {source: count for source, count in fill.items() if count > block_length}
    assert not over, f"inputs holding more than their next block ({block_length}): {over}"


def context_switches() -> int:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_freed_bytes_wake_only_the_workers_they_let_on(tfi: types.ModuleType, sloppy: bool) -> None:
    """1,000 inputs in the cycle and a 1-byte budget: almost every worker parks with an element.

    Each element the consumer takes (or waits for) lets one of them on; the others
    stay asleep, so the process switches threads a few times per element, not once
    per parked worker.
    """
    inputs, take = 1000, 400
    sizes, floats = (5,) * inputs, (16,) * inputs
    dataset = tf.data.Dataset.range(inputs).apply(tfi.parallel_interleave(
        tensor_map_func(sizes, floats), cycle_length=inputs, sloppy=sloppy, prefetch_input_elements=0,
        memory_budget_bytes=1))

    def go() -> Tuple[List[Tuple[int, int]], int]:
        iterator = iter(dataset)
        keys = [element_key(next(iterator)) for _ in range(take // 2)]
        start = context_switches()  # The first pass, starting the workers, is over.
        keys += [element_key(next(iterator)) for _ in range(take - take // 2)]
        return keys, context_switches() - start

    keys, switches = bounded(go, timeout=300)
    expected = interleave_order(expected_keys(sizes, floats), inputs, 1, 0, 2)
    if sloppy:
        assert len(set(keys)) == take and set(keys) <= set(expected)
    else:
        assert keys == expected[:take]
    per_element = switches / (take - take // 2)
    assert per_element < 50, f"{per_element:.0f} context switches per element ({switches} in all)"


@pytest.mark.parametrize("element_seconds", [0.0, 0.05], ids=["cheap", "slow"])
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_elements_made_ahead_stay_within_the_budget(tfi: types.ModuleType, sloppy: bool,
                                                    element_seconds: float) -> None:
    """The budget bounds every element made ahead, not only the buffered ones.

    16 inputs open at once (8 in the cycle, 8 staged) and a budget of four 64 KB elements:
    with the consumer idle, the nested datasets make no more than the budget's elements and
    one beyond it (plus the one taken), although every input has room in its buffer. A
    worker that made an element the budget cannot take holds it until there is room, so
    one element made per input would be 16 elements of memory for a budget of 4.

    Slow elements (50 ms each) keep the consumer's first wait long enough for every input
    of the cycle to be open: a sloppy wait awaits all of them, and the budget lets only one
    call at a time start for that wait (one each made 8 elements with one taken).
    """
    inputs, per_input, floats, budget_elements = 16, 6, 16 * 1024, 4
    element_bytes = floats * FLOAT_BYTES
    made = [0]
    lock = threading.Lock()

    def count(value: tf.Tensor) -> tf.Tensor:
        with lock:
            made[0] += 1
        time.sleep(element_seconds)
        return value

    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        base = tf.constant(STRIDE, tf.int64) * index
        return tf.data.Dataset.range(base, base + per_input).map(
            lambda value: tf.py_function(count, [value], tf.int64)).map(
            lambda value: tf.fill([floats], tf.cast(value, tf.float32)))

    dataset = without_injected_prefetch(tf.data.Dataset.range(inputs).apply(tfi.parallel_interleave(
        map_func, cycle_length=8, sloppy=sloppy, prefetch_input_elements=8, buffer_output_elements=4,
        memory_budget_bytes=budget_elements * element_bytes)))

    def go() -> Tuple[List[Tuple[int, int]], int]:
        iterator = iter(dataset)
        keys = [element_key(next(iterator))]
        time.sleep(1.0)  # Long enough for every worker to make an element, if it would.
        with lock:
            made_ahead = made[0]
        keys += [element_key(element) for element in iterator]
        return keys, made_ahead

    keys, made_ahead = bounded(go)
    check_output(sloppy, keys, interleave_order(expected_keys((per_input,) * inputs, (floats,) * inputs),
                                                8, 1, 8, 4))
    assert made_ahead <= 1 + budget_elements + 1, (
        f"{made_ahead} elements made with one taken and a budget of {budget_elements}")
