"""Measures one contender on one workload in this process.

Usage:
  python bench/run_one.py --workload overhead --contender "legacy [sloppy]" \
      [--contender ...] [--quick] [--data-dir DIR] [--json]
  python bench/run_one.py --workload io --prepare [--quick] --data-dir DIR
      (writes the TFRecord shards of io or io_large)

Reads the whole pipeline once (interleave, then batch) and reports elements,
wall seconds from iterator creation to the last element, process CPU seconds
(user + system) over the same span, peak RSS, and threads: how many new
threads were seen (sampled every few milliseconds by a child process, from
iterator creation until the iterator is deleted) and the peak number alive at
once. The elements' fingerprints (sum and an order-sensitive sum) let the
caller check the elements and, for deterministic contenders, their order. With
several `--contender`s they are measured one after the other in this process
(what `run.py --quick` does to save process start-ups; not for timings).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # pylint: disable=g-import-not-at-top

SAMPLE_SECONDS = 0.002

# The sampler runs in a child process: a Python thread here would take the
# GIL 500 times a second from the thread that reads the pipeline (and add its
# CPU time to the measurement). It lists the measured process's threads until
# its stdin is closed, then prints what it saw as one JSON line.
_SAMPLER_SOURCE = r"""
import json, os, select, sys
task_dir, period = sys.argv[1], float(sys.argv[2])
baseline = set(os.listdir(task_dir))
seen, peak = set(), 0
print("ready", flush=True)
while True:
  stop, _, _ = select.select([sys.stdin], [], [], period)
  new = set(os.listdir(task_dir)) - baseline
  seen |= new
  peak = max(peak, len(new))
  if stop:
    break
print(json.dumps({"seen": sorted(seen), "peak": peak}), flush=True)
"""


class ThreadSampler:
  """Samples this process's threads from a child process: new ids, peak alive.

  Threads alive when the sampler starts are the baseline; every thread seen
  after that (listed every SAMPLE_SECONDS, and once more when the sampler
  stops) counts as started. Threads left are those started ones still alive
  when `result()` is called: a thread the process starts after the sampler
  stopped is not the measured code's.
  """

  def __init__(self):
    self._child = None
    self._report = None

  def __enter__(self):
    self._child = subprocess.Popen(
        [sys.executable, "-c", _SAMPLER_SOURCE, f"/proc/{os.getpid()}/task",
         str(SAMPLE_SECONDS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = self._child.stdout.readline().strip()
    if ready != "ready":
      self._child.kill()
      raise RuntimeError(f"thread sampler did not start: {ready!r}")
    return self

  def __exit__(self, *unused):
    try:
      # Closes the child's stdin: its last sample, then its report.
      out, _ = self._child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      self._child.kill()
      raise
    self._report = json.loads(out)

  def result(self):
    alive = set(os.listdir("/proc/self/task")) & set(self._report["seen"])
    return {"threads_started": len(self._report["seen"]),
            "threads_peak": self._report["peak"],
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
