"""Bad-argument fuzzing: random values and types for every argument of ``parallel_interleave``.

Hypothesis draws each argument from valid values, edge values (0, -1, 2**31, 2**62, 2**63 - 1, 2**63, 2**70),
wrong types (bool, float, None, str, bytes, lists, NumPy scalars and arrays) and tensors (int32, int64, uint8,
uint64, float, bool and string; scalars and non-scalars), in eager mode and inside a ``tf.function`` that takes
the tensor arguments as its own arguments (sometimes with an unknown shape, so that only the kernel can see a
non-scalar).

An oracle written from the documented contract (``parallel_interleave``'s docstring and SPEC section 5) says
for each draw what must happen:

* valid arguments: the elements of a tiny pipeline, in the reference model's order (as a multiset when sloppy);
  as in the built-in, a 0-d NumPy array stands for its scalar and ``sloppy`` may be 1 or 0;
* otherwise exactly one of the exceptions the individual bad arguments call for: ``TypeError`` for a wrong
  type (including float, bool and string tensors and every wrong type of a keyword-only argument),
  ``tf.errors.InvalidArgumentError`` for a value out of range (a uint64 tensor beyond the int64 maximum
  included: never wrapped around), a non-scalar tensor or integer array, an unknown
  ``on_input_error`` string, or ``max_skipped_inputs`` without ``on_input_error="skip"``.  Any number of
  seats (``cycle_length + prefetch_input_elements``, up to twice the int64 maximum) is valid.  No other
  exception type is accepted (no
  ``ValueError``, ``OverflowError`` or ``AttributeError`` leaking from a conversion).

In eager mode the error must come when the transformation is made or applied, never later while iterating.
Elements are read through a cancellable ``tf.function``: an example that hangs is cancelled after
``HANG_SECONDS`` and fails with its arguments (and ``hang_guard`` ends a hang that cancellation cannot).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import numbers
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from tensorflow.python.eager import cancellation

from pipelines import sized_input, sized_map_func, SLOPPY_MODES
from reference_model import interleave_order

# A hung test ends the run with every thread's stack instead of a silent CI timeout.
pytestmark = pytest.mark.usefixtures("hang_guard")

SIZES = [2, 0, 3, 1, 2]
INT64_MAX = 2**63 - 1
MANY_SEATS = 2**16
# An example that runs longer than this is cancelled and fails the test.
HANG_SECONDS = 15

IAE = tf.errors.InvalidArgumentError
ALLOWED_ERRORS = (TypeError, IAE)


class Omitted:
    """The argument is not passed at all."""

    def __repr__(self) -> str:
        return "OMITTED"


OMITTED = Omitted()


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """A tensor argument, made when the example runs (so that Hypothesis can print and shrink it)."""

    dtype: str
    payload: Any  # a scalar, or a (nested) list for a non-scalar tensor
    # In a tf.function: pass it with an unknown shape, so only the kernel sees its rank.
    unknown_shape: bool = False

    @property
    def scalar(self) -> bool:
        return not isinstance(self.payload, list)

    def make(self) -> tf.Tensor:
        return tf.constant(self.payload, dtype=getattr(tf, self.dtype))

    def spec(self) -> tf.TensorSpec:
        shape = None if self.unknown_shape else self.make().shape
        return tf.TensorSpec(shape, getattr(tf, self.dtype))


# --- Strategies -------------------------------------------------------------------------------------------------

EDGE_INTS = [0, -1, -7, 2**31 - 1, 2**31, 2**62, INT64_MAX, 2**63, 2**70, -2**63, -2**70]


def _numpy_scalar(value_and_type: Tuple[int, Any]) -> Any:
    value, numpy_type = value_and_type
    return numpy_type(value)


def int_like() -> st.SearchStrategy:
    """Values for cycle_length, block_length, buffer_output_elements and prefetch_input_elements."""
    valid_ints = st.integers(min_value=0, max_value=5)
    tensor_int = st.one_of(
        st.builds(TensorArg, st.just("int64"), st.one_of(st.integers(-3, 6), st.sampled_from(
            [2**62, INT64_MAX, -2**63, 4096, 4097, MANY_SEATS, MANY_SEATS + 1])), st.booleans()),
        st.builds(TensorArg, st.just("int32"), st.one_of(st.integers(-3, 6), st.sampled_from(
            [2**31 - 1, -2**31])), st.booleans()),
        st.builds(TensorArg, st.sampled_from(["uint8", "uint64"]), st.integers(0, 6), st.booleans()),
        st.builds(TensorArg, st.just("uint64"), st.sampled_from([2**63 + 5, 2**64 - 1, INT64_MAX]), st.booleans()),
    )
    tensor_other = st.one_of(
        st.builds(TensorArg, st.sampled_from(["float32", "float64"]), st.sampled_from([2.0, -1.0, 0.5]),
                  st.booleans()),
        st.builds(TensorArg, st.just("bool"), st.booleans(), st.booleans()),
        st.builds(TensorArg, st.just("string"), st.sampled_from(["2", ""]), st.booleans()),
        st.builds(TensorArg, st.sampled_from(["int32", "int64"]),
                  st.sampled_from([[2], [], [1, 2], [[3]]]), st.booleans()),
    )
    numpy_values = st.one_of(
        st.tuples(st.integers(-3, 6), st.sampled_from([np.int8, np.int16, np.int32, np.int64])).map(_numpy_scalar),
        st.tuples(st.integers(0, 6), st.sampled_from([np.uint8, np.uint64])).map(_numpy_scalar),
        st.sampled_from([np.int64(2**62), np.uint64(2**63 + 1), np.float32(2.0), np.bool_(True),
                         np.array(2), np.array([1, 2]), np.array(0), np.array(2.0), np.array(2, np.uint64)]),
    )
    wrong_types = st.sampled_from([True, False, None, 2.0, 0.5, -1.0, float("nan"), float("inf"), "2", "",
                                   b"2", [2], (2,), {"value": 2}, 1 + 2j])
    return st.one_of(valid_ints, valid_ints, valid_ints, st.sampled_from(EDGE_INTS), tensor_int, tensor_int,
                     tensor_other, numpy_values, wrong_types)


def optional_int_like() -> st.SearchStrategy:
    return st.one_of(st.just(OMITTED), st.just(None), int_like())


def plain_value() -> st.SearchStrategy:
    """Values for the keyword-only integer options (Python values only; tensors are a TypeError)."""
    return st.one_of(
        st.just(OMITTED), st.just(OMITTED), st.just(None), st.integers(-2, 4), st.sampled_from(EDGE_INTS),
        st.sampled_from([True, False, 1.0, 2.5, "1", np.int32(2), np.int64(0), np.uint8(3), np.bool_(False),
                         np.float64(1.0), [1]]),
        st.builds(TensorArg, st.just("int64"), st.integers(0, 3)),
    )


@dataclasses.dataclass(frozen=True)
class Draw:
    cycle_length: Any
    block_length: Any
    sloppy: Any
    buffer_output_elements: Any
    prefetch_input_elements: Any
    on_input_error: Any
    max_skipped_inputs: Any
    input_retries: Any
    memory_budget_bytes: Any
    stall_warning_seconds: Any

    POSITIONAL = ("cycle_length", "block_length", "sloppy", "buffer_output_elements", "prefetch_input_elements")
    KEYWORD_ONLY = ("on_input_error", "max_skipped_inputs", "input_retries", "memory_budget_bytes",
                    "stall_warning_seconds")

    def items(self) -> List[Tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.POSITIONAL + self.KEYWORD_ONLY
                if getattr(self, name) is not OMITTED]


# Each element of the fuzzed pipeline is one int64.
ONE_ELEMENT_BYTES = 8


ANY_VALUE = dict(
    cycle_length=int_like(),
    block_length=st.one_of(st.just(OMITTED), int_like()),
    sloppy=st.sampled_from([OMITTED, False, True, None, np.bool_(True), np.bool_(False), 0, 1, 2, -1, "true",
                            np.array(True), np.int64(1), TensorArg("bool", True)]),
    buffer_output_elements=optional_int_like(),
    prefetch_input_elements=optional_int_like(),
    on_input_error=st.sampled_from([OMITTED, OMITTED, "raise", "skip", "Skip", "", None, 1, b"skip",
                                    TensorArg("string", "skip")]),
    max_skipped_inputs=plain_value(),
    input_retries=plain_value(),
    memory_budget_bytes=plain_value(),
    stall_warning_seconds=st.one_of(plain_value(), st.sampled_from(
        [0.0, -1.0, 1e-3, 5.0, 1e300, float("nan"), float("inf"), np.float32(0.5)])),
)


def valid_int(minimum: int, maximum: int = 6, huge: bool = False) -> st.SearchStrategy:
    """Valid values of an integer argument, as Python, NumPy and tensor values."""
    values = st.integers(minimum, maximum)
    if huge:
        values = st.one_of(values, values, st.sampled_from([2**31, 2**62, INT64_MAX]))
    return st.one_of(
        values, values,
        st.tuples(st.integers(minimum, maximum), st.sampled_from([np.int32, np.int64, np.uint8])).map(_numpy_scalar),
        st.builds(TensorArg, st.just("int64"), values, st.booleans()),
        st.builds(TensorArg, st.just("int32"), st.integers(minimum, maximum), st.booleans()),
    )


@st.composite
def valid_draws(draw_value) -> Draw:
    """Arguments that are all valid (defaults included)."""
    on_input_error = draw_value(st.sampled_from([OMITTED, "raise", "skip"]))
    return Draw(
        cycle_length=draw_value(st.one_of(valid_int(1), valid_int(1), st.just(4000))),
        block_length=draw_value(st.one_of(st.just(OMITTED), valid_int(1, 4))),
        sloppy=draw_value(st.sampled_from([OMITTED, False, True, None, np.bool_(True)])),
        buffer_output_elements=draw_value(st.one_of(st.just(OMITTED), st.just(None), valid_int(1, 4, huge=True))),
        prefetch_input_elements=draw_value(st.one_of(st.just(OMITTED), st.just(None), valid_int(0, 4),
                                                     st.just(96))),
        on_input_error=on_input_error,
        max_skipped_inputs=draw_value(st.one_of(st.just(OMITTED), st.just(None), st.integers(0, 3),
                                                st.just(2**62)))
        if on_input_error == "skip" else OMITTED,
        input_retries=draw_value(st.sampled_from([OMITTED, None, 0, 2, 2**62, np.int64(1)])),
        memory_budget_bytes=draw_value(st.sampled_from([OMITTED, None, 1, ONE_ELEMENT_BYTES, 64, 2**62])),
        stall_warning_seconds=draw_value(st.sampled_from([OMITTED, None, 1e-3, 5, 1e300, np.float32(0.5)])),
    )


def _with_one_replaced(draw: Draw) -> st.SearchStrategy:
    return st.sampled_from(sorted(ANY_VALUE)).flatmap(
        lambda name: ANY_VALUE[name].map(lambda value: dataclasses.replace(draw, **{name: value})))


# A third all valid, a third with one argument drawn from anything, a third anything at all.
draws = st.one_of(valid_draws(), valid_draws().flatmap(_with_one_replaced), st.builds(Draw, **ANY_VALUE))


# --- The oracle -------------------------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _unwrapped(value: Any) -> Any:
    """A 0-d NumPy array stands for its scalar (the built-in converts it like any tensor-like value)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


@dataclasses.dataclass
class Verdict:
    errors: FrozenSet[type]
    values: Dict[str, Any]

    @property
    def valid(self) -> bool:
        return not self.errors


def _int_argument(value: Any, minimum: int, errors: set) -> Optional[int]:
    """The int64 value an integer argument stands for, or None after recording its error."""
    value = _unwrapped(value)
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer):
        errors.add(IAE)  # not a scalar
        return None
    if _is_int(value):
        if not minimum <= int(value) <= INT64_MAX:
            errors.add(IAE)
            return None
        return int(value)
    if isinstance(value, TensorArg):
        if value.dtype not in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
            errors.add(TypeError)
            return None
        if not value.scalar:
            errors.add(IAE)
            return None
        # A uint64 beyond the int64 maximum is out of range, not wrapped around to a negative count.
        converted = int(value.payload)
        if not minimum <= converted <= INT64_MAX:
            errors.add(IAE)
            return None
        return converted
    errors.add(TypeError)
    return None


def _doubled(value: Any, minimum: int, errors: set) -> Optional[int]:
    """The legacy default ``2 * value``, saturating at the int64 maximum (a Python int or a tensor alike)."""
    base = _int_argument(value, 1, set())
    if base is None:
        return None  # the error is recorded for the argument itself
    doubled = min(2 * base, INT64_MAX)
    if not minimum <= doubled <= INT64_MAX:
        errors.add(IAE)
        return None
    return doubled


def _absent(value: Any) -> bool:
    return value is OMITTED or value is None


def _optional_plain_int(value: Any, minimum: int, errors: set, default: Optional[int]) -> Optional[int]:
    if _absent(value):
        return default
    if not _is_int(value):
        errors.add(TypeError)
        return None
    if not minimum <= int(value) <= INT64_MAX:
        errors.add(IAE)
        return None
    return int(value)


def judge(draw: Draw) -> Verdict:
    errors: set = set()
    values: Dict[str, Any] = {}
    block_arg = 1 if draw.block_length is OMITTED else draw.block_length
    values["cycle_length"] = _int_argument(draw.cycle_length, 1, errors)
    values["block_length"] = _int_argument(block_arg, 1, errors)
    if _absent(draw.buffer_output_elements):
        values["buffer_output_elements"] = _doubled(block_arg, 1, errors)
    else:
        values["buffer_output_elements"] = _int_argument(draw.buffer_output_elements, 1, errors)
    if _absent(draw.prefetch_input_elements):
        values["prefetch_input_elements"] = _doubled(draw.cycle_length, 0, errors)
    else:
        values["prefetch_input_elements"] = _int_argument(draw.prefetch_input_elements, 0, errors)

    sloppy = False if draw.sloppy is OMITTED else _unwrapped(draw.sloppy)
    # 1 and 0 stand for True and False, as in the built-in.
    if (sloppy is not None and not isinstance(sloppy, (bool, np.bool_)) and
            not (_is_int(sloppy) and int(sloppy) in (0, 1))):
        errors.add(TypeError)
    values["sloppy"] = bool(sloppy)

    on_input_error = "raise" if draw.on_input_error is OMITTED else draw.on_input_error
    if not isinstance(on_input_error, str):
        errors.add(TypeError)
    elif on_input_error not in ("raise", "skip"):
        errors.add(IAE)
    _optional_plain_int(draw.max_skipped_inputs, 0, errors, None)
    if not _absent(draw.max_skipped_inputs) and on_input_error != "skip":
        errors.add(IAE)
    _optional_plain_int(draw.input_retries, 0, errors, 0)
    _optional_plain_int(draw.memory_budget_bytes, 1, errors, None)
    stall = draw.stall_warning_seconds
    if stall is not OMITTED and stall is not None:
        if isinstance(stall, (bool, np.bool_)) or not isinstance(stall, numbers.Real):
            errors.add(TypeError)
        elif not (float(stall) > 0 and math.isfinite(float(stall))):
            errors.add(IAE)
    return Verdict(frozenset(errors), values)


def expected_elements(values: Dict[str, Any]) -> List[int]:
    nested = [[1000 * index + k for k in range(size)] for index, size in enumerate(SIZES)]
    return interleave_order(nested, values["cycle_length"], values["block_length"],
                            values["prefetch_input_elements"], values["buffer_output_elements"])


def _event(name: str) -> None:
    """Counts outcomes in Hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(name)


def check_elements(verdict: Verdict, observed: List[int], draw: Draw) -> None:
    _event("valid arguments")
    expected = expected_elements(verdict.values)
    if verdict.values["sloppy"]:
        assert sorted(observed) == sorted(expected), draw
    else:
        assert observed == expected, draw


def check_error(verdict: Verdict, error: BaseException, draw: Draw) -> None:
    _event(f"raised {type(error).__name__}")
    assert isinstance(error, ALLOWED_ERRORS), f"{type(error).__name__} is not a documented error: {error}"
    assert not verdict.valid, f"valid arguments {draw} raised {type(error).__name__}: {error}"
    assert any(isinstance(error, kind) for kind in verdict.errors), (
        f"{draw} raised {type(error).__name__}, expected one of "
        f"{sorted(kind.__name__ for kind in verdict.errors)}: {error}")


# --- Running a draw ---------------------------------------------------------------------------------------------

def run_cancellable(concrete_function: Callable[..., Any], args: Sequence[Any], what: str,
                    timeout: float = HANG_SECONDS) -> Any:
    """Calls a concrete function on a helper thread; cancels it and fails the test if it takes too long."""
    manager = cancellation.CancellationManager()
    cancellable = manager.get_cancelable_function(concrete_function)
    outcome: Dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = cancellable(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error

    worker = threading.Thread(target=target, name="fuzz-example", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        manager.start_cancel()
        worker.join(HANG_SECONDS)
        pytest.fail(f"{what} hung for {timeout}s"
                    + ("" if not worker.is_alive() else " and did not end when cancelled"))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@tf.function
def _read_all(iterator: Any) -> tf.Tensor:
    values = tf.TensorArray(tf.int64, size=0, dynamic_size=True)
    for value in iterator:
        values = values.write(values.size(), value)
    return values.stack()


def _kwargs(draw: Draw, materialize) -> Dict[str, Any]:
    return {name: materialize(value) if isinstance(value, TensorArg) else value for name, value in draw.items()}


def run_eager(tfi, draw: Draw, timeout: float = HANG_SECONDS) -> None:
    verdict = judge(draw)
    try:
        transformation = tfi.parallel_interleave(sized_map_func(SIZES), **_kwargs(draw, TensorArg.make))
        dataset = sized_input(SIZES).apply(transformation)
    except BaseException as error:  # noqa: BLE001 - checked
        check_error(verdict, error, draw)
        return
    # Every error must have surfaced by now.
    assert verdict.valid, f"{draw}: expected {sorted(k.__name__ for k in verdict.errors)} at apply"
    iterator = iter(dataset)
    observed = run_cancellable(_read_all.get_concrete_function(iterator), [iterator], f"reading {draw}", timeout)
    check_elements(verdict, observed.numpy().tolist(), draw)


def run_in_function(tfi, draw: Draw) -> None:
    verdict = judge(draw)
    tensor_names = [name for name, value in draw.items() if isinstance(value, TensorArg)]
    specs = [getattr(draw, name).spec() for name in tensor_names]
    plain = {name: value for name, value in draw.items() if not isinstance(value, TensorArg)}

    def interleave_all(*tensors: tf.Tensor) -> tf.Tensor:
        kwargs = dict(plain, **dict(zip(tensor_names, tensors)))
        dataset = sized_input(SIZES).apply(tfi.parallel_interleave(sized_map_func(SIZES), **kwargs))
        return dataset.reduce(tf.zeros([0], tf.int64), lambda acc, value: tf.concat([acc, [value]], 0))

    function = tf.function(interleave_all, input_signature=specs)
    try:
        observed = run_cancellable(function.get_concrete_function(),
                                   [getattr(draw, name).make() for name in tensor_names], f"running {draw}")
    except BaseException as error:  # noqa: BLE001 - checked
        if isinstance(error, pytest.fail.Exception):
            raise
        check_error(verdict, error, draw)
        return
    assert verdict.valid, f"{draw}: expected {sorted(k.__name__ for k in verdict.errors)}"
    check_elements(verdict, observed.numpy().tolist(), draw)


FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                           HealthCheck.function_scoped_fixture,
                                                           HealthCheck.filter_too_much])


@settings(max_examples=700, **FUZZ_SETTINGS)
@given(draw=draws)
def test_fuzzed_arguments_eager(tfi, draw: Draw) -> None:
    run_eager(tfi, draw)


@settings(max_examples=200, **FUZZ_SETTINGS)
@given(draw=draws)
def test_fuzzed_arguments_in_tf_function(tfi, draw: Draw) -> None:
    run_in_function(tfi, draw)


# Hand-picked draws that must always be tried, whatever Hypothesis picks.
def _draw(**overrides: Any) -> Draw:
    base = dict(cycle_length=2, block_length=OMITTED, sloppy=OMITTED, buffer_output_elements=OMITTED,
                prefetch_input_elements=OMITTED, on_input_error=OMITTED, max_skipped_inputs=OMITTED,
                input_retries=OMITTED, memory_budget_bytes=OMITTED, stall_warning_seconds=OMITTED)
    base.update(overrides)
    return Draw(**base)


PINNED = [
    _draw(cycle_length=2**62),
    _draw(cycle_length=TensorArg("int64", 2**62)),
    _draw(cycle_length=TensorArg("int64", 2**62), prefetch_input_elements=TensorArg("int64", 2**62)),
    _draw(cycle_length=TensorArg("int64", INT64_MAX), prefetch_input_elements=TensorArg("int64", INT64_MAX)),
    _draw(cycle_length=2**70),
    _draw(cycle_length=4096, prefetch_input_elements=0),
    # Many seats, with explicit and default prefetching: any number is valid (seats are made per input).
    _draw(cycle_length=MANY_SEATS, prefetch_input_elements=0),
    _draw(cycle_length=MANY_SEATS + 1, prefetch_input_elements=0),
    _draw(cycle_length=TensorArg("int64", MANY_SEATS), prefetch_input_elements=TensorArg("int64", 0)),
    _draw(cycle_length=TensorArg("int64", MANY_SEATS - 1), prefetch_input_elements=TensorArg("int64", 2)),
    _draw(cycle_length=21845),
    _draw(cycle_length=21846),
    _draw(cycle_length=TensorArg("int64", 21846)),
    _draw(cycle_length=4000, prefetch_input_elements=97),
    _draw(cycle_length=TensorArg("int64", 4000), prefetch_input_elements=TensorArg("int64", 97)),
    _draw(block_length=2**62, buffer_output_elements=3),
    _draw(block_length=2**62),
    _draw(block_length=TensorArg("int64", 2**62)),
    _draw(buffer_output_elements=2**62),
    _draw(buffer_output_elements=TensorArg("int64", INT64_MAX)),
    _draw(cycle_length=TensorArg("uint64", 2**63 + 5)),
    _draw(cycle_length=TensorArg("int32", 3), block_length=TensorArg("int32", 2)),
    _draw(cycle_length=TensorArg("int64", [2], unknown_shape=True)),
    _draw(cycle_length=TensorArg("float32", 2.0)),
    _draw(cycle_length=np.array(2)),
    # NumPy scalars mixed with Python ints must not overflow in the seat check.
    _draw(cycle_length=4000, prefetch_input_elements=np.uint8(0)),
    _draw(cycle_length=np.uint8(200), prefetch_input_elements=np.uint8(100)),
    _draw(cycle_length=np.int8(100), prefetch_input_elements=np.int8(100)),
    _draw(cycle_length=True),
    _draw(cycle_length=None),
    _draw(block_length=None),
    _draw(sloppy=TensorArg("bool", True)),
    _draw(on_input_error="skip", max_skipped_inputs=2**62, input_retries=2**62, memory_budget_bytes=2**62,
          stall_warning_seconds=1e300),
    _draw(max_skipped_inputs=0),
    _draw(memory_budget_bytes=0),
    _draw(stall_warning_seconds=float("nan")),
    _draw(stall_warning_seconds=True),
    _draw(input_retries=TensorArg("int64", 1)),
    # Never wrapped around to -1 (in a tf.function with an unknown shape, too).
    _draw(cycle_length=TensorArg("uint64", 2**64 - 1)),
    _draw(cycle_length=TensorArg("uint64", 2**64 - 1, unknown_shape=True)),
    _draw(cycle_length=TensorArg("uint64", 3, unknown_shape=True)),
    # What the built-in accepts: 0-d arrays for every count, 1 and 0 for `sloppy`.
    _draw(cycle_length=np.array(2), block_length=np.array(2), buffer_output_elements=np.array(1),
          prefetch_input_elements=np.array(0)),
    _draw(cycle_length=np.array([1, 2])),
    _draw(sloppy=1),
    _draw(sloppy=0),
    _draw(sloppy=2),
]


@pytest.mark.parametrize("draw", PINNED, ids=[str(index) for index in range(len(PINNED))])
@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "tf_function"])
def test_pinned_arguments(tfi, draw: Draw, in_function: bool) -> None:
    (run_in_function if in_function else run_eager)(tfi, draw)


@pytest.mark.parametrize("budget", [1, ONE_ELEMENT_BYTES - 1, ONE_ELEMENT_BYTES])
@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_memory_budget_of_at_most_one_element(tfi, sloppy: bool, budget: int) -> None:
    """Documented: "A buffer the consumer is waiting on may always take one element", so any budget >= 1
    works, however small.  Read several times: a deadlock here depends on timing."""
    for cycle_length in (1, 3, 6):
        for _ in range(3):
            run_eager(tfi, _draw(cycle_length=cycle_length, sloppy=sloppy, memory_budget_bytes=budget), timeout=10)


@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "tf_function"])
def test_huge_tensor_cycle_length_works_with_default_buffers(tfi, in_function: bool) -> None:
    # The default prefetch_input_elements (2 * cycle_length) saturates: it must not wrap around into a
    # negative value and fail, nor overflow the seat count.
    if tfi.__name__ == "builtin":
        pytest.skip("the legacy op allocates every seat up front")

    def build() -> tf.Tensor:
        cycle_length = tf.constant(2**62, tf.int64)
        dataset = tf.data.Dataset.range(4).apply(
            tfi.parallel_interleave(lambda x: tf.data.Dataset.range(x), cycle_length))
        return dataset.reduce(tf.constant([], tf.int64), lambda seen, value: tf.concat([seen, [value]], 0))

    values = (tf.function(build)() if in_function else build()).numpy().tolist()
    assert values == [0, 0, 0, 1, 1, 2]
