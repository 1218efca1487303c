"""Measures one contender on one workload in this process.

Usage:
  python bench/run_one.py --workload overhead --contender "legacy [sloppy]" \
      [--contender ...] [--quick] [--data-dir DIR] [--json]
  python bench/run_one.py --workload io --prepare [--quick] --data-dir DIR
      (writes the TFRecord shards of io or io_large)

Reads the whole pipeline once (interleave, then batch) and reports elements,
wall seconds from iterator creation to the last element, process CPU seconds
(user + system) over the same span, peak RSS, and threads: how many new
threads were seen (sampled every few milliseconds, from iterator creation
until the iterator is deleted) and the peak number alive at once. The
elements' fingerprints (sum and an order-sensitive sum) let the caller check
the elements and, for deterministic contenders, their order. With several
`--contender`s they are measured one after the other in this process (what
`run.py --quick` does to save process start-ups; not for timings).
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # pylint: disable=g-import-not-at-top

SAMPLE_SECONDS = 0.002


class ThreadSampler:
  """Samples /proc/self/task in the background: new thread ids, peak alive."""

  def __init__(self):
    self._baseline = set(self._tasks())
    self._seen = set()
    self._peak = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  @staticmethod
  def _tasks():
    return os.listdir("/proc/self/task")

  def sample(self):
    new = set(self._tasks()) - self._baseline
    self._seen |= new
    self._peak = max(self._peak, len(new))

  def _run(self):
    while not self._stop.wait(SAMPLE_SECONDS):
      self.sample()

  def __enter__(self):
    # The sampler's own thread is part of the baseline, not of the result.
    self._thread.start()
    self._baseline.add(str(self._thread.native_id))
    return self

  def __exit__(self, *unused):
    self._stop.set()
    self._thread.join()
    self.sample()

  def result(self):
    alive = set(self._tasks()) - self._baseline
    return {"threads_started": len(self._seen), "threads_peak": self._peak,
            "threads_left": len(alive)}


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    pages = int(f.read().split()[1])
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def warm_up(tf) -> None:
  """Starts TensorFlow's own runtime threads before the baseline is taken."""
  ds = tf.data.Dataset.range(64).map(lambda x: x + 1).batch(8).prefetch(1)
  for _ in ds:
    pass


def measure(w: workloads.Workload, contender: workloads.Contender,
            data_root: str) -> dict:
  import gc  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.get_logger().setLevel("ERROR")
  warm_up(tf)
  with ThreadSampler() as plain:  # What any tf.data iterator starts.
    for _ in tf.data.Dataset.range(4096).batch(1024):
      pass
  dataset = workloads.build_dataset(w, contender, data_root)
  gc.collect()
  rss_before = rss_mb()
  elements, total, ordered = 0, 0, 0
  with ThreadSampler() as threads:
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    iterator = iter(dataset)
    first = None
    for batch in iterator:
      values = batch.numpy()
      if first is None:
        first = time.perf_counter() - t0
      positions = np.arange(elements + 1, elements + 1 + len(values))
      total += int(values.sum())
      ordered += int((values * positions).sum())
      elements += len(values)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    del iterator
    gc.collect()
    teardown = time.perf_counter() - t0 - wall
  return {
      "elements": elements,
      "expected_elements": w.elements,
      "wall_s": wall,
      "cpu_s": cpu,
      "first_batch_s": first,
      "teardown_s": teardown,
      "elements_per_s": elements / wall if wall > 0 else 0.0,
      "cpu_s_per_1k": 1000 * cpu / elements if elements else None,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "rss_before_mb": rss_before,
      "tensorflow": tf.__version__,
      "sum": total % 2**64,
      "order_hash": ordered % 2**64,
      **threads.result(),
      "threads_started_plain_pipeline": plain.result()["threads_started"],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workload", required=True, choices=workloads.NAMES)
  parser.add_argument("--contender", action="append",
                      help="e.g. 'tf_interleave [sloppy]'; repeatable")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--data-dir", default=None,
                      help="where the TFRecord workloads' shards live")
  parser.add_argument("--prepare", action="store_true",
                      help="only write the workload's data, if any")
  parser.add_argument("--json", action="store_true",
                      help="print each result as one JSON line")
  args = parser.parse_args()

  w = workloads.workload(args.workload, args.quick)
  data_root = args.data_dir or os.path.join(tempfile.gettempdir(),
                                            "tf_interleave_bench")
  if args.prepare:
    if w.reads_tfrecords:
      workloads.write_tfrecords(w, data_root)
    return
  if not args.contender:
    parser.error("--contender is required")
  for contender in map(workloads.contender_by_name, args.contender):
    result = {"workload": w.name, "contender": contender.name,
              **measure(w, contender, data_root)}
    if args.json:
      print(json.dumps(result), flush=True)
    else:
      for key, value in result.items():
        print(f"{key:>30}: {value}")


if __name__ == "__main__":
  main()
