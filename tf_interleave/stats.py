"""`stats()`: live statistics of every tf_interleave iterator in the process."""

import ctypes
import json
from typing import Any, Dict, List, Optional

from tf_interleave import _loader

_library: Optional[ctypes.CDLL] = None


def _stats_library() -> ctypes.CDLL:
  """The op library, opened again through ctypes for its C entry points."""
  global _library
  if _library is None:
    # The same file TensorFlow loaded: the dynamic linker hands back that
    # instance, so the registry read here is the one the kernels fill.
    library = ctypes.CDLL(_loader.library_path())
    library.TfInterleaveStatsJson.restype = ctypes.c_void_p
    library.TfInterleaveStatsJson.argtypes = []
    library.TfInterleaveFreeString.restype = None
    library.TfInterleaveFreeString.argtypes = [ctypes.c_void_p]
    _library = library
  return _library


def stats() -> List[Dict[str, Any]]:
  """Returns the live statistics of every tf_interleave iterator.

  Works the same in eager mode, inside `tf.function` pipelines and in TF1
  graph mode: it reads the process's registry of live iterators directly,
  without running a TensorFlow op.

  Returns:
    One dict per live iterator (oldest first) with plain Python values:
    `elements` and `bytes` delivered, `buffered_elements`/`buffered_bytes`
    and `memory_budget_bytes`, `consumer_wait_seconds` and `waiting_on` (the
    label of the input the consumer waits on now, or None), `sloppy_skips`,
    `promoted_inputs` (sloppy mode: slow inputs that entered the cycle ahead
    of faster ones staged before them), `staged_elements` (sloppy mode:
    elements taken from staged inputs while no input of the cycle had one
    ready and one of them was blocked), `inline_elements` (elements the
    thread calling `get_next` produced itself, from inputs cheaper than a
    hand-off to a worker), `inline_pauses` (sloppy mode: the times inline
    calls that blocked, or ran over 1 ms without another thread seeing
    whether they did, had taken over an eighth of the time since the last
    pause, after which workers produced every element for a while),
    `retries`, `stall_warnings`, `skipped_inputs` (input label, element
    index and error of each skipped input), and `inputs`: per input (the open ones
    and the most recent finished ones) its `label` (the input element when
    it is a scalar string such as a file name, else `input #k`), `state`,
    `elements`, `bytes`, buffer fill, `consumer_wait_seconds` and `retries`.

  Raises:
    MemoryError: If the op library could not allocate the report.
  """
  library = _stats_library()
  pointer = library.TfInterleaveStatsJson()
  if not pointer:
    raise MemoryError("tf_interleave could not allocate its stats report.")
  try:
    text = ctypes.string_at(pointer).decode("utf-8", errors="replace")
  finally:
    library.TfInterleaveFreeString(pointer)
  return json.loads(text)
