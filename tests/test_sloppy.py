"""Sloppy mode really skips stragglers; deterministic mode keeps the exact order."""

from __future__ import annotations

import collections
import types
from typing import List, NamedTuple, Optional, Tuple

import pytest
import tensorflow as tf

from pipelines import Straggler, drain_holding_straggler, drain_with_late_straggler, is_subsequence, \
    nested_values, sized_input, sized_map_func, SLOPPY_MODES
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")


class Setup(NamedTuple):
    """Nested sizes, the slow input's index, and the interleave parameters."""

    sizes: Tuple[int, ...]
    straggler: int
    cycle_length: int
    prefetch_input_elements: Optional[int] = None

    def fast_elements(self) -> List[int]:
        return [value for index, values in enumerate(nested_values(self.sizes)) if index != self.straggler
                for value in values]

    def expected(self, block_length: int) -> List[int]:
        return interleave_order(nested_values(self.sizes), self.cycle_length, block_length,
                                self.prefetch_input_elements)


SETUPS = [
    pytest.param(Setup((3, 3, 3), straggler=0, cycle_length=3), id="first-slot-slow"),
    pytest.param(Setup((2, 4, 3, 4), straggler=1, cycle_length=4), id="middle-slot-slow"),
    # The other slot is refilled from staging four times while the straggler holds its slot.
    pytest.param(Setup((2,) * 6, straggler=0, cycle_length=2, prefetch_input_elements=2), id="refills-around"),
    # The straggler enters the cycle from staging.
    pytest.param(Setup((2, 2, 3, 2), straggler=2, cycle_length=2, prefetch_input_elements=2), id="staged-slow"),
]


def _dataset(tfi: types.ModuleType, setup: Setup, straggler: Straggler, block_length: int,
             sloppy: bool) -> tf.data.Dataset:
    return sized_input(setup.sizes).apply(tfi.parallel_interleave(
        straggler.map_func(setup.sizes, setup.straggler), setup.cycle_length, block_length, sloppy=sloppy,
        prefetch_input_elements=setup.prefetch_input_elements))


@pytest.mark.parametrize("block_length", [1, 2, 3])
@pytest.mark.parametrize("setup", SETUPS)
def test_sloppy_yields_fast_elements_before_straggler(tfi: types.ModuleType, setup: Setup,
                                                      block_length: int) -> None:
    straggler = Straggler()
    fast = setup.fast_elements()
    before, after = drain_holding_straggler(_dataset(tfi, setup, straggler, block_length, sloppy=True), straggler,
                                            held_steps=len(fast))
    assert not straggler.timed_out, "sloppy mode waited for the straggler"
    assert sorted(before) == sorted(fast)
    assert after == nested_values(setup.sizes)[setup.straggler]
    for values in nested_values(setup.sizes):
        assert is_subsequence(values, before + after)


@pytest.mark.parametrize("block_length", [1, 2, 3])
@pytest.mark.parametrize("setup", SETUPS)
def test_deterministic_waits_for_straggler(tfi: types.ModuleType, setup: Setup, block_length: int) -> None:
    straggler = Straggler()
    order = drain_with_late_straggler(_dataset(tfi, setup, straggler, block_length, sloppy=False), straggler)
    assert order == setup.expected(block_length)


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_nothing_lost_when_straggler_released_early(tfi: types.ModuleType, sloppy: bool) -> None:
    setup = Setup((4, 1, 3, 0, 2, 5), straggler=2, cycle_length=3, prefetch_input_elements=1)
    straggler = Straggler()
    straggler.release()
    order = drain_with_late_straggler(_dataset(tfi, setup, straggler, 2, sloppy=sloppy), straggler)
    assert collections.Counter(order) == collections.Counter(setup.expected(2))
    if not sloppy:
        assert order == setup.expected(2)


def test_sloppy_slow_input_does_not_stall_ready_elements(tfi: types.ModuleType) -> None:
    """SPEC section 3: a slow input element must not stall consumers of ready elements."""
    sizes = (1, 5, 2)
    straggler = Straggler()
    dataset = straggler.input(sizes, held_index=2).apply(
        tfi.parallel_interleave(sized_map_func(sizes), cycle_length=2, sloppy=True, prefetch_input_elements=0))
    before, after = drain_holding_straggler(dataset, straggler, held_steps=6)
    assert not straggler.timed_out, "sloppy mode stalled behind the slow input element"
    assert sorted(before) == [0, 1000, 1001, 1002, 1003, 1004]
    assert after == [2000, 2001]


def test_sloppy_slow_map_func_does_not_stall_ready_elements(tfi: types.ModuleType) -> None:
    """SPEC section 3: a slow map_func call must not stall consumers of ready elements."""
    sizes = (2, 3, 2)
    straggler = Straggler()
    base_map_func = sized_map_func(sizes)

    def slow_map_func(index: tf.Tensor) -> tf.data.Dataset:
        return base_map_func(straggler.gate(index, tf.equal(index, 0)))

    dataset = sized_input(sizes).apply(tfi.parallel_interleave(slow_map_func, cycle_length=3, sloppy=True))
    before, after = drain_holding_straggler(dataset, straggler, held_steps=5)
    assert not straggler.timed_out, "sloppy mode stalled behind the slow map_func call"
    assert sorted(before) == [1000, 1001, 1002, 2000, 2001]
    assert after == [0, 1]
