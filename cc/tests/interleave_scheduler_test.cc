// Unit tests of InterleaveScheduler: every transition of SPEC section 2, the
// sloppy rule of section 3, State/Restore, and a randomized comparison with
// a direct model of the order in a simulated world of workers and buffers.
#include "cc/kernels/interleave_scheduler.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cc/tests/scheduler_test_util.h"
#include "cc/tests/test_main.h"

namespace tf_interleave {
namespace {

using Decision = InterleaveScheduler::Decision;
using Kind = Decision::Kind;
using State = InterleaveScheduler::State;
constexpr int64_t kEmpty = InterleaveScheduler::kEmptySlot;
constexpr int64_t kAwaiting = InterleaveScheduler::kAwaitingSlot;
constexpr SourceState kReady = SourceState::kReady;
constexpr SourceState kPending = SourceState::kPending;
constexpr SourceState kFinished = SourceState::kFinished;

// A scheduler and source states set by hand. Checks the scheduler's side of
// the contract on every call: it asks only about known, unreleased sources
// and releases only finished sources, each once.
class Harness {
 public:
  Harness(int64_t cycle_length, int64_t block_length, bool sloppy)
      : scheduler_(cycle_length, block_length, sloppy) {}

  InterleaveScheduler& scheduler() { return scheduler_; }
  const State& state() const { return scheduler_.state(); }

  // Opens the next input; its source starts in `state`. Returns its id.
  int64_t Open(SourceState state = kReady) {
    const int64_t source = scheduler_.state().inputs_known;
    scheduler_.OnInputOpened();
    states_[source] = state;
    return source;
  }
  void OpenMany(int64_t count, SourceState state = kReady) {
    for (int64_t i = 0; i < count; ++i) Open(state);
  }
  void End() { scheduler_.OnInputEnded(); }
  void Set(int64_t source, SourceState state) { states_.at(source) = state; }
  // A staged source's cost (0 unless set), asked in sloppy mode.
  void SetCost(int64_t source, int64_t cost) { costs_[source] = cost; }

  Decision Next() {
    last_released_.clear();
    asked_.clear();
    const Decision decision = scheduler_.Next(
        [this](int64_t source) { return Ask(source); }, &last_released_,
        [this](int64_t source) { return Cost(source); });
    CheckReleased();
    return decision;
  }

  // What the pool asks when `Next` said kWaitForAny (sloppy mode).
  Decision FromStaging() {
    last_released_.clear();
    asked_.clear();
    const Decision decision = scheduler_.NextFromStaging(
        [this](int64_t source) { return Ask(source); }, &last_released_);
    CheckReleased();
    return decision;
  }

  void ExpectEmit(int64_t source) {
    const Decision d = Next();
    CHECK_EQ(d.kind, Kind::kEmit) << " state " << state();
    CHECK_EQ(d.source, source) << " state " << state();
  }
  void ExpectWait(Kind kind, int64_t source = -1) {
    const Decision d = Next();
    CHECK_EQ(d.kind, kind) << " state " << state();
    if (kind == Kind::kWaitForSource) {
      CHECK_EQ(d.source, source);
    }
  }

  const std::vector<int64_t>& last_released() const { return last_released_; }
  const std::vector<int64_t>& asked() const { return asked_; }
  const std::set<int64_t>& released() const { return released_; }

 private:
  // Only finished sources are released, each once.
  void CheckReleased() {
    for (int64_t source : last_released_) {
      CHECK(states_.count(source) && states_[source] == kFinished)
          << "released source " << source << " is not finished";
      CHECK(released_.insert(source).second)
          << "source " << source << " released twice";
    }
  }

  SourceState Ask(int64_t source) {
    CHECK(source >= 0 && source < scheduler_.state().inputs_known)
        << "asked about unknown source " << source;
    CHECK(released_.count(source) == 0)
        << "asked about released source " << source;
    CHECK(std::find(last_released_.begin(), last_released_.end(), source) ==
          last_released_.end())
        << "asked about source " << source << " after releasing it";
    asked_.push_back(source);
    return states_.at(source);
  }
  int64_t Cost(int64_t source) {
    const State& state = scheduler_.state();
    CHECK(scheduler_.sloppy()) << "deterministic mode asked for a cost";
    CHECK(source >= state.next_source && source < state.inputs_known)
        << "asked for the cost of source " << source << ", not staged";
    CHECK(std::find(state.cycle.begin(), state.cycle.end(), source) ==
          state.cycle.end())
        << "asked for the cost of source " << source << " in the cycle";
    auto it = costs_.find(source);
    return it == costs_.end() ? 0 : it->second;
  }

  InterleaveScheduler scheduler_;
  std::map<int64_t, SourceState> states_;
  std::map<int64_t, int64_t> costs_;
  std::set<int64_t> released_;
  std::vector<int64_t> last_released_;
  std::vector<int64_t> asked_;
};

// Runs with every input known up front and every source always ready until
// drained (`sizes[k]` elements in source k). Returns the emitting sources.
std::vector<int64_t> RunAllReady(const std::vector<int64_t>& sizes,
                                 int64_t cycle_length, int64_t block_length,
                                 bool sloppy) {
  Harness h(cycle_length, block_length, sloppy);
  std::vector<int64_t> remaining = sizes;
  for (int64_t size : sizes) h.Open(size > 0 ? kReady : kFinished);
  h.End();
  std::vector<int64_t> order;
  while (true) {
    const Decision d = h.Next();
    if (d.kind == Kind::kEndOfSequence) break;
    CHECK_EQ(d.kind, Kind::kEmit) << " with every source ready";
    order.push_back(d.source);
    if (--remaining[d.source] == 0) h.Set(d.source, kFinished);
  }
  CHECK_EQ(h.released().size(), sizes.size());
  return order;
}

// ---------------------------------------------------------------------------
// Start.

TEST(DeterministicStartWaitsForCycleLengthInputs) {
  Harness h(3, 1, /*sloppy=*/false);
  h.ExpectWait(Kind::kWaitForInput);
  CHECK(!h.state().started);
  h.OpenMany(2);
  h.ExpectWait(Kind::kWaitForInput);
  CHECK(!h.state().started);
  CHECK(h.asked().empty()) << "asked about a source before starting";
  h.Open();
  h.ExpectEmit(0);
  CHECK(h.state().started);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, 1, 2}));
  CHECK_EQ(h.state().next_source, 3);
}

TEST(DeterministicStartLeavesExtraInputsStaged) {
  Harness h(2, 1, false);
  h.OpenMany(5);
  h.ExpectEmit(0);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, 1}));
  CHECK_EQ(h.state().next_source, 2);
  CHECK_EQ(h.state().inputs_known, 5);
}

TEST(InputShorterThanCycle) {
  Harness h(4, 1, false);
  h.OpenMany(2);
  h.ExpectWait(Kind::kWaitForInput);
  h.End();
  h.ExpectEmit(0);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, 1}));
  // The cycle's real length (2) drives the modulo.
  h.ExpectEmit(1);
  CHECK_EQ(h.state().next_index, 0);
  h.ExpectEmit(0);
  CHECK_EQ(RunAllReady({3, 1}, 3, 1, false),
           (std::vector<int64_t>{0, 1, 0, 0}));
}

TEST(EmptyInput) {
  for (bool sloppy : {false, true}) {
    Harness h(3, 2, sloppy);
    h.End();
    h.ExpectWait(Kind::kEndOfSequence);
    CHECK(h.asked().empty());
    CHECK(h.state().started);
    CHECK(h.state().cycle.empty());
    h.ExpectWait(Kind::kEndOfSequence);
  }
}

TEST(AllNestedEmpty) {
  for (bool sloppy : {false, true}) {
    Harness h(2, 1, sloppy);
    h.OpenMany(3, kFinished);
    h.End();
    h.ExpectWait(Kind::kEndOfSequence);
    CHECK_EQ(h.released().size(), 3u);
  }
}

TEST(SloppyStartsImmediately) {
  Harness h(3, 1, /*sloppy=*/true);
  h.ExpectWait(Kind::kWaitForAny);
  CHECK(h.state().started);
  // Slots are made as sources become known.
  CHECK(h.state().cycle.empty());
  h.Open();
  h.ExpectEmit(0);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0}));
  h.Set(0, kPending);
  // The cycle may still grow: wait for any change, not for the input alone.
  h.ExpectWait(Kind::kWaitForAny);
  h.OpenMany(2);
  h.ExpectEmit(1);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, 1, 2}));
  CHECK_EQ(h.state().next_source, 3);
}

TEST(SloppyFillsAwaitingSlotsWithoutMovingTheBlock) {
  Harness h(2, 2, true);
  h.Open();
  h.ExpectEmit(0);
  h.Open();
  // Source 1 takes slot 1 at once; slot 0 completes its block.
  h.ExpectEmit(0);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, 1}));
  CHECK_EQ(h.state().next_index, 1);
  CHECK_EQ(h.state().block_count, 0);
  h.ExpectEmit(1);
}

TEST(SloppyShortInputEmptiesTheRestOfTheCycle) {
  Harness h(3, 1, true);
  h.Open();
  h.End();
  h.ExpectEmit(0);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0}));
  h.Set(0, kFinished);
  h.ExpectWait(Kind::kEndOfSequence);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{kEmpty}));
}

TEST(SloppyCycleGrowsToCycleLengthAtMost) {
  // A cycle_length far beyond the input costs only the slots it fills.
  Harness huge(int64_t{1} << 62, 1, true);
  huge.OpenMany(3);
  huge.ExpectEmit(0);
  CHECK_EQ(huge.state().cycle, (std::vector<int64_t>{0, 1, 2}));
  huge.End();
  huge.ExpectEmit(1);
  huge.ExpectEmit(2);
  // Beyond cycle_length, sources stay staged.
  Harness two(2, 1, true);
  two.OpenMany(4);
  two.ExpectEmit(0);
  CHECK_EQ(two.state().cycle, (std::vector<int64_t>{0, 1}));
  CHECK_EQ(two.state().next_source, 2);
  // A slot that ends takes the front of staging (which joins at the end of
  // the round); no slot is added.
  two.Set(1, kFinished);
  two.ExpectEmit(0);
  CHECK_EQ(two.state().cycle, (std::vector<int64_t>{0, 2}));
  two.ExpectEmit(2);
}

// ---------------------------------------------------------------------------
// Blocks and the scan.

TEST(BlockCountingAcrossSlots) {
  Harness h(2, 2, false);
  h.OpenMany(2);
  h.ExpectEmit(0);
  CHECK_EQ(h.state().next_index, 0);
  CHECK_EQ(h.state().block_count, 1);
  h.ExpectEmit(0);
  CHECK_EQ(h.state().next_index, 1);
  CHECK_EQ(h.state().block_count, 0);
  h.ExpectEmit(1);
  CHECK_EQ(h.state().block_count, 1);
  h.ExpectEmit(1);
  CHECK_EQ(h.state().next_index, 0);
  h.ExpectEmit(0);
}

TEST(SpecExample) {
  // range(5), x -> range(10x, 11x), cycle_length=2, block_length=2 gives
  // 10, 20, 21, 30, 31, 32, 40, 41, 42, 43.
  CHECK_EQ(RunAllReady({0, 1, 2, 3, 4}, 2, 2, false),
           (std::vector<int64_t>{1, 2, 2, 3, 3, 3, 4, 4, 4, 4}));
}

TEST(HandWorkedOrders) {
  // The cases of tests/test_reference_model.py, as source sequences.
  CHECK_EQ(RunAllReady({2, 1, 2}, 1, 3, false),
           (std::vector<int64_t>{0, 0, 1, 2, 2}));
  CHECK_EQ(RunAllReady({2, 2}, 2, 1, false),
           (std::vector<int64_t>{0, 1, 0, 1}));
  CHECK_EQ(RunAllReady({1, 3, 2}, 2, 1, false),
           (std::vector<int64_t>{0, 1, 1, 2, 1, 2}));
  CHECK_EQ(RunAllReady({4, 1, 4}, 3, 2, false),
           (std::vector<int64_t>{0, 0, 1, 2, 0, 0, 2, 2, 2}));
}

TEST(FinishedSlotRefilledFromStaging) {
  Harness h(2, 2, false);
  h.OpenMany(3);
  h.ExpectEmit(0);  // block_count 1, next_index 0.
  h.Set(0, kFinished);
  // Source 0 ends mid-block: source 2 takes slot 0, the scan restarts at
  // slot 1 with a fresh block.
  h.ExpectEmit(1);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{0}));
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{2, 1}));
  CHECK_EQ(h.state().next_source, 3);
  CHECK_EQ(h.state().next_index, 1);
  CHECK_EQ(h.state().block_count, 1);
  h.ExpectEmit(1);
  h.ExpectEmit(2);
}

TEST(RefilledSlotWaitsAFullTurn) {
  // Slot 1 finishes while being the next slot: the new source in slot 1 is
  // visited only after the rest of the round (slot 0 here).
  Harness h(2, 1, false);
  h.OpenMany(3);
  h.ExpectEmit(0);
  h.Set(1, kFinished);
  h.ExpectEmit(0);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{1}));
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, 2}));
  h.ExpectEmit(2);
}

TEST(FinishedSlotWithNothingLeftKeepsTheBlock) {
  // The quirk: source 1 ends after one element of its block of 2 with no
  // input left; slot 1 empties and source 2 completes the block.
  Harness h(3, 2, false);
  h.OpenMany(3);
  h.End();
  h.ExpectEmit(0);
  h.ExpectEmit(0);
  h.ExpectEmit(1);
  CHECK_EQ(h.state().next_index, 1);
  CHECK_EQ(h.state().block_count, 1);
  h.Set(1, kFinished);
  h.ExpectEmit(2);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{1}));
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, kEmpty, 2}));
  CHECK_EQ(h.state().next_index, 0);
  CHECK_EQ(h.state().block_count, 0);
  h.ExpectEmit(0);
  h.ExpectEmit(0);
  // The empty slot is skipped without asking anything.
  h.ExpectEmit(2);
  CHECK(std::find(h.asked().begin(), h.asked().end(), 1) == h.asked().end());
}

TEST(SeveralFinishedSlotsInOneScan) {
  Harness h(3, 1, false);
  h.OpenMany(3);
  h.End();
  h.ExpectEmit(0);
  h.Set(1, kFinished);
  h.Set(2, kFinished);
  h.ExpectEmit(0);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{1, 2}));
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0, kEmpty, kEmpty}));
}

// ---------------------------------------------------------------------------
// Waiting.

TEST(DeterministicWaitsForPendingSource) {
  Harness h(3, 1, false);
  h.Open(kPending);
  h.OpenMany(2);
  h.ExpectWait(Kind::kWaitForSource, 0);
  // The others are ready, but the order waits; nothing changes.
  const State before = h.state();
  h.ExpectWait(Kind::kWaitForSource, 0);
  CHECK(SameState(h.state(), before)) << h.state();
  h.Set(0, kReady);
  h.ExpectEmit(0);
  h.ExpectEmit(1);
  h.Set(2, kPending);
  h.ExpectWait(Kind::kWaitForSource, 2);
  CHECK_EQ(h.state().sloppy_skips, 0);
}

TEST(DeterministicPendingSourceThatEnds) {
  // Waiting for a source that turns out to be finished: it is released and
  // the scan goes on as if it had been finished all along.
  Harness h(2, 1, false);
  h.Open(kPending);
  h.Open();
  h.End();
  h.ExpectWait(Kind::kWaitForSource, 0);
  h.Set(0, kFinished);
  h.ExpectEmit(1);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{0}));
}

TEST(SloppySkipsPendingSources) {
  Harness h(3, 1, /*sloppy=*/true);
  h.Open(kPending);
  h.Open(kPending);
  h.Open();
  h.ExpectEmit(2);
  CHECK_EQ(h.state().sloppy_skips, 1);
  CHECK_EQ(h.state().next_index, 0);
  h.Set(2, kPending);
  h.ExpectWait(Kind::kWaitForAny);
  CHECK_EQ(h.asked(), (std::vector<int64_t>{0, 1, 2}));
  CHECK_EQ(h.state().sloppy_skips, 1);
  h.Set(1, kReady);
  h.ExpectEmit(1);
  CHECK_EQ(h.state().sloppy_skips, 2);
  // A ready source at next_index is no skip.
  h.Set(2, kReady);
  h.ExpectEmit(2);
  CHECK_EQ(h.state().sloppy_skips, 2);
}

TEST(SloppyNeverWaitsForOneSource) {
  Harness h(2, 3, true);
  h.Open(kPending);
  h.Open(kPending);
  h.ExpectWait(Kind::kWaitForAny);
  h.Set(1, kReady);
  h.ExpectEmit(1);
}

TEST(WaitForInputWhenReplacementIsUnknown) {
  Harness h(2, 1, false);
  h.OpenMany(2);
  h.ExpectEmit(0);
  h.ExpectEmit(1);
  h.Set(0, kFinished);
  h.ExpectWait(Kind::kWaitForInput);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{0}));
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{kAwaiting, 1}));
  // Released sources are reported once, even while waiting.
  h.ExpectWait(Kind::kWaitForInput);
  CHECK(h.last_released().empty());
  h.Open();
  h.ExpectEmit(1);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{2, 1}));
  h.ExpectEmit(2);
}

TEST(WaitForInputResolvedByEndOfInput) {
  Harness h(2, 2, false);
  h.OpenMany(2);
  h.ExpectEmit(0);
  h.Set(0, kFinished);
  h.ExpectWait(Kind::kWaitForInput);
  h.End();
  // The slot empties; block_count (1) carries over to slot 1.
  h.ExpectEmit(1);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{kEmpty, 1}));
  CHECK_EQ(h.state().block_count, 0);
  CHECK_EQ(h.state().next_index, 0);
}

TEST(SloppyGoesOnWhileReplacementIsUnknown) {
  // Where deterministic mode waits for the input (see above), sloppy mode
  // emits from another slot.
  Harness h(2, 2, true);
  h.OpenMany(2);
  h.ExpectEmit(0);
  h.Set(0, kFinished);
  h.ExpectEmit(1);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{0}));
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{kAwaiting, 1}));
  h.Set(1, kPending);
  // The awaiting slot counts as live: wait for anything.
  h.ExpectWait(Kind::kWaitForAny);
  h.Open();
  h.ExpectEmit(2);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{2, 1}));
}

TEST(EndOfSequence) {
  for (bool sloppy : {false, true}) {
    Harness h(2, 1, sloppy);
    h.OpenMany(2);
    h.End();
    h.ExpectEmit(0);
    h.Set(0, kFinished);
    h.Set(1, kFinished);
    h.ExpectWait(Kind::kEndOfSequence);
    // The scan starts at slot 1 (block_length 1).
    CHECK_EQ(h.last_released(), (std::vector<int64_t>{1, 0}));
    h.ExpectWait(Kind::kEndOfSequence);
    CHECK(h.last_released().empty());
    CHECK(h.asked().empty());
  }
}

TEST(NoEndOfSequenceBeforeTheInputEnds) {
  for (bool sloppy : {false, true}) {
    Harness h(1, 1, sloppy);
    h.Open(kFinished);
    const Decision d = h.Next();
    CHECK(d.kind == Kind::kWaitForInput || d.kind == Kind::kWaitForAny)
        << d.kind;
    h.End();
    h.ExpectWait(Kind::kEndOfSequence);
  }
}

TEST(SloppyMatchesDeterministicWhenEverythingIsReady) {
  std::mt19937_64 random(11);
  for (int iteration = 0; iteration < 300; ++iteration) {
    std::vector<int64_t> sizes(random() % 8);
    for (int64_t& size : sizes) size = random() % 5;
    const int64_t cycle_length = 1 + random() % 4;
    const int64_t block_length = 1 + random() % 3;
    const std::vector<int64_t> expected =
        ModelOrder(sizes, cycle_length, block_length);
    CHECK_EQ(RunAllReady(sizes, cycle_length, block_length, false), expected);
    CHECK_EQ(RunAllReady(sizes, cycle_length, block_length, true), expected);
  }
}

// ---------------------------------------------------------------------------
// Sloppy: stragglers enter the cycle ahead of their turn.

TEST(SloppyPromotesAStragglerFromStaging) {
  Harness h(1, 1, /*sloppy=*/true);
  h.OpenMany(4);
  h.ExpectEmit(0);
  h.SetCost(1, 10);
  h.SetCost(3, 100);  // More than kPromotionRatio times the front's.
  h.Set(0, kFinished);
  h.ExpectEmit(3);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{3}));
  CHECK_EQ(h.state().promoted, (std::vector<int64_t>{3}));
  CHECK_EQ(h.state().next_source, 1);
  CHECK_EQ(h.state().promotions, 1);
  // Then staging goes on in input order, passing over the promoted source.
  h.Set(3, kFinished);
  h.ExpectEmit(1);
  CHECK_EQ(h.state().next_source, 2);
  h.Set(1, kFinished);
  h.ExpectEmit(2);
  CHECK_EQ(h.state().next_source, 4);
  CHECK(h.state().promoted.empty());
  h.End();
  h.Set(2, kFinished);
  h.ExpectWait(Kind::kEndOfSequence);
  CHECK_EQ(h.state().promotions, 1);
}

TEST(SloppyKeepsTheInputOrderUnlessMuchCostlier) {
  Harness h(1, 1, true);
  h.OpenMany(4);
  h.ExpectEmit(0);
  h.SetCost(1, 10);
  h.SetCost(2, 40);  // Exactly kPromotionRatio times: not enough.
  h.SetCost(3, 30);
  h.Set(0, kFinished);
  h.ExpectEmit(1);
  CHECK(h.state().promoted.empty());
  CHECK_EQ(h.state().promotions, 0);
}

TEST(SloppyPromotesTheCostliestAndTheEarliestOfEqualOnes) {
  Harness h(1, 1, true);
  h.OpenMany(5);
  h.ExpectEmit(0);
  h.SetCost(2, 50);
  h.SetCost(3, 70);
  h.SetCost(4, 70);
  h.Set(0, kFinished);
  h.ExpectEmit(3);
  h.Set(3, kFinished);
  h.ExpectEmit(4);
  CHECK_EQ(h.state().promoted, (std::vector<int64_t>{3, 4}));
  h.Set(4, kFinished);
  h.ExpectEmit(2);  // Costlier than the front, whose cost is unknown.
  // Released sources stay listed until staging's front passes them.
  CHECK_EQ(h.state().promoted, (std::vector<int64_t>{2, 3, 4}));
  CHECK_EQ(h.state().next_source, 1);
  h.Set(2, kFinished);
  h.ExpectEmit(1);
  // The front entered: every promoted source after it is passed over.
  CHECK_EQ(h.state().next_source, 5);
  CHECK(h.state().promoted.empty());
}

TEST(SloppyPromotionFillsAwaitingSlots) {
  // Slots awaiting a source take stragglers first too.
  Harness h(2, 1, true);
  h.Open();
  h.ExpectEmit(0);
  h.Set(0, kFinished);
  h.ExpectWait(Kind::kWaitForAny);
  h.OpenMany(2);
  h.SetCost(2, 100);
  // Slot 0 takes the straggler, a new slot 1 the front.
  h.ExpectEmit(2);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{2, 1}));
  CHECK_EQ(h.state().promotions, 1);
  CHECK(h.state().promoted.empty());
  CHECK_EQ(h.state().next_source, 3);
}

// ---------------------------------------------------------------------------
// Sloppy: staged sources give their elements while the cycle has none.

TEST(SloppyTakesTheFirstReadyStagedSourceWhenTheCycleWaits) {
  Harness h(1, 1, /*sloppy=*/true);
  h.OpenMany(4, kPending);
  h.ExpectWait(Kind::kWaitForAny);  // Source 0 fills the slot.
  Decision d = h.FromStaging();
  CHECK_EQ(d.kind, Kind::kWaitForAny);
  CHECK_EQ(h.asked(), (std::vector<int64_t>{1, 2, 3}));
  h.Set(3, kReady);
  h.Set(2, kReady);
  d = h.FromStaging();
  CHECK_EQ(d.kind, Kind::kEmit);
  CHECK_EQ(d.source, 2);  // Input order among the ready ones.
  // Staging and the cycle are as they were: the source only gave an element.
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{0}));
  CHECK_EQ(h.state().next_source, 1);
  CHECK(h.state().promoted.empty());
  CHECK_EQ(h.state().promotions, 0);
  // A ready source of the cycle still comes first, through `Next`.
  h.Set(0, kReady);
  h.ExpectEmit(0);
}

TEST(SloppyReleasesStagedSourcesThatEndedWhileStaged) {
  Harness h(1, 1, true);
  h.OpenMany(6, kPending);
  h.ExpectWait(Kind::kWaitForAny);
  h.Set(1, kFinished);
  h.Set(2, kFinished);
  h.Set(4, kFinished);
  h.Set(5, kReady);
  Decision d = h.FromStaging();
  CHECK_EQ(d.kind, Kind::kEmit);
  CHECK_EQ(d.source, 5);
  CHECK_EQ(h.last_released(), (std::vector<int64_t>{1, 2, 4}));
  // The front left (twice), and 4 left ahead of its turn.
  CHECK_EQ(h.state().next_source, 3);
  CHECK_EQ(h.state().promoted, (std::vector<int64_t>{4}));
  CHECK_EQ(h.state().promotions, 0);
  // The state is one that Restore accepts.
  InterleaveScheduler copy(1, 1, true);
  CHECK_EQ(copy.Restore(h.state()), "");
  // Staging goes on in input order, passing over what left.
  h.Set(5, kPending);
  h.Set(0, kFinished);
  h.ExpectWait(Kind::kWaitForAny);
  CHECK_EQ(h.state().cycle, (std::vector<int64_t>{3}));
  CHECK_EQ(h.state().next_source, 5);
  CHECK(h.state().promoted.empty());
  h.Set(3, kFinished);
  h.Set(5, kFinished);
  h.End();
  h.ExpectWait(Kind::kEndOfSequence);
  CHECK_EQ(h.released().size(), 6u);
}

TEST(DeterministicNeverTakesFromStaging) {
  Harness h(1, 1, /*sloppy=*/false);
  h.OpenMany(3);
  h.Set(0, kPending);
  h.Set(2, kFinished);
  h.ExpectWait(Kind::kWaitForSource, 0);
  const State before = h.state();
  const Decision d = h.FromStaging();
  CHECK_EQ(d.kind, Kind::kWaitForAny);
  CHECK(h.asked().empty());
  CHECK(h.last_released().empty());
  CHECK(SameState(h.state(), before));
}

TEST(DeterministicIgnoresCosts) {
  // The harness fails the test if a deterministic scheduler asks for one.
  Harness h(1, 1, /*sloppy=*/false);
  h.OpenMany(3);
  h.SetCost(2, 1000);
  h.ExpectEmit(0);
  h.Set(0, kFinished);
  h.ExpectEmit(1);
  CHECK(h.state().promoted.empty());
}

TEST(RestoreChecksPromotedSources) {
  State good;
  good.started = true;
  good.cycle = {0, 3};
  good.next_source = 1;
  good.inputs_known = 5;
  good.promoted = {3};
  good.promotions = 1;
  {
    InterleaveScheduler scheduler(2, 1, /*sloppy=*/true);
    CHECK_EQ(scheduler.Restore(good), std::string());
    CHECK(SameState(scheduler.state(), good));
  }
  {
    InterleaveScheduler deterministic(2, 1, /*sloppy=*/false);
    CHECK(!deterministic.Restore(good).empty());
  }
  std::vector<std::pair<const char*, State>> cases;
  auto add = [&](const char* what, auto change) {
    State s = good;
    change(s);
    cases.emplace_back(what, s);
  };
  add("promoted at next_source", [](State& s) {
    s.cycle = {0, 1};
    s.promoted = {1};
  });
  add("promoted past inputs_known", [](State& s) {
    s.cycle = {0, 5};
    s.promoted = {5};
  });
  add("promoted out of order", [](State& s) {
    s.cycle = {4, 3};
    s.promoted = {4, 3};
  });
  add("in the cycle, above next_source, not promoted",
      [](State& s) { s.promoted.clear(); });
  add("negative promotions", [](State& s) { s.promotions = -1; });
  add("promoted before start", [](State& s) {
    s.started = false;
    s.cycle.clear();
    s.next_source = 0;
  });
  for (const auto& [what, state] : cases) {
    InterleaveScheduler scheduler(2, 1, true);
    const State before = scheduler.state();
    CHECK(!scheduler.Restore(state).empty()) << what << ": accepted " << state;
    CHECK(SameState(scheduler.state(), before)) << what;
  }
}

// ---------------------------------------------------------------------------
// State and Restore.

TEST(StateRestoreRoundTrip) {
  // At every step, a fresh scheduler restored from the state makes the same
  // decisions as the original from then on.
  for (bool sloppy : {false, true}) {
    const std::vector<int64_t> sizes = {3, 0, 2, 4, 1, 2};
    Harness original(3, 2, sloppy);
    std::vector<int64_t> remaining = sizes;
    for (int64_t size : sizes) original.Open(size > 0 ? kReady : kFinished);
    original.End();
    int steps = 0;
    while (true) {
      InterleaveScheduler copy(3, 2, sloppy);
      CHECK_EQ(copy.Restore(original.state()), std::string());
      CHECK(SameState(copy.state(), original.state()));
      std::vector<int64_t> copy_released;
      const Decision expected = copy.Next(
          [&](int64_t s) {
            return remaining[s] > 0 ? kReady : kFinished;
          },
          &copy_released);
      const Decision d = original.Next();
      CHECK_EQ(d.kind, expected.kind);
      CHECK_EQ(d.source, expected.source);
      CHECK_EQ(copy_released, original.last_released());
      CHECK(SameState(copy.state(), original.state()));
      if (d.kind == Kind::kEndOfSequence) break;
      CHECK_EQ(d.kind, Kind::kEmit);
      if (--remaining[d.source] == 0) original.Set(d.source, kFinished);
      ++steps;
    }
    CHECK_EQ(steps, 12);
  }
}

TEST(RestoredAwaitingSlotIsFilledBeforeTheScanAsInTheOriginal) {
  // A sloppy cycle fills awaiting slots, in slot order, before it scans for
  // an element; it looks for them only while it knows there are some, so a
  // restored scheduler must count the ones in the state it is given.
  Harness original(3, 1, /*sloppy=*/true);
  original.OpenMany(3);
  original.ExpectEmit(0);
  original.Set(1, kFinished);
  // Slot 1 ends with no input to replace it yet: it awaits one.
  original.ExpectEmit(2);
  CHECK_EQ(original.state().cycle, (std::vector<int64_t>{0, kAwaiting, 2}));
  CHECK_EQ(original.state().next_index, 0);

  InterleaveScheduler copy(3, 1, /*sloppy=*/true);
  CHECK_EQ(copy.Restore(original.state()), std::string());
  const int64_t source = original.Open();
  copy.OnInputOpened();
  original.ExpectEmit(0);
  std::vector<int64_t> copy_released;
  const Decision d = copy.Next([](int64_t) { return kReady; }, &copy_released,
                               [](int64_t) { return int64_t{0}; });
  CHECK_EQ(d.kind, Kind::kEmit);
  CHECK_EQ(d.source, 0);
  // Source 3 took slot 1 before slot 0 emitted, in both.
  CHECK_EQ(original.state().cycle, (std::vector<int64_t>{0, source, 2}));
  CHECK(SameState(copy.state(), original.state())) << copy.state();
}

TEST(RestoreOfAFreshState) {
  InterleaveScheduler scheduler(2, 1, false);
  CHECK_EQ(scheduler.Restore(State()), std::string());
  State waiting;
  waiting.inputs_known = 1;
  CHECK_EQ(scheduler.Restore(waiting), std::string());
  CHECK_EQ(scheduler.state().inputs_known, 1);
}

TEST(RestoreRejectsInconsistentStates) {
  // A valid started deterministic state, then one defect at a time.
  State good;
  good.started = true;
  good.cycle = {0, 1, 2};
  good.next_index = 1;
  good.block_count = 1;
  good.next_source = 4;
  good.inputs_known = 5;
  {
    InterleaveScheduler scheduler(3, 2, false);
    CHECK_EQ(scheduler.Restore(good), std::string());
  }
  struct Bad {
    const char* what;
    State state;
  };
  std::vector<Bad> cases;
  auto add = [&](const char* what, auto change) {
    State s = good;
    change(s);
    cases.push_back({what, s});
  };
  add("negative inputs_known", [](State& s) { s.inputs_known = -1; });
  add("negative next_source", [](State& s) { s.next_source = -1; });
  add("next_source past inputs_known", [](State& s) { s.next_source = 6; });
  add("cycle too long", [](State& s) { s.cycle = {0, 1, 2, 3}; });
  add("short cycle while input goes on", [](State& s) { s.cycle = {0, 1}; });
  add("block_count == block_length", [](State& s) { s.block_count = 2; });
  add("negative block_count", [](State& s) { s.block_count = -1; });
  add("next_index == cycle length", [](State& s) { s.next_index = 3; });
  add("negative next_index", [](State& s) { s.next_index = -1; });
  add("repeated source", [](State& s) { s.cycle = {0, 1, 1}; });
  add("unopened source in a slot", [](State& s) { s.cycle = {0, 1, 4}; });
  add("invalid slot value", [](State& s) { s.cycle = {0, -3, 2}; });
  add("cycle before start", [](State& s) {
    s.started = false;
  });
  add("next_source before start", [](State& s) {
    s.started = false;
    s.cycle.clear();
  });
  for (const Bad& bad : cases) {
    InterleaveScheduler scheduler(3, 2, false);
    scheduler.OnInputOpened();
    const State before = scheduler.state();
    const std::string problem = scheduler.Restore(bad.state);
    CHECK(!problem.empty()) << bad.what << ": accepted " << bad.state;
    CHECK(SameState(scheduler.state(), before))
        << bad.what << ": state changed by a rejected Restore";
  }
}

TEST(RestoreChecksTheSchedulersArguments) {
  State state;
  state.started = true;
  state.cycle = {0, 1, 2};
  state.next_source = 3;
  state.inputs_known = 3;
  state.block_count = 2;
  InterleaveScheduler block_of_3(3, 3, false);
  CHECK_EQ(block_of_3.Restore(state), std::string());
  InterleaveScheduler block_of_2(3, 2, false);
  CHECK(!block_of_2.Restore(state).empty());
  InterleaveScheduler cycle_of_2(2, 3, false);
  CHECK(!cycle_of_2.Restore(state).empty());
  // A short deterministic cycle is fine once the input has ended.
  state.cycle = {0, 1};
  state.next_source = 2;
  state.inputs_known = 2;
  state.input_ended = true;
  InterleaveScheduler short_cycle(3, 3, false);
  CHECK_EQ(short_cycle.Restore(state), std::string());
  // A sloppy cycle may be shorter while the input goes on (it grows), never
  // longer; one saved with trailing awaiting slots still restores.
  state.input_ended = false;
  state.inputs_known = 3;
  state.block_count = 0;
  InterleaveScheduler sloppy_3(3, 1, true);
  CHECK_EQ(sloppy_3.Restore(state), std::string());
  state.cycle = {0, 1, kAwaiting};
  CHECK_EQ(sloppy_3.Restore(state), std::string());
  InterleaveScheduler sloppy_2(2, 1, true);
  CHECK(!sloppy_2.Restore(state).empty());
}

// ---------------------------------------------------------------------------
// Randomized: a simulated pool of workers and bounded buffers, events in a
// random order, the consumer following the scheduler's decisions and sleeping
// until an event it waits for (as the pool's consumer does).

struct SimConfig {
  std::vector<int64_t> sizes;
  int64_t cycle_length;
  int64_t block_length;
  int64_t buffer_output_elements;
  int64_t prefetch_input_elements;
  bool sloppy;
};

std::ostream& operator<<(std::ostream& out, const SimConfig& c) {
  out << "sizes=[";
  for (size_t i = 0; i < c.sizes.size(); ++i) {
    out << (i ? "," : "") << c.sizes[i];
  }
  return out << "] cycle_length=" << c.cycle_length
             << " block_length=" << c.block_length
             << " buffer=" << c.buffer_output_elements
             << " prefetch=" << c.prefetch_input_elements
             << " sloppy=" << c.sloppy;
}

class Simulation {
 public:
  Simulation(const SimConfig& config, uint64_t seed)
      : config_(config),
        random_(seed),
        scheduler_(std::make_unique<InterleaveScheduler>(
            config.cycle_length, config.block_length, config.sloppy)),
        produced_(config.sizes.size(), 0),
        buffered_(config.sizes.size(), 0),
        ended_(config.sizes.size(), false),
        released_(config.sizes.size(), false) {}

  // Deterministic mode: checks each decision against the expected order as
  // it is made.
  void Expect(const std::vector<int64_t>* order) { expected_ = order; }
  // Staged sources that entered the cycle early in the last `Run`.
  int64_t promotions() const { return promotions_; }

  // Returns the emitting sources, in order.
  std::vector<int64_t> Run() {
    const int64_t total = Total();
    // The consumer is awake until it waits; then only an event it waits for
    // (or, now and then, a spurious wake-up) makes it consult the scheduler
    // again. Awake or not, the workers may go on first.
    bool awake = true;
    Decision decision;
    while (true) {
      const std::vector<Event> events = Enabled();
      CHECK(awake || !events.empty())
          << "stalled: consumer waits (" << decision.kind << " "
          << decision.source << ") and no event can happen; "
          << scheduler_->state();
      if (!awake && random_() % 16 == 0) awake = true;
      if (awake && (events.empty() || random_() % 3 != 0)) {
        if (random_() % 8 == 0) RoundTripState();
        decision = Consult();
        if (decision.kind == Kind::kWaitForAny && random_() % 4 != 0) {
          decision = ConsultStaging();
        }
        if (decision.kind == Kind::kEndOfSequence) break;
        awake = decision.kind == Kind::kEmit;
        continue;
      }
      const Event event = events[random_() % events.size()];
      Apply(event);
      if (!awake) awake = Wakes(decision, event);
    }
    CHECK_EQ(static_cast<int64_t>(order_.size()), total);
    CHECK(input_ended_);
    promotions_ = scheduler_->state().promotions;
    for (size_t k = 0; k < released_.size(); ++k) {
      CHECK(released_[k]) << "source " << k << " never released";
    }
    return order_;
  }

 private:
  enum class EventKind { kOpen, kEndInput, kProduce, kFinish };
  struct Event {
    EventKind kind;
    int64_t source;
  };

  int64_t Total() const {
    int64_t total = 0;
    for (int64_t size : config_.sizes) total += size;
    return total;
  }
  int64_t Held() const {
    int64_t held = 0;
    for (int64_t k = 0; k < opened_; ++k) held += !released_[k];
    return held;
  }
  SourceState StateOf(int64_t source) const {
    if (buffered_[source] > 0) return kReady;
    return ended_[source] ? kFinished : kPending;
  }

  std::vector<Event> Enabled() const {
    std::vector<Event> events;
    const int64_t inputs = config_.sizes.size();
    const bool free_seat =
        Held() < config_.cycle_length + config_.prefetch_input_elements;
    if (free_seat && opened_ < inputs) events.push_back({EventKind::kOpen, -1});
    if (free_seat && opened_ == inputs && !input_ended_) {
      events.push_back({EventKind::kEndInput, -1});
    }
    for (int64_t k = 0; k < opened_; ++k) {
      if (ended_[k]) continue;
      if (produced_[k] < config_.sizes[k]) {
        if (buffered_[k] < config_.buffer_output_elements) {
          events.push_back({EventKind::kProduce, k});
        }
      } else {
        events.push_back({EventKind::kFinish, k});
      }
    }
    return events;
  }

  void Apply(const Event& event) {
    switch (event.kind) {
      case EventKind::kOpen:
        ++opened_;
        scheduler_->OnInputOpened();
        break;
      case EventKind::kEndInput:
        input_ended_ = true;
        scheduler_->OnInputEnded();
        break;
      case EventKind::kProduce:
        ++produced_[event.source];
        ++buffered_[event.source];
        break;
      case EventKind::kFinish:
        ended_[event.source] = true;
        break;
    }
  }

  // Whether the pool's consumer, waiting for `decision`, is woken by `event`.
  static bool Wakes(const Decision& decision, const Event& event) {
    const bool input_event =
        event.kind == EventKind::kOpen || event.kind == EventKind::kEndInput;
    switch (decision.kind) {
      case Kind::kWaitForSource:
        return !input_event && event.source == decision.source;
      case Kind::kWaitForInput:
        return input_event;
      default:
        return true;
    }
  }

  void RoundTripState() {
    auto copy = std::make_unique<InterleaveScheduler>(
        config_.cycle_length, config_.block_length, config_.sloppy);
    const std::string problem = copy->Restore(scheduler_->state());
    CHECK_EQ(problem, std::string())
        << " a reachable state was rejected: " << scheduler_->state();
    CHECK(SameState(copy->state(), scheduler_->state()));
    scheduler_ = std::move(copy);
  }

  // Staged sources: opened, not in the cycle, not gone.
  std::vector<int64_t> Staged() const {
    const State& state = scheduler_->state();
    std::vector<int64_t> staged;
    for (int64_t k = state.next_source; k < state.inputs_known; ++k) {
      if (!std::binary_search(state.promoted.begin(), state.promoted.end(),
                              k)) {
        staged.push_back(k);
      }
    }
    return staged;
  }

  // Marks sources the scheduler released; only finished ones, each once.
  void Accept(const std::vector<int64_t>& released) {
    for (int64_t source : released) {
      CHECK(!released_[source]) << "released twice: " << source;
      CHECK(StateOf(source) == kFinished) << "released unfinished " << source;
      released_[source] = true;
    }
  }

  // What the pool does after kWaitForAny: asks staging for an element.
  Decision ConsultStaging() {
    const std::vector<int64_t> staged = Staged();
    const std::vector<int64_t> cycle = scheduler_->state().cycle;
    std::vector<int64_t> released;
    const Decision d = scheduler_->NextFromStaging(
        [&](int64_t source) {
          CHECK(std::find(staged.begin(), staged.end(), source) !=
                staged.end())
              << "asked staging about source " << source << ", not staged";
          return StateOf(source);
        },
        &released);
    Accept(released);
    CHECK(scheduler_->state().cycle == cycle) << "staging changed the cycle";
    if (d.kind == Kind::kEmit) {
      CHECK(std::find(staged.begin(), staged.end(), d.source) !=
            staged.end());
      for (int64_t k : staged) {
        if (k == d.source) break;
        CHECK(buffered_[k] == 0) << "emits " << d.source << " before " << k;
      }
      CHECK(buffered_[d.source] > 0);
      --buffered_[d.source];
      order_.push_back(d.source);
    } else {
      CHECK(d.kind == Kind::kWaitForAny) << d.kind;
      for (int64_t k : Staged()) {
        CHECK(buffered_[k] == 0) << "waits while staged " << k << " is ready";
      }
    }
    return d;
  }

  Decision Consult() {
    std::vector<int64_t> released;
    const Decision d = scheduler_->Next(
        [&](int64_t source) {
          CHECK(source >= 0 && source < opened_)
              << "asked about unopened source " << source;
          CHECK(!released_[source]) << "asked about released " << source;
          CHECK(std::find(released.begin(), released.end(), source) ==
                released.end())
              << "asked about " << source << " after releasing it";
          return StateOf(source);
        },
        &released,
        [&](int64_t source) -> int64_t {
          const State& state = scheduler_->state();
          CHECK(config_.sloppy) << "deterministic mode asked for a cost";
          CHECK(source >= state.next_source && source < opened_ &&
                !released_[source])
              << "asked for the cost of " << source << ", not staged";
          // Any answer must do: costs change between calls in a pool.
          return random_() % 4 == 0 ? static_cast<int64_t>(random_() % 100)
                                    : 0;
        });
    Accept(released);
    const State& state = scheduler_->state();
    std::vector<int64_t> live = scheduler_->LiveSources();
    switch (d.kind) {
      case Kind::kEmit:
        CHECK(buffered_[d.source] > 0);
        if (expected_ != nullptr) {
          CHECK(order_.size() < expected_->size() &&
                (*expected_)[order_.size()] == d.source)
              << "emission " << order_.size() << " from source " << d.source
              << " is not the model's, for " << config_;
        }
        --buffered_[d.source];
        order_.push_back(d.source);
        break;
      case Kind::kWaitForSource:
        CHECK(!config_.sloppy) << "sloppy mode waited for one source";
        CHECK(StateOf(d.source) == kPending);
        if (expected_ != nullptr) {
          // Either the model's next element comes from this source, or the
          // source has nothing left and is about to end.
          const bool next_is_it = order_.size() < expected_->size() &&
                                  (*expected_)[order_.size()] == d.source;
          CHECK(next_is_it || produced_[d.source] == config_.sizes[d.source])
              << "waits for source " << d.source << " out of order, for "
              << config_;
        }
        break;
      case Kind::kWaitForInput:
        CHECK(!input_ended_) << "waits for an input that has ended";
        CHECK(!config_.sloppy) << "sloppy mode waited for the input";
        break;
      case Kind::kWaitForAny:
        CHECK(config_.sloppy);
        for (int64_t source : live) {
          CHECK(StateOf(source) == kPending)
              << "sloppy mode waits while source " << source << " is "
              << StateOf(source);
        }
        break;
      case Kind::kEndOfSequence:
        CHECK(input_ended_);
        break;
    }
    if (config_.sloppy) {
      const bool awaiting =
          std::find(state.cycle.begin(), state.cycle.end(), kAwaiting) !=
          state.cycle.end();
      CHECK(!awaiting || state.next_source == state.inputs_known)
          << "an awaiting slot while a source is staged: " << state;
    }
    return d;
  }

  const SimConfig config_;
  std::mt19937_64 random_;
  std::unique_ptr<InterleaveScheduler> scheduler_;
  int64_t opened_ = 0;
  bool input_ended_ = false;
  std::vector<int64_t> produced_;
  std::vector<int64_t> buffered_;
  std::vector<bool> ended_;
  std::vector<bool> released_;
  std::vector<int64_t> order_;
  const std::vector<int64_t>* expected_ = nullptr;
  int64_t promotions_ = 0;
};

SimConfig RandomConfig(std::mt19937_64& random, bool sloppy) {
  SimConfig c;
  c.sizes.resize(random() % 13);
  for (int64_t& size : c.sizes) size = random() % 3 == 0 ? 0 : random() % 7;
  c.cycle_length = 1 + random() % 5;
  c.block_length = 1 + random() % 3;
  c.buffer_output_elements = 1 + random() % 3;
  c.prefetch_input_elements = random() % 3;
  c.sloppy = sloppy;
  return c;
}

TEST(RandomizedDeterministicMatchesModel) {
  std::mt19937_64 random(20240501);
  for (int iteration = 0; iteration < 6000; ++iteration) {
    const SimConfig config = RandomConfig(random, /*sloppy=*/false);
    const std::vector<int64_t> expected =
        ModelOrder(config.sizes, config.cycle_length, config.block_length);
    // The same case under several timings: always the model's order.
    for (uint64_t run = 0; run < 3; ++run) {
      Simulation simulation(config, random());
      simulation.Expect(&expected);
      CHECK_EQ(simulation.Run(), expected) << " for " << config;
    }
  }
}

TEST(RandomizedSloppyKeepsEveryElement) {
  std::mt19937_64 random(20240502);
  int64_t promotions = 0;
  for (int iteration = 0; iteration < 6000; ++iteration) {
    const SimConfig config = RandomConfig(random, /*sloppy=*/true);
    Simulation simulation(config, random());
    std::vector<int64_t> order = simulation.Run();
    std::vector<int64_t> counts(config.sizes.size(), 0);
    for (int64_t source : order) ++counts[source];
    CHECK_EQ(counts, config.sizes) << " for " << config;
    promotions += simulation.promotions();
  }
  // The random costs did send stragglers ahead (else the runs above would
  // not have covered promotion).
  CHECK(promotions > 100) << promotions;
}

}  // namespace
}  // namespace tf_interleave
