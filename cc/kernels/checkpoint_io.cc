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

absl::Status CheckpointWriter::IntList(absl::string_view key,
                                       const std::vector<int64_t>& values) {
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".size"), values.size()));
  for (size_t i = 0; i < values.size(); ++i) {
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".", i), values[i]));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::IntList(absl::string_view key,
                                       std::vector<int64_t>* values) {
  int64_t size;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".size"), &size));
  TF_RETURN_IF_ERROR(CheckCount(key, size));
  values->resize(size);
  for (int64_t i = 0; i < size; ++i) {
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".", i), &(*values)[i]));
  }
  return absl::OkStatus();
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
        flr_, name_, absl::StrCat(key, ".", i), &(*tensors)[i]));
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
  TF_RETURN_IF_ERROR(IntList(absl::StrCat(key, ".cycle"), state.cycle));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".next_index"), state.next_index));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".block_count"), state.block_count));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".next_source"), state.next_source));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".inputs_known"), state.inputs_known));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".input_ended"), state.input_ended));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".sloppy_skips"), state.sloppy_skips));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".promotions"), state.promotions));
  return IntList(absl::StrCat(key, ".promoted"), state.promoted);
}

absl::Status CheckpointReader::Scheduler(absl::string_view key,
                                         InterleaveScheduler::State* state) {
  int64_t value;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".started"), &value));
  state->started = value != 0;
  TF_RETURN_IF_ERROR(IntList(absl::StrCat(key, ".cycle"), &state->cycle));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".next_index"), &state->next_index));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".block_count"), &state->block_count));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".next_source"), &state->next_source));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".inputs_known"), &state->inputs_known));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".input_ended"), &value));
  state->input_ended = value != 0;
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".sloppy_skips"), &state->sloppy_skips));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".promotions"), &state->promotions));
  return IntList(absl::StrCat(key, ".promoted"), &state->promoted);
}

// An error kept apart from a buffer, as a list of zero or one element.
absl::Status CheckpointWriter::Error(absl::string_view key,
                                     const absl::Status& status) {
  std::deque<BufferedElement> elements;
  if (!status.ok()) elements.push_back(BufferedElement{status, {}, 0});
  return Elements(key, elements);
}

absl::Status CheckpointReader::Error(absl::string_view key,
                                     absl::Status* status) {
  std::deque<BufferedElement> elements;
  TF_RETURN_IF_ERROR(Elements(key, &elements));
  *status = elements.empty() ? absl::OkStatus() : elements.front().status;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Source(absl::string_view key, bool symbolic,
                                      const SourceRecord& record) {
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".source"), record.source));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".retries"), record.retries));
  TF_RETURN_IF_ERROR(
      Tensors(absl::StrCat(key, ".input"), record.input_element));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".skipped"), record.skipped));
  TF_RETURN_IF_ERROR(
      Error(absl::StrCat(key, ".skip_error"), record.skip_error));
  if (symbolic) {
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".stop_at"), record.stop_at));
    TF_RETURN_IF_ERROR(
        Int(absl::StrCat(key, ".delivered"), record.delivered));
    TF_RETURN_IF_ERROR(
        Int(absl::StrCat(key, ".input_failed"), record.input_failed));
    return Error(absl::StrCat(key, ".input_error"), record.input_error);
  }
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".ended"), record.ended));
  TF_RETURN_IF_ERROR(
      Int(absl::StrCat(key, ".needs_open"), record.needs_open));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".produced"), record.produced));
  TF_RETURN_IF_ERROR(Elements(absl::StrCat(key, ".buffer"), record.buffer));
  return Int(absl::StrCat(key, ".open"), record.open);
}

absl::Status CheckpointReader::Source(absl::string_view key, bool symbolic,
                                      SourceRecord* record) {
  int64_t value;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".source"), &record->source));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".retries"), &record->retries));
  TF_RETURN_IF_ERROR(
      Tensors(absl::StrCat(key, ".input"), &record->input_element));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".skipped"), &value));
  record->skipped = value != 0;
  TF_RETURN_IF_ERROR(
      Error(absl::StrCat(key, ".skip_error"), &record->skip_error));
  if (symbolic) {
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".stop_at"), &record->stop_at));
    TF_RETURN_IF_ERROR(
        Int(absl::StrCat(key, ".delivered"), &record->delivered));
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".input_failed"), &value));
    record->input_failed = value != 0;
    return Error(absl::StrCat(key, ".input_error"), &record->input_error);
  }
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".ended"), &value));
  record->ended = value != 0;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".needs_open"), &value));
  record->needs_open = value != 0;
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".produced"), &record->produced));
  TF_RETURN_IF_ERROR(Elements(absl::StrCat(key, ".buffer"), &record->buffer));
  TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".open"), &value));
  record->open = value != 0;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Pool(const PoolRecord& record) {
  TF_RETURN_IF_ERROR(Int("format", kCheckpointFormat));
  TF_RETURN_IF_ERROR(Int("symbolic", record.symbolic));
  TF_RETURN_IF_ERROR(Int("cycle_length", record.cycle_length));
  TF_RETURN_IF_ERROR(Int("block_length", record.block_length));
  TF_RETURN_IF_ERROR(
      Int("buffer_output_elements", record.buffer_output_elements));
  TF_RETURN_IF_ERROR(
      Int("prefetch_input_elements", record.prefetch_input_elements));
  TF_RETURN_IF_ERROR(Int("sloppy", record.sloppy));
  TF_RETURN_IF_ERROR(Scheduler("scheduler", record.scheduler));
  TF_RETURN_IF_ERROR(Int("sources_pulled", record.sources_pulled));
  TF_RETURN_IF_ERROR(Int("input_ended", record.input_ended));
  TF_RETURN_IF_ERROR(Int("skipped.size", record.skipped.size()));
  for (size_t i = 0; i < record.skipped.size(); ++i) {
    const SkippedInput& skipped = record.skipped[i];
    const std::string key = absl::StrCat("skipped.", i);
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".source"), skipped.source));
    TF_RETURN_IF_ERROR(String(absl::StrCat(key, ".label"), skipped.label));
    TF_RETURN_IF_ERROR(
        Int(absl::StrCat(key, ".element_index"), skipped.element_index));
    TF_RETURN_IF_ERROR(String(absl::StrCat(key, ".error"), skipped.error));
  }
  TF_RETURN_IF_ERROR(Int("live.size", record.live.size()));
  for (size_t i = 0; i < record.live.size(); ++i) {
    TF_RETURN_IF_ERROR(Source(absl::StrCat("live.", i), record.symbolic,
                              record.live[i]));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::Format() {
  if (!reader_->Contains(name_, "format")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "The checkpoint holds no tf_interleave checkpoint format under ",
        name_, ": it was written by another op in this position of the "
        "pipeline (such as tf.data.experimental.parallel_interleave), or by "
        "a tf_interleave build that predates checkpoint formats (this build "
        "reads format ", kCheckpointFormat, ")"));
  }
  int64_t format;
  TF_RETURN_IF_ERROR(Int("format", &format));
  if (format != kCheckpointFormat) {
    return absl::FailedPreconditionError(absl::StrCat(
        "The checkpoint was written in tf_interleave checkpoint format ",
        format, "; this build reads format ", kCheckpointFormat,
        " only: restore it with the tf_interleave version that wrote it"));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::Pool(PoolRecord* record) {
  TF_RETURN_IF_ERROR(Format());
  int64_t value;
  TF_RETURN_IF_ERROR(Int("symbolic", &value));
  record->symbolic = value != 0;
  TF_RETURN_IF_ERROR(Int("cycle_length", &record->cycle_length));
  TF_RETURN_IF_ERROR(Int("block_length", &record->block_length));
  TF_RETURN_IF_ERROR(
      Int("buffer_output_elements", &record->buffer_output_elements));
  TF_RETURN_IF_ERROR(
      Int("prefetch_input_elements", &record->prefetch_input_elements));
  TF_RETURN_IF_ERROR(Int("sloppy", &record->sloppy));
  TF_RETURN_IF_ERROR(Scheduler("scheduler", &record->scheduler));
  TF_RETURN_IF_ERROR(Int("sources_pulled", &record->sources_pulled));
  TF_RETURN_IF_ERROR(Int("input_ended", &value));
  record->input_ended = value != 0;
  TF_RETURN_IF_ERROR(Int("skipped.size", &value));
  TF_RETURN_IF_ERROR(CheckCount("skipped.size", value));
  // Grown as read, so that a corrupt count fails at its first missing entry
  // instead of allocating for all of them.
  record->skipped.clear();
  for (int64_t i = 0; i < value; ++i) {
    SkippedInput& skipped = record->skipped.emplace_back();
    const std::string key = absl::StrCat("skipped.", i);
    TF_RETURN_IF_ERROR(Int(absl::StrCat(key, ".source"), &skipped.source));
    TF_RETURN_IF_ERROR(String(absl::StrCat(key, ".label"), &skipped.label));
    TF_RETURN_IF_ERROR(
        Int(absl::StrCat(key, ".element_index"), &skipped.element_index));
    TF_RETURN_IF_ERROR(String(absl::StrCat(key, ".error"), &skipped.error));
  }
  TF_RETURN_IF_ERROR(Int("live.size", &value));
  TF_RETURN_IF_ERROR(CheckCount("live.size", value));
  record->live.clear();
  for (int64_t i = 0; i < value; ++i) {
    TF_RETURN_IF_ERROR(Source(absl::StrCat("live.", i), record->symbolic,
                              &record->live.emplace_back()));
  }
  return absl::OkStatus();
}

}  // namespace tf_interleave
