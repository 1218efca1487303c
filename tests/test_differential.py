"""Randomized differential tests: tf_interleave vs the reference model and the built-in op.

`TF_INTERLEAVE_RANDOM_CASES` sets how many seeded random cases run besides the edge cases
(default 300; the sanitizer run and the run against the Bazel-built library take fewer).
"""

from __future__ import annotations

import collections
import os
import types

import pytest
import tensorflow as tf

from pipelines import Case, builtin_matches, collect, is_subsequence, nested_values, random_cases, sized_input, \
    sized_map_func

pytestmark = pytest.mark.usefixtures("hang_guard")

EDGE_CASES = [
    Case(sizes=(), cycle_length=1, block_length=1, prefetch_input_elements=None, buffer_output_elements=None),
    Case(sizes=(), cycle_length=4, block_length=3, prefetch_input_elements=0, buffer_output_elements=1),
    Case(sizes=(0, 0, 0, 0), cycle_length=2, block_length=1, prefetch_input_elements=1, buffer_output_elements=1),
    Case(sizes=(3, 1), cycle_length=5, block_length=2, prefetch_input_elements=4, buffer_output_elements=3),
    Case(sizes=(6,), cycle_length=8, block_length=4, prefetch_input_elements=0, buffer_output_elements=1),
    Case(sizes=(2, 0, 3, 0, 1), cycle_length=1, block_length=1, prefetch_input_elements=0,
         buffer_output_elements=1),
    Case(sizes=(0, 1, 2, 3, 4), cycle_length=2, block_length=2, prefetch_input_elements=None,
         buffer_output_elements=None, tensor_args=True),
    Case(sizes=(5, 2, 4, 2), cycle_length=5, block_length=3, prefetch_input_elements=1, buffer_output_elements=1),
    Case(sizes=(6, 6, 6, 6, 6, 6), cycle_length=3, block_length=4, prefetch_input_elements=0,
         buffer_output_elements=1, tensor_args=True),
]


def _random_case_count() -> int:
    text = os.environ.get("TF_INTERLEAVE_RANDOM_CASES", "300")
    if not text.isdigit():
        raise ValueError(f"TF_INTERLEAVE_RANDOM_CASES must be a whole number >= 0, not {text!r}")
    return int(text)


CASES = EDGE_CASES + random_cases(seed=20251124, count=_random_case_count())


def _interleaved(tfi: types.ModuleType, case: Case, sloppy: bool) -> tf.data.Dataset:
    return sized_input(case.sizes).apply(
        tfi.parallel_interleave(sized_map_func(case.sizes), **case.interleave_kwargs(sloppy=sloppy)))


def test_spec_example(tfi: types.ModuleType) -> None:
    dataset = tf.data.Dataset.range(5).apply(
        tfi.parallel_interleave(lambda x: tf.data.Dataset.range(10 * x, 11 * x), cycle_length=2, block_length=2))
    assert collect(dataset) == [10, 20, 21, 30, 31, 32, 40, 41, 42, 43]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_deterministic_order_equals_model_every_run(tfi: types.ModuleType, case: Case) -> None:
    expected = case.expected()
    dataset = _interleaved(tfi, case, sloppy=False)
    runs = [collect(dataset) for _ in range(3)]
    for run in runs:
        assert run == expected


@pytest.mark.parametrize("case", CASES, ids=str)
def test_builtin_accepts_model_order(case: Case) -> None:
    expected = case.expected()
    matched, observed = builtin_matches(case, expected)
    assert matched, f"model {expected} vs built-in runs {observed}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_sloppy_yields_same_multiset(tfi: types.ModuleType, case: Case) -> None:
    order = collect(_interleaved(tfi, case, sloppy=True))
    assert collections.Counter(order) == collections.Counter(case.expected())
    for values in nested_values(case.sizes):
        assert is_subsequence(values, order), f"{values} out of order in {order}"
