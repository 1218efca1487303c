"""Soak test: creates, reads and abandons tf_interleave iterators for a while.

Usage:
  python bench/soak.py --minutes N [--json out.json] [--seed S]
                       [--max-rss-growth-mb MB] [--report-seconds S]
                       [--actions drain,abandon,...] [--builtin]

Loops over a mix of pipelines (deterministic and sloppy; errors from nested
datasets, from `map_func` and from the input; slow nested datasets; a slow
input; tiny buffers; a memory budget; skipped inputs; tensor arguments) and of
ways to use them: read to the end (checking every element), read a little and
abandon, abandon mid-stream while workers sleep, save a checkpoint and finish
from it in a new iterator (checking the remaining elements), read through a
`tf.function`, cancel a `get_next` blocked on a slow element, run in a TF1
`Session`. Prints a line every `--report-seconds` (RSS, threads, live
iterators) and a summary at the end.

Exits 1 if, at the end, the thread count has not come back to its baseline
(taken after a warm-up round of every pipeline and action), a tf_interleave
iterator is still registered, the RSS grew by more than
`--max-rss-growth-mb` since the warm-up, an element was wrong, lost or
duplicated, or an iterator took longer than `--drop-timeout` seconds to go
away (a hang). `--minutes 0.5` is a CI smoke test. `--actions` restricts the
mix (to find which use of the op a figure comes from); `--builtin` soaks
TensorFlow's legacy `parallel_interleave` on the same pipelines (those it
supports), as a baseline for the RSS figures.

(With an in-place build, `python setup.py build_ext --inplace`, prefix the
command with `PYTHONPATH=.`.)
"""

import argparse
import collections
import dataclasses
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tensorflow.python.data.experimental.ops import testing  # pylint: disable=g-import-not-at-top
from tensorflow.python.eager import cancellation  # pylint: disable=g-import-not-at-top

import tf_interleave as tfi  # pylint: disable=g-import-not-at-top

# The tests' helpers for counting threads once they have settled.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests"))
# pylint: disable-next=g-import-not-at-top
from pipelines import settled_thread_count, thread_count

STRIDE = 1000
LONG_SLEEP_US = 100_000_000  # Only cancellation ends it.
ERROR = "error"  # Stands for any error in an element list.


def rss_mb() -> float:
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


class Failure(Exception):
  """A soak check failed."""


@dataclasses.dataclass
class Pipeline:
  """A dataset and what reading it must give."""
  name: str
  make: Callable[[], tf.data.Dataset]
  # The elements (ints and ERROR markers) every full read gives, as a
  # multiset; None when a full read would wait on a long sleep.
  expected: Optional[collections.Counter] = None
  deterministic: bool = True
  # get_next calls that never wait on a long sleep (None: all of them).
  ready_steps: Optional[int] = None
  checkpointable: bool = True
  dataset: Any = None
  order: Optional[List[Any]] = None  # First full read (deterministic ones).

  def get(self) -> tf.data.Dataset:
    if self.dataset is None:
      self.dataset = self.make()
    return self.dataset


def _sized(sizes: List[int], bad=frozenset(), map_bad=frozenset(),
           slow=frozenset()):
  """map_func: input i -> STRIDE*i .. STRIDE*i + sizes[i] - 1, as parsed
  strings; (i, j) in `bad` fails to parse, i in `map_bad` fails in map_func,
  i in `slow` sleeps LONG_SLEEP_US before each element."""
  texts = [["bad" if (i, j) in bad else str(STRIDE * i + j)
            for j in range(size)] for i, size in enumerate(sizes)]
  flat = [t for row in texts for t in row] or [""]
  starts = [sum(sizes[:i]) for i in range(len(sizes))]
  map_bad_list = sorted(map_bad) or [-1]
  slow_list = sorted(slow) or [-1]

  def map_func(index):
    ok = tf.reduce_all(tf.not_equal(index, tf.constant(map_bad_list,
                                                       tf.int64)))
    with tf.control_dependencies([tf.debugging.Assert(ok, ["bad-map",
                                                           index])]):
      start = tf.gather(tf.constant(starts, tf.int64), index)
    size = tf.gather(tf.constant(sizes, tf.int64), index)
    row = tf.slice(tf.constant(flat), tf.reshape(start, [1]),
                   tf.reshape(size, [1]))
    is_slow = tf.reduce_any(tf.equal(index, tf.constant(slow_list,
                                                        tf.int64)))
    pause = tf.where(is_slow, tf.constant(LONG_SLEEP_US, tf.int64), 0)
    # The sleep comes first in the nested pipeline, right on the source.
    return (tf.data.Dataset.from_tensor_slices(row)
            .apply(testing.sleep(pause))
            .map(lambda text: tf.strings.to_number(text, tf.int64)))

  return map_func


def _expected(sizes, bad=frozenset(), map_bad=frozenset(),
              input_bad=frozenset()):
  counter = collections.Counter()
  for i, size in enumerate(sizes):
    if i in input_bad or i in map_bad:
      counter[ERROR] += 1
      continue
    for j in range(size):
      counter[ERROR if (i, j) in bad else STRIDE * i + j] += 1
  return counter


def _failing_input(count: int, bad):
  bad_list = tf.constant(sorted(bad) or [-1], tf.int64)

  def check(index):
    ok = tf.reduce_all(tf.not_equal(index, bad_list))
    with tf.control_dependencies([tf.debugging.Assert(ok, ["bad-input",
                                                           index])]):
      return tf.identity(index)

  return tf.data.Dataset.range(count).map(check)


def _implementation(builtin: bool):
  """The interleave under test: tf_interleave's, or TensorFlow's own legacy
  op (for comparison; it takes none of tf_interleave's keyword arguments)."""
  return (tf.data.experimental.parallel_interleave if builtin
          else tfi.parallel_interleave)


def live_iterators(builtin: bool) -> int:
  return 0 if builtin else len(tfi.stats())


def make_pipelines(builtin: bool = False) -> List[Pipeline]:
  parallel_interleave = _implementation(builtin)
  sizes = [5, 2, 7, 0, 4, 6, 3, 5, 1, 6, 4, 2]
  n = len(sizes)
  bad = frozenset({(0, 1), (2, 6), (5, 0), (9, 3)})
  map_bad = frozenset({4, 10})
  input_bad = frozenset({7})
  slow = frozenset({6})
  pipelines = []
  for sloppy in (False, True):
    mode = "sloppy" if sloppy else "det"

    def interleave(map_func, *args, _sloppy=sloppy, **kwargs):
      return parallel_interleave(map_func, *args, sloppy=_sloppy, **kwargs)

    pipelines += [
        Pipeline(f"plain-{mode}", lambda i=interleave: tf.data.Dataset.range(
            n).apply(i(_sized(sizes), 3, 2)), _expected(sizes), not sloppy),
        Pipeline(f"tiny-buffers-{mode}", lambda i=interleave: (
            tf.data.Dataset.range(n).apply(i(
                _sized(sizes), 2, 1, buffer_output_elements=1,
                prefetch_input_elements=0))), _expected(sizes), not sloppy),
        Pipeline(f"tensor-args-{mode}", lambda i=interleave: (
            tf.data.Dataset.range(n).apply(i(
                _sized(sizes), tf.constant(4, tf.int64),
                tf.constant(3, tf.int64)))), _expected(sizes), not sloppy),
        Pipeline(f"errors-{mode}", lambda i=interleave: _failing_input(
            n, input_bad).apply(i(_sized(sizes, bad, map_bad), 3, 1)),
                 _expected(sizes, bad, map_bad, input_bad), not sloppy,
                 checkpointable=False),
        Pipeline(f"slow-nested-{mode}", lambda i=interleave: (
            tf.data.Dataset.range(n).apply(i(
                _sized(sizes, slow=slow), 3, 1,
                prefetch_input_elements=2))), None, not sloppy,
                 ready_steps=15, checkpointable=False),
        Pipeline(f"memory-budget-{mode}", lambda i=interleave: (
            tf.data.Dataset.range(n).apply(i(
                _sized(sizes), 4, 1, memory_budget_bytes=40))),
                 _expected(sizes), not sloppy),
    ]
  skip_expected = collections.Counter()
  for i, size in enumerate(sizes):
    if i in map_bad:
      continue
    for j in range(size):
      if (i, j) in bad:
        break
      skip_expected[STRIDE * i + j] += 1

  def slow_input():
    # Input elements from 4 on take LONG_SLEEP_US each.
    return tf.data.Dataset.range(4).concatenate(
        tf.data.Dataset.range(4, n).apply(testing.sleep(LONG_SLEEP_US)))

  pipelines += [
      Pipeline("skip-errors", lambda: tf.data.Dataset.range(n).apply(
          parallel_interleave(_sized(sizes, bad, map_bad), 2, 2,
                              on_input_error="skip")),
               skip_expected, True, checkpointable=False),
      Pipeline("slow-input", lambda: slow_input().apply(parallel_interleave(
          _sized(sizes), 2, 1, prefetch_input_elements=1)), None, True,
               ready_steps=3, checkpointable=False),
  ]
  if builtin:
    # No memory budget or skipped inputs there, tensor arguments with default
    # buffers fail in graph mode, a get_next waiting on a slow input cannot
    # be cancelled, and its "deterministic" order can vary with timing when
    # block_length > 1 (SPEC section 2).
    pipelines = [p for p in pipelines if not p.name.startswith(
        ("memory-budget", "skip-errors", "tensor-args", "slow-input"))]
    for pipeline in pipelines:
      pipeline.deterministic = False
  return pipelines


@tf.function
def _get_next(iterator):
  return iterator.get_next()


class Soak:
  """Runs rounds; keeps counts and the first failure."""

  def __init__(self, seed: int, drop_timeout: float, checkpoint_dir: str,
               actions=None, builtin: bool = False):
    self.rng = random.Random(seed)
    self.actions = list(actions or self.ACTIONS)
    self.pipelines = make_pipelines(builtin)
    self.drop_timeout = drop_timeout
    self.checkpoint_dir = checkpoint_dir
    self.counts = collections.Counter()
    self.max_drop_seconds = 0.0
    self.peak_threads = 0

  # -- helpers --
  def _read(self, iterator, steps: int, in_function: bool = False):
    """Reads up to `steps` elements; errors become ERROR markers."""
    out = []
    for _ in range(steps):
      try:
        value = _get_next(iterator) if in_function else next(iterator)
      except (StopIteration, tf.errors.OutOfRangeError):
        return out, True
      except tf.errors.InvalidArgumentError:
        out.append(ERROR)
        continue
      out.append(int(value))
    return out, False

  def _drop(self, holder: List[Any]) -> None:
    self.peak_threads = max(self.peak_threads, thread_count())
    start = time.monotonic()
    dropper = threading.Thread(target=holder.clear, daemon=True)
    dropper.start()
    dropper.join(self.drop_timeout)
    if dropper.is_alive():
      raise Failure(f"dropping an iterator took more than "
                    f"{self.drop_timeout}s")
    self.max_drop_seconds = max(self.max_drop_seconds,
                                time.monotonic() - start)

  def _check_full(self, pipeline: Pipeline, values: List[Any]) -> None:
    got = collections.Counter(values)
    if got != pipeline.expected:
      missing = pipeline.expected - got
      extra = got - pipeline.expected
      raise Failure(f"{pipeline.name}: missing {dict(missing)}, "
                    f"unexpected {dict(extra)}")
    if pipeline.deterministic:
      if pipeline.order is None:
        pipeline.order = values
      elif values != pipeline.order:
        raise Failure(f"{pipeline.name}: deterministic order changed: "
                      f"{values} != {pipeline.order}")

  # -- actions --
  def drain(self, pipeline: Pipeline) -> None:
    iterator = iter(pipeline.get())
    values, ended = self._read(iterator, 10_000,
                               in_function=self.rng.random() < 0.2)
    if not ended:
      raise Failure(f"{pipeline.name}: did not end")
    self._check_full(pipeline, values)
    holder = [iterator]
    del iterator
    self._drop(holder)

  def abandon(self, pipeline: Pipeline) -> None:
    iterator = iter(pipeline.get())
    limit = pipeline.ready_steps if pipeline.ready_steps is not None else 40
    self._read(iterator, self.rng.randint(0, limit),
               in_function=self.rng.random() < 0.2)
    if self.rng.random() < 0.3:
      time.sleep(self.rng.uniform(0, 0.02))
    holder = [iterator]
    del iterator
    self._drop(holder)

  def checkpoint(self, pipeline: Pipeline) -> None:
    iterator = iter(pipeline.get())
    first, _ = self._read(iterator, self.rng.randint(0, 20))
    path = tf.train.Checkpoint(iterator=iterator).write(
        os.path.join(self.checkpoint_dir, "soak"))
    restored = iter(pipeline.get())
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    rest, ended = self._read(restored, 10_000)
    if not ended:
      raise Failure(f"{pipeline.name}: restored iterator did not end")
    self._check_full(pipeline, first + rest)
    holder = [iterator, restored]
    del iterator, restored
    self._drop(holder)

  def cancel(self, pipeline: Pipeline) -> None:
    """A get_next blocked on a long sleep, cancelled at a random moment."""
    iterator = iter(pipeline.get())
    manager = cancellation.CancellationManager()
    get_next = manager.get_cancelable_function(
        _get_next.get_concrete_function(iterator))
    outcome = {}

    def read():
      try:
        for _ in range(10_000):
          get_next(iterator)
      except tf.errors.CancelledError:
        outcome["cancelled"] = True
      except tf.errors.OutOfRangeError:
        # The prefetch tf.data injects after the op sometimes reports its
        # cancelled input as the end of the sequence (inside TensorFlow).
        outcome["cancelled"] = True
        self.counts["cancel reported as end of sequence"] += 1
      except tf.errors.OpError as error:
        outcome["error"] = error

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(self.rng.uniform(0, 0.2))
    manager.start_cancel()
    reader.join(self.drop_timeout)
    if reader.is_alive():
      raise Failure(f"{pipeline.name}: a cancelled get_next did not return")
    if "cancelled" not in outcome:
      raise Failure(f"{pipeline.name}: cancelled get_next gave {outcome}")
    holder = [iterator]
    del iterator, reader, get_next
    self._drop(holder)

  def session(self, pipeline: Pipeline) -> None:
    with tf.Graph().as_default():
      dataset = pipeline.make()
      next_element = tf.compat.v1.data.make_one_shot_iterator(
          dataset).get_next()
      session = tf.compat.v1.Session()
      steps = (pipeline.ready_steps if pipeline.ready_steps is not None
               else 10_000)
      values = []
      try:
        for _ in range(self.rng.randint(0, steps)):
          try:
            values.append(int(session.run(next_element)))
          except tf.errors.OutOfRangeError:
            break
          except tf.errors.InvalidArgumentError:
            values.append(ERROR)
      finally:
        closer = threading.Thread(target=session.close, daemon=True)
        closer.start()
        closer.join(self.drop_timeout)
        if closer.is_alive():
          raise Failure(f"{pipeline.name}: closing the session hung")
      del session

  ACTIONS = ("drain", "drain", "abandon", "abandon", "abandon", "checkpoint",
             "cancel", "session")

  def round(self, pipeline: Optional[Pipeline] = None,
            action: Optional[str] = None) -> None:
    pipeline = pipeline or self.rng.choice(self.pipelines)
    action = action or self.rng.choice(self.actions)
    if action in ("drain", "checkpoint") and pipeline.expected is None:
      action = "abandon"
    if action == "checkpoint" and not pipeline.checkpointable:
      action = "drain"
    if action == "cancel" and pipeline.ready_steps is None:
      action = "abandon"
    getattr(self, action)(pipeline)
    self.counts[action] += 1

  def warm_up(self) -> None:
    for pipeline in self.pipelines:
      for action in ("drain", "abandon", "checkpoint", "cancel", "session"):
        self.round(pipeline, action)
    self.counts.clear()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--minutes", type=float, required=True)
  parser.add_argument("--json", help="write samples and summary here")
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--report-seconds", type=float, default=10.0)
  # TensorFlow alone (the --builtin soak) grows by ~45-60 MB in 10 minutes
  # of this mix before levelling off; a leak per iterator grows without end.
  parser.add_argument("--max-rss-growth-mb", type=float, default=96.0)
  parser.add_argument("--drop-timeout", type=float, default=30.0)
  parser.add_argument("--builtin", action="store_true",
                      help="soak TensorFlow's own legacy parallel_interleave "
                      "instead (a baseline for RSS figures)")
  parser.add_argument("--actions", default=",".join(sorted(set(Soak.ACTIONS))),
                      help="comma-separated subset of: %(default)s")
  args = parser.parse_args(argv)
  actions = [a for a in Soak.ACTIONS if a in args.actions.split(",")]
  unknown = set(args.actions.split(",")) - set(Soak.ACTIONS)
  if unknown or not actions:
    parser.error(f"unknown or no actions: {args.actions}")

  checkpoint_dir = tempfile.mkdtemp(prefix="tf_interleave_soak_")
  soak = Soak(args.seed, args.drop_timeout, checkpoint_dir, actions,
              args.builtin)
  failures = []
  samples = []
  try:
    subject = ("the built-in parallel_interleave" if args.builtin else
               f"tf_interleave {tfi.__version__} ({tfi.library_path()})")
    print(f"soak: {subject}, "
          f"TensorFlow {tf.version.VERSION}, {args.minutes} min", flush=True)
    try:
      soak.warm_up()
    except Failure as failure:
      print(f"soak: FAILURE during the warm-up: {failure}", flush=True)
      return 1
    gc.collect()
    base_threads = settled_thread_count(stable_polls=5)
    base_rss = rss_mb()
    base_live = live_iterators(args.builtin)
    soak.peak_threads = base_threads
    print(f"soak: baseline after warm-up: RSS {base_rss:.1f} MB, "
          f"{base_threads} threads, {base_live} live iterators", flush=True)
    started = time.monotonic()
    deadline = started + args.minutes * 60
    next_report = started
    iterations = 0
    while True:
      now = time.monotonic()
      if now >= next_report or now >= deadline:
        sample = {"seconds": round(now - started, 1),
                  "iterations": iterations, "rss_mb": round(rss_mb(), 1),
                  "threads": thread_count(),
                  "live_iterators": live_iterators(args.builtin)}
        samples.append(sample)
        print(f"soak: {sample['seconds']:7.1f}s  {iterations:6d} iterations  "
              f"RSS {sample['rss_mb']:7.1f} MB  {sample['threads']:3d} "
              f"threads  {sample['live_iterators']} live iterators",
              flush=True)
        next_report += args.report_seconds
      if now >= deadline:
        break
      try:
        soak.round()
      except Failure as failure:
        failures.append(str(failure))
        print(f"soak: FAILURE: {failure}", flush=True)
        if len(failures) >= 5:
          break
      iterations += 1
    elapsed = time.monotonic() - started

    final_threads = settled_thread_count(at_most=base_threads)
    gc.collect()
    final_rss = rss_mb()
    final_live = live_iterators(args.builtin)
    rss_values = [s["rss_mb"] for s in samples] + [final_rss]
    summary = {
        "implementation": "builtin" if args.builtin else "tf_interleave",
        "minutes": args.minutes,
        "seconds": round(elapsed, 1),
        "iterations": iterations,
        "actions": dict(soak.counts),
        "baseline_rss_mb": round(base_rss, 1),
        "final_rss_mb": round(final_rss, 1),
        "min_rss_mb": round(min(rss_values), 1),
        "max_rss_mb": round(max(rss_values), 1),
        "rss_growth_mb": round(final_rss - base_rss, 1),
        "baseline_threads": base_threads,
        "final_threads": final_threads,
        "max_threads": max([soak.peak_threads] +
                           [s["threads"] for s in samples]),
        "live_iterators_at_end": final_live,
        "slowest_drop_seconds": round(soak.max_drop_seconds, 3),
        "failures": failures,
    }
    if final_threads > base_threads:
      failures.append(f"{final_threads - base_threads} threads did not exit "
                      f"(baseline {base_threads}, now {final_threads})")
    if final_live > base_live:
      failures.append(f"{final_live - base_live} iterators still registered")
    if final_rss - base_rss > args.max_rss_growth_mb:
      failures.append(f"RSS grew {final_rss - base_rss:.1f} MB "
                      f"(limit {args.max_rss_growth_mb} MB)")
    summary["failures"] = failures
    summary["ok"] = not failures
    print("soak: summary: " + json.dumps(summary), flush=True)
    print(f"soak: {iterations} iterations in {elapsed:.0f}s; RSS "
          f"{summary['min_rss_mb']}-{summary['max_rss_mb']} MB, growth "
          f"{summary['rss_growth_mb']} MB; threads {base_threads} -> "
          f"{final_threads} (max {summary['max_threads']}); "
          f"{'OK' if not failures else 'FAILED: ' + '; '.join(failures)}",
          flush=True)
    if args.json:
      with open(args.json, "w") as out:
        json.dump({"summary": summary, "samples": samples}, out, indent=1)
  finally:
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
