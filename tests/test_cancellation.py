"""Cancellation at seeded random moments: no hang, no leaked thread, no iterator left behind.

Three situations, each in both modes:

* workers blocked inside a slow nested ``GetNext`` (a ``sleep`` of 100 s that only cancellation cuts short)
  when the iterator is deleted;
* the consumer blocked in ``get_next`` on such a slow element when its call is cancelled (a ``tf.function``
  run under an eager ``CancellationManager``), then the iterator deleted;
* every buffer full (the consumer stopped reading, the workers filled their buffers and wait for room) when
  the iterator is deleted;

plus a TF1 ``Session`` closed while another thread is blocked in ``session.run(get_next)``.

Every deletion, cancellation and close must finish within ``PROMPT_SECONDS``, and the process's thread count
must come back to where it was.
"""

from __future__ import annotations

import gc
import random
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing
from tensorflow.python.eager import cancellation

from pipelines import STRIDE
from pipelines import settled_thread_count as pipelines_settled_thread_count
from reference_model import interleave_order

# A hung test ends the run with every thread's stack instead of a silent CI timeout.
pytestmark = pytest.mark.usefixtures("hang_guard")

# A sleep that only cancellation can cut short within the test's lifetime.
LONG_SLEEP_MICROSECONDS = 100_000_000
# How long a deletion, a cancelled call or a session close may take.
PROMPT_SECONDS = 10.0
# How long worker threads get to exit after the last iterator is gone.
SETTLE_SECONDS = 15.0
SEEDS = range(8)

_BLOCKED = object()


def settled_thread_count(at_most: Optional[int] = None) -> int:
    return pipelines_settled_thread_count(at_most, timeout=SETTLE_SECONDS)


def run_with_timeout(function: Callable[[], Any], timeout: float, what: str) -> float:
    """Runs ``function`` on a helper thread; fails if it does not end within ``timeout``. Returns its duration."""
    errors: List[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    start = time.monotonic()
    helper = threading.Thread(target=target, name="cancellation-helper", daemon=True)
    helper.start()
    helper.join(timeout)
    elapsed = time.monotonic() - start
    if helper.is_alive():
        pytest.fail(f"{what} did not finish within {timeout}s")
    if errors:
        raise errors[0]
    return elapsed


def live_iterators(tfi: types.ModuleType) -> int:
    """How many tf_interleave iterators exist in the process (0 when testing the built-in)."""
    return len(tfi.stats()) if hasattr(tfi, "stats") else 0


@pytest.fixture(scope="module", autouse=True)
def warm_up(tfi: types.ModuleType) -> None:
    """Lets TensorFlow create its process-wide thread pools before any baseline is taken."""
    dataset = tf.data.Dataset.range(3).apply(tfi.parallel_interleave(lambda x: tf.data.Dataset.range(x), 2))
    list(dataset)

    @tf.function
    def total() -> tf.Tensor:
        return dataset.reduce(tf.constant(0, tf.int64), lambda a, b: a + b)

    total()
    # A cancelled get_next in a tf.function: TensorFlow grows its inter-op pool by one thread the first time.
    iterator = iter(SlowCase(0).dataset(tfi))
    reader = CancellableReader(iterator, SlowCase(0).total + 1)
    time.sleep(0.1)
    reader.cancel_and_join()
    del iterator, reader
    with tf.Graph().as_default():
        next_element = tf.compat.v1.data.make_one_shot_iterator(
            tf.data.Dataset.range(3).apply(tfi.parallel_interleave(lambda x: tf.data.Dataset.range(x), 2))
        ).get_next()
        with tf.compat.v1.Session() as session:
            session.run(next_element)


@pytest.fixture()
def baseline(tfi: types.ModuleType):
    """The settled thread count before the test; afterwards, checks that the count came back to it."""
    before = settled_thread_count()
    live_before = live_iterators(tfi)
    yield before
    after = settled_thread_count(at_most=before)
    assert after <= before, f"{after - before} threads still alive after every iterator was dropped"
    assert live_iterators(tfi) <= live_before, "an iterator outlived every reference to it"


# --- Pipelines with slow nested datasets ---------------------------------------------------------------------

class SlowCase:
    """Nested datasets of which some sleep ``LONG_SLEEP_MICROSECONDS`` before each element."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        count = rng.randint(3, 10)
        self.sizes = [rng.randint(1, 5) for _ in range(count)]
        self.slow = set(rng.sample(range(count), rng.randint(1, max(1, count // 2))))
        self.cycle_length = rng.randint(1, 4)
        self.block_length = rng.randint(1, 3)
        self.prefetch = rng.choice([None, 0, 1, 3])
        self.buffer = rng.choice([None, 1, 2])
        self.sloppy = bool(seed % 2)
        nested = [[_BLOCKED if index in self.slow else STRIDE * index + k for k in range(size)]
                  for index, size in enumerate(self.sizes)]
        order = interleave_order(nested, self.cycle_length, self.block_length, self.prefetch, self.buffer)
        # The deterministic order up to the first element of a slow input: that many elements can be read
        # without waiting on a sleep, in either mode.
        self.ready = order[:order.index(_BLOCKED)]

    def __repr__(self) -> str:
        return (f"SlowCase(sizes={self.sizes}, slow={sorted(self.slow)}, cycle_length={self.cycle_length}, "
                f"block_length={self.block_length}, prefetch={self.prefetch}, buffer={self.buffer}, "
                f"sloppy={self.sloppy})")

    def dataset(self, tfi: types.ModuleType, inject_prefetch: bool = True) -> tf.data.Dataset:
        sizes, slow = list(self.sizes), sorted(self.slow)

        def map_func(index: tf.Tensor) -> tf.data.Dataset:
            size = tf.gather(tf.constant(sizes, tf.int64), index)
            is_slow = tf.reduce_any(tf.equal(index, tf.constant(slow, tf.int64)))
            pause = tf.where(is_slow, tf.constant(LONG_SLEEP_MICROSECONDS, tf.int64), 0)
            # The sleep comes first in the nested pipeline, directly on the source.
            return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size).apply(testing.sleep(pause))

        dataset = tf.data.Dataset.range(len(sizes)).apply(tfi.parallel_interleave(
            map_func, self.cycle_length, self.block_length, sloppy=self.sloppy,
            buffer_output_elements=self.buffer, prefetch_input_elements=self.prefetch))
        if not inject_prefetch:
            options = tf.data.Options()
            options.experimental_optimization.inject_prefetch = False
            dataset = dataset.with_options(options)
        return dataset

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def check_prefix(self, values: Sequence[int]) -> None:
        """Values read before the slow elements: the model's prefix (deterministic), or (sloppy) elements of
        fast inputs, none twice, each input's in its own order."""
        if not self.sloppy:
            assert list(values) == self.ready[:len(values)], (self, values)
            return
        by_input: Dict[int, List[int]] = {}
        for value in values:
            by_input.setdefault(value // STRIDE, []).append(value % STRIDE)
        for index, offsets in by_input.items():
            assert index not in self.slow and offsets == list(range(len(offsets))), (self, values)
            assert len(offsets) <= self.sizes[index], (self, values)


def drop(holder: List[Any]) -> float:
    """Drops the only reference to an iterator (on a helper thread, bounded); returns how long it took."""
    return run_with_timeout(lambda: (holder.clear(), gc.collect()), PROMPT_SECONDS, "deleting the iterator")


@pytest.mark.parametrize("seed", SEEDS)
def test_delete_while_workers_sleep_in_nested_get_next(tfi: types.ModuleType, baseline: int, seed: int) -> None:
    case = SlowCase(seed)
    rng = random.Random(seed)
    for _ in range(3):
        iterator = iter(case.dataset(tfi))
        steps = rng.randint(0, len(case.ready))
        values = [int(next(iterator)) for _ in range(steps)]
        case.check_prefix(values)
        time.sleep(rng.uniform(0, 0.3))
        holder = [iterator]
        del iterator
        drop(holder)


@tf.function
def _get_next(iterator: Any) -> Any:
    return iterator.get_next()


class CancellableReader:
    """Reads up to ``limit`` elements on a thread, each through a ``get_next`` that can be cancelled."""

    def __init__(self, iterator: Any, limit: int) -> None:
        self._manager = cancellation.CancellationManager()
        self._get_next = self._manager.get_cancelable_function(_get_next.get_concrete_function(iterator))
        self._iterator = iterator
        self._limit = limit
        self.values: List[int] = []
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="cancellable-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self._limit):
                self.values.append(int(self._get_next(self._iterator)))
        except BaseException as error:  # noqa: BLE001 - checked by the test
            self.error = error
        finally:
            self._iterator = None

    def cancel_and_join(self) -> float:
        start = time.monotonic()
        self._manager.start_cancel()
        self._thread.join(PROMPT_SECONDS)
        if self._thread.is_alive():
            pytest.fail(f"a get_next blocked on a slow element did not return within {PROMPT_SECONDS}s of "
                        "its cancellation")
        return time.monotonic() - start


# The op's answer to a cancelled call. A cancellation that lands between two calls never reaches the iterator:
# TensorFlow refuses the next call before it starts ("Function was cancelled before it was started") and the
# iterator itself goes on.
OP_CANCELLED_MESSAGE = "tf_interleave iterator was cancelled"
# How many times a cancellation may land between calls before the test gives up.
MAX_CANCEL_ROUNDS = 10


def cancellation_reached_iterator(error: Optional[BaseException]) -> bool:
    """Whether a reader's error shows the iterator saw the cancellation (or the sequence ended)."""
    if isinstance(error, tf.errors.OutOfRangeError):
        return True
    return isinstance(error, tf.errors.CancelledError) and OP_CANCELLED_MESSAGE in str(error)


@pytest.mark.parametrize("seed", SEEDS)
def test_cancel_consumer_blocked_in_get_next(tfi: types.ModuleType, baseline: int, seed: int) -> None:
    case = SlowCase(seed)
    rng = random.Random(seed)
    for attempt in range(2):
        # Without the prefetch that tf.data injects after the op, the cancelled iterator itself answers.
        inject_prefetch = attempt == 0
        iterator = iter(case.dataset(tfi, inject_prefetch))
        values: List[int] = []
        for _ in range(MAX_CANCEL_ROUNDS):
            # Every element and one more: the reader ends up blocked on a slow one unless cancelled first.
            reader = CancellableReader(iterator, case.total + 1 - len(values))
            time.sleep(rng.uniform(0, 0.4))
            reader.cancel_and_join()
            values.extend(reader.values)
            # The op answers a cancelled get_next with CancelledError.  The prefetch that tf.data injects after
            # the op sometimes reports its cancelled input as the end of the sequence instead (a race inside
            # TensorFlow's PrefetchDataset; never seen without it).
            allowed = (tf.errors.CancelledError, tf.errors.OutOfRangeError) if inject_prefetch else (
                tf.errors.CancelledError,)
            assert isinstance(reader.error, allowed), (case, inject_prefetch, reader.error)
            if cancellation_reached_iterator(reader.error):
                break
        else:
            pytest.fail(f"{case}: {MAX_CANCEL_ROUNDS} cancellations in a row never reached the iterator")
        case.check_prefix(values)
        # The iterator stays cancelled (or, behind the injected prefetch, ended).
        try:
            next(iterator)
        except tf.errors.CancelledError:
            pass
        except StopIteration:
            assert inject_prefetch, f"{case}: a cancelled iterator reported the end of its sequence"
        else:
            pytest.fail(f"{case}: a cancelled iterator produced another element")
        holder = [iterator]
        del iterator, reader
        drop(holder)


# --- Full buffers ----------------------------------------------------------------------------------------------

def newest_stats(tfi: types.ModuleType) -> Optional[Dict[str, Any]]:
    entries = tfi.stats()
    return max(entries, key=lambda entry: entry["id"]) if entries else None


@pytest.mark.parametrize("seed", SEEDS)
def test_delete_with_full_buffers(tfi: types.ModuleType, baseline: int, seed: int) -> None:
    rng = random.Random(seed)
    cycle_length, buffer = rng.randint(1, 4), rng.randint(1, 4)
    prefetch = rng.randint(0, 4)
    sloppy = bool(seed % 2)
    dataset = tf.data.Dataset.range(rng.randint(1, 12)).apply(tfi.parallel_interleave(
        lambda x: tf.data.Dataset.range(STRIDE * x, STRIDE * x + 200), cycle_length, rng.randint(1, 3),
        sloppy=sloppy, buffer_output_elements=buffer, prefetch_input_elements=prefetch))
    bound = (cycle_length + prefetch) * buffer
    for _ in range(2):
        iterator = iter(dataset)
        for _ in range(rng.randint(1, 30)):
            next(iterator)
        # The consumer stops; wait (a random while) for the workers to fill their buffers.
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        while time.monotonic() < deadline:
            entry = newest_stats(tfi) if hasattr(tfi, "stats") else None
            if entry is not None:
                assert entry["buffered_elements"] <= bound, entry
                if entry["buffered_elements"] == bound:
                    break
            time.sleep(0.01)
        holder = [iterator]
        del iterator
        drop(holder)


def test_delete_while_input_is_slow(tfi: types.ModuleType, baseline: int) -> None:
    """Workers blocked pulling the next input element (the input sleeps) when the iterator goes."""
    slow_input = tf.data.Dataset.range(3).concatenate(
        tf.data.Dataset.range(3, 9).apply(testing.sleep(LONG_SLEEP_MICROSECONDS)))
    rng = random.Random(7)
    for sloppy in (False, True):
        dataset = slow_input.apply(tfi.parallel_interleave(
            lambda x: tf.data.Dataset.range(STRIDE * x, STRIDE * x + 2), 2, 1, sloppy=sloppy,
            prefetch_input_elements=1))
        for _ in range(4):
            iterator = iter(dataset)
            for _ in range(rng.randint(0, 6)):
                next(iterator)
            time.sleep(rng.uniform(0, 0.2))
            holder = [iterator]
            del iterator
            drop(holder)


# --- TF1 sessions ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_session_close_while_get_next_blocks(tfi: types.ModuleType, baseline: int, seed: int) -> None:
    case = SlowCase(seed)
    rng = random.Random(seed)
    with tf.Graph().as_default():
        iterator = tf.compat.v1.data.make_initializable_iterator(case.dataset(tfi))
        next_element = iterator.get_next()
        session = tf.compat.v1.Session()
        session.run(iterator.initializer)
        outcome: Dict[str, Any] = {"values": []}

        def read() -> None:
            try:
                for _ in range(case.total + 1):
                    outcome["values"].append(int(session.run(next_element)))
            except (tf.errors.OpError, RuntimeError) as error:
                # RuntimeError: the session was already closed when the next run started.
                outcome["error"] = error

        reader = threading.Thread(target=read, name="session-reader", daemon=True)
        reader.start()
        time.sleep(rng.uniform(0, 0.4))
        run_with_timeout(session.close, PROMPT_SECONDS, "closing the session")
        reader.join(PROMPT_SECONDS)
        assert not reader.is_alive(), f"{case}: session.run kept blocking after the session was closed"
        assert "error" in outcome, f"{case}: the reader read past the slow elements: {outcome}"
        assert isinstance(outcome["error"], (tf.errors.CancelledError, RuntimeError)), outcome["error"]
        case.check_prefix(outcome["values"])
        del session, reader
