// Kernel of `TfInterleave>ParallelInterleaveDataset`: parses and validates
// the op's inputs and builds the dataset. The order of elements is decided by
// `InterleaveScheduler`, the work is done by `SourcePool`; this file is glue.
#ifndef TF_INTERLEAVE_CC_KERNELS_PARALLEL_INTERLEAVE_DATASET_OP_H_
#define TF_INTERLEAVE_CC_KERNELS_PARALLEL_INTERLEAVE_DATASET_OP_H_

#include <memory>

#include "cc/kernels/source_pool.h"
#include "tensorflow/core/data/captured_function.h"
#include "tensorflow/core/data/dataset_utils.h"
#include "tensorflow/core/framework/dataset.h"

namespace tf_interleave {

class ParallelInterleaveDatasetOp
    : public tensorflow::data::UnaryDatasetOpKernel {
 public:
  static constexpr const char* const kOpName =
      "TfInterleave>ParallelInterleaveDataset";
  static constexpr const char* const kDatasetType = "TfInterleaveParallel";
  static constexpr const char* const kInputDataset = "input_dataset";
  static constexpr const char* const kOtherArguments = "other_arguments";
  static constexpr const char* const kCycleLength = "cycle_length";
  static constexpr const char* const kBlockLength = "block_length";
  static constexpr const char* const kBufferOutputElements =
      "buffer_output_elements";
  static constexpr const char* const kPrefetchInputElements =
      "prefetch_input_elements";
  static constexpr const char* const kDeterministic = "deterministic";
  static constexpr const char* const kFunc = "f";
  static constexpr const char* const kTarguments = "Targuments";
  static constexpr const char* const kOutputTypes = "output_types";
  static constexpr const char* const kOutputShapes = "output_shapes";
  static constexpr const char* const kOnInputError = "on_input_error";
  static constexpr const char* const kMaxSkippedInputs = "max_skipped_inputs";
  static constexpr const char* const kInputRetries = "input_retries";
  static constexpr const char* const kMemoryBudgetBytes = "memory_budget_bytes";
  static constexpr const char* const kStallWarningSeconds =
      "stall_warning_seconds";
  static constexpr const char* const kProduceInline = "produce_inline";

  explicit ParallelInterleaveDatasetOp(tensorflow::OpKernelConstruction* ctx);

 protected:
  void MakeDataset(tensorflow::OpKernelContext* ctx,
                   tensorflow::data::DatasetBase* input,
                   tensorflow::data::DatasetBase** output) override;

 private:
  class Dataset;

  std::shared_ptr<tensorflow::data::FunctionMetadata> func_metadata_;
  tensorflow::DataTypeVector output_types_;
  std::vector<tensorflow::PartialTensorShape> output_shapes_;
  tensorflow::data::DeterminismPolicy deterministic_;
  // The attrs beyond the legacy op, checked at construction.
  SourcePoolOptions extensions_;
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_PARALLEL_INTERLEAVE_DATASET_OP_H_
