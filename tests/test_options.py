"""``sloppy=None`` follows ``tf.data.Options().deterministic``; explicit ``sloppy`` wins."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import types
from typing import Callable, Optional

import pytest
import tensorflow as tf

from pipelines import Straggler, drain_holding_straggler, drain_with_late_straggler, nested_values, \
    run_session_until_end, sized_input
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")

SIZES = (3, 3, 3)
STRAGGLER = 0
CYCLE_LENGTH = 3
FAST_ELEMENTS = [1000, 1001, 1002, 2000, 2001, 2002]
EXPECTED = interleave_order(nested_values(SIZES), CYCLE_LENGTH)

OptionsEditor = Callable[[tf.data.Options], None]


def _set_deterministic(value: Optional[bool]) -> OptionsEditor:
    def edit(options: tf.data.Options) -> None:
        if value is not None:
            options.deterministic = value
    return edit


def _set_experimental_deterministic(value: bool) -> OptionsEditor:
    def edit(options: tf.data.Options) -> None:
        options.experimental_deterministic = value
    return edit


def _dataset(tfi: types.ModuleType, straggler: Straggler, sloppy: Optional[bool], edit: OptionsEditor,
             options_on_input: bool = False) -> tf.data.Dataset:
    options = tf.data.Options()
    edit(options)
    input_dataset = sized_input(SIZES)
    if options_on_input:
        input_dataset = input_dataset.with_options(options)
    dataset = input_dataset.apply(
        tfi.parallel_interleave(straggler.map_func(SIZES, STRAGGLER), CYCLE_LENGTH, sloppy=sloppy))
    dataset = dataset.map(lambda value: value)
    return dataset if options_on_input else dataset.with_options(options)


def _assert_sloppy(dataset: tf.data.Dataset, straggler: Straggler) -> None:
    before, after = drain_holding_straggler(dataset, straggler, held_steps=len(FAST_ELEMENTS))
    assert not straggler.timed_out, "the pipeline waited for the straggler: not sloppy"
    assert sorted(before) == FAST_ELEMENTS
    assert after == nested_values(SIZES)[STRAGGLER]


def _assert_deterministic(dataset: tf.data.Dataset, straggler: Straggler) -> None:
    assert drain_with_late_straggler(dataset, straggler) == EXPECTED


SLOPPY_CASES = [
    pytest.param(None, _set_deterministic(False), False, id="none-deterministic-false"),
    pytest.param(None, _set_experimental_deterministic(False), False, id="none-experimental-false"),
    pytest.param(None, _set_deterministic(False), True, id="none-deterministic-false-on-input"),
    pytest.param(True, _set_deterministic(None), False, id="true-unset"),
    pytest.param(True, _set_deterministic(True), False, id="true-overrides-deterministic-true"),
]

DETERMINISTIC_CASES = [
    pytest.param(None, _set_deterministic(None), False, id="none-unset"),
    pytest.param(None, _set_deterministic(True), False, id="none-deterministic-true"),
    pytest.param(None, _set_experimental_deterministic(True), False, id="none-experimental-true"),
    pytest.param(False, _set_deterministic(None), False, id="false-unset"),
    pytest.param(False, _set_deterministic(False), False, id="false-overrides-deterministic-false"),
]


@pytest.mark.parametrize("sloppy, edit, options_on_input", SLOPPY_CASES)
def test_resolves_to_sloppy(tfi: types.ModuleType, sloppy: Optional[bool], edit: OptionsEditor,
                            options_on_input: bool) -> None:
    straggler = Straggler()
    _assert_sloppy(_dataset(tfi, straggler, sloppy, edit, options_on_input), straggler)


@pytest.mark.parametrize("sloppy, edit, options_on_input", DETERMINISTIC_CASES)
def test_resolves_to_deterministic(tfi: types.ModuleType, sloppy: Optional[bool], edit: OptionsEditor,
                                   options_on_input: bool) -> None:
    straggler = Straggler()
    _assert_deterministic(_dataset(tfi, straggler, sloppy, edit, options_on_input), straggler)


def test_sloppy_none_resolved_per_pipeline(tfi: types.ModuleType) -> None:
    """One interleave dataset in two pipelines with different options: each resolves on its own."""
    straggler = Straggler()
    interleaved = sized_input(SIZES).apply(
        tfi.parallel_interleave(straggler.map_func(SIZES, STRAGGLER), CYCLE_LENGTH, sloppy=None))
    sloppy_options = tf.data.Options()
    sloppy_options.deterministic = False
    _assert_sloppy(interleaved.with_options(sloppy_options), straggler)
    straggler.rearm()
    _assert_deterministic(interleaved, straggler)


_OP_DETERMINISM_SCRIPT = textwrap.dedent("""
    import tensorflow as tf
    import {module} as tfi
    from pipelines import Straggler, drain_with_late_straggler, sized_input

    tf.config.experimental.enable_op_determinism()
    sizes = {sizes}
    for sloppy in (True, None):
        straggler = Straggler()
        dataset = sized_input(sizes).apply(
            tfi.parallel_interleave(straggler.map_func(sizes, 0), {cycle_length}, sloppy=sloppy))
        options = tf.data.Options()
        options.deterministic = False
        print(drain_with_late_straggler(dataset.with_options(options), straggler))
""")


def test_op_determinism_forces_deterministic_order(tfi: types.ModuleType) -> None:
    """``enable_op_determinism()`` is process-wide, so this runs in a child process."""
    if not hasattr(tfi, "__file__"):
        pytest.skip("the built-in stand-in cannot be imported by a child process")
    # The child imports the very same tf_interleave package and the test helpers.
    search_path = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(tfi.__file__).parents[1])]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=os.pathsep.join(search_path + [os.environ.get("PYTHONPATH", "")]))
    script = _OP_DETERMINISM_SCRIPT.format(module=tfi.__name__, sizes=SIZES, cycle_length=CYCLE_LENGTH)
    # Outside the source tree, whose unbuilt package would shadow the one under test.
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                           env=environment, cwd=tempfile.gettempdir())
    assert child.returncode == 0, child.stderr[-3000:]
    printed = [line for line in child.stdout.splitlines() if line.startswith("[")]
    assert printed == [str(EXPECTED)] * 2


@pytest.mark.parametrize("deterministic", [False, True])
def test_graph_mode_resolves_options(tfi: types.ModuleType, deterministic: bool) -> None:
    straggler = Straggler()
    with tf.Graph().as_default():
        dataset = _dataset(tfi, straggler, None, _set_deterministic(deterministic))
        next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        with tf.compat.v1.Session() as session:
            if deterministic:
                timer = straggler.release_later(0.2)
                try:
                    assert run_session_until_end(session, next_element) == EXPECTED
                finally:
                    timer.cancel()
                    straggler.release()
                return
            try:
                before = [session.run(next_element) for _ in FAST_ELEMENTS]
            finally:
                straggler.release()
            after = run_session_until_end(session, next_element)
    assert not straggler.timed_out, "the pipeline waited for the straggler: not sloppy"
    assert sorted(before) == FAST_ELEMENTS
    assert after == nested_values(SIZES)[STRAGGLER]
