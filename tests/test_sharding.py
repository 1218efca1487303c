"""Sharding a pipeline among workers (``tf.distribute`` auto-sharding, explicit sharding).

TensorFlow's auto-shard rewrite looks for file readers through a fixed list of its own op names,
so it cannot look through this op (nor any custom dataset op): ``AutoShardPolicy.FILE`` fails with
``NotFoundError``, and ``AUTO`` (the default) falls back to sharding by element, which gives each
worker the right elements but reads every file on every worker. Sharding the file list before the
op gives what the legacy op gets from ``FILE``: each worker reads only its files, in the same order.
README ("Sharding among workers") documents this; these tests pin it down.
"""

from __future__ import annotations

import types
from typing import List

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import distribute

from pipelines import collect

pytestmark = pytest.mark.usefixtures("hang_guard")

FILES = 6
RECORDS = (3, 1, 4, 0, 2, 5)
WORKERS = 2


@pytest.fixture(scope="module")
def record_files(tmp_path_factory) -> List[str]:
    directory = tmp_path_factory.mktemp("shards")
    paths = []
    for index in range(FILES):
        path = str(directory / f"part-{index}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for record in range(RECORDS[index]):
                writer.write(f"file{index}-record{record}".encode())
        paths.append(path)
    return paths


def _pipeline(interleave, files, policy=None) -> tf.data.Dataset:
    dataset = files.apply(interleave(tf.data.TFRecordDataset, cycle_length=2, block_length=2))
    if policy is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = policy
        dataset = dataset.with_options(options)
    return dataset


def _auto_sharded(dataset: tf.data.Dataset, index: int) -> List[bytes]:
    return collect(distribute._AutoShardDataset(dataset, WORKERS, index))  # pylint: disable=protected-access


def test_sharding_the_files_first_matches_the_legacy_file_policy(tfi: types.ModuleType, builtin_interleave,
                                                                 record_files) -> None:
    """``files.shard(workers, index)`` before the op: each worker reads only its files, in the order the
    legacy op gives under ``AutoShardPolicy.FILE``."""
    files = tf.data.Dataset.from_tensor_slices(record_files)
    everything = []
    for index in range(WORKERS):
        legacy = _auto_sharded(_pipeline(builtin_interleave, files, tf.data.experimental.AutoShardPolicy.FILE),
                               index)
        ours = collect(_pipeline(tfi.parallel_interleave, files.shard(WORKERS, index)))
        assert ours == legacy
        assert {record.split(b"-")[0] for record in ours} == {
            f"file{file}".encode() for file in range(index, FILES, WORKERS) if RECORDS[file]}
        everything += ours
    assert sorted(everything) == sorted(collect(_pipeline(tfi.parallel_interleave, files)))


def test_auto_policy_shards_by_element(tfi: types.ModuleType, record_files) -> None:
    """``AUTO`` (the default policy) cannot find the files through the op, so it shards the op's output:
    worker ``i`` gets elements ``i, i + workers, ...`` of the full order, nothing lost or repeated."""
    if tfi.__name__ == "builtin":
        pytest.skip("the auto-shard rewrite knows the legacy op and shards its files")
    files = tf.data.Dataset.from_tensor_slices(record_files)
    full = collect(_pipeline(tfi.parallel_interleave, files))
    for index in range(WORKERS):
        sharded = _auto_sharded(_pipeline(tfi.parallel_interleave, files, tf.data.experimental.AutoShardPolicy.AUTO),
                                index)
        assert sharded == full[index::WORKERS]


def test_file_policy_cannot_look_through_the_op(tfi: types.ModuleType, record_files) -> None:
    """``FILE`` is a clear ``NotFoundError`` from TensorFlow's rewrite, at the first element, not a hang or a
    silent loss (the rewrite's list of readable ops is fixed; see the module docstring)."""
    if tfi.__name__ == "builtin":
        pytest.skip("the auto-shard rewrite knows the legacy op")
    files = tf.data.Dataset.from_tensor_slices(record_files)
    dataset = _pipeline(tfi.parallel_interleave, files, tf.data.experimental.AutoShardPolicy.FILE)
    with pytest.raises(tf.errors.NotFoundError, match="shardable source"):
        _auto_sharded(dataset, 0)


def test_sharded_by_element_in_a_function(tfi: types.ModuleType, record_files) -> None:
    """What ``distribute_datasets_from_function`` users write: the input context's shard of the files,
    read inside a ``tf.function``."""
    files = tf.data.Dataset.from_tensor_slices(record_files)

    @tf.function
    def count_records(index: tf.Tensor) -> tf.Tensor:
        dataset = _pipeline(tfi.parallel_interleave, files.shard(WORKERS, index))
        return dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)

    counts = [int(count_records(tf.constant(index, tf.int64))) for index in range(WORKERS)]
    assert counts == [sum(RECORDS[index::WORKERS]) for index in range(WORKERS)]
