#include "cc/kernels/parallel_interleave_dataset_op.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/data/name_utils.h"
#include "tensorflow/core/framework/dataset_options.pb.h"
#include "tensorflow/core/framework/model.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/partial_tensor_shape.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/util/determinism.h"

// The TensorFlow version the library is compiled against; the Python loader
// reads it from the binary before loading it.
#ifndef TF_INTERLEAVE_TF_VERSION
#define TF_INTERLEAVE_TF_VERSION "unknown"
#endif

namespace tf_interleave {
namespace {

using ::tensorflow::AttrValue;
using ::tensorflow::DataTypeVector;
using ::tensorflow::Node;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::PartialTensorShape;
using ::tensorflow::Tensor;
using ::tensorflow::data::CapturedFunction;
using ::tensorflow::data::DatasetBase;
using ::tensorflow::data::DatasetContext;
using ::tensorflow::data::DatasetIterator;
using ::tensorflow::data::DeterminismPolicy;
using ::tensorflow::data::FunctionMetadata;
using ::tensorflow::data::InstantiatedCapturedFunction;
using ::tensorflow::data::IteratorBase;
using ::tensorflow::data::IteratorContext;
using ::tensorflow::data::IteratorStateReader;
using ::tensorflow::data::IteratorStateWriter;
using ::tensorflow::data::SerializationContext;
using ::tensorflow::data::TraceMeMetadata;

// Searched for in the binary by the Python loader (see _loader.py).
extern "C" {
__attribute__((used)) const char kTfInterleaveBuildTag[] =
    "TF_INTERLEAVE_BUILT_AGAINST_TF=" TF_INTERLEAVE_TF_VERSION;
}

// Whether the iterator may skip ahead of a source with nothing ready.
// `default` follows the pipeline's `deterministic` option, which TensorFlow's
// own `make_sloppy` rewrite does not apply to ops it does not know.
bool ResolveSloppy(const DeterminismPolicy& policy, IteratorContext* ctx) {
  if (tensorflow::OpDeterminismRequired()) return false;
  if (policy.IsNondeterministic()) return true;
  if (policy.IsDeterministic()) return false;
  const tensorflow::data::Options* options = ctx->options();
  return options != nullptr &&
         options->optional_deterministic_case() ==
             tensorflow::data::Options::kDeterministic &&
         !options->deterministic();
}

}  // namespace

class ParallelInterleaveDatasetOp::Dataset : public DatasetBase {
 public:
  Dataset(OpKernelContext* ctx, const DatasetBase* input,
          std::unique_ptr<CapturedFunction> captured_func,
          const SourcePoolOptions& arguments, DeterminismPolicy deterministic,
          const DataTypeVector& output_types,
          const std::vector<PartialTensorShape>& output_shapes)
      : DatasetBase(DatasetContext(ctx)),
        input_(input),
        captured_func_(std::move(captured_func)),
        arguments_(arguments),
        deterministic_(deterministic),
        output_types_(output_types),
        output_shapes_(output_shapes),
        traceme_metadata_(
            {{"block_length", absl::StrCat(arguments.block_length)},
             {"cycle_length", absl::StrCat(arguments.cycle_length)},
             {"deterministic", deterministic.String()}}) {
    input_->Ref();
  }

  ~Dataset() override { input_->Unref(); }

  std::unique_ptr<IteratorBase> MakeIteratorInternal(
      const std::string& prefix) const override {
    return std::make_unique<Iterator>(Iterator::Params{
        this, tensorflow::data::name_utils::IteratorPrefix(kDatasetType,
                                                          prefix)});
  }

  const DataTypeVector& output_dtypes() const override {
    return output_types_;
  }
  const std::vector<PartialTensorShape>& output_shapes() const override {
    return output_shapes_;
  }

  std::string DebugString() const override {
    return tensorflow::data::name_utils::DatasetDebugString(kDatasetType);
  }

  absl::Status InputDatasets(
      std::vector<const DatasetBase*>* inputs) const override {
    inputs->push_back(input_);
    return absl::OkStatus();
  }

  absl::Status CheckExternalState() const override {
    TF_RETURN_IF_ERROR(captured_func_->CheckExternalState());
    return input_->CheckExternalState();
  }

 protected:
  absl::Status AsGraphDefInternal(SerializationContext* ctx,
                                  DatasetGraphDefBuilder* b,
                                  Node** output) const override {
    Node* input_node;
    TF_RETURN_IF_ERROR(b->AddInputDataset(ctx, input_, &input_node));
    Node* cycle_length_node;
    TF_RETURN_IF_ERROR(b->AddScalar(arguments_.cycle_length, &cycle_length_node));
    Node* block_length_node;
    TF_RETURN_IF_ERROR(b->AddScalar(arguments_.block_length, &block_length_node));
    Node* buffer_node;
    TF_RETURN_IF_ERROR(
        b->AddScalar(arguments_.buffer_output_elements, &buffer_node));
    Node* prefetch_node;
    TF_RETURN_IF_ERROR(
        b->AddScalar(arguments_.prefetch_input_elements, &prefetch_node));
    std::vector<Node*> other_arguments;
    DataTypeVector other_arguments_types;
    TF_RETURN_IF_ERROR(captured_func_->AddToGraph(ctx, b, &other_arguments,
                                                  &other_arguments_types));
    AttrValue func;
    b->BuildAttrValue(captured_func_->func(), &func);
    AttrValue deterministic;
    b->BuildAttrValue(deterministic_.String(), &deterministic);
    AttrValue other_arguments_types_attr;
    b->BuildAttrValue(other_arguments_types, &other_arguments_types_attr);
    AttrValue on_input_error, max_skipped, retries, budget, stall, inline_attr;
    b->BuildAttrValue(std::string(arguments_.skip_input_errors ? "skip" : "raise"),
                      &on_input_error);
    b->BuildAttrValue(arguments_.max_skipped_inputs, &max_skipped);
    b->BuildAttrValue(arguments_.input_retries, &retries);
    b->BuildAttrValue(arguments_.memory_budget_bytes, &budget);
    b->BuildAttrValue(static_cast<float>(arguments_.stall_warning_seconds),
                      &stall);
    b->BuildAttrValue(arguments_.produce_inline, &inline_attr);
    return b->AddDataset(this,
                         {{0, input_node},
                          {2, cycle_length_node},
                          {3, block_length_node},
                          {4, buffer_node},
                          {5, prefetch_node}},
                         {{1, other_arguments}},
                         {{kFunc, func},
                          {kDeterministic, deterministic},
                          {kTarguments, other_arguments_types_attr},
                          {kOnInputError, on_input_error},
                          {kMaxSkippedInputs, max_skipped},
                          {kInputRetries, retries},
                          {kMemoryBudgetBytes, budget},
                          {kStallWarningSeconds, stall},
                          {kProduceInline, inline_attr}},
                         output);
  }

 private:
  class Iterator : public DatasetIterator<Dataset> {
   public:
    explicit Iterator(const Params& params)
        : DatasetIterator<Dataset>(params) {}

    // The pool's seats use `input_impl_` and the instantiated function, so
    // they are stopped and joined first.
    ~Iterator() override { pool_.reset(); }

    // Symbolic checkpoints hold positions (see SourcePool::Save).
    bool SymbolicCheckpointCompatible() const override { return true; }

    absl::Status Initialize(IteratorContext* ctx) override {
      SourcePoolOptions options = dataset()->arguments_;
      options.sloppy = ResolveSloppy(dataset()->deterministic_, ctx);
      options.name = prefix();
      SourcePoolCallbacks callbacks;
      callbacks.pull_input = [this](IteratorContext* ctx,
                                    std::vector<Tensor>* element,
                                    bool* end_of_input) {
        return input_impl_->GetNext(ctx, element, end_of_input);
      };
      callbacks.open_source = [this](IteratorContext* ctx,
                                     const std::vector<Tensor>& element,
                                     int64_t source,
                                     std::unique_ptr<IteratorBase>* iterator) {
        return tensorflow::data::MakeIteratorFromInputElement(
            ctx, this, element, source, *instantiated_captured_func_, prefix(),
            iterator, model_node());
      };
      callbacks.save_iterator = [this](SerializationContext* ctx,
                                       IteratorStateWriter* writer,
                                       const std::unique_ptr<IteratorBase>& iterator) {
        return SaveInput(ctx, writer, iterator);
      };
      callbacks.restore_iterator = [this](IteratorContext* ctx,
                                          IteratorStateReader* reader,
                                          const std::unique_ptr<IteratorBase>& iterator) {
        return RestoreInput(ctx, reader, iterator);
      };
      callbacks.record_start = [this](IteratorContext* ctx) {
        RecordStart(ctx);
      };
      callbacks.record_stop = [this](IteratorContext* ctx) {
        RecordStop(ctx);
      };
      pool_ = std::make_unique<SourcePool>(options, std::move(callbacks));
      TF_RETURN_IF_ERROR(pool_->Initialize(ctx));

      IteratorContext::Params params(ctx);
      params.cancellation_manager = pool_->cancellation_manager();
      IteratorContext input_ctx(std::move(params));
      TF_RETURN_IF_ERROR(dataset()->input_->MakeIterator(
          &input_ctx, this, prefix(), &input_impl_));
      ctx->MergeCheckpoint(input_ctx.checkpoint());
      return dataset()->captured_func_->Instantiate(
          ctx, &instantiated_captured_func_);
    }

    absl::Status GetNextInternal(IteratorContext* ctx,
                                 std::vector<Tensor>* out_tensors,
                                 bool* end_of_sequence) override {
      const absl::Status status =
          pool_->GetNext(ctx, out_tensors, end_of_sequence);
      pool_->RecordSymbolicCheckpoint(ctx, prefix());
      return status;
    }

   protected:
    std::shared_ptr<tensorflow::data::model::Node> CreateNode(
        IteratorContext* ctx,
        tensorflow::data::model::Node::Args args) const override {
      return tensorflow::data::model::MakeAsyncInterleaveManyNode(
          std::move(args), /*parameters=*/{});
    }

    absl::Status SaveInternal(SerializationContext* ctx,
                              IteratorStateWriter* writer) override {
      // `map_func`'s state is not in any iterator's checkpoint: refuse (or
      // warn) as the pipeline's external state policy says.
      TF_RETURN_IF_ERROR(ctx->HandleCheckExternalStateStatus(
          dataset()->captured_func_->CheckExternalState()));
      return pool_->Save(ctx, writer, prefix(), input_impl_);
    }

    absl::Status RestoreInternal(IteratorContext* ctx,
                                 IteratorStateReader* reader) override {
      TF_RETURN_IF_ERROR(pool_->Restore(ctx, reader, prefix(), input_impl_));
      pool_->RecordSymbolicCheckpoint(ctx, prefix());
      return absl::OkStatus();
    }

    TraceMeMetadata GetTraceMeMetadata() const override {
      return dataset()->traceme_metadata_;
    }

   private:
    std::unique_ptr<IteratorBase> input_impl_;
    std::unique_ptr<InstantiatedCapturedFunction> instantiated_captured_func_;
    std::unique_ptr<SourcePool> pool_;
  };

  const DatasetBase* const input_;
  const std::unique_ptr<CapturedFunction> captured_func_;
  // `sloppy` is resolved per iterator, from `deterministic_`.
  const SourcePoolOptions arguments_;
  const DeterminismPolicy deterministic_;
  const DataTypeVector output_types_;
  const std::vector<PartialTensorShape> output_shapes_;
  const TraceMeMetadata traceme_metadata_;
};

ParallelInterleaveDatasetOp::ParallelInterleaveDatasetOp(
    OpKernelConstruction* ctx)
    : UnaryDatasetOpKernel(ctx) {
  // Default parameters: `map_func` may contain control flow, which the
  // single-threaded executor cannot run.
  FunctionMetadata::Params params;
  OP_REQUIRES_OK(ctx,
                 FunctionMetadata::Create(ctx, kFunc, params, &func_metadata_));
  OP_REQUIRES_OK(ctx, ctx->GetAttr(kOutputTypes, &output_types_));
  OP_REQUIRES_OK(ctx, ctx->GetAttr(kOutputShapes, &output_shapes_));
  std::string deterministic;
  OP_REQUIRES_OK(ctx, ctx->GetAttr(kDeterministic, &deterministic));
  OP_REQUIRES_OK(ctx, DeterminismPolicy::FromString(deterministic,
                                                    &deterministic_));

  std::string on_input_error;
  OP_REQUIRES_OK(ctx, ctx->GetAttr(kOnInputError, &on_input_error));
  OP_REQUIRES(ctx, on_input_error == "raise" || on_input_error == "skip",
              absl::InvalidArgumentError(absl::StrCat(
                  "`on_input_error` must be \"raise\" or \"skip\", got \"",
                  on_input_error, "\".")));
  extensions_.skip_input_errors = on_input_error == "skip";
  OP_REQUIRES_OK(ctx, ctx->GetAttr(kMaxSkippedInputs,
                                   &extensions_.max_skipped_inputs));
  OP_REQUIRES(ctx, extensions_.max_skipped_inputs >= -1,
              absl::InvalidArgumentError(absl::StrCat(
                  "`max_skipped_inputs` must be >= 0 (or -1 for no limit), "
                  "got ", extensions_.max_skipped_inputs, ".")));
  OP_REQUIRES_OK(ctx, ctx->GetAttr(kInputRetries, &extensions_.input_retries));
  OP_REQUIRES(ctx, extensions_.input_retries >= 0,
              absl::InvalidArgumentError(absl::StrCat(
                  "`input_retries` must be >= 0, got ",
                  extensions_.input_retries, ".")));
  OP_REQUIRES_OK(ctx, ctx->GetAttr(kMemoryBudgetBytes,
                                   &extensions_.memory_budget_bytes));
  OP_REQUIRES(ctx, extensions_.memory_budget_bytes >= 0,
              absl::InvalidArgumentError(absl::StrCat(
                  "`memory_budget_bytes` must be >= 0 (0: no budget), got ",
                  extensions_.memory_budget_bytes, ".")));
  float stall_warning_seconds;
  OP_REQUIRES_OK(ctx,
                 ctx->GetAttr(kStallWarningSeconds, &stall_warning_seconds));
  OP_REQUIRES(ctx, stall_warning_seconds >= 0,
              absl::InvalidArgumentError(absl::StrCat(
                  "`stall_warning_seconds` must be >= 0 (0: never warn), got ",
                  stall_warning_seconds, ".")));
  extensions_.stall_warning_seconds = stall_warning_seconds;
  OP_REQUIRES_OK(ctx,
                 ctx->GetAttr(kProduceInline, &extensions_.produce_inline));
}

namespace {

// Reads one of the scalar count arguments, naming it and the value it got
// when that is not a scalar of at least `minimum`.
absl::Status ParseCount(OpKernelContext* ctx, absl::string_view name,
                        int64_t minimum, int64_t* count) {
  const Tensor* tensor = nullptr;
  TF_RETURN_IF_ERROR(ctx->input(name, &tensor));
  if (!tensorflow::TensorShapeUtils::IsScalar(tensor->shape())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "`", name, "` must be a scalar, got a tensor of shape ",
        tensor->shape().DebugString(), ": ",
        tensor->SummarizeValue(8, /*print_v2=*/true), "."));
  }
  *count = tensor->scalar<int64_t>()();
  if (*count < minimum) {
    return absl::InvalidArgumentError(
        absl::StrCat("`", name, "` must be ", minimum == 0 ? ">= 0" : "> 0",
                     ", got ", *count, "."));
  }
  return absl::OkStatus();
}

}  // namespace

void ParallelInterleaveDatasetOp::MakeDataset(OpKernelContext* ctx,
                                              DatasetBase* input,
                                              DatasetBase** output) {
  SourcePoolOptions arguments = extensions_;
  OP_REQUIRES_OK(ctx, ParseCount(ctx, kCycleLength, 1,
                                 &arguments.cycle_length));
  OP_REQUIRES_OK(ctx, ParseCount(ctx, kBlockLength, 1,
                                 &arguments.block_length));
  OP_REQUIRES_OK(ctx, ParseCount(ctx, kBufferOutputElements, 1,
                                 &arguments.buffer_output_elements));
  OP_REQUIRES_OK(ctx, ParseCount(ctx, kPrefetchInputElements, 0,
                                 &arguments.prefetch_input_elements));
  std::unique_ptr<CapturedFunction> captured_func;
  OP_REQUIRES_OK(ctx, CapturedFunction::Create(ctx, func_metadata_,
                                               kOtherArguments,
                                               &captured_func));
  auto dataset = std::make_unique<Dataset>(
      ctx, input, std::move(captured_func), arguments, deterministic_,
      output_types_, output_shapes_);
  // The framework takes the dataset's reference.
  *output = dataset.release();
}

namespace {
REGISTER_KERNEL_BUILDER(
    Name(ParallelInterleaveDatasetOp::kOpName).Device(tensorflow::DEVICE_CPU),
    ParallelInterleaveDatasetOp);
}  // namespace

}  // namespace tf_interleave
