// Helpers shared by the scheduler's C++ tests: printing, state comparison and
// a direct model of the deterministic order (SPEC section 2).
#ifndef TF_INTERLEAVE_CC_TESTS_SCHEDULER_TEST_UTIL_H_
#define TF_INTERLEAVE_CC_TESTS_SCHEDULER_TEST_UTIL_H_

#include <cstdint>
#include <deque>
#include <ostream>
#include <vector>

#include "cc/kernels/interleave_scheduler.h"

namespace tf_interleave {

inline std::ostream& operator<<(std::ostream& out,
                                InterleaveScheduler::Decision::Kind kind) {
  using Kind = InterleaveScheduler::Decision::Kind;
  switch (kind) {
    case Kind::kEmit:
      return out << "Emit";
    case Kind::kWaitForSource:
      return out << "WaitForSource";
    case Kind::kWaitForInput:
      return out << "WaitForInput";
    case Kind::kWaitForAny:
      return out << "WaitForAny";
    case Kind::kEndOfSequence:
      return out << "EndOfSequence";
  }
  return out << "Kind(" << static_cast<int>(kind) << ")";
}

inline std::ostream& operator<<(std::ostream& out, SourceState state) {
  switch (state) {
    case SourceState::kReady:
      return out << "Ready";
    case SourceState::kPending:
      return out << "Pending";
    case SourceState::kFinished:
      return out << "Finished";
  }
  return out << "SourceState(" << static_cast<int>(state) << ")";
}

inline bool SameState(const InterleaveScheduler::State& a,
                      const InterleaveScheduler::State& b) {
  return a.started == b.started && a.cycle == b.cycle &&
         a.next_index == b.next_index && a.block_count == b.block_count &&
         a.next_source == b.next_source && a.inputs_known == b.inputs_known &&
         a.input_ended == b.input_ended && a.sloppy_skips == b.sloppy_skips &&
         a.promoted == b.promoted && a.promotions == b.promotions;
}

inline std::ostream& operator<<(std::ostream& out,
                                const InterleaveScheduler::State& s) {
  out << "{started=" << s.started << " cycle=[";
  for (size_t i = 0; i < s.cycle.size(); ++i) {
    out << (i ? "," : "") << s.cycle[i];
  }
  out << "] next_index=" << s.next_index << " block_count=" << s.block_count
      << " next_source=" << s.next_source
      << " inputs_known=" << s.inputs_known
      << " input_ended=" << s.input_ended
      << " sloppy_skips=" << s.sloppy_skips << " promoted=[";
  for (size_t i = 0; i < s.promoted.size(); ++i) {
    out << (i ? "," : "") << s.promoted[i];
  }
  return out << "] promotions=" << s.promotions << "}";
}

// The deterministic order as the sequence of emitting sources, computed
// directly from SPEC section 2 on element counts (`sizes[k]` elements in
// source k). Independent of the scheduler's code on purpose.
inline std::vector<int64_t> ModelOrder(const std::vector<int64_t>& sizes,
                                       int64_t cycle_length,
                                       int64_t block_length) {
  struct Slot {
    int64_t source;
    int64_t remaining;
  };
  const int64_t inputs = sizes.size();
  int64_t next_input = 0;
  std::vector<Slot> cycle;  // source -1: empty slot.
  while (next_input < inputs &&
         static_cast<int64_t>(cycle.size()) < cycle_length) {
    cycle.push_back({next_input, sizes[next_input]});
    ++next_input;
  }
  std::vector<int64_t> order;
  const int64_t length = cycle.size();
  int64_t next_index = 0;
  int64_t block_count = 0;
  while (true) {
    bool rescan = false;
    for (int64_t offset = 0; offset < length && !rescan; ++offset) {
      const int64_t index = (next_index + offset) % length;
      Slot& slot = cycle[index];
      if (slot.source < 0) continue;
      if (slot.remaining > 0) {
        next_index = index;
        if (++block_count == block_length) {
          next_index = (index + 1) % length;
          block_count = 0;
        }
        --slot.remaining;
        order.push_back(slot.source);
        rescan = true;
      } else if (next_input < inputs) {
        slot = {next_input, sizes[next_input]};
        ++next_input;
        next_index = (index + 1) % length;
        block_count = 0;
        rescan = true;
      } else {
        slot.source = -1;
      }
    }
    if (!rescan) return order;
  }
}

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_TESTS_SCHEDULER_TEST_UTIL_H_
