"""Pure-Python model of the deterministic order of ``parallel_interleave``.

Implements SPEC section 2 on plain lists: each input element is represented by
the list of elements its nested dataset yields.  Elements are opaque, so an
error delivered at some position can be modelled as a marker object in a list.
"""

from __future__ import annotations

import collections
from typing import Deque, Iterator, List, Optional, Sequence, TypeVar

T = TypeVar("T")

_END = object()


def interleave_order(
    nested: Sequence[Sequence[T]],
    cycle_length: int,
    block_length: int = 1,
    prefetch_input_elements: Optional[int] = None,
    buffer_output_elements: Optional[int] = None,
) -> List[T]:
    """Returns the deterministic output order of ``parallel_interleave``.

    ``nested[i]`` lists the elements of the dataset that ``map_func`` makes from
    input element ``i``.  ``buffer_output_elements`` is accepted (and checked)
    for signature parity but never changes the order.

    >>> interleave_order([range(10 * x, 11 * x) for x in range(5)], 2, 2)
    [10, 20, 21, 30, 31, 32, 40, 41, 42, 43]
    """
    if prefetch_input_elements is None:
        prefetch_input_elements = 2 * cycle_length
    if buffer_output_elements is None:
        buffer_output_elements = 2 * block_length
    if cycle_length <= 0 or block_length <= 0 or buffer_output_elements <= 0:
        raise ValueError("cycle_length, block_length and buffer_output_elements must be > 0")
    if prefetch_input_elements < 0:
        raise ValueError("prefetch_input_elements must be >= 0")
    return list(_generate(nested, cycle_length, block_length, prefetch_input_elements))


def _generate(
    nested: Sequence[Sequence[T]],
    cycle_length: int,
    block_length: int,
    prefetch_input_elements: int,
) -> Iterator[T]:
    """Yields elements in order; each slot is a deque of its remaining elements."""
    inputs = iter(nested)
    opened: List[Deque[T]] = []
    for element in inputs:
        opened.append(collections.deque(element))
        if len(opened) == cycle_length + prefetch_input_elements:
            break
    cycle: List[Optional[Deque[T]]] = list(opened[:cycle_length])
    staging: Deque[Deque[T]] = collections.deque(opened[cycle_length:])
    next_index = 0
    block_count = 0
    while True:
        rescan = False
        for offset in range(len(cycle)):
            index = (next_index + offset) % len(cycle)
            slot = cycle[index]
            if slot is None:
                continue
            if slot:
                next_index = index
                block_count += 1
                if block_count == block_length:
                    next_index = (index + 1) % len(cycle)
                    block_count = 0
                yield slot.popleft()
                rescan = True
                break
            # The slot's nested dataset is exhausted: refill it if possible.
            cycle[index] = None
            fresh = next(inputs, _END)
            if fresh is not _END:
                staging.append(collections.deque(fresh))  # type: ignore[arg-type]
            if staging:
                cycle[index] = staging.popleft()
                next_index = (index + 1) % len(cycle)
                block_count = 0
                rescan = True
                break
            # Nothing left to open: keep scanning, block_count unchanged.
        if not rescan:
            return
