"""Demo: read TFRecord shards with tf_interleave and with the built-in.

Writes a few TFRecord shards to a temporary folder, reads them with
`tf_interleave.parallel_interleave` (deterministic and sloppy) and with
`tf.data.experimental.parallel_interleave`, and prints a table: elements read,
elements per second, and whether the orders agree.

Usage: python bench/demo.py [--shards 16] [--records 2000] [--record-bytes 2048]
"""

import argparse
import os
import tempfile
import time
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tf_interleave  # pylint: disable=g-import-not-at-top

CYCLE_LENGTH = 4
BLOCK_LENGTH = 1


def write_shards(folder: str, shards: int, records: int,
                 record_bytes: int) -> List[str]:
  """Writes `shards` TFRecord files of `records` records each."""
  paths = []
  for shard in range(shards):
    path = os.path.join(folder, f"shard-{shard:03d}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      for index in range(records):
        header = f"{shard}:{index}:".encode()
        writer.write(header + b"x" * (record_bytes - len(header)))
    paths.append(path)
  return paths


def read_all(dataset: tf.data.Dataset) -> Tuple[List[bytes], float]:
  """Returns every record's header and the seconds it took to read them."""
  start = time.perf_counter()
  headers = [record[:16] for batch in dataset.batch(256).as_numpy_iterator()
             for record in batch]
  return headers, time.perf_counter() - start


def contenders(files: tf.data.Dataset) -> Dict[str, Callable[[], tf.data.Dataset]]:
  def ours(sloppy: bool) -> Callable[[], tf.data.Dataset]:
    return lambda: files.apply(tf_interleave.parallel_interleave(
        tf.data.TFRecordDataset, CYCLE_LENGTH, BLOCK_LENGTH, sloppy=sloppy))

  def builtin(sloppy: bool) -> Callable[[], tf.data.Dataset]:
    return lambda: files.apply(tf.data.experimental.parallel_interleave(
        tf.data.TFRecordDataset, CYCLE_LENGTH, BLOCK_LENGTH, sloppy=sloppy))

  return {
      "tf_interleave, deterministic": ours(False),
      "tf_interleave, sloppy": ours(True),
      "built-in parallel_interleave, deterministic": builtin(False),
      "built-in parallel_interleave, sloppy": builtin(True),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shards", type=int, default=16)
  parser.add_argument("--records", type=int, default=2000)
  parser.add_argument("--record-bytes", type=int, default=2048)
  args = parser.parse_args()
  tf.get_logger().setLevel("ERROR")

  with tempfile.TemporaryDirectory(prefix="tf_interleave_demo_") as folder:
    paths = write_shards(folder, args.shards, args.records, args.record_bytes)
    files = tf.data.Dataset.from_tensor_slices(paths)
    print(f"{args.shards} shards x {args.records} records x "
          f"{args.record_bytes} bytes in {folder}; cycle_length={CYCLE_LENGTH}"
          f", block_length={BLOCK_LENGTH}\n")
    results = {}
    for name, make in contenders(files).items():
      read_all(make().take(512))  # Warm up (tracing, file cache).
      results[name] = read_all(make())

  reference = results["built-in parallel_interleave, deterministic"][0]
  print(f"{'contender':<46}{'elements':>10}{'elements/s':>14}  same records"
        "  same order as built-in")
  for name, (headers, seconds) in results.items():
    same_records = sorted(headers) == sorted(reference)
    same_order = headers == reference
    order = "yes" if same_order else ("n/a (sloppy)" if "sloppy" in name
                                      else "NO")
    print(f"{name:<46}{len(headers):>10}{len(headers) / seconds:>14,.0f}  "
          f"{'yes' if same_records else 'NO':<12}  {order}")
  deterministic_equal = (
      results["tf_interleave, deterministic"][0] == reference)
  print("\nDeterministic orders equal:", "yes" if deterministic_equal else "NO")
  if not deterministic_equal:
    raise SystemExit(1)


if __name__ == "__main__":
  main()
