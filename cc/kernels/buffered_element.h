// One element produced by a nested source: its tensors, or the error that
// takes its place in the order.
#ifndef TF_INTERLEAVE_CC_KERNELS_BUFFERED_ELEMENT_H_
#define TF_INTERLEAVE_CC_KERNELS_BUFFERED_ELEMENT_H_

#include <vector>

#include "absl/status/status.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_interleave {

struct BufferedElement {
  absl::Status status;
  std::vector<tensorflow::Tensor> tensors;
  int64_t bytes = 0;  // Of `tensors`, counted against the memory budget.
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_BUFFERED_ELEMENT_H_
