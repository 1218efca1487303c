"""Profiler annotations (``TraceMe``) and the autotune model node (``CreateNode``).

A trace captured with ``tf.profiler.experimental.start`` / ``stop`` around a
pipeline must show the iterator under its dataset type ``TfInterleaveParallel``
(with its arguments as metadata) and the seats' ``TfInterleaveSeat::PullInput``,
``::Open`` and ``::GetNext`` events on the seats' own threads. With autotune on,
the iterator's model node is an ``ASYNC_INTERLEAVE_MANY`` node with the nested
iterators beneath it.
"""

from __future__ import annotations

import collections
import glob
import os
import types
from typing import Dict, List, Tuple

import pytest
import tensorflow as tf
from tensorflow.core.framework import model_pb2
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from pipelines import collect, nested_values, sized_input, sized_map_func
from reference_model import interleave_order

SIZES = (3, 0, 5, 1, 4, 2, 6)
DATASET_TYPE = "TfInterleaveParallel"
SEAT_EVENTS = ("TfInterleaveSeat::PullInput", "TfInterleaveSeat::Open", "TfInterleaveSeat::GetNext")


def _stat_value(plane, stat):
    kind = stat.WhichOneof("value")
    if kind == "ref_value":
        return plane.stat_metadata[stat.ref_value].name
    if kind == "bytes_value":
        return stat.bytes_value
    return getattr(stat, kind) if kind else None


Event = Tuple[int, str, Dict[str, object]]  # (line id, event name, stats)


def _events(space) -> List[Event]:
    events = []
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                metadata = plane.event_metadata[event.metadata_id]
                stats = {plane.stat_metadata[stat.metadata_id].name: _stat_value(plane, stat)
                         for stat in list(metadata.stats) + list(event.stats)}
                events.append((line.id, metadata.name, stats))
    return events


@pytest.fixture(scope="module")
def trace(tfi: types.ModuleType, tmp_path_factory) -> dict:
    """Profiles one full pass over a pipeline using the op; returns its values and the trace."""
    logdir = str(tmp_path_factory.mktemp("profile"))
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), cycle_length=2,
                                                               block_length=2, sloppy=False))
    tf.profiler.experimental.start(logdir)
    try:
        values = collect(dataset)
    finally:
        tf.profiler.experimental.stop()
    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    raw = b"".join(open(path, "rb").read() for path in files)
    space = xplane_pb2.XSpace()
    for path in files:
        with open(path, "rb") as handle:
            space.MergeFromString(handle.read())
    return {"values": values, "files": files, "raw": raw, "events": _events(space)}


def test_trace_is_written_and_names_the_op(trace: dict) -> None:
    assert trace["values"] == interleave_order(nested_values(SIZES), 2, 2)
    assert trace["files"], "the profiler wrote no .xplane.pb file"
    assert DATASET_TYPE.encode() in trace["raw"]
    for name in SEAT_EVENTS:
        assert name.encode() in trace["raw"], f"{name} is missing from the trace"


def test_iterator_events_carry_the_arguments(trace: dict) -> None:
    iterator_events = [stats for _, name, stats in trace["events"] if name.split("::")[-1] == DATASET_TYPE]
    assert iterator_events, "no iterator event named after the dataset type"
    # One event per GetNext on the iterator, at least one per element.
    assert len(iterator_events) >= len(trace["values"])
    stats = iterator_events[0]
    assert stats.get("cycle_length") == 2, stats
    assert stats.get("block_length") == 2, stats
    assert str(stats.get("deterministic")).lower() in ("true", "b'true'"), stats


def test_seat_events_cover_every_input(trace: dict) -> None:
    events = trace["events"]
    by_name = collections.defaultdict(list)
    for line, name, stats in events:
        by_name[name].append((line, stats))
    # Every input element is opened once, the empty nested dataset (input 1) included.
    opened = sorted(stats.get("source") for _, stats in by_name["TfInterleaveSeat::Open"])
    assert opened == list(range(len(SIZES)))
    # Every input element is pulled, plus the pull that finds the end of the input.
    assert len(by_name["TfInterleaveSeat::PullInput"]) >= len(SIZES)
    # One GetNext per nested element and one finding each nested dataset's end.
    get_next = by_name["TfInterleaveSeat::GetNext"]
    assert len(get_next) >= sum(SIZES) + len(SIZES)
    assert {stats.get("source") for _, stats in get_next} == set(range(len(SIZES)))
    # Pulls and opens run on worker threads, never the consumer's. Nested elements are produced
    # by workers too, and by the consumer itself when they are cheaper than a hand-off.
    consumer_lines = {line for line, name, _ in events if name.split("::")[-1] == DATASET_TYPE}
    for name in ("TfInterleaveSeat::Open", "TfInterleaveSeat::PullInput"):
        worker_lines = {line for line, _ in by_name[name]}
        assert worker_lines and not worker_lines & consumer_lines, name
    assert {line for line, _ in get_next} - consumer_lines, "no nested element came from a worker"


# --- the autotune model node (CreateNode) -------------------------------------------------------------


def _model(iterator) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(tf.raw_ops.IteratorGetModelProto(
        iterator=iterator._iterator_resource).numpy())  # pylint: disable=protected-access
    return proto


def test_model_node_is_an_async_interleave_many_node(tfi: types.ModuleType) -> None:
    sizes = (50, 50, 50, 50)
    dataset = sized_input(sizes).apply(tfi.parallel_interleave(sized_map_func(sizes), cycle_length=2,
                                                               block_length=1))
    iterator = iter(dataset)
    first = [int(next(iterator)) for _ in range(4)]
    assert first == [0, 1000, 1, 1001]
    model = _model(iterator)
    nodes = {key: node for key, node in model.nodes.items()}
    ours = [node for node in nodes.values() if node.name == DATASET_TYPE]
    assert len(ours) == 1, [node.name for node in nodes.values()]
    node = ours[0]
    assert node.node_class == model_pb2.NodeClass.ASYNC_INTERLEAVE_MANY
    assert node.autotune
    # The input iterator and the nested iterators are the node's inputs.
    inputs = [nodes[key] for key in node.inputs]
    assert len(inputs) >= 2, [child.name for child in inputs]
    assert all(child.name == "Range" for child in inputs)
    assert node.num_elements >= 4
    rest = [int(value) for value in iterator]
    assert sorted(first + rest) == sorted(value for values in nested_values(sizes) for value in values)


@pytest.mark.parametrize("autotune", [True, False], ids=["autotune_on", "autotune_off"])
def test_iterates_with_and_without_autotune(tfi: types.ModuleType, autotune: bool) -> None:
    options = tf.data.Options()
    options.autotune.enabled = autotune
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), cycle_length=3,
                                                               block_length=2)).with_options(options)
    expected = interleave_order(nested_values(SIZES), 3, 2)
    assert collect(dataset) == expected
    # Autotuning a whole epoch, including a downstream parallel map it tunes.
    tuned = dataset.map(lambda value: value + 1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    assert collect(tuned) == [value + 1 for value in expected]
