"""Runs a pipeline using the op under ``tf.distribute.MirroredStrategy`` on two logical CPUs.

Usage: ``python mirrored_strategy.py``

The logical devices must be configured before TensorFlow initializes its
devices, hence a process of its own. Prints one JSON line with, for each way of
distributing, the per-step lists of each replica's values.
"""

from __future__ import annotations

import json
import os
import sys

SIZES = (3, 0, 5, 1, 4, 2, 6, 0, 2, 7)
GLOBAL_BATCH = 4


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_interleave

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def map_func(index):
        size = tf.gather(tf.constant(SIZES, tf.int64), index)
        return tf.data.Dataset.range(1000 * index, 1000 * index + size)

    def interleaved():
        return tf.data.Dataset.range(len(SIZES)).apply(
            tf_interleave.parallel_interleave(map_func, cycle_length=3, block_length=2, prefetch_input_elements=1))

    def per_replica(distributed):
        return [[values.numpy().tolist() for values in strategy.experimental_local_results(batch)]
                for batch in distributed]

    distributed = strategy.experimental_distribute_dataset(interleaved().batch(GLOBAL_BATCH))
    from_function = strategy.distribute_datasets_from_function(
        lambda context: interleaved().batch(context.get_per_replica_batch_size(GLOBAL_BATCH)))

    @tf.function
    def replicated_sum(dataset):
        total = tf.constant(0, tf.int64)
        count = tf.constant(0, tf.int64)
        for batch in dataset:
            sums = strategy.run(lambda values: (tf.reduce_sum(values), tf.size(values, tf.int64)), args=(batch,))
            total += strategy.reduce("SUM", sums[0], axis=None)
            count += strategy.reduce("SUM", sums[1], axis=None)
        return total, count

    total, count = replicated_sum(distributed)
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "distribute_dataset": per_replica(distributed),
        "from_function": per_replica(from_function),
        "replicated_sum": [int(total), int(count)],
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
