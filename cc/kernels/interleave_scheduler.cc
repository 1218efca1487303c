#include "cc/kernels/interleave_scheduler.h"

#include <algorithm>
#include <set>

namespace tf_interleave {

InterleaveScheduler::InterleaveScheduler(int64_t cycle_length,
                                         int64_t block_length, bool sloppy)
    : cycle_length_(cycle_length), block_length_(block_length), sloppy_(sloppy) {}

bool InterleaveScheduler::MaybeStart() {
  if (state_.started) return true;
  if (!sloppy_) {
    // Deterministic order needs the cycle's real length, which is shorter
    // than cycle_length when the input is.
    if (state_.inputs_known < cycle_length_ && !state_.input_ended) {
      return false;
    }
    const int64_t length = std::min(cycle_length_, state_.inputs_known);
    state_.cycle.resize(length);
    for (int64_t i = 0; i < length; ++i) state_.cycle[i] = i;
    state_.next_source = length;
  }
  // Sloppy order does not depend on the cycle's length: start at once with
  // no slot and add slots as inputs arrive (`FillAwaitingSlots`), so a huge
  // `cycle_length` over a short input costs only the slots it fills.
  state_.started = true;
  return true;
}

int64_t InterleaveScheduler::ChooseStaged(const CostFn& staged_cost) const {
  const int64_t front = state_.next_source;
  if (!sloppy_ || !staged_cost) return front;
  const std::vector<int64_t>& promoted = state_.promoted;
  int64_t chosen = front;
  int64_t chosen_cost = staged_cost(front);
  const int64_t bar = chosen_cost * kPromotionRatio;
  auto skip = promoted.begin();
  for (int64_t source = front + 1; source < state_.inputs_known; ++source) {
    if (skip != promoted.end() && *skip == source) {
      ++skip;
      continue;
    }
    const int64_t cost = staged_cost(source);
    // Strictly costlier than the bar and than any earlier candidate, so
    // that equal costs keep the input order.
    if (cost > bar && cost > chosen_cost) {
      chosen = source;
      chosen_cost = cost;
    }
  }
  return chosen;
}

void InterleaveScheduler::LeaveStaging(int64_t source) {
  std::vector<int64_t>& promoted = state_.promoted;
  if (source != state_.next_source) {
    promoted.insert(
        std::upper_bound(promoted.begin(), promoted.end(), source), source);
    return;
  }
  // The front left: the next front is the first source not promoted.
  ++state_.next_source;
  while (!promoted.empty() && promoted.front() == state_.next_source) {
    promoted.erase(promoted.begin());
    ++state_.next_source;
  }
}

bool InterleaveScheduler::RefillSlot(int64_t index,
                                     const CostFn& staged_cost) {
  if (state_.next_source < state_.inputs_known) {
    const int64_t source = ChooseStaged(staged_cost);
    SetSlot(index, source);
    if (source != state_.next_source) ++state_.promotions;
    LeaveStaging(source);
    return true;
  }
  if (state_.input_ended) SetSlot(index, kEmptySlot);
  return false;
}

void InterleaveScheduler::SetSlot(int64_t index, int64_t value) {
  int64_t& slot = state_.cycle[index];
  awaiting_slots_ += (value == kAwaitingSlot) - (slot == kAwaitingSlot);
  slot = value;
}

void InterleaveScheduler::FillAwaitingSlots(const CostFn& staged_cost) {
  std::vector<int64_t>& cycle = state_.cycle;
  // An awaiting slot changes only when a source is staged or the input has
  // ended: otherwise the scan (per element) is skipped.
  if (state_.next_source < state_.inputs_known || state_.input_ended) {
    for (int64_t index = 0;
         awaiting_slots_ > 0 && index < static_cast<int64_t>(cycle.size());
         ++index) {
      if (cycle[index] == kAwaitingSlot) RefillSlot(index, staged_cost);
    }
  }
  // The slots not made yet come after the existing ones, as if they had
  // been awaiting at the end of the cycle.
  while (static_cast<int64_t>(cycle.size()) < cycle_length_ &&
         state_.next_source < state_.inputs_known) {
    cycle.push_back(kAwaitingSlot);
    ++awaiting_slots_;
    RefillSlot(cycle.size() - 1, staged_cost);
  }
}

bool InterleaveScheduler::SlotsToMake() const {
  return sloppy_ && static_cast<int64_t>(state_.cycle.size()) < cycle_length_ &&
         !state_.input_ended;
}

void InterleaveScheduler::AdvanceBlock(int64_t index) {
  state_.next_index = index;
  if (++state_.block_count == block_length_) {
    state_.next_index = (index + 1) % state_.cycle.size();
    state_.block_count = 0;
  }
}

InterleaveScheduler::Decision InterleaveScheduler::Next(
    const StateFn& source_state, std::vector<int64_t>* released,
    const CostFn& staged_cost) {
  using Kind = Decision::Kind;
  if (!MaybeStart()) return {Kind::kWaitForInput, -1};
  if (sloppy_) FillAwaitingSlots(staged_cost);
  std::vector<int64_t>& cycle = state_.cycle;
  const int64_t length = cycle.size();
  while (true) {
    bool restart = false;
    bool any_live = false;
    bool skipped_pending = false;
    for (int64_t i = 0; i < length && !restart; ++i) {
      const int64_t index = (state_.next_index + i) % length;
      const int64_t slot = cycle[index];
      if (slot == kEmptySlot) continue;
      if (slot >= 0) {
        const SourceState state = source_state(slot);
        if (state == SourceState::kReady) {
          if (skipped_pending) ++state_.sloppy_skips;
          AdvanceBlock(index);
          return {Kind::kEmit, slot};
        }
        if (state == SourceState::kPending) {
          if (!sloppy_) return {Kind::kWaitForSource, slot};
          any_live = true;
          skipped_pending = true;
          continue;
        }
        // Finished: the slot goes to the next source, if there is one.
        released->push_back(slot);
        SetSlot(index, kAwaitingSlot);
      }
      if (RefillSlot(index, staged_cost)) {
        // A newly opened source joins at the end of the round.
        state_.next_index = (index + 1) % length;
        state_.block_count = 0;
        restart = true;
      } else if (cycle[index] == kAwaitingSlot) {
        if (!sloppy_) return {Kind::kWaitForInput, -1};
        any_live = true;
      }
      // Otherwise the slot is now empty and the current block goes on with
      // the next slot that has elements (as the legacy op does).
    }
    if (restart) continue;
    if (any_live || SlotsToMake()) return {Kind::kWaitForAny, -1};
    if (state_.input_ended && state_.next_source >= state_.inputs_known) {
      return {Kind::kEndOfSequence, -1};
    }
    return {Kind::kWaitForInput, -1};
  }
}

InterleaveScheduler::Decision InterleaveScheduler::NextFromStaging(
    const StateFn& source_state, std::vector<int64_t>* released) {
  using Kind = Decision::Kind;
  if (!sloppy_ || !state_.started) return {Kind::kWaitForAny, -1};
  int64_t ready = -1;
  std::vector<int64_t> finished;
  const std::vector<int64_t>& promoted = state_.promoted;
  auto skip = promoted.begin();
  for (int64_t source = state_.next_source; source < state_.inputs_known;
       ++source) {
    if (skip != promoted.end() && *skip == source) {
      ++skip;
      continue;
    }
    const SourceState state = source_state(source);
    if (state == SourceState::kReady) {
      ready = source;
      break;
    }
    if (state == SourceState::kFinished) finished.push_back(source);
  }
  // After the scan: leaving staging edits `promoted`.
  for (int64_t source : finished) {
    LeaveStaging(source);
    released->push_back(source);
  }
  if (ready >= 0) return {Kind::kEmit, ready};
  return {Kind::kWaitForAny, -1};
}

std::vector<int64_t> InterleaveScheduler::LiveSources() const {
  std::vector<int64_t> sources;
  for (int64_t slot : state_.cycle) {
    if (slot >= 0) sources.push_back(slot);
  }
  return sources;
}

std::string InterleaveScheduler::Restore(const State& state) {
  const int64_t length = state.cycle.size();
  if (state.inputs_known < 0 || state.next_source < 0 ||
      state.next_source > state.inputs_known || state.sloppy_skips < 0 ||
      state.promotions < 0) {
    return "counters out of range";
  }
  const std::vector<int64_t>& promoted = state.promoted;
  for (size_t i = 0; i < promoted.size(); ++i) {
    if (promoted[i] <= state.next_source ||
        promoted[i] >= state.inputs_known ||
        (i > 0 && promoted[i] <= promoted[i - 1])) {
      return "promoted sources out of order or range";
    }
  }
  if (!promoted.empty() && !sloppy_) {
    return "deterministic state with promoted sources";
  }
  if (state.block_count < 0 || state.block_count >= block_length_) {
    return "block count " + std::to_string(state.block_count) +
           " does not fit block_length " + std::to_string(block_length_);
  }
  const bool nothing_left =
      state.input_ended && state.next_source == state.inputs_known;
  if (!state.started) {
    if (length != 0 || state.next_source != 0 || state.next_index != 0 ||
        state.block_count != 0 || !promoted.empty()) {
      return "scheduler state set before it started";
    }
    state_ = state;
    awaiting_slots_ = 0;
    return "";
  }
  if (state.next_index < 0 || (length > 0 && state.next_index >= length)) {
    return "next index out of range";
  }
  if (sloppy_) {
    // Slots are made as inputs arrive, up to cycle_length.
    if (length > cycle_length_) {
      return "sloppy cycle of " + std::to_string(length) +
             " slots exceeds cycle_length " + std::to_string(cycle_length_);
    }
  } else {
    // A deterministic cycle is shorter than cycle_length only when the
    // input ended before filling it, and then holds its first sources.
    if (length > cycle_length_ ||
        (length < cycle_length_ &&
         !(nothing_left && state.next_source == length))) {
      return "cycle of " + std::to_string(length) +
             " slots does not match cycle_length " +
             std::to_string(cycle_length_);
    }
    if (state.next_source < length) return "cycle holds unopened sources";
  }
  std::set<int64_t> seen;
  for (int64_t slot : state.cycle) {
    if (slot >= 0) {
      const bool staged_early =
          std::binary_search(promoted.begin(), promoted.end(), slot);
      if ((slot >= state.next_source && !staged_early) ||
          !seen.insert(slot).second) {
        return "slot holds an unknown or repeated source";
      }
    } else if (slot == kEmptySlot) {
      if (!nothing_left) return "empty slot while inputs remain";
    } else if (slot != kAwaitingSlot) {
      return "slot holds an invalid value";
    }
  }
  state_ = state;
  awaiting_slots_ = std::count(state_.cycle.begin(), state_.cycle.end(),
                               kAwaitingSlot);
  return "";
}

}  // namespace tf_interleave
