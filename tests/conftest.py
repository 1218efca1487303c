"""Pytest fixtures for the tf_interleave suite.

Set ``TF_INTERLEAVE_TESTS_AGAINST_BUILTIN=1`` to run the suite against TensorFlow's
built-in ``tf.data.experimental.parallel_interleave`` instead: a way to check the
tests themselves.  The built-in is expected to fail the cases where tf_interleave
improves on it (``TypeError`` for a non-Dataset ``map_func``, values in argument
error messages, ``map_func`` named when it is not callable, the
``ParallelInterleaveDataset`` class).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import types
from typing import Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

AGAINST_BUILTIN_ENV = "TF_INTERLEAVE_TESTS_AGAINST_BUILTIN"
# A single test running longer than this is hung: dump every thread's stack and exit.
HANG_LIMIT_SECONDS = 300


def _builtin_module() -> types.SimpleNamespace:
    from tensorflow.python.data.ops import readers

    return types.SimpleNamespace(
        __name__="builtin",
        parallel_interleave=tf.data.experimental.parallel_interleave,
        ParallelInterleaveDataset=readers.ParallelInterleaveDataset,
    )


@pytest.fixture(scope="session")
def tfi() -> types.ModuleType:
    """The module under test: ``tf_interleave`` (or the built-in, see module docstring)."""
    if os.environ.get(AGAINST_BUILTIN_ENV) == "1":
        return _builtin_module()
    import tf_interleave

    return tf_interleave


@pytest.fixture(scope="session")
def builtin_interleave() -> Callable:
    """TensorFlow's own ``parallel_interleave``, the oracle."""
    return tf.data.experimental.parallel_interleave


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Turns a hung test into a process exit with every thread's stack, instead of a silent CI timeout.

    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("hang_guard")``.
    """
    faulthandler.dump_traceback_later(HANG_LIMIT_SECONDS, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()
