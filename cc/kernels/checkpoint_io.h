// Reading and writing the interleave's own state in an iterator checkpoint:
// the scheduler's state, the open sources with their buffered elements
// (errors included) and input elements, as plain records. Keys live under
// the iterator's prefix (`name`); the input's and the nested iterators' own
// states are written by those iterators, under their own prefixes.
#ifndef TF_INTERLEAVE_CC_KERNELS_CHECKPOINT_IO_H_
#define TF_INTERLEAVE_CC_KERNELS_CHECKPOINT_IO_H_

#include <deque>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "cc/kernels/buffered_element.h"
#include "cc/kernels/interleave_scheduler.h"
#include "cc/kernels/interleave_stats.h"
#include "tensorflow/core/framework/dataset.h"

namespace tf_interleave {

// The layout of the records below. Raised whenever a key is added, removed or
// changes meaning: a build restores only checkpoints of its own format, and
// says so, instead of misreading another layout or failing on a missing key.
constexpr int64_t kCheckpointFormat = 1;

// One open source in a checkpoint. A full checkpoint holds what the source
// has produced; a symbolic one only its position, from which it is reopened.
struct SourceRecord {
  int64_t source = -1;
  int64_t retries = 0;
  std::vector<tensorflow::Tensor> input_element;
  bool skipped = false;     // It ended on an error that was skipped,
  absl::Status skip_error;  // this one.
  // Full checkpoints.
  bool ended = false;
  bool needs_open = false;
  int64_t produced = 0;
  std::deque<BufferedElement> buffer;
  bool open = false;  // Its nested iterator's state is saved too.
  // Symbolic checkpoints.
  int64_t delivered = 0;
  int64_t stop_at = -1;       // Where a source that ended stops again.
  bool input_failed = false;  // Pulling its input element failed,
  absl::Status input_error;   // with this error, still to be delivered.
};

// The pool's state in a checkpoint.
struct PoolRecord {
  bool symbolic = false;
  // The arguments it ran with, checked again on restore.
  int64_t cycle_length = 0;
  int64_t block_length = 0;
  int64_t buffer_output_elements = 0;
  int64_t prefetch_input_elements = 0;
  int64_t sloppy = 0;
  InterleaveScheduler::State scheduler;
  int64_t sources_pulled = 0;
  bool input_ended = false;
  std::vector<SkippedInput> skipped;  // Skips already counted.
  std::vector<SourceRecord> live;     // In increasing source order.
};

// Reads and writes under one prefix, with typed helpers.
class CheckpointWriter {
 public:
  CheckpointWriter(tensorflow::data::IteratorStateWriter* writer,
                   std::string name)
      : writer_(writer), name_(std::move(name)) {}

  absl::Status Int(absl::string_view key, int64_t value);
  absl::Status IntList(absl::string_view key,
                       const std::vector<int64_t>& values);
  absl::Status String(absl::string_view key, const std::string& value);
  absl::Status Tensors(absl::string_view key,
                       const std::vector<tensorflow::Tensor>& tensors);
  absl::Status Elements(absl::string_view key,
                        const std::deque<BufferedElement>& elements);
  absl::Status Scheduler(absl::string_view key,
                         const InterleaveScheduler::State& state);
  absl::Status Pool(const PoolRecord& record);

 private:
  absl::Status Source(absl::string_view key, bool symbolic,
                      const SourceRecord& record);
  absl::Status Error(absl::string_view key, const absl::Status& status);

  tensorflow::data::IteratorStateWriter* const writer_;
  const std::string name_;
};

class CheckpointReader {
 public:
  // `flr` restores the tensors that hold resources; may be null when none
  // do.
  CheckpointReader(tensorflow::FunctionLibraryRuntime* flr,
                   tensorflow::data::IteratorStateReader* reader,
                   std::string name)
      : flr_(flr), reader_(reader), name_(std::move(name)) {}

  absl::Status Int(absl::string_view key, int64_t* value);
  absl::Status IntList(absl::string_view key, std::vector<int64_t>* values);
  absl::Status String(absl::string_view key, std::string* value);
  absl::Status Tensors(absl::string_view key,
                       std::vector<tensorflow::Tensor>* tensors);
  absl::Status Elements(absl::string_view key,
                        std::deque<BufferedElement>* elements);
  absl::Status Scheduler(absl::string_view key,
                         InterleaveScheduler::State* state);
  // Fails with FailedPrecondition on a checkpoint of another format.
  absl::Status Pool(PoolRecord* record);

 private:
  absl::Status Format();
  absl::Status Source(absl::string_view key, bool symbolic,
                      SourceRecord* record);
  absl::Status Error(absl::string_view key, absl::Status* status);

  tensorflow::FunctionLibraryRuntime* const flr_;
  tensorflow::data::IteratorStateReader* const reader_;
  const std::string name_;
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_CHECKPOINT_IO_H_
