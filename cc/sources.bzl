"""The one list of sources and flags for the op library.

Read by Bazel (`BUILD` loads it) and by `setup.py` (which evaluates this file as
Python), so that both builds compile exactly the same code the same way.
"""

# Sources of `_tf_interleave_ops.so`.
OP_LIBRARY_SRCS = [
    "cc/kernels/checkpoint_io.cc",
    "cc/kernels/interleave_scheduler.cc",
    "cc/kernels/interleave_stats.cc",
    "cc/kernels/source_pool.cc",
    "cc/kernels/source_pool_checkpoint.cc",
    "cc/kernels/source_pool_consumer.cc",
    "cc/kernels/thread_state.cc",
    "cc/kernels/parallel_interleave_dataset_op.cc",
    "cc/ops/parallel_interleave_ops.cc",
]

# Headers of `_tf_interleave_ops.so`.
OP_LIBRARY_HDRS = [
    "cc/kernels/buffered_element.h",
    "cc/kernels/checkpoint_io.h",
    "cc/kernels/interleave_scheduler.h",
    "cc/kernels/interleave_stats.h",
    "cc/kernels/source_pace.h",
    "cc/kernels/source_pool.h",
    "cc/kernels/thread_state.h",
    "cc/kernels/worker_context.h",
    "cc/kernels/parallel_interleave_dataset_op.h",
]

# Compiler options added to TensorFlow's own `tf.sysconfig` flags. `-w`: the
# TensorFlow headers warn a lot and our code is checked by the tests instead.
OP_LIBRARY_COPTS = [
    "-O2",
    "-fPIC",
    "-w",
]

# The thread-free scheduler builds on its own (no TensorFlow), for unit tests
# and for the Python binding used by property tests.
SCHEDULER_SRCS = [
    "cc/kernels/interleave_scheduler.cc",
]

# The C++ unit tests (cc/tests/, no TensorFlow) link these: the scheduler and
# the probe of a thread's run state.
CPP_TEST_SRCS = SCHEDULER_SRCS + [
    "cc/kernels/thread_state.cc",
]

# The C++ tests that need TensorFlow's framework library (tensors, the
# iterator-state interfaces) link these, against the installed TensorFlow.
CPP_TF_TEST_SRCS = [
    "cc/kernels/checkpoint_io.cc",
]
