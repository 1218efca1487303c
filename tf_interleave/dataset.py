"""`ParallelInterleaveDataset`: the `tf.data.Dataset` wrapping the op."""

from typing import Any, Callable, List, Optional

import tensorflow as tf
# `StructuredFunctionWrapper` traces `map_func` exactly like the built-in
# transformations do (captures, autograph, nested structures); it has no
# public equivalent.
from tensorflow.python.data.ops import dataset_ops
from tensorflow.python.data.ops import structured_function
from tensorflow.python.framework import none_tensor

from tf_interleave import _arguments
from tf_interleave import _ops


def _describe_output(structure) -> str:
  """Says in words what a traced `map_func` returned."""
  if isinstance(structure, tf.TensorSpec):
    return f"a tf.Tensor ({structure})"
  if structure is None or isinstance(structure, none_tensor.NoneTensorSpec):
    return "None"
  if isinstance(structure, tuple):
    # Tracing turns a returned list into a tuple.
    return (f"a tuple or list of {len(structure)} values "
            f"({', '.join(_describe_output(item) for item in structure)})")
  return f"{type(structure).__name__} ({structure!r})"


class ParallelInterleaveDataset(dataset_ops.UnaryDataset):
  """A `Dataset` that maps a function over its input and interleaves the
  resulting datasets, reading them in parallel.

  See `tf_interleave.parallel_interleave` for the arguments.
  """

  def __init__(self,
               input_dataset: tf.data.Dataset,
               map_func: Callable[..., tf.data.Dataset],
               cycle_length: _arguments.IntArgument,
               block_length: _arguments.IntArgument = 1,
               sloppy: Optional[bool] = False,
               buffer_output_elements: Optional[_arguments.IntArgument] = None,
               prefetch_input_elements: Optional[_arguments.IntArgument] = None,
               name: Optional[str] = None,
               *,
               on_input_error: str = "raise",
               max_skipped_inputs: Optional[int] = None,
               input_retries: Optional[int] = 0,
               memory_budget_bytes: Optional[int] = None,
               stall_warning_seconds: Optional[float] = None,
               produce_inline: bool = True) -> None:
    """Traces `map_func` and makes the op.

    The arguments are those of `tf_interleave.parallel_interleave`, plus
    `input_dataset` (the dataset of input elements) and `name` (an optional
    name for the tf.data operation).

    Raises:
      ValueError: If `map_func` is not callable.
      TypeError: If `map_func` does not return a `tf.data.Dataset`, or an
        argument has the wrong type.
      tf.errors.InvalidArgumentError: If an argument is out of range.
    """
    # A 0-d NumPy array counts as its scalar, in every check below.
    cycle_length = _arguments.unwrapped(cycle_length)
    block_length = _arguments.unwrapped(block_length)
    buffer_output_elements = _arguments.unwrapped(buffer_output_elements)
    prefetch_input_elements = _arguments.unwrapped(prefetch_input_elements)
    if buffer_output_elements is None:
      buffer_output_elements = _arguments.doubled("block_length", block_length)
    if prefetch_input_elements is None:
      prefetch_input_elements = _arguments.doubled("cycle_length", cycle_length)
    self._cycle_length = _arguments.to_int64("cycle_length", cycle_length, 1)
    self._block_length = _arguments.to_int64("block_length", block_length, 1)
    self._buffer_output_elements = _arguments.to_int64(
        "buffer_output_elements", buffer_output_elements, 1)
    self._prefetch_input_elements = _arguments.to_int64(
        "prefetch_input_elements", prefetch_input_elements, 0)
    self._deterministic = _arguments.deterministic_attr(sloppy)
    self._extension_attrs = _arguments.extension_attrs(
        on_input_error, max_skipped_inputs, input_retries,
        memory_budget_bytes, stall_warning_seconds, produce_inline)

    self._input_dataset = input_dataset
    if not callable(map_func):
      # ValueError, as the built-in raises here, so existing handlers match.
      raise ValueError(
          "`map_func` must be a function that returns a `tf.data.Dataset`, "
          f"got {type(map_func).__name__}: {map_func!r}.")
    self._map_func = structured_function.StructuredFunctionWrapper(
        map_func, self._transformation_name(), dataset=input_dataset)
    output_structure = self._map_func.output_structure
    if not isinstance(output_structure, dataset_ops.DatasetSpec):
      raise TypeError(
          "`map_func` must return a `tf.data.Dataset`, but it returned "
          f"{_describe_output(output_structure)}.")
    self._element_spec = output_structure._element_spec  # pylint: disable=protected-access
    self._name = name

    variant_tensor = _ops.parallel_interleave_dataset(
        self._input_dataset._variant_tensor,  # pylint: disable=protected-access
        self._map_func.function.captured_inputs,
        self._cycle_length,
        self._block_length,
        self._buffer_output_elements,
        self._prefetch_input_elements,
        f=self._map_func.function,
        deterministic=self._deterministic,
        **self._extension_attrs,
        **self._common_args)
    super().__init__(input_dataset, variant_tensor)

  def _functions(self) -> List[structured_function.StructuredFunctionWrapper]:
    return [self._map_func]

  @property
  def element_spec(self) -> Any:
    return self._element_spec

  def _transformation_name(self) -> str:
    return "tf_interleave.parallel_interleave()"

