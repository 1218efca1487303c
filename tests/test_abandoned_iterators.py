"""Many iterators created and abandoned at seeded random points: no hang, no leaked thread, no memory growth.

Runs ``ABANDONED_ITERATORS`` rounds (200; 1000 with ``TF_INTERLEAVE_FULL_SOAK=1``; any count with
``TF_INTERLEAVE_ABANDON_COUNT=N``).  Each round picks a pipeline (both modes, errors, slow nested datasets, a
slow input, tiny buffers, tensor arguments, a memory budget, skipped inputs, symbolic checkpointing), creates an
iterator, and abandons it at a random point: before the first element, after some elements, at the end, after
saving a checkpoint, or after restoring one.  Then:

* every drop finishes within ``DROP_TIMEOUT_SECONDS``;
* the process's thread count comes back to its baseline (taken after a warm-up round);
* no tf_interleave iterator stays registered in ``tf_interleave.stats()``;
* the resident set size grows by less than ``rss_limit_mb`` (noise, not a leak per iterator).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import threading
import time
import types
from typing import Any, Callable, List, Optional

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing

from pipelines import STRIDE, sized_input, sized_map_func, thread_count
from pipelines import settled_thread_count as pipelines_settled_thread_count
from reference_model import interleave_order

# A hung test ends the run with every thread's stack instead of a silent CI timeout.
pytestmark = pytest.mark.usefixtures("hang_guard")

FULL_SOAK_ENV = "TF_INTERLEAVE_FULL_SOAK"
COUNT_ENV = "TF_INTERLEAVE_ABANDON_COUNT"
ABANDONED_ITERATORS = int(os.environ.get(COUNT_ENV) or (1000 if os.environ.get(FULL_SOAK_ENV) == "1" else 200))
LONG_SLEEP_MICROSECONDS = 100_000_000
DROP_TIMEOUT_SECONDS = 20.0
SETTLE_SECONDS = 20.0
MAX_STEPS = 400

_BLOCKED = object()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def rss_limit_mb(count: int) -> float:
    """Allowed RSS growth: allocator noise plus a little per iterator (a real leak is far larger)."""
    return 40.0 + count * 0.05


def settled_thread_count(at_most: Optional[int] = None) -> int:
    return pipelines_settled_thread_count(at_most, timeout=SETTLE_SECONDS, stable_polls=4)


@dataclasses.dataclass
class Variant:
    name: str
    dataset: tf.data.Dataset
    # How many get_next calls are certain not to wait on a 100 s sleep (None: all of them).
    ready_steps: Optional[int] = None
    checkpointable: bool = True


def _slow_map_func(sizes: List[int], slow: List[int]) -> Callable[[tf.Tensor], tf.data.Dataset]:
    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(sizes, tf.int64), index)
        pause = tf.where(tf.reduce_any(tf.equal(index, tf.constant(slow, tf.int64))),
                         tf.constant(LONG_SLEEP_MICROSECONDS, tf.int64), 0)
        # The sleep comes first in the nested pipeline.
        return tf.data.Dataset.range(STRIDE * index, STRIDE * index + size).apply(testing.sleep(pause))

    return map_func


def _ready_steps(sizes: List[int], slow: List[int], cycle_length: int, block_length: int,
                 prefetch: Optional[int]) -> int:
    nested = [[_BLOCKED if index in slow else 0] * size for index, size in enumerate(sizes)]
    order = interleave_order(nested, cycle_length, block_length, prefetch)
    return order.index(_BLOCKED)


def _error_map_func(sizes: List[int], bad_every: int) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """Nested dataset ``i`` parses numbers; its every ``bad_every``-th element fails to parse."""
    def map_func(index: tf.Tensor) -> tf.data.Dataset:
        size = tf.gather(tf.constant(sizes, tf.int64), index)
        values = tf.range(STRIDE * index, STRIDE * index + size)
        bad = tf.equal(values % STRIDE % bad_every, bad_every - 1)
        texts = tf.where(bad, tf.constant("bad"), tf.strings.as_string(values))
        return tf.data.Dataset.from_tensor_slices(texts).map(lambda text: tf.strings.to_number(text, tf.int64))

    return map_func


def make_variants(tfi: types.ModuleType) -> List[Variant]:
    sizes = [4, 1, 6, 0, 3, 5, 2, 7, 3, 4]
    slow = [2, 7]
    variants = []
    for sloppy in (False, True):
        tag = "sloppy" if sloppy else "det"
        variants += [
            Variant(f"plain-{tag}", sized_input(sizes).apply(
                tfi.parallel_interleave(sized_map_func(sizes), 3, 2, sloppy=sloppy))),
            Variant(f"tiny-buffers-{tag}", sized_input(sizes).apply(tfi.parallel_interleave(
                sized_map_func(sizes), 2, 1, sloppy=sloppy, buffer_output_elements=1, prefetch_input_elements=0))),
            Variant(f"tensor-args-{tag}", sized_input(sizes).apply(tfi.parallel_interleave(
                sized_map_func(sizes), tf.constant(4, tf.int64), tf.constant(3, tf.int64), sloppy=sloppy))),
            Variant(f"errors-{tag}", sized_input(sizes).apply(tfi.parallel_interleave(
                _error_map_func(sizes, 3), 3, 1, sloppy=sloppy))),
            Variant(f"slow-nested-{tag}", sized_input(sizes).apply(tfi.parallel_interleave(
                _slow_map_func(sizes, slow), 3, 1, sloppy=sloppy, prefetch_input_elements=2)),
                ready_steps=_ready_steps(sizes, slow, 3, 1, 2), checkpointable=False),
        ]
    slow_input = tf.data.Dataset.range(4).concatenate(
        tf.data.Dataset.range(4, 10).apply(testing.sleep(LONG_SLEEP_MICROSECONDS)))
    symbolic = tf.data.Options()
    symbolic.experimental_symbolic_checkpoint = True
    variants += [
        # Inputs from 4 on sleep. The first 3 elements come from inputs 0 and 1 before any slot needs an
        # input beyond 3.
        Variant("slow-input", slow_input.apply(tfi.parallel_interleave(
            sized_map_func(sizes), 2, 1, prefetch_input_elements=1)), ready_steps=3, checkpointable=False),
        Variant("memory-budget", sized_input(sizes).apply(tfi.parallel_interleave(
            sized_map_func(sizes), 3, 1, sloppy=True, memory_budget_bytes=64))),
        Variant("skip-errors", sized_input(sizes).apply(tfi.parallel_interleave(
            _error_map_func(sizes, 4), 2, 2, on_input_error="skip"))),
        Variant("symbolic-checkpoint", sized_input(sizes).apply(tfi.parallel_interleave(
            sized_map_func(sizes), 3, 2)).with_options(symbolic)),
    ]
    for variant in variants:
        if variant.checkpointable and not _saves(variant.dataset):
            # Checkpoint support is tested elsewhere; here it only adds ways to abandon an iterator.
            variant.checkpointable = False
    return variants


def _saves(dataset: tf.data.Dataset) -> bool:
    """Whether an iterator of ``dataset`` can be checkpointed (a memory-only save)."""
    iterator = iter(dataset)
    try:
        next(iterator)
    except (tf.errors.InvalidArgumentError, StopIteration):
        pass  # an injected error
    try:
        iterator._save()  # pylint: disable=protected-access
    except tf.errors.UnimplementedError:
        return False
    return True


@tf.function
def _get_next(iterator: Any) -> Any:
    return iterator.get_next()


class Abandoner:
    """Creates iterators, takes elements from them and abandons them, per seeded random choices."""

    def __init__(self, variants: List[Variant], seed: int, checkpoint_dir: str) -> None:
        self.variants = variants
        self.rng = random.Random(seed)
        self.checkpoint_dir = checkpoint_dir
        self.max_drop_seconds = 0.0
        self.peak_threads = 0

    def _take(self, iterator: Any, steps: int, in_function: bool) -> None:
        for _ in range(steps):
            try:
                if in_function:
                    _get_next(iterator)
                else:
                    next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                return
            except tf.errors.InvalidArgumentError:
                continue  # an injected parse error; the iterator goes on

    def _drop(self, holder: List[Any]) -> None:
        self.peak_threads = max(self.peak_threads, thread_count())
        start = time.monotonic()
        dropper = threading.Thread(target=holder.clear, name="iterator-dropper", daemon=True)
        dropper.start()
        dropper.join(DROP_TIMEOUT_SECONDS)
        if dropper.is_alive():
            pytest.fail(f"dropping an iterator did not finish within {DROP_TIMEOUT_SECONDS}s")
        self.max_drop_seconds = max(self.max_drop_seconds, time.monotonic() - start)

    def round(self, number: int, variant: Optional[Variant] = None) -> None:
        rng = self.rng
        variant = variant or rng.choice(self.variants)
        limit = MAX_STEPS if variant.ready_steps is None else variant.ready_steps
        iterator = iter(variant.dataset)
        how = rng.choice(["unstarted", "some", "some", "some", "drained", "checkpoint"])
        if how == "drained" and variant.ready_steps is not None:
            how = "some"
        if how == "checkpoint" and not variant.checkpointable:
            how = "some"
        if how == "some":
            self._take(iterator, rng.randint(1, max(1, limit)), in_function=rng.random() < 0.25)
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0, 0.02))  # let the workers run ahead, or block, before the drop
        elif how == "drained":
            self._take(iterator, MAX_STEPS, in_function=False)
        elif how == "checkpoint":
            self._take(iterator, rng.randint(0, 12), in_function=False)
            checkpoint = tf.train.Checkpoint(iterator=iterator)
            path = checkpoint.write(os.path.join(self.checkpoint_dir, f"round-{number % 4}"))
            if rng.random() < 0.5:
                # Abandon the saved iterator and a restored one, partly read.
                restored = iter(variant.dataset)
                tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
                self._take(restored, rng.randint(0, 8), in_function=False)
                holder = [restored]
                del restored
                self._drop(holder)
            del checkpoint
        holder = [iterator]
        del iterator
        self._drop(holder)


def test_abandoned_iterators_leave_no_threads_and_no_memory(tfi: types.ModuleType, tmp_path) -> None:
    variants = make_variants(tfi)
    abandoner = Abandoner(variants, seed=20240611, checkpoint_dir=str(tmp_path))
    # Warm-up: every variant once, each way, so that TensorFlow's pools, caches and traces exist.
    for variant in variants:
        for _ in range(3):
            abandoner.round(0, variant)
    gc.collect()
    baseline_threads = settled_thread_count()
    baseline_rss = rss_bytes()
    live_before = len(tfi.stats()) if hasattr(tfi, "stats") else 0

    started = time.monotonic()
    abandoner.peak_threads = baseline_threads
    for number in range(ABANDONED_ITERATORS):
        abandoner.round(number)
        if number % 50 == 49:
            gc.collect()
    elapsed = time.monotonic() - started

    remaining = settled_thread_count(at_most=baseline_threads)
    gc.collect()
    growth_mb = (rss_bytes() - baseline_rss) / 2**20
    summary = (f"{ABANDONED_ITERATORS} iterators in {elapsed:.1f}s; threads {baseline_threads} -> {remaining} "
               f"(peak {abandoner.peak_threads}); RSS growth {growth_mb:.1f} MB; slowest drop "
               f"{abandoner.max_drop_seconds:.3f}s")
    print(summary)
    assert remaining <= baseline_threads, f"{remaining - baseline_threads} threads leaked: {summary}"
    if hasattr(tfi, "stats"):
        assert len(tfi.stats()) <= live_before, f"iterators still registered after they were dropped: {summary}"
    assert growth_mb < rss_limit_mb(ABANDONED_ITERATORS), f"RSS grew too much: {summary}"
