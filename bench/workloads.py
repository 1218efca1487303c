"""The benchmark's workloads and contenders.

A workload is an input dataset, a `map_func`, and the `cycle_length` and
`block_length` that every contender uses. A contender is an interleave
implementation in one mode (deterministic or sloppy). This module describes
both without importing TensorFlow; `build_dataset` (which does) assembles the
pipeline that `run_one.py` measures.

Sizes: `full` is sized for about a second or two per measurement on an idle
2-core machine; `quick` only checks that everything runs and counts right.
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Dict, List, Optional

# Contenders: name -> (implementation, sloppy). "legacy (noise floor)" is the
# legacy op measured a second time in each repetition, so that the spread of
# legacy/legacy ratios shows how much of a difference is noise.
IMPLEMENTATIONS = ("tf_interleave", "legacy", "legacy (noise floor)",
                   "Dataset.interleave")
MODES = ("deterministic", "sloppy")
BUILTINS = ("legacy", "Dataset.interleave")


@dataclasses.dataclass(frozen=True)
class Contender:
  implementation: str
  mode: str

  @property
  def name(self) -> str:
    return f"{self.implementation} [{self.mode}]"

  @property
  def sloppy(self) -> bool:
    return self.mode == "sloppy"


def contenders(noise_floor: bool = True) -> List[Contender]:
  return [Contender(impl, mode) for mode in MODES for impl in IMPLEMENTATIONS
          if noise_floor or impl != "legacy (noise floor)"]


def contender_by_name(name: str) -> Contender:
  for contender in contenders():
    if contender.name == name:
      return contender
  raise ValueError(f"unknown contender {name!r}; known: "
                   f"{[c.name for c in contenders()]}")


@dataclasses.dataclass(frozen=True)
class Workload:
  """One workload at one size. Latencies are in microseconds."""
  name: str
  description: str
  cycle_length: int
  block_length: int
  inputs: int            # Input elements, i.e. nested datasets.
  per_input: int         # Elements in each nested dataset.
  batch_size: int        # Batch after the interleave.
  latency_us: int = 0    # Per element (latency, stragglers).
  straggler_every: int = 0   # One input in this many is slower...
  straggler_factor: int = 1  # ...by this factor.
  open_us: int = 0       # Before a nested dataset's first element.
  record_bytes: int = 0  # TFRecord record size (io, io_large).

  @property
  def elements(self) -> int:
    return self.inputs * self.per_input

  @property
  def reads_tfrecords(self) -> bool:
    """Whether the workload reads TFRecord shards that must be written first."""
    return self.record_bytes > 0

  def params(self) -> Dict[str, int]:
    return {k: v for k, v in dataclasses.asdict(self).items()
            if k not in ("name", "description")}

  def limits(self) -> Dict[str, float]:
    """Upper bounds on elements/s that follow from the workload's shape."""
    limits = {}
    if self.name == "latency":
      # `cycle_length` nested datasets are read at once, each one element per
      # `latency_us` at best.
      limits["physical limit"] = self.cycle_length * 1e6 / self.latency_us
      # Sloppy mode also reads the staged inputs while the cycle's wait, so
      # every seat (cycle_length + prefetch_input_elements, the default
      # 2 * cycle_length) reads at once: the inputs go through the seats in
      # ceil(inputs / seats) rounds of per_input latencies each.
      seats = 3 * self.cycle_length
      rounds = -(-self.inputs // seats)
      limits["sloppy limit"] = (self.elements * 1e6 /
                                (rounds * self.per_input * self.latency_us))
    if self.name == "stragglers":
      # Nothing finishes before the slowest input has produced its elements
      # one after another.
      slowest = self.per_input * self.latency_us * self.straggler_factor
      limits["bound"] = self.elements * 1e6 / slowest
    return limits

  def data_dir(self, root: str) -> str:
    """Where the TFRecord shards live (named after their shape)."""
    key = json.dumps([self.inputs, self.per_input, self.record_bytes])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return os.path.join(root, f"tfrecords-{digest}")


_FULL = [
    Workload("overhead",
             "tiny in-memory elements (range datasets): per-element "
             "bookkeeping", cycle_length=8, block_length=1, inputs=256,
             per_input=2048, batch_size=1024),
    Workload("io", "TFRecord shards on local disk (page cache warm)",
             cycle_length=8, block_length=1, inputs=32, per_input=4096,
             batch_size=256, record_bytes=2048),
    # Records the size of an encoded image: each one is a fresh 100 KB
    # allocation, so how the readers use memory shows, not only scheduling.
    Workload("io_large", "TFRecord shards of large records (100 KB, like "
             "encoded images)", cycle_length=8, block_length=1, inputs=32,
             per_input=256, batch_size=32, record_bytes=100 * 1024),
    Workload("latency", "every element takes a fixed latency (sleep)",
             cycle_length=8, block_length=1, inputs=32, per_input=256,
             batch_size=64, latency_us=1000),
    Workload("stragglers", "like latency, but one input in 8 is 20x slower",
             cycle_length=8, block_length=1, inputs=40, per_input=32,
             batch_size=64, latency_us=1000, straggler_every=8,
             straggler_factor=20),
    Workload("slow_open", "map_func's dataset is slow to yield its first "
             "element (remote file open)", cycle_length=4, block_length=1,
             inputs=64, per_input=256, batch_size=256, open_us=50000),
    Workload("slow_map_func", "map_func itself waits in Python before "
             "returning its dataset (a remote open through a Python client)",
             cycle_length=4, block_length=1, inputs=64, per_input=256,
             batch_size=256, open_us=50000),
]

# More inputs than `cycle_length + prefetch_input_elements`, so that finished
# nested datasets get replaced from the input.
_QUICK = {
    "overhead": dict(inputs=40, per_input=128),
    "io": dict(inputs=32, per_input=64),
    "io_large": dict(inputs=16, per_input=4),
    "latency": dict(inputs=32, per_input=8),
    "stragglers": dict(inputs=32, per_input=4),
    "slow_open": dict(inputs=24, per_input=16, open_us=20000),
    "slow_map_func": dict(inputs=24, per_input=16, open_us=20000),
}

NAMES = tuple(w.name for w in _FULL)


def workload(name: str, quick: bool = False) -> Workload:
  for w in _FULL:
    if w.name == name:
      return dataclasses.replace(w, **_QUICK[name]) if quick else w
  raise ValueError(f"unknown workload {name!r}; known: {NAMES}")


# --- Everything below imports TensorFlow. ---

HEADER_BYTES = 16  # "shard:index:" prefix of each TFRecord record.


def write_tfrecords(w: Workload, root: str) -> List[str]:
  """Writes a TFRecord workload's shards once; later calls reuse them."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  folder = w.data_dir(root)
  paths = [os.path.join(folder, f"shard-{i:04d}.tfrecord")
           for i in range(w.inputs)]
  done = os.path.join(folder, "COMPLETE")
  if os.path.exists(done):
    return paths
  os.makedirs(folder, exist_ok=True)
  for shard, path in enumerate(paths):
    # Random payload, so a compressing file system cannot shrink the I/O.
    payload = np.random.default_rng(shard).bytes(w.record_bytes)
    with tf.io.TFRecordWriter(path) as writer:
      for index in range(w.per_input):
        header = f"{shard}:{index}:".encode().ljust(HEADER_BYTES, b"-")
        writer.write(header + payload[HEADER_BYTES:])
  with open(done, "w") as f:
    f.write("\n")
  return paths


def build_dataset(w: Workload, contender: Contender,
                  data_root: Optional[str] = None):
  """The measured pipeline: interleave, batch, then int64 fingerprints.

  Each batch becomes an int64 vector (the elements themselves, or a hash of
  each record's header for the TFRecord workloads) so that the runner can check the elements
  and their order cheaply.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from tensorflow.python.data.experimental.ops import testing

  k = w.per_input
  if w.name == "overhead":
    inputs = tf.data.Dataset.range(w.inputs)
    map_func = lambda x: tf.data.Dataset.range(x * k, (x + 1) * k)
  elif w.reads_tfrecords:
    paths = write_tfrecords(w, data_root)
    inputs = tf.data.Dataset.from_tensor_slices(paths)
    map_func = tf.data.TFRecordDataset
  elif w.name in ("latency", "stragglers"):
    inputs = tf.data.Dataset.range(w.inputs)

    def map_func(x):
      latency = tf.constant(w.latency_us, tf.int64)
      if w.straggler_every:
        slow = tf.equal(x % w.straggler_every, w.straggler_every - 1)
        latency = tf.where(slow, latency * w.straggler_factor, latency)
      # The sleep comes first in the nested pipeline (see README).
      return tf.data.Dataset.range(x * k, (x + 1) * k).apply(
          testing.sleep(latency))
  elif w.name == "slow_open":
    inputs = tf.data.Dataset.range(w.inputs)

    def map_func(x):
      opened = tf.data.Dataset.range(1).apply(testing.sleep(w.open_us))
      return opened.flat_map(
          lambda _: tf.data.Dataset.range(x * k, (x + 1) * k))
  elif w.name == "slow_map_func":
    inputs = tf.data.Dataset.range(w.inputs)

    def open_remote(x):
      time.sleep(w.open_us / 1e6)
      return x

    def map_func(x):
      # A `py_function` runs on whatever thread calls the function: how
      # many of these waits overlap is up to the implementation.
      opened = tf.py_function(open_remote, [x], tf.int64)
      opened.set_shape([])
      return tf.data.Dataset.range(opened * k, (opened + 1) * k)
  else:
    raise ValueError(w.name)

  impl = contender.implementation
  if impl == "tf_interleave":
    import tf_interleave  # pylint: disable=g-import-not-at-top
    ds = inputs.apply(tf_interleave.parallel_interleave(
        map_func, w.cycle_length, w.block_length, sloppy=contender.sloppy))
  elif impl.startswith("legacy"):
    ds = inputs.apply(tf.data.experimental.parallel_interleave(
        map_func, w.cycle_length, w.block_length, sloppy=contender.sloppy))
  elif impl == "Dataset.interleave":
    ds = inputs.interleave(map_func, w.cycle_length, w.block_length,
                           num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=not contender.sloppy)
  else:
    raise ValueError(impl)

  ds = ds.batch(w.batch_size)
  if w.reads_tfrecords:
    ds = ds.map(lambda b: tf.strings.to_hash_bucket_fast(
        tf.strings.substr(b, 0, HEADER_BYTES), 2**62))
  return ds
