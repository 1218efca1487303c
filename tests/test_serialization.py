"""Graph serialization (``AsGraphDefInternal``) and what depends on it (SPEC section 6).

The dataset graph must round-trip with every argument, attribute and captured
input intact: ``_as_serialized_graph`` + ``DatasetFromGraph``, ``Dataset.save`` /
``Dataset.load``, tf.data's own graph rewrites, and a SavedModel whose
``tf.function`` builds the pipeline, loaded again in a fresh process.
``CheckExternalState`` must see state in ``map_func`` and in the input.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import types
from typing import Dict, List, Optional, Sequence

import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.data.experimental.ops import testing as data_testing
from tensorflow.python.data.ops import dataset_ops

from pipelines import collect, nested_values, sized_input, sized_map_func, SLOPPY_MODES
from reference_model import interleave_order

OP_NAME = "TfInterleave>ParallelInterleaveDataset"
SIZES = (3, 0, 5, 1, 4, 2, 6)
HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
SUBPROCESS_TIMEOUT_SECONDS = 90


def _subprocess_env(**overrides: str) -> Dict[str, str]:
    """The parent's environment, with its ``sys.path`` so that the child finds the same tf_interleave."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(overrides)
    return env


def _start(script: str, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(HELPERS, script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=_subprocess_env(**env))


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    """Waits for ``process`` (killing it after the timeout) and returns its outcome."""
    try:
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"{process.args} did not finish within {SUBPROCESS_TIMEOUT_SECONDS} s:\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _json_line(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, f"{result.args} failed ({result.returncode}):\n{result.stderr[-5000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _graph_def(dataset: tf.data.Dataset, **kwargs) -> graph_pb2.GraphDef:
    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(dataset._as_serialized_graph(**kwargs).numpy())  # pylint: disable=protected-access
    return graph_def


def _op_nodes(graph_def: graph_pb2.GraphDef) -> list:
    return [node for node in graph_def.node if node.op == OP_NAME]


def _const_value(graph_def: graph_pb2.GraphDef, input_name: str) -> int:
    name = input_name.split(":")[0].lstrip("^")
    node = next(node for node in graph_def.node if node.name == name)
    assert node.op == "Const", f"{name} is a {node.op}, not a Const"
    return int(tf.make_ndarray(node.attr["value"].tensor))


def _from_graph(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Rebuilds ``dataset`` from its serialized graph, as tf.data service workers and rewrites do."""
    variant = tf.raw_ops.DatasetFromGraph(graph_def=dataset._as_serialized_graph())  # pylint: disable=protected-access
    return dataset_ops._VariantDataset(variant, dataset.element_spec)  # pylint: disable=protected-access


def _expected(cycle_length: int, block_length: int, prefetch: Optional[int] = None, buffer: Optional[int] = None,
              sizes: Sequence[int] = SIZES, offset: int = 0) -> List[int]:
    return [value + offset for value in interleave_order(nested_values(sizes), cycle_length, block_length, prefetch,
                                                         buffer)]


# --- the serialized graph ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sloppy, attr", [(False, "true"), (True, "false"), (None, "default")],
                         ids=["deterministic", "sloppy", "from_options"])
def test_serialized_graph_holds_the_op_and_its_arguments(tfi: types.ModuleType, sloppy: Optional[bool],
                                                         attr: str) -> None:
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(
        sized_map_func(SIZES), cycle_length=3, block_length=2, sloppy=sloppy, buffer_output_elements=5,
        prefetch_input_elements=1))
    graph_def = _graph_def(dataset)
    nodes = _op_nodes(graph_def)
    assert len(nodes) == 1, [node.op for node in graph_def.node]
    node = nodes[0]
    assert node.attr["deterministic"].s.decode() == attr
    function_name = node.attr["f"].func.name
    assert function_name in {function.signature.name for function in graph_def.library.function}
    data_inputs = [name for name in node.input if not name.startswith("^")]
    # input_dataset, the captured inputs (none here), then the four scalars.
    assert len(data_inputs) == 1 + len(node.attr["Targuments"].list.type) + 4
    assert [_const_value(graph_def, name) for name in data_inputs[-4:]] == [3, 2, 5, 1]
    assert OP_NAME.encode() in dataset._as_serialized_graph().numpy()  # pylint: disable=protected-access


def test_serialized_graph_holds_the_extension_attributes() -> None:
    """The keyword-only extensions survive serialization (tf.data service, rewrites), not just the defaults."""
    import tf_interleave

    dataset = sized_input(SIZES).apply(tf_interleave.parallel_interleave(
        sized_map_func(SIZES), cycle_length=2, on_input_error="skip", max_skipped_inputs=3, input_retries=2,
        memory_budget_bytes=4096, stall_warning_seconds=1.5, produce_inline=False))
    node = _op_nodes(_graph_def(dataset))[0]
    extensions = {"on_input_error", "max_skipped_inputs", "input_retries", "memory_budget_bytes",
                  "stall_warning_seconds", "produce_inline"}
    assert extensions <= set(node.attr), sorted(node.attr)
    assert node.attr["on_input_error"].s.decode() == "skip"
    assert node.attr["max_skipped_inputs"].i == 3
    assert node.attr["input_retries"].i == 2
    assert node.attr["memory_budget_bytes"].i == 4096
    assert node.attr["stall_warning_seconds"].f == pytest.approx(1.5)
    assert node.attr["produce_inline"].b is False
    assert [int(value) for value in _from_graph(dataset)] == _expected(2, 1)


@pytest.mark.parametrize("sloppy", [False, True, None], ids=["deterministic", "sloppy", "from_options"])
@pytest.mark.parametrize("cycle_length, block_length, buffer, prefetch",
                         [(2, 2, None, None), (3, 1, 1, 0), (4, 3, 2, 1)], ids=["c2_b2", "c3_b1_o1_p0", "c4_b3_o2_p1"])
def test_graph_round_trip_keeps_the_elements(tfi: types.ModuleType, cycle_length: int, block_length: int,
                                             buffer: Optional[int], prefetch: Optional[int],
                                             sloppy: Optional[bool]) -> None:
    """A dataset rebuilt from its GraphDef (with a captured tensor) yields the same elements."""
    offset = tf.constant(7, tf.int64)
    base = sized_map_func(SIZES)
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(
        lambda index: base(index).map(lambda value: value + offset), cycle_length, block_length, sloppy=sloppy,
        buffer_output_elements=buffer, prefetch_input_elements=prefetch))
    expected = _expected(cycle_length, block_length, prefetch, buffer, offset=7)
    rebuilt = _from_graph(dataset)
    values = collect(rebuilt)
    if sloppy:
        assert sorted(values) == sorted(expected)
    else:
        assert values == expected
    # Serialized again, the rebuilt dataset says the same thing.
    again = _op_nodes(_graph_def(rebuilt))
    original = _op_nodes(_graph_def(dataset))
    assert len(again) == len(original) == 1
    assert again[0].attr["deterministic"] == original[0].attr["deterministic"]
    assert again[0].attr["Targuments"] == original[0].attr["Targuments"]


def test_graph_round_trip_with_tensor_arguments(tfi: types.ModuleType) -> None:
    """Arguments given as tensors (computed, not Python ints) are serialized by value."""
    cycle_length = tf.constant(1, tf.int64) + 2
    block_length = tf.constant(2, tf.int64)
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), cycle_length, block_length))
    graph_def = _graph_def(dataset)
    node = _op_nodes(graph_def)[0]
    data_inputs = [name for name in node.input if not name.startswith("^")]
    # Defaults: buffer_output_elements = 2 * block_length, prefetch_input_elements = 2 * cycle_length.
    assert [_const_value(graph_def, name) for name in data_inputs[-4:]] == [3, 2, 4, 6]
    assert collect(_from_graph(dataset)) == _expected(3, 2)


# --- CheckExternalState --------------------------------------------------------------------------------


def _stateful(value: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.py_function(lambda x: x, [value], tf.int64), [])


def test_stateless_pipeline_serializes_under_the_strict_policy(tfi: types.ModuleType) -> None:
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), 2))
    graph_def = _graph_def(dataset, external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL)
    assert len(_op_nodes(graph_def)) == 1


@pytest.mark.parametrize("where", ["map_func", "nested_dataset", "input"])
def test_external_state_is_reported(tfi: types.ModuleType, tmp_path, where: str) -> None:
    """State in ``map_func`` (or in what it builds) or in the input is seen by ``CheckExternalState``."""
    base = sized_map_func(SIZES)
    if where == "map_func":
        map_func = lambda index: base(_stateful(index))  # noqa: E731
    elif where == "nested_dataset":
        map_func = lambda index: base(index).map(_stateful)  # noqa: E731
    else:
        map_func = base
    inputs = sized_input(SIZES)
    if where == "input":
        inputs = inputs.map(_stateful)
    dataset = inputs.apply(tfi.parallel_interleave(map_func, 2))
    with pytest.raises(tf.errors.FailedPreconditionError):
        dataset._as_serialized_graph(  # pylint: disable=protected-access
            external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL)
    # An iterator checkpoint refuses too, under the strict policy.
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
    iterator = iter(dataset.with_options(options))
    next(iterator)
    with pytest.raises(tf.errors.FailedPreconditionError):
        tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "stateful"))
    # The permissive policies serialize it.
    assert len(_op_nodes(_graph_def(dataset, external_state_policy=tf.data.experimental.ExternalStatePolicy.IGNORE)
                         )) == 1


# --- Dataset.save / Dataset.load ----------------------------------------------------------------------


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_dataset_save_and_load(tfi: types.ModuleType, tmp_path, sloppy: bool) -> None:
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), 3, 2, sloppy=sloppy))
    expected = _expected(3, 2)
    # One shard keeps the order.
    dataset.save(str(tmp_path / "one_shard"), shard_func=lambda value: tf.constant(0, tf.int64))
    loaded = tf.data.Dataset.load(str(tmp_path / "one_shard"))
    assert loaded.element_spec == dataset.element_spec
    values = collect(loaded)
    assert (sorted(values) == sorted(expected)) if sloppy else (values == expected)
    # The default sharding: the same multiset.
    dataset.save(str(tmp_path / "default"))
    assert sorted(collect(tf.data.Dataset.load(str(tmp_path / "default")))) == sorted(expected)
    # Compressed, and with the op applied again after loading.
    dataset.save(str(tmp_path / "gzip"), compression="GZIP")
    reloaded = tf.data.Dataset.load(str(tmp_path / "gzip"), compression="GZIP")
    twice = reloaded.apply(tfi.parallel_interleave(lambda value: tf.data.Dataset.from_tensors(value).repeat(2), 2))
    assert collections.Counter(collect(twice)) == collections.Counter(expected * 2)


# --- tf.data's graph rewrites --------------------------------------------------------------------------


def test_default_rewrites_are_applied_around_the_op(tfi: types.ModuleType) -> None:
    """``map`` + ``batch`` after the op are fused: the rewrite needs the whole pipeline's graph.

    ``assert_next`` fails the iterator unless the next transformation really is the
    fused ``MapAndBatch``, so this fails if the pipeline could not be serialized
    (tf.data then runs it unoptimized).
    """
    dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), 2, 2))
    fused = dataset.apply(data_testing.assert_next(["MapAndBatch"])).map(lambda value: value + 1).batch(3)
    values = [value for batch in collect(fused) for value in batch]
    assert values == [value + 1 for value in _expected(2, 2)]


def test_results_do_not_depend_on_the_rewrites(tfi: types.ModuleType) -> None:
    def pipeline(options: tf.data.Options) -> tf.data.Dataset:
        dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), 3, 2))
        return (dataset.map(lambda value: value * 2).map(lambda value: value + 1).filter(lambda value: value > 0)
                .batch(4).unbatch().with_options(options))

    plain = tf.data.Options()
    plain.experimental_optimization.apply_default_optimizations = False
    plain.autotune.enabled = False
    rewritten = tf.data.Options()
    rewritten.experimental_optimization.apply_default_optimizations = True
    rewritten.experimental_optimization.map_fusion = True
    rewritten.experimental_optimization.map_parallelization = True
    rewritten.experimental_optimization.filter_fusion = True
    rewritten.experimental_optimization.parallel_batch = True
    expected = [2 * value + 1 for value in _expected(3, 2)]
    assert collect(pipeline(plain)) == expected
    assert collect(pipeline(rewritten)) == expected
    assert collect(pipeline(tf.data.Options())) == expected


def test_no_rewrite_warnings_in_a_fresh_process() -> None:
    """With C++ logging on, running optimized pipelines logs nothing about the op or serialization."""
    result = _finish(_start("optimized_pipeline.py", TF_CPP_MIN_LOG_LEVEL="0"))
    values = _json_line(result)
    expected = [2 * (value + 1) for value in _expected(2, 2)]
    assert values == {"default": expected, "every_rewrite": expected, "sloppy_default": expected}
    # C++ warnings and errors ("W0000 00:00:..."), and Python ones ("WARNING:tensorflow:...").
    suspicious = [line for line in result.stderr.splitlines()
                  if re.match(r"^([WEF]\d{4} |WARNING:|ERROR:)", line) and re.search(
                      r"TfInterleave|serializ|Unimplemented|AsGraphDef|rewrite|optimiz", line, re.IGNORECASE)]
    assert not suspicious, "\n".join(suspicious)


# --- SavedModel ----------------------------------------------------------------------------------------


class _PipelineModule(tf.Module):
    """Builds the pipeline inside its ``tf.function``s; ``cycle_length`` is a graph input."""

    def __init__(self, tfi: types.ModuleType) -> None:
        super().__init__()
        self._tfi = tfi
        self.offset = tf.Variable(5, dtype=tf.int64)

    def _dataset(self, cycle_length: tf.Tensor) -> tf.data.Dataset:
        base = sized_map_func(SIZES)
        return sized_input(SIZES).apply(self._tfi.parallel_interleave(
            lambda index: base(index).map(lambda value: value + self.offset), cycle_length, block_length=2,
            prefetch_input_elements=1))

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
    def elements(self, cycle_length: tf.Tensor) -> tf.Tensor:
        return self._dataset(cycle_length).batch(100).get_single_element()

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
    def total(self, cycle_length: tf.Tensor) -> tf.Tensor:
        return self._dataset(cycle_length).reduce(tf.constant(0, tf.int64), lambda total, value: total + value)


@pytest.fixture(scope="module")
def saved_model(tfi: types.ModuleType, tmp_path_factory) -> dict:
    """Saves the module, then loads it in two fresh processes at once: with and without the import."""
    path = str(tmp_path_factory.mktemp("saved_model") / "pipeline")
    module = _PipelineModule(tfi)
    in_process = {cycle_length: module.elements(tf.constant(cycle_length, tf.int64)).numpy().tolist()
                  for cycle_length in (1, 2, 3)}
    tf.saved_model.save(module, path)
    with_import = _start("saved_model_loader.py", path, "--import-tf-interleave")
    without_import = _start("saved_model_loader.py", path)
    try:
        return {"in_process": in_process, "with_import": _finish(with_import),
                "without_import": _finish(without_import)}
    finally:
        for process in (with_import, without_import):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_saved_model_in_the_saving_process(saved_model: dict) -> None:
    for cycle_length in (1, 2, 3):
        assert saved_model["in_process"][cycle_length] == _expected(cycle_length, 2, 1, offset=5)


def test_saved_model_loads_in_a_fresh_process_that_imports_tf_interleave(saved_model: dict) -> None:
    result = _json_line(saved_model["with_import"])
    for cycle_length in (1, 2, 3):
        expected = _expected(cycle_length, 2, 1, offset=5)
        assert result["elements"][str(cycle_length)] == expected == saved_model["in_process"][cycle_length]
        assert result["totals"][str(cycle_length)] == sum(expected)


def test_saved_model_needs_the_op_registered(saved_model: dict) -> None:
    """Expected failure, documented: a process that did not ``import tf_interleave`` cannot load the model.

    The error names the op, so the fix (import tf_interleave before loading) is evident.
    """
    result = saved_model["without_import"]
    assert result.returncode != 0, result.stdout
    assert result.returncode != 2, "the loader imported tf_interleave although it must not"
    assert OP_NAME in result.stderr, result.stderr[-5000:]
    assert "not registered" in result.stderr, result.stderr[-5000:]
