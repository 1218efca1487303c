// Registration of the tf_interleave ops: names, signatures, shape functions.
// The kernels live in cc/kernels/.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_interleave {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// The last four inputs (cycle_length, block_length, buffer_output_elements,
// prefetch_input_elements; they follow the variable-length
// `other_arguments`) must be scalars; the result is a scalar variant.
absl::Status ParallelInterleaveShapeFn(InferenceContext* c) {
  for (int index = c->num_inputs() - 4; index < c->num_inputs(); ++index) {
    ShapeHandle unused;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(index), 0, &unused));
  }
  return ::tensorflow::shape_inference::ScalarShape(c);
}

REGISTER_OP("TfInterleave>ParallelInterleaveDataset")
    .Input("input_dataset: variant")
    .Input("other_arguments: Targuments")
    .Input("cycle_length: int64")
    .Input("block_length: int64")
    .Input("buffer_output_elements: int64")
    .Input("prefetch_input_elements: int64")
    .Output("handle: variant")
    .Attr("f: func")
    // "true", "false" or "default" (decided by the pipeline's options when
    // the iterator is created).
    .Attr("deterministic: string = 'default'")
    .Attr("Targuments: list(type) >= 0")
    .Attr("output_types: list(type) >= 1")
    .Attr("output_shapes: list(shape) >= 1")
    .Attr("metadata: string = ''")
    // Extensions beyond the legacy op (see tf_interleave/interleave.py).
    .Attr("on_input_error: string = 'raise'")
    .Attr("max_skipped_inputs: int = -1")
    .Attr("input_retries: int = 0")
    .Attr("memory_budget_bytes: int = 0")
    .Attr("stall_warning_seconds: float = 0")
    .Attr("produce_inline: bool = true")
    .SetShapeFn(ParallelInterleaveShapeFn);

}  // namespace tf_interleave
