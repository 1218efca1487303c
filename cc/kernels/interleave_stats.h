// Live statistics of parallel interleave iterators, readable as JSON from
// any thread (the Python package reads them through `TfInterleaveStatsJson`).
//
// The registry of live iterators is the project's one piece of global
// mutable state: a map from id to the iterator's stats source, guarded by its
// own mutex. Iterators register when they start and deregister before they
// are destroyed; the registry's mutex is always taken before an iterator's.
#ifndef TF_INTERLEAVE_CC_KERNELS_INTERLEAVE_STATS_H_
#define TF_INTERLEAVE_CC_KERNELS_INTERLEAVE_STATS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/platform/thread_annotations.h"

namespace tf_interleave {

struct InputStats {
  int64_t source = -1;
  std::string label;
  std::string state;  // "open", "ended", "skipped" or "done".
  int64_t elements = 0;  // Delivered to the consumer.
  int64_t bytes = 0;
  int64_t buffered_elements = 0;
  int64_t buffered_bytes = 0;
  double consumer_wait_seconds = 0;
  int64_t retries = 0;
};

struct SkippedInput {
  int64_t source = -1;
  std::string label;
  int64_t element_index = 0;
  std::string error;
};

struct IteratorStats {
  int64_t id = 0;
  std::string name;
  int64_t cycle_length = 0;
  int64_t block_length = 0;
  bool sloppy = false;
  int64_t elements = 0;
  int64_t bytes = 0;
  int64_t buffered_elements = 0;
  int64_t buffered_bytes = 0;
  int64_t memory_budget_bytes = 0;
  int64_t inputs_opened = 0;
  bool input_ended = false;
  double consumer_wait_seconds = 0;
  std::string waiting_on;  // Label of the input the consumer waits on now.
  int64_t sloppy_skips = 0;
  // Sloppy: slow inputs that entered the cycle ahead of their turn.
  int64_t promoted_inputs = 0;
  // Sloppy: elements taken from staged inputs while the cycle had none.
  int64_t staged_elements = 0;
  // Elements the thread calling `GetNext` produced itself (cheap inputs).
  int64_t inline_elements = 0;
  // Sloppy: inline calls that blocked (or ran over 1 ms unseen), after which
  // workers produced every element for a while.
  int64_t inline_pauses = 0;
  int64_t retries = 0;
  int64_t stall_warnings = 0;
  std::vector<InputStats> inputs;
  std::vector<SkippedInput> skipped_inputs;
};

// Something that can report its stats; implemented by the source pool.
class StatsSource {
 public:
  virtual ~StatsSource() = default;
  virtual IteratorStats Stats() const = 0;
};

class StatsRegistry {
 public:
  static StatsRegistry& Global();

  // Returns the id under which `source` is listed.
  int64_t Register(const StatsSource* source) TF_LOCKS_EXCLUDED(mu_);
  void Deregister(int64_t id) TF_LOCKS_EXCLUDED(mu_);
  // A JSON list with one object per live iterator, oldest first.
  std::string ToJson() const TF_LOCKS_EXCLUDED(mu_);

 private:
  mutable tensorflow::mutex mu_;
  int64_t next_id_ TF_GUARDED_BY(mu_) = 1;
  std::map<int64_t, const StatsSource*> sources_ TF_GUARDED_BY(mu_);
};

// Serializes one iterator's stats as a JSON object.
std::string StatsToJson(const IteratorStats& stats);

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_INTERLEAVE_STATS_H_
