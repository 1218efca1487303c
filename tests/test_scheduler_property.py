"""Property tests of the C++ ``InterleaveScheduler`` against the reference model.

The scheduler is built into a small pybind11 module (``cc/python/scheduler_binding.cc``)
for this session and driven through a simulated pool: seats that pull input elements in
order, fill bounded buffers and wait until the scheduler releases their source, and a
consumer that follows the scheduler's decisions and, when told to wait, sleeps until an
event it waits for (the protocol of ``cc/kernels/source_pool*.cc``).  Hypothesis chooses
the case (nested sizes and arguments) and a tape of choices that decides which event
happens when, so every run is one interleaving of workers and consumer.

Deterministic mode: every emission is checked, as it happens, against the next element
of ``reference_model.interleave_order`` (whatever the timing, the order is the model's).
Sloppy mode: the scheduler emits only ready sources, waits only when no source in the
cycle is ready, and every element comes out once, in order within its source, whatever
costs the simulated pool reports for staged sources (which let stragglers in early).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import pathlib
import random
import shutil
import subprocess
import sys
import sysconfig
import types
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_model import interleave_order
from pipelines import SLOPPY_MODES

ROOT = pathlib.Path(__file__).resolve().parents[1]
BINDING_SOURCE = ROOT / "cc" / "python" / "scheduler_binding.cc"

Element = Tuple[int, int]  # (source, index within the source)


def _scheduler_sources() -> List[pathlib.Path]:
    scope: Dict[str, object] = {}
    exec((ROOT / "cc" / "sources.bzl").read_text(), scope)
    return [ROOT / path for path in scope["SCHEDULER_SRCS"]]  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def binding(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    """The scheduler as a Python module, compiled for this session."""
    import pybind11

    compiler = shutil.which("g++") or shutil.which("c++")
    assert compiler, "a C++ compiler (g++) is needed to build the scheduler binding"
    out_dir = tmp_path_factory.mktemp("scheduler_binding")
    target = out_dir / ("scheduler_binding" + sysconfig.get_config_var("EXT_SUFFIX"))
    command = [
        compiler, "-O1", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
        f"-I{ROOT}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
        str(BINDING_SOURCE), *map(str, _scheduler_sources()), "-o", str(target),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"building the binding failed:\n{' '.join(command)}\n{result.stderr}"
    spec = importlib.util.spec_from_file_location("scheduler_binding", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# The simulated pool.


@dataclasses.dataclass(frozen=True)
class Case:
    sizes: Tuple[int, ...]
    cycle_length: int
    block_length: int
    buffer_output_elements: int
    prefetch_input_elements: int
    sloppy: bool

    def nested(self) -> List[List[Element]]:
        return [[(source, index) for index in range(size)] for source, size in enumerate(self.sizes)]

    def expected(self) -> List[Element]:
        return interleave_order(self.nested(), self.cycle_length, self.block_length,
                                self.prefetch_input_elements, self.buffer_output_elements)


class Tape:
    """The choices of one run: drawn by Hypothesis (so that it can shrink them), then,
    once they run out, from a generator seeded by Hypothesis."""

    def __init__(self, choices: Sequence[int], seed: int) -> None:
        self._choices = list(choices)
        self._next = 0
        self._seed = seed
        self._random = random.Random(seed)

    def choose(self, count: int) -> int:
        if self._next >= len(self._choices):
            return self._random.randrange(count)
        choice = self._choices[self._next] % count
        self._next += 1
        return choice

    def __repr__(self) -> str:
        return f"Tape({self._choices!r}, seed={self._seed})"


class Simulation:
    """One run of the scheduler in a simulated pool; `run` returns the emitted elements."""

    MAX_STEPS = 20000

    def __init__(self, binding: types.ModuleType, case: Case, tape: Tape) -> None:
        self.binding = binding
        self.case = case
        self.tape = tape
        self.scheduler = binding.InterleaveScheduler(case.cycle_length, case.block_length, case.sloppy)
        count = len(case.sizes)
        self.opened = 0
        self.input_ended = False
        self.produced = [0] * count
        self.buffers: List[collections.deque] = [collections.deque() for _ in range(count)]
        self.ended = [False] * count
        self.released = [False] * count
        self.out: List[Element] = []
        self.expected = None if case.sloppy else case.expected()
        self.decisions: List[Tuple[str, int]] = []

    # -- the world --------------------------------------------------------

    def state_of(self, source: int) -> str:
        assert 0 <= source < self.opened, f"asked about unopened source {source}"
        assert not self.released[source], f"asked about released source {source}"
        if self.buffers[source]:
            return "ready"
        return "finished" if self.ended[source] else "pending"

    def enabled_events(self) -> List[Tuple[str, int]]:
        held = sum(1 for source in range(self.opened) if not self.released[source])
        free_seat = held < self.case.cycle_length + self.case.prefetch_input_elements
        events = []
        if free_seat and self.opened < len(self.case.sizes):
            events.append(("open", -1))
        if free_seat and self.opened == len(self.case.sizes) and not self.input_ended:
            events.append(("end_input", -1))
        for source in range(self.opened):
            if self.ended[source]:
                continue
            if self.produced[source] < self.case.sizes[source]:
                if len(self.buffers[source]) < self.case.buffer_output_elements:
                    events.append(("produce", source))
            else:
                events.append(("finish", source))
        return events

    def apply(self, event: Tuple[str, int]) -> None:
        kind, source = event
        if kind == "open":
            self.opened += 1
            self.scheduler.on_input_opened()
        elif kind == "end_input":
            self.input_ended = True
            self.scheduler.on_input_ended()
        elif kind == "produce":
            self.buffers[source].append((source, self.produced[source]))
            self.produced[source] += 1
        else:
            self.ended[source] = True

    @staticmethod
    def wakes(decision: Tuple[str, int], event: Tuple[str, int]) -> bool:
        """Whether the pool's consumer, waiting after `decision`, is woken by `event`."""
        kind, source = decision
        input_event = event[0] in ("open", "end_input")
        if kind == "wait_for_source":
            return not input_event and event[1] == source
        if kind == "wait_for_input":
            return input_event
        return True

    # -- the consumer -----------------------------------------------------

    def round_trip_state(self) -> None:
        state = self.scheduler.state()
        copy = self.binding.InterleaveScheduler(self.case.cycle_length, self.case.block_length,
                                                self.case.sloppy)
        problem = copy.restore(state)
        assert problem == "", f"a reachable state was rejected ({problem}): {state}"
        assert copy.state() == state
        self.scheduler = copy

    def staged_cost(self, source: int) -> int:
        """A staged source's cost per element, as the pool's measurements would
        give it: any value, and not the same from one call to the next."""
        state = self.scheduler.state()
        assert self.case.sloppy, "deterministic mode asked for a cost"
        assert state["next_source"] <= source < self.opened and not self.released[source], \
            f"asked for the cost of source {source}, which is not staged: {state}"
        assert source not in state["cycle"], f"asked for the cost of source {source} in the cycle"
        return self.tape.choose(100) if self.tape.choose(4) == 0 else 0

    def staged_sources(self) -> List[int]:
        """Sources opened and not yet in the cycle, gone or released."""
        state = self.scheduler.state()
        return [source for source in range(state["next_source"], state["inputs_known"])
                if source not in state["promoted"]]

    def consult_staging(self, decision: Tuple[str, int]) -> Tuple[str, int]:
        """What the pool does when the cycle has nothing ready: ask staging.

        Deterministic mode must not move; `decision` stands then.
        """
        state_before = self.scheduler.state()
        staged = self.staged_sources()
        kind, source, released = self.scheduler.next_from_staging(self.state_of)
        self.decisions.append(("staging " + kind, source))
        if not self.case.sloppy:
            assert (kind, source, released) == ("wait_for_any", -1, [])
            assert self.scheduler.state() == state_before
            return decision
        for gone in released:
            assert gone in staged, f"released source {gone}, which is not staged"
            assert not self.released[gone], f"source {gone} released twice"
            assert self.state_of(gone) == "finished", f"released unfinished source {gone}"
            self.released[gone] = True
        state = self.scheduler.state()
        assert state["cycle"] == state_before["cycle"], "staging changed the cycle"
        assert not set(self.staged_sources()) & set(released)
        if kind == "emit":
            assert source in staged and source not in state["cycle"], \
                f"emitted source {source}, which is not staged: {state}"
            assert self.buffers[source], f"emitted source {source} has nothing buffered"
            # The first ready one in input order.
            assert not [s for s in staged if s < source and self.buffers[s]]
            self.out.append(self.buffers[source].popleft())
        else:
            assert kind == "wait_for_any", kind
            ready = [s for s in self.staged_sources() if self.buffers[s]]
            assert not ready, f"waits while staged sources {ready} are ready"
        return kind, source

    def consult(self) -> Tuple[str, int]:
        skips_before = self.scheduler.state()["sloppy_skips"]
        kind, source, released = self.scheduler.next(self.state_of, self.staged_cost)
        self.decisions.append((kind, source))
        for gone in released:
            assert not self.released[gone], f"source {gone} released twice"
            assert self.state_of(gone) == "finished", f"released unfinished source {gone}"
            self.released[gone] = True
        state = self.scheduler.state()
        live = self.scheduler.live_sources()
        skips = state["sloppy_skips"]
        if self.case.sloppy:
            assert skips - skips_before in ((0, 1) if kind == "emit" else (0,))
            assert not (self.binding.AWAITING_SLOT in state["cycle"]
                        and state["next_source"] < state["inputs_known"]), \
                f"an awaiting slot while a source is staged: {state}"
        else:
            assert skips == 0
        if kind == "emit":
            assert self.buffers[source], f"emitted source {source} has nothing buffered"
            element = self.buffers[source].popleft()
            if self.expected is not None:
                position = len(self.out)
                assert position < len(self.expected) and element == self.expected[position], (
                    f"emission {position} is {element}, the model's is "
                    f"{self.expected[position] if position < len(self.expected) else 'the end'}")
            self.out.append(element)
        elif kind == "wait_for_source":
            assert not self.case.sloppy, "sloppy mode waited for one source"
            assert self.state_of(source) == "pending"
            position = len(self.out)
            next_is_it = position < len(self.expected) and self.expected[position][0] == source
            exhausted = self.produced[source] == self.case.sizes[source]
            assert next_is_it or exhausted, f"waits for source {source}, not the model's next"
        elif kind == "wait_for_input":
            assert not self.case.sloppy, "sloppy mode waited for the input"
            assert not self.input_ended, "waits for an input that has ended"
            needs_input = ((not state["started"] and state["inputs_known"] < self.case.cycle_length)
                           or self.binding.AWAITING_SLOT in state["cycle"])
            assert needs_input, f"waits for the input without needing it: {state}"
        elif kind == "wait_for_any":
            assert self.case.sloppy, "deterministic mode waited for any source"
            busy = [s for s in live if self.state_of(s) != "pending"]
            assert not busy, f"sloppy mode waits while sources {busy} can go on"
        else:
            assert kind == "end_of_sequence", kind
            assert self.input_ended
        return kind, source

    def run(self, steps: Optional[int] = None) -> List[Element]:
        """Runs to the end, or only `steps` steps (then without the end's checks)."""
        awake = True
        decision = ("emit", -1)
        for _ in range(self.MAX_STEPS if steps is None else steps):
            events = self.enabled_events()
            assert awake or events, (
                f"stalled: the consumer waits ({decision}) and nothing can happen; "
                f"{self.scheduler.state()}")
            if not awake and self.tape.choose(16) == 15:
                awake = True  # A spurious wake-up.
            if awake and (not events or self.tape.choose(3) != 2):
                if self.tape.choose(8) == 7:
                    self.round_trip_state()
                decision = self.consult()
                if decision[0] in ("wait_for_any", "wait_for_source") and self.tape.choose(4) != 0:
                    decision = self.consult_staging(decision)
                if decision[0] == "end_of_sequence":
                    break
                awake = decision[0] == "emit"
                continue
            event = events[self.tape.choose(len(events))]
            self.apply(event)
            if not awake:
                awake = self.wakes(decision, event)
        else:
            if steps is not None:
                return self.out
            pytest.fail(f"no end after {self.MAX_STEPS} steps; decisions {self.decisions[-20:]}")
        # After the end: the end again, nothing more released.
        assert self.scheduler.next(self.state_of) == ("end_of_sequence", -1, [])
        assert all(self.released), f"sources never released: {self.released}"
        return self.out


# ---------------------------------------------------------------------------
# Strategies.


def cases(sloppy: Optional[bool] = None, max_inputs: int = 10, max_size: int = 6) -> st.SearchStrategy:
    return st.builds(
        Case,
        sizes=st.lists(st.integers(0, max_size), max_size=max_inputs).map(tuple),
        cycle_length=st.integers(1, 5),
        block_length=st.integers(1, 4),
        buffer_output_elements=st.integers(1, 3),
        prefetch_input_elements=st.integers(0, 3),
        sloppy=st.booleans() if sloppy is None else st.just(sloppy),
    )


tapes = st.builds(Tape, st.lists(st.integers(0, 2**16 - 1), max_size=200), st.integers(0, 2**32 - 1))

PROPERTY_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------
# Tests.


@settings(PROPERTY_SETTINGS, max_examples=1500)
@given(case=cases(sloppy=False), tape=tapes)
def test_deterministic_order_is_the_models_whatever_the_timing(binding, case: Case, tape: Tape) -> None:
    out = Simulation(binding, case, tape).run()
    assert out == case.expected()


@settings(PROPERTY_SETTINGS, max_examples=1200)
@given(case=cases(sloppy=True), tape=tapes)
def test_sloppy_delivers_every_element_once(binding, case: Case, tape: Tape) -> None:
    out = Simulation(binding, case, tape).run()
    assert sorted(out) == sorted(element for nested in case.nested() for element in nested)
    # Within a source, elements keep their order.
    for source, size in enumerate(case.sizes):
        assert [index for s, index in out if s == source] == list(range(size))


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(case=cases(), wait_first=st.booleans())
def test_order_is_the_models_when_nothing_waits(binding, case: Case, wait_first: bool) -> None:
    """Every input known and every element buffered before the first decision: sloppy
    mode has nothing to skip, so both modes give the model's order."""
    scheduler = binding.InterleaveScheduler(case.cycle_length, case.block_length, case.sloppy)
    if wait_first:
        # Deciding before anything is known changes nothing.
        kind, _, released = scheduler.next(lambda source: pytest.fail(f"asked about {source}"))
        assert kind == ("wait_for_any" if case.sloppy else "wait_for_input") and released == []
    buffers = [collections.deque(elements) for elements in case.nested()]
    for _ in buffers:
        scheduler.on_input_opened()
    scheduler.on_input_ended()
    out = []
    while True:
        kind, source, _ = scheduler.next(lambda s: "ready" if buffers[s] else "finished")
        if kind == "end_of_sequence":
            break
        assert kind == "emit", kind
        out.append(buffers[source].popleft())
    assert out == case.expected()
    assert scheduler.state()["sloppy_skips"] == 0


@settings(PROPERTY_SETTINGS, max_examples=200)
@given(case=cases(), tape=tapes, data=st.data())
def test_restore_rejects_a_corrupted_state(binding, case: Case, tape: Tape, data: st.DataObject) -> None:
    """A reachable state with one field made inconsistent is rejected and changes nothing."""
    simulation = Simulation(binding, case, tape)
    # Run part of the way, then corrupt the state of the moment.
    simulation.run(steps=data.draw(st.integers(0, 30), label="steps"))
    good = simulation.scheduler.state()
    corruptions = {
        "block_count": dict(good, block_count=case.block_length),
        "negative block_count": dict(good, block_count=-1),
        "next_source": dict(good, next_source=good["inputs_known"] + 1),
        "inputs_known": dict(good, inputs_known=-1),
        "slot value": dict(good, started=True, cycle=list(good["cycle"]) + [-7]),
        "cycle length": dict(good, started=True, cycle=[binding.EMPTY_SLOT] * (case.cycle_length + 1)),
        "promoted at next_source": dict(good, promoted=[good["next_source"]]),
        "negative promotions": dict(good, promotions=-1),
    }
    if good["cycle"]:
        corruptions["next_index"] = dict(good, next_index=len(good["cycle"]))
    if any(slot >= 0 for slot in good["cycle"]):
        live = [slot for slot in good["cycle"] if slot >= 0]
        corruptions["unopened source"] = dict(
            good, cycle=[good["next_source"] if slot == live[0] else slot for slot in good["cycle"]])
    name = data.draw(st.sampled_from(sorted(corruptions)), label="corruption")
    fresh = binding.InterleaveScheduler(case.cycle_length, case.block_length, case.sloppy)
    before = fresh.state()
    assert fresh.restore(corruptions[name]) != "", f"accepted a bad {name}: {corruptions[name]}"
    assert fresh.state() == before
    assert fresh.restore(good) == ""
    assert fresh.state() == good


@pytest.mark.parametrize("sloppy", SLOPPY_MODES)
def test_binding_reports_states(binding, sloppy: bool) -> None:
    scheduler = binding.InterleaveScheduler(2, 2, sloppy)
    assert (scheduler.cycle_length, scheduler.block_length, scheduler.sloppy) == (2, 2, sloppy)
    for _ in range(3):
        scheduler.on_input_opened()
    assert scheduler.next(lambda source: "ready") == ("emit", 0, [])
    assert scheduler.next(lambda source: "finished" if source == 0 else "ready") == ("emit", 1, [0])
    state = scheduler.state()
    assert state["cycle"] == [2, 1] and state["next_source"] == 3 and state["inputs_known"] == 3
    with pytest.raises(ValueError, match="source state"):
        scheduler.next(lambda source: "maybe")
    with pytest.raises(KeyError):
        scheduler.restore({"started": True})
    with pytest.raises(ValueError):
        binding.InterleaveScheduler(0, 1, sloppy)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
