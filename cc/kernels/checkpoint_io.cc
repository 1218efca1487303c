#include "cc/kernels/checkpoint_io.h"

#include "absl/strings/str_cat.h"
#include "tensorflow/core/platform/errors.h"

namespace tf_interleave {
namespace {

// Counts read back from a checkpoint are bounded so that a corrupt file
// gives an error instead of a huge allocation.
constexpr int64_t kMaxCount = int64_t{1} << 24;

absl::Status CheckCount(absl::string_view key, int64_t count) {
  if (count < 0 || count > kMaxCount) {
    return absl::DataLossError(absl::StrCat(
        "tf_interleave checkpoint is corrupt: ", key, " = ", count));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckpointWriter::Int(absl::string_view key, int64_t value) {
  return writer_->WriteScalar(name_, key, value);
}

absl::Status CheckpointReader::Int(absl::string_view key, int64_t* value) {
  return reader_->ReadScalar(name_, key, value);
}

absl::Status CheckpointWriter::String(absl::string_view key,
                                      const std::string& value) {
  return writer_->WriteScalar(name_, key, tensorflow::tstring(value));
}

absl::Status CheckpointReader::String(absl::string_view key,
                                      std::string* value) {
  tensorflow::tstring text;
  TF_RETURN_IF_ERROR(reader_->ReadScalar(name_, key, &text));
  *value = std::string(text);
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Tensors(
    absl::string_view key, const std::vector<tensorflow::Tensor>& tensors) {
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".size"), tensors.size()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    TF_RETURN_IF_ERROR(
        writer_->WriteTensor(name_, absl::StrCat(key, ".", i), tensors[i]));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::Tensors(
    absl::string_view key, std::vector<tensorflow::Tensor>* tensors) {
  int64_t size;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".size"), &size));
  TF_RETURN_IF_ERROR(CheckCount(key, size));
  tensors->resize(size);
  for (int64_t i = 0; i < size; ++i) {
    TF_RETURN_IF_ERROR(reader_->ReadTensor(
        ctx_->flr(), name_, absl::StrCat(key, ".", i), &(*tensors)[i]));
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Elements(
    absl::string_view key, const std::deque<BufferedElement>& elements) {
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".size"), elements.size()));
  for (size_t i = 0; i < elements.size(); ++i) {
    const std::string element_key = absl::StrCat(key, ".", i);
    const absl::Status& status = elements[i].status;
    TF_RETURN_IF_ERROR(Int(absl::StrCat(element_key, ".code"),
                           static_cast<int64_t>(status.code())));
    if (!status.ok()) {
      TF_RETURN_IF_ERROR(writer_->WriteScalar(
          name_, absl::StrCat(element_key, ".message"),
          tensorflow::tstring(std::string(status.message()))));
    }
    TF_RETURN_IF_ERROR(Tensors(element_key, elements[i].tensors));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::Elements(absl::string_view key,
                                        std::deque<BufferedElement>* elements) {
  int64_t size;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".size"), &size));
  TF_RETURN_IF_ERROR(CheckCount(key, size));
  elements->clear();
  for (int64_t i = 0; i < size; ++i) {
    const std::string element_key = absl::StrCat(key, ".", i);
    BufferedElement element;
    int64_t code;
    TF_RETURN_IF_ERROR(Int(absl::StrCat(element_key, ".code"), &code));
    if (code != static_cast<int64_t>(absl::StatusCode::kOk)) {
      tensorflow::tstring message;
      TF_RETURN_IF_ERROR(reader_->ReadScalar(
          name_, absl::StrCat(element_key, ".message"), &message));
      element.status =
          absl::Status(static_cast<absl::StatusCode>(code), message);
    }
    TF_RETURN_IF_ERROR(Tensors(element_key, &element.tensors));
    for (const tensorflow::Tensor& tensor : element.tensors) {
      element.bytes += tensor.TotalBytes();
    }
    elements->push_back(std::move(element));
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Scheduler(
    absl::string_view key, const InterleaveScheduler::State& state) {
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".started"), state.started));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".cycle.size"), state.cycle.size()));
  for (size_t i = 0; i < state.cycle.size(); ++i) {
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".cycle.", i), state.cycle[i]));
  }
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".next_index"), state.next_index));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".block_count"), state.block_count));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".next_source"), state.next_source));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".inputs_known"), state.inputs_known));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".input_ended"), state.input_ended));
  return Int(absl::StrCat(key, ".sloppy_skips"), state.sloppy_skips);
}

absl::Status CheckpointReader::Scheduler(absl::string_view key,
                                         InterleaveScheduler::State* state) {
  int64_t value;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".started"), &value));
  state->started = value != 0;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".cycle.size"), &value));
  TF_RETURN_IF_ERROR(CheckCount(key, value));
  state->cycle.resize(value);
  for (size_t i = 0; i < state->cycle.size(); ++i) {
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".cycle.", i), &state->cycle[i]));
  }
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".next_index"), &state->next_index));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".block_count"), &state->block_count));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".next_source"), &state->next_source));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".inputs_known"), &state->inputs_known));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".input_ended"), &value));
  state->input_ended = value != 0;
  return Int(absl::StrCat(key, ".sloppy_skips"), &state->sloppy_skips);
}

}  // namespace tf_interleave
