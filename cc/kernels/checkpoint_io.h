// Reading and writing the interleave's own state in an iterator checkpoint:
// the scheduler's state, buffered elements (errors included) and input
// elements. Keys live under the iterator's prefix (`name`).
#ifndef TF_INTERLEAVE_CC_KERNELS_CHECKPOINT_IO_H_
#define TF_INTERLEAVE_CC_KERNELS_CHECKPOINT_IO_H_

#include <deque>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "cc/kernels/buffered_element.h"
#include "cc/kernels/interleave_scheduler.h"
#include "tensorflow/core/framework/dataset.h"

namespace tf_interleave {

// Reads and writes under one prefix, with typed helpers.
class CheckpointWriter {
 public:
  CheckpointWriter(tensorflow::data::IteratorStateWriter* writer,
                   std::string name)
      : writer_(writer), name_(std::move(name)) {}

  absl::Status Int(absl::string_view key, int64_t value);
  absl::Status String(absl::string_view key, const std::string& value);
  absl::Status Tensors(absl::string_view key,
                       const std::vector<tensorflow::Tensor>& tensors);
  absl::Status Elements(absl::string_view key,
                        const std::deque<BufferedElement>& elements);
  absl::Status Scheduler(absl::string_view key,
                         const InterleaveScheduler::State& state);

 private:
  tensorflow::data::IteratorStateWriter* const writer_;
  const std::string name_;
};

class CheckpointReader {
 public:
  CheckpointReader(tensorflow::data::IteratorContext* ctx,
                   tensorflow::data::IteratorStateReader* reader,
                   std::string name)
      : ctx_(ctx), reader_(reader), name_(std::move(name)) {}

  absl::Status Int(absl::string_view key, int64_t* value);
  absl::Status String(absl::string_view key, std::string* value);
  absl::Status Tensors(absl::string_view key,
                       std::vector<tensorflow::Tensor>* tensors);
  absl::Status Elements(absl::string_view key,
                        std::deque<BufferedElement>* elements);
  absl::Status Scheduler(absl::string_view key,
                         InterleaveScheduler::State* state);

 private:
  tensorflow::data::IteratorContext* const ctx_;
  tensorflow::data::IteratorStateReader* const reader_;
  const std::string name_;
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_CHECKPOINT_IO_H_
