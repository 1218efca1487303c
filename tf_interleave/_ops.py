"""The raw op wrappers of the tf_interleave op library."""

from tf_interleave import _loader

_ops = _loader.load()

# `TfInterleave>ParallelInterleaveDataset`, see cc/ops/.
parallel_interleave_dataset = _ops.tf_interleave_parallel_interleave_dataset
