"""Finds and loads the tf_interleave op library.

The library is compiled against one TensorFlow release; loading it into
another can fail with undefined symbols or, worse, crash. So the TensorFlow
version the library was built against is read from the binary itself (a tag
that the build embeds) and compared with the installed one *before* loading.
"""

import os
import re
from types import ModuleType
from typing import List, Optional

import tensorflow as tf

# Points the loader at another build of the library (e.g. Bazel's).
LIBRARY_PATH_ENV = "TF_INTERLEAVE_OPS_LIBRARY"
LIBRARY_FILE_NAME = "_tf_interleave_ops.so"
_BUILD_TAG = re.compile(rb"TF_INTERLEAVE_BUILT_AGAINST_TF=([0-9A-Za-z.+\-]+)")

_loaded_path: Optional[str] = None


def built_against(path: str) -> Optional[str]:
  """Returns the TensorFlow version the library at `path` was built against.

  Args:
    path: Path of an op library built by setup.py or Bazel.

  Returns:
    The version string embedded at build time, or None if there is none.
  """
  with open(path, "rb") as library:
    match = _BUILD_TAG.search(library.read())
  return match.group(1).decode() if match else None


def _major_minor(version: str) -> str:
  return ".".join(version.split(".")[:2])


def candidate_paths() -> List[str]:
  """Where the library is looked for, in order."""
  override = os.environ.get(LIBRARY_PATH_ENV)
  if override:
    return [override]
  return [os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       LIBRARY_FILE_NAME)]


def load() -> ModuleType:
  """Loads the op library and returns its generated op wrappers.

  Returns:
    The module returned by `tf.load_op_library`.

  Raises:
    ImportError: If no library is found, if it was built against another
      TensorFlow release than the installed one (the message names both), or
      if TensorFlow cannot load it.
  """
  global _loaded_path
  installed = tf.version.VERSION
  tried = []
  for path in candidate_paths():
    if not os.path.isfile(path):
      tried.append(f"{path} (no such file)")
      continue
    version = built_against(path)
    if version is None:
      raise ImportError(
          f"{path} is not a tf_interleave op library built by its setup.py or "
          "Bazel build (it carries no TensorFlow build tag).")
    if _major_minor(version) != _major_minor(installed):
      raise ImportError(
          f"tf_interleave's op library was built against TensorFlow {version}, "
          f"but TensorFlow {installed} is installed ({path}). Rebuild "
          "tf_interleave against the installed TensorFlow (`pip install "
          "--force-reinstall --no-cache-dir .` from its source), or install "
          f"TensorFlow {_major_minor(version)}.")
    try:
      module = tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as error:
      raise ImportError(
          f"TensorFlow {installed} could not load tf_interleave's op library "
          f"{path} (built against TensorFlow {version}): {error}") from error
    _loaded_path = path
    return module
  raise ImportError("tf_interleave's op library was not found; tried: " +
                    "; ".join(tried) + ". Build it with `pip install .` (or "
                    "`python setup.py build_ext --inplace` in a checkout).")


def library_path() -> Optional[str]:
  """The path the op library was loaded from.

  Returns:
    The path as a string, or None before the library is loaded.
  """
  return _loaded_path
