// The decision of which nested source emits the next element of a parallel
// interleave. No threads, no TensorFlow types: the caller reports what it
// knows (which inputs exist, what each source has buffered) and acts on the
// returned decision.
//
// Sources are named by their input position: the nested dataset made from the
// k-th input element is source k. Input elements are opened strictly in input
// order, so "move the front of the staging queue into the slot" of the legacy
// op is "put source `next_source` into the slot"; staging itself is the range
// [next_source, inputs_known) less the sources in `promoted`.
//
// Sloppy mode may let a staged source into the cycle ahead of its turn: when
// the caller says it is much costlier per element than the front of staging
// (a straggler), it enters first, since the slowest inputs decide when a
// finite pipeline ends and waiting in staging only delays them.
//
// Invariants:
//  1. Every slot of `cycle` is a source id, kEmptySlot or kAwaitingSlot; a
//     source id appears in at most one slot. In deterministic mode sources
//     enter slots in increasing order; in sloppy mode the ones that left
//     staging ahead of their turn (into a slot, or ended while staged) are
//     listed in `promoted` (sorted, all above
//     `next_source`) until `next_source` passes them, and every source in
//     a slot is below `next_source` or listed there. next_source only
//     grows.
//  2. A slot is kEmptySlot only once the input is known to have ended with no
//     source left to open; it never becomes live again.
//  3. In deterministic mode the decision depends only on the sequence of
//     source states, never on when the caller learnt them.
//  4. The cycle has at most cycle_length slots. A deterministic one gets
//     them all when it starts; a sloppy one starts with none and gains one
//     per source known while it is shorter, so its slots cost memory and
//     scanning only for the inputs that exist.
#ifndef TF_INTERLEAVE_CC_KERNELS_INTERLEAVE_SCHEDULER_H_
#define TF_INTERLEAVE_CC_KERNELS_INTERLEAVE_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace tf_interleave {

// What a source can do right now, as seen by the consumer.
enum class SourceState {
  kReady,     // At least one element (or error) is buffered.
  kPending,   // Nothing buffered yet, but the source has not ended.
  kFinished,  // Ended and fully drained.
};

class InterleaveScheduler {
 public:
  static constexpr int64_t kEmptySlot = -1;
  // The slot's source ended; whether another input will take its place is
  // not known yet.
  static constexpr int64_t kAwaitingSlot = -2;

  struct Decision {
    enum class Kind {
      kEmit,           // Take the next buffered element of `source`.
      kWaitForSource,  // Deterministic: wait until `source` changes state.
      kWaitForInput,   // Wait until an input is opened or the input ends.
      kWaitForAny,     // Sloppy: wait until any source or the input changes.
      kEndOfSequence,
    };
    Kind kind = Kind::kEndOfSequence;
    int64_t source = -1;
  };

  // Everything that determines future decisions, as plain data (for
  // checkpoints and tests).
  struct State {
    bool started = false;
    std::vector<int64_t> cycle;
    int64_t next_index = 0;
    int64_t block_count = 0;
    int64_t next_source = 0;
    int64_t inputs_known = 0;
    bool input_ended = false;
    int64_t sloppy_skips = 0;
    // Sloppy: sources that left staging ahead of `next_source` (into the
    // cycle, or ended while staged), skipped when staging's front reaches
    // them.
    std::vector<int64_t> promoted;
    int64_t promotions = 0;  // Staged sources that ever entered early.
  };

  using StateFn = std::function<SourceState(int64_t source)>;
  // A staged source's known cost per element, in any unit; 0 when unknown
  // or too small to matter.
  using CostFn = std::function<int64_t(int64_t source)>;
  // Sloppy: a staged source enters the cycle ahead of the front of staging
  // when it costs more than this many times as much per element.
  static constexpr int64_t kPromotionRatio = 4;

  // Requires cycle_length > 0 and block_length > 0.
  InterleaveScheduler(int64_t cycle_length, int64_t block_length, bool sloppy);

  // Source `inputs_known()` now exists (the next input element was pulled).
  void OnInputOpened() { ++state_.inputs_known; }
  // The input has no more elements.
  void OnInputEnded() { state_.input_ended = true; }

  // Decides what the consumer does next. `source_state` is asked about live
  // sources only. Sources found finished are removed from the cycle and
  // appended to `released`: the caller may drop them and reuse their
  // resources. In sloppy mode `staged_cost`, when given, is asked about
  // staged sources when a slot is refilled (see the class comment).
  Decision Next(const StateFn& source_state, std::vector<int64_t>* released,
                const CostFn& staged_cost = nullptr);

  // Sloppy mode, after `Next` said kWaitForAny: the first staged source (in
  // input order) with an element ready emits it without entering the
  // cycle; kWaitForAny when none has. `source_state` is asked about staged
  // sources; those found finished leave staging and are appended to
  // `released`. In deterministic mode, always kWaitForAny.
  Decision NextFromStaging(const StateFn& source_state,
                           std::vector<int64_t>* released);

  const State& state() const { return state_; }
  // Replaces the whole state (restoring a checkpoint). Returns an empty
  // string when `state` is consistent with this scheduler's arguments,
  // otherwise what is wrong with it (and leaves the state unchanged).
  std::string Restore(const State& state);

  int64_t cycle_length() const { return cycle_length_; }
  int64_t block_length() const { return block_length_; }
  bool sloppy() const { return sloppy_; }

  // Sources currently in the cycle (not empty, not awaiting).
  std::vector<int64_t> LiveSources() const;

 private:
  // Builds the cycle once enough of the input is known. Returns false when
  // the caller must wait for the input.
  bool MaybeStart();
  // Sloppy mode: assigns known sources to awaiting slots, in slot order,
  // then to new slots while the cycle is shorter than cycle_length.
  void FillAwaitingSlots(const CostFn& staged_cost);
  // Sloppy mode: the cycle may still grow (it is shorter than cycle_length
  // and the input has not ended).
  bool SlotsToMake() const;
  // Moves the next staged source into slot `index` if one is known (the
  // front of staging, or in sloppy mode a much costlier one); empties the
  // slot when the input has ended. Returns true when a source was placed.
  bool RefillSlot(int64_t index, const CostFn& staged_cost);
  // Sloppy: the staged source to enter the cycle next.
  int64_t ChooseStaged(const CostFn& staged_cost) const;
  // Takes `source` out of staging (into a slot, or gone for good).
  void LeaveStaging(int64_t source);
  void AdvanceBlock(int64_t index);
  // Writes slot `index`, keeping `awaiting_slots_` in step.
  void SetSlot(int64_t index, int64_t value);

  const int64_t cycle_length_;
  const int64_t block_length_;
  const bool sloppy_;
  State state_;
  // How many slots are kAwaitingSlot (follows from `state_`): a sloppy
  // `Next` looks through a long cycle for them only when there are some.
  int64_t awaiting_slots_ = 0;
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_INTERLEAVE_SCHEDULER_H_
