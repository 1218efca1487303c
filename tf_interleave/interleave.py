"""`parallel_interleave`: the transformation function for `Dataset.apply`."""

from typing import Callable, Optional

import tensorflow as tf

from tf_interleave import _arguments
from tf_interleave.dataset import ParallelInterleaveDataset


def parallel_interleave(
    map_func: Callable[..., tf.data.Dataset],
    cycle_length: _arguments.IntArgument,
    block_length: _arguments.IntArgument = 1,
    sloppy: Optional[bool] = False,
    buffer_output_elements: Optional[_arguments.IntArgument] = None,
    prefetch_input_elements: Optional[_arguments.IntArgument] = None,
    *,
    on_input_error: str = "raise",
    max_skipped_inputs: Optional[int] = None,
    input_retries: Optional[int] = 0,
    memory_budget_bytes: Optional[int] = None,
    stall_warning_seconds: Optional[float] = None,
    produce_inline: bool = True,
) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """A parallel version of `Dataset.interleave()`, for `Dataset.apply`.

  A drop-in replacement for `tf.data.experimental.parallel_interleave`, with
  the same arguments, defaults and (deterministic) order. `map_func` maps each
  input element to a `Dataset`; `cycle_length` of those datasets are read in
  parallel by background workers, each into a buffer of
  `buffer_output_elements` elements, and `prefetch_input_elements` more are
  opened ahead of need. Elements are emitted `block_length` at a time from
  each dataset in turn.

  Example:

  ```python
  import tf_interleave

  files = tf.data.Dataset.list_files("/data/train-*.tfrecord", shuffle=False)
  records = files.apply(tf_interleave.parallel_interleave(
      tf.data.TFRecordDataset, cycle_length=8))
  ```

  With `sloppy=True` a dataset with no element ready is skipped instead of
  waited for, so one slow file does not hold the others back, and a clearly
  slower dataset among those opened ahead joins the cycle before faster ones
  (the slowest files decide when a pass ends); the elements are the same,
  their order is not fixed.

  Args:
    map_func: A function mapping an input element (any nested structure of
      tensors) to a `tf.data.Dataset`.
    cycle_length: The number of input datasets to interleave from in
      parallel. A Python or NumPy int or a scalar integer tensor, > 0 (so
      are the other counts).
    block_length: The number of consecutive elements to take from one
      dataset before moving to the next. > 0.
    sloppy: `False` for the deterministic order; `True` to allow elements out
      of order when that avoids waiting; `None` to follow the pipeline's
      `tf.data.Options().deterministic` option (deterministic unless it is
      `False`). `1` and `0` stand for `True` and `False`. `tf.config.experimental.enable_op_determinism()` always
      forces the deterministic order.
    buffer_output_elements: The number of elements each interleaved dataset
      buffers ahead. > 0. Defaults to `2 * block_length`.
    prefetch_input_elements: The number of input datasets opened ahead of
      need. >= 0. Defaults to `2 * cycle_length`.
    on_input_error: (Keyword-only.) `"raise"` (default, the legacy
      behaviour): an error of a nested dataset or of `map_func` is delivered
      at its position. `"skip"`: the rest of that input is dropped, the error
      is logged once and listed in `tf_interleave.stats()`, and iteration
      goes on; the order is exactly as if the input had ended there.
    max_skipped_inputs: (Keyword-only, with `on_input_error="skip"`.) How many
      inputs may be skipped; one more failure is delivered as an error that
      lists the skipped inputs. Default: no limit.
    input_retries: (Keyword-only.) Before skipping or raising, reopen the
      failed input up to this many times (from the same input element, with
      exponential backoff from 50 ms), passing over the elements it already
      produced, so a transient read error changes nothing in the output.
      Default 0 (None also means 0).
    memory_budget_bytes: (Keyword-only.) Bound on the bytes held in all
      buffers together; workers pause when it is reached. A buffer the
      consumer is waiting on may always take one element. Default: none.
    stall_warning_seconds: (Keyword-only.) Log a warning naming the input
      when the consumer waits on one input longer than this. Default: never.
    produce_inline: (Keyword-only.) Whether the thread calling `get_next`
      may read an input's cheap elements itself instead of waiting for a
      worker to hand them over (default `True`: fastest for local files and
      in-memory data). A read it makes cannot be taken back, so an input
      that blocks without warning after a long run of cheap elements holds
      that thread for as long as it blocks, even in sloppy mode. Pass
      `False` when inputs may stall that way (network file systems): every
      read then happens on a worker, as in the legacy op.

  Returns:
    A function from `tf.data.Dataset` to `tf.data.Dataset`, for
    `tf.data.Dataset.apply`.

  Raises:
    tf.errors.InvalidArgumentError: If an argument is out of range (for
      tensor arguments in graph mode: when the iterator is created). The
      message names the argument and the value.
    TypeError: If an argument has the wrong type, or `map_func` does not
      return a `Dataset` (raised when the transformation is applied).
    ValueError: If `map_func` is not callable (raised when the
      transformation is applied, like the built-in's).
  """
  # Checked now, so mistakes surface at the call site.
  _arguments.deterministic_attr(sloppy)
  _arguments.extension_attrs(on_input_error, max_skipped_inputs,
                             input_retries, memory_budget_bytes,
                             stall_warning_seconds, produce_inline)

  def _apply_fn(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return ParallelInterleaveDataset(
        dataset, map_func, cycle_length, block_length, sloppy,
        buffer_output_elements, prefetch_input_elements,
        on_input_error=on_input_error,
        max_skipped_inputs=max_skipped_inputs,
        input_retries=input_retries,
        memory_budget_bytes=memory_budget_bytes,
        stall_warning_seconds=stall_warning_seconds,
        produce_inline=produce_inline)

  return _apply_fn
