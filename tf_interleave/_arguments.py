"""Checks and converts the numeric arguments of `parallel_interleave`.

Python integers are checked here, so a bad value fails at `Dataset.apply` in
every mode. Tensors are checked by the kernel when the dataset is made (at
`apply` in eager mode, when the iterator is created in graph mode); both give
`tf.errors.InvalidArgumentError` naming the argument and the value.
"""

import numbers
from typing import Any, Dict, Optional, Union

import numpy as np
import tensorflow as tf

# Python and NumPy integers, 0-d integer arrays, integer scalar tensors.
IntArgument = Union[int, np.integer, np.ndarray, tf.Tensor, tf.Variable]

_INT64_MAX = np.iinfo(np.int64).max


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
  return tf.errors.InvalidArgumentError(None, None, message)


def is_python_int(value: Any) -> bool:
  """True for Python and NumPy integers (not bools)."""
  return (isinstance(value, numbers.Integral) and
          not isinstance(value, (bool, np.bool_)))


def unwrapped(value: Any) -> Any:
  """A 0-d NumPy array as its scalar; any other value as it is.

  The built-in converts its arguments with `tf.convert_to_tensor`, so
  `np.array(2)` works there and must work here too. Applied once, where the
  arguments come in; the helpers below take what it returns.
  """
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return value[()]
  return value


def _value_of(tensor: tf.Tensor) -> str:
  """The tensor's value for an error message, when it is known now."""
  value = tf.get_static_value(tensor)
  return "" if value is None else f": {value}"


def _fits_int64(name: str, tensor: tf.Tensor) -> tf.Tensor:
  """A uint64 tensor as int64, failing (not wrapping) above the int64 max."""
  value = tf.get_static_value(tensor)
  if value is not None:
    too_big = np.asarray(value)[np.asarray(value) > _INT64_MAX]
    if too_big.size:
      raise _invalid(f"`{name}` must fit in int64, got {too_big.flat[0]}.")
    return tf.cast(tensor, tf.int64, name=name)
  check = tf.debugging.assert_less_equal(
      tensor, tf.constant(_INT64_MAX, tf.uint64),
      message=f"`{name}` must fit in int64")
  with tf.control_dependencies([check]):
    return tf.cast(tensor, tf.int64, name=name)


def to_int64(name: str, value: IntArgument, minimum: int) -> tf.Tensor:
  """Converts an integer argument to a scalar int64 tensor.

  Args:
    name: The argument's name, for error messages.
    value: A Python or NumPy integer, or an integer scalar tensor.
    minimum: The smallest allowed value (checked now for Python integers).

  Returns:
    A scalar `tf.int64` tensor.

  Raises:
    tf.errors.InvalidArgumentError: If a Python integer is out of range, or a
      tensor or array is not a scalar.
    TypeError: If `value` is not an integer.
  """
  if is_python_int(value):
    value = int(value)
    if value < minimum:
      relation = "> 0" if minimum == 1 else f">= {minimum}"
      raise _invalid(f"`{name}` must be {relation}, got {value}.")
    if value > _INT64_MAX:
      raise _invalid(f"`{name}` must fit in int64, got {value}.")
    return tf.constant(value, dtype=tf.int64, name=name)
  if isinstance(value, (tf.Tensor, tf.Variable)) or tf.is_tensor(value):
    tensor = tf.convert_to_tensor(value)
    if not tensor.dtype.is_integer:
      raise TypeError(f"`{name}` must be an integer, got a {tensor.dtype.name} "
                      f"tensor: {value!r}.")
    if tensor.shape.rank is not None and tensor.shape.rank != 0:
      raise _invalid(f"`{name}` must be a scalar, got a tensor of shape "
                     f"{tensor.shape}{_value_of(tensor)}.")
    if tensor.dtype == tf.uint64:
      return _fits_int64(name, tensor)
    return tf.cast(tensor, tf.int64, name=name)
  if (isinstance(value, np.ndarray) and
      np.issubdtype(value.dtype, np.integer)):
    raise _invalid(f"`{name}` must be a scalar, got an array of shape "
                   f"{value.shape}: {value}.")
  raise TypeError(f"`{name}` must be an integer or an integer scalar tensor, "
                  f"got {type(value).__name__}: {value!r}.")


def doubled(name: str, value: IntArgument) -> IntArgument:
  """Returns `2 * value`, as a tensor when `value` is one (legacy defaults).

  The result saturates at the int64 maximum instead of wrapping around or
  overflowing, for Python integers and tensors alike: a huge `value` is then
  reported as itself, not as a default the caller never passed.
  """
  if is_python_int(value):
    return min(2 * int(value), _INT64_MAX)
  tensor = to_int64(name, value, 1)
  return tf.where(tensor > _INT64_MAX // 2,
                  tf.constant(_INT64_MAX, tf.int64), 2 * tensor)


def extension_attrs(on_input_error: str, max_skipped_inputs: Optional[int],
                    input_retries: int, memory_budget_bytes: Optional[int],
                    stall_warning_seconds: Optional[float],
                    produce_inline: bool = True) -> Dict[str, Any]:
  """Checks the keyword-only extensions and maps them to the op's attrs.

  Raises:
    tf.errors.InvalidArgumentError: If a value is out of range.
    TypeError: If a value has the wrong type.
  """
  if not isinstance(on_input_error, str):
    raise TypeError(f"`on_input_error` must be \"raise\" or \"skip\", got "
                    f"{type(on_input_error).__name__}: {on_input_error!r}.")
  if on_input_error not in ("raise", "skip"):
    raise _invalid(f"`on_input_error` must be \"raise\" or \"skip\", got "
                   f"{on_input_error!r}.")

  def optional_int(name: str, value: Any, minimum: int, unset: int) -> int:
    if value is None:
      return unset
    if not is_python_int(value):
      raise TypeError(f"`{name}` must be an int or None, got "
                      f"{type(value).__name__}: {value!r}.")
    if value < minimum:
      raise _invalid(f"`{name}` must be >= {minimum}, got {value}.")
    if value > _INT64_MAX:
      raise _invalid(f"`{name}` must fit in int64, got {value}.")
    return int(value)

  max_skipped = optional_int("max_skipped_inputs", max_skipped_inputs, 0, -1)
  if max_skipped_inputs is not None and on_input_error != "skip":
    raise _invalid("`max_skipped_inputs` only applies with "
                   f"on_input_error=\"skip\", got on_input_error="
                   f"{on_input_error!r} and max_skipped_inputs="
                   f"{max_skipped_inputs}.")
  # None reads as "no retries", like the other optional counts' None.
  retries = optional_int("input_retries", input_retries, 0, 0)
  budget = optional_int("memory_budget_bytes", memory_budget_bytes, 1, 0)
  if stall_warning_seconds is None:
    stall = 0.0
  else:
    if (isinstance(stall_warning_seconds, (bool, np.bool_)) or
        not isinstance(stall_warning_seconds, numbers.Real)):
      raise TypeError("`stall_warning_seconds` must be a number or None, got "
                      f"{type(stall_warning_seconds).__name__}: "
                      f"{stall_warning_seconds!r}.")
    stall = float(stall_warning_seconds)
    if not stall > 0 or not np.isfinite(stall):
      raise _invalid("`stall_warning_seconds` must be a finite number > 0, "
                     f"got {stall_warning_seconds!r}.")
  if not isinstance(produce_inline, (bool, np.bool_)):
    raise TypeError("`produce_inline` must be True or False, got "
                    f"{type(produce_inline).__name__}: {produce_inline!r}.")
  return {
      "on_input_error": on_input_error,
      "max_skipped_inputs": max_skipped,
      "input_retries": retries,
      "memory_budget_bytes": budget,
      "stall_warning_seconds": stall,
      "produce_inline": bool(produce_inline),
  }


def deterministic_attr(sloppy: Any) -> str:
  """Maps `sloppy` to the op's `deterministic` attr.

  Args:
    sloppy: True, False, or None (decided by the pipeline's options); 1 and
      0 stand for True and False, as in the built-in.

  Returns:
    "false", "true" or "default".

  Raises:
    TypeError: If `sloppy` is not one of those.
  """
  sloppy = unwrapped(sloppy)
  if sloppy is None:
    return "default"
  if (isinstance(sloppy, (bool, np.bool_)) or
      (is_python_int(sloppy) and int(sloppy) in (0, 1))):
    return "false" if sloppy else "true"
  raise TypeError(
      f"`sloppy` must be True, False (or 1, 0) or None, got "
      f"{type(sloppy).__name__}: {sloppy!r}.")
