"""The reference model itself: hand-worked cases, and agreement with the built-in op."""

from __future__ import annotations

import doctest
from typing import List

import pytest

import reference_model
from pipelines import Case, builtin_matches, nested_values, random_cases
from reference_model import interleave_order

pytestmark = pytest.mark.usefixtures("hang_guard")

# (nested element lists, cycle_length, block_length, prefetch_input_elements, expected order)
HAND_WORKED = [
    pytest.param([[10 * x + k for k in range(x)] for x in range(5)], 2, 2, None,
                 [10, 20, 21, 30, 31, 32, 40, 41, 42, 43], id="spec-example"),
    pytest.param([[1, 2], [3], [4, 5]], 1, 3, 0, [1, 2, 3, 4, 5], id="cycle-1-concatenates"),
    pytest.param([["a0", "a1"], ["b0", "b1"]], 2, 1, 0, ["a0", "b0", "a1", "b1"], id="round-robin"),
    pytest.param([[1, 2, 3], [4]], 3, 1, 0, [1, 4, 2, 3], id="input-shorter-than-cycle"),
    pytest.param([], 3, 2, 1, [], id="empty-input"),
    pytest.param([[], [], []], 2, 1, 0, [], id="all-nested-empty"),
    # Refilling a slot moves next_index past it: the new slot waits a full turn.
    pytest.param([["a0"], ["b0", "b1", "b2"], ["c0", "c1"]], 2, 1, 1,
                 ["a0", "b0", "b1", "c0", "b2", "c1"], id="refill-skips-new-slot"),
    # A slot ends with nothing to open: the next slot completes the current block.
    pytest.param([["a0", "a1", "a2", "a3"], ["b0"], ["c0", "c1", "c2", "c3"]], 3, 2, 0,
                 ["a0", "a1", "b0", "c0", "a2", "a3", "c1", "c2", "c3"], id="block-completed-by-next-slot"),
]


def test_docstring_examples() -> None:
    results = doctest.testmod(reference_model)
    assert results.attempted >= 1 and results.failed == 0


@pytest.mark.parametrize("nested, cycle_length, block_length, prefetch, expected", HAND_WORKED)
def test_hand_worked(nested: List[list], cycle_length: int, block_length: int, prefetch: int,
                     expected: list) -> None:
    assert interleave_order(nested, cycle_length, block_length, prefetch) == expected


@pytest.mark.parametrize("cycle_length, block_length, buffer_output_elements, prefetch", [
    (0, 1, 1, 0), (1, 0, 1, 0), (1, 1, 0, 0), (1, 1, 1, -1)])
def test_rejects_invalid_arguments(cycle_length: int, block_length: int, buffer_output_elements: int,
                                   prefetch: int) -> None:
    with pytest.raises(ValueError):
        interleave_order([[1]], cycle_length, block_length, prefetch, buffer_output_elements)


def test_buffer_size_does_not_change_order() -> None:
    nested = nested_values([3, 0, 5, 2, 4, 1])
    orders = {tuple(interleave_order(nested, 3, 2, 1, buffer)) for buffer in (None, 1, 2, 7)}
    assert len(orders) == 1


# Cases that the built-in op (the oracle) must agree with.
ORACLE_CASES = random_cases(seed=7001, count=120) + [
    Case(sizes=(0, 1, 2, 3, 4), cycle_length=2, block_length=2, prefetch_input_elements=None,
         buffer_output_elements=None),
    Case(sizes=(4, 1, 4), cycle_length=3, block_length=2, prefetch_input_elements=0, buffer_output_elements=2),
    Case(sizes=(5, 2, 4, 2), cycle_length=5, block_length=3, prefetch_input_elements=1, buffer_output_elements=1),
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=str)
def test_model_agrees_with_builtin(case: Case) -> None:
    expected = case.expected()
    matched, observed = builtin_matches(case, expected)
    assert matched, f"model {expected} vs built-in runs {observed}"


@pytest.mark.parametrize("case", random_cases(seed=7002, count=50), ids=str)
def test_model_keeps_every_element_once(case: Case) -> None:
    nested = nested_values(case.sizes)
    order = case.expected()
    assert sorted(order) == sorted(value for values in nested for value in values)
    assert len(order) == sum(case.sizes)
