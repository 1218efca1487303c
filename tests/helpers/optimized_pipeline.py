"""Runs pipelines that use the op under tf.data's graph rewrites, with C++ logging on.

Usage: ``python optimized_pipeline.py``

Prints one JSON line mapping a pipeline name to its elements. The caller reads
the process's stderr for warnings about rewrites that could not be applied
(e.g. a dataset that cannot be serialized).
"""

from __future__ import annotations

import json
import os
import sys

SIZES = (3, 0, 5, 1, 4, 2, 6)


def main() -> int:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    import tensorflow as tf

    import tf_interleave

    def map_func(index):
        size = tf.gather(tf.constant(SIZES, tf.int64), index)
        return tf.data.Dataset.range(1000 * index, 1000 * index + size)

    def interleaved(sloppy):
        return tf.data.Dataset.range(len(SIZES)).apply(
            tf_interleave.parallel_interleave(map_func, cycle_length=2, block_length=2, sloppy=sloppy))

    every_rewrite = tf.data.Options()
    for name in ("map_fusion", "map_parallelization", "filter_fusion", "map_and_batch_fusion",
                 "map_and_filter_fusion", "noop_elimination", "parallel_batch", "inject_prefetch"):
        if hasattr(every_rewrite.experimental_optimization, name):
            setattr(every_rewrite.experimental_optimization, name, True)

    def plus_one(value):
        return value + 1

    def doubled(value):
        return value * 2

    def non_negative(value):
        return value >= 0

    pipelines = {
        "default": interleaved(False).map(plus_one).map(doubled).batch(4).unbatch(),
        "every_rewrite": (interleaved(False).map(plus_one).map(doubled).filter(non_negative)
                          .batch(4).unbatch().with_options(every_rewrite)),
        "sloppy_default": interleaved(None).map(plus_one).map(doubled).batch(4).unbatch(),
    }
    results = {name: [int(value) for value in dataset.as_numpy_iterator()]
               for name, dataset in pipelines.items()}
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
