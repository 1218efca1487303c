// Unit tests of the checkpoint records (cc/kernels/checkpoint_io.*): what the
// writer stores reads back unchanged, and a checkpoint of another format, a
// missing record or a corrupt count is refused with an error that says which.
// Links TensorFlow's framework library (tensors, statuses); the store is an
// in-memory map in place of the iterator-state variant.
#include "cc/kernels/checkpoint_io.h"

#include <map>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cc/tests/test_main.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_interleave {
namespace {

using tensorflow::Tensor;
using tensorflow::tstring;

constexpr char kName[] = "Iterator::Root::TfInterleave";

// Keys as `name` + "|" + key, each value a tensor (scalars included).
class MemoryStore : public tensorflow::data::IteratorStateReader,
                    public tensorflow::data::IteratorStateWriter {
 public:
  static std::string KeyOf(absl::string_view name, absl::string_view key) {
    return absl::StrCat(name, "|", key);
  }

  std::map<std::string, Tensor>& values() { return values_; }

  bool Contains(absl::string_view key) const override {
    return Contains(kName, key);
  }
  bool Contains(absl::string_view name, absl::string_view key) const override {
    return values_.count(KeyOf(name, key)) > 0;
  }
  absl::Status ReadScalar(absl::string_view key, int64_t* val) const override {
    return Scalar(kName, key, val);
  }
  absl::Status ReadScalar(absl::string_view name, absl::string_view key,
                          int64_t* val) const override {
    return Scalar(name, key, val);
  }
  absl::Status ReadScalar(absl::string_view key, tstring* val) const override {
    return Scalar(kName, key, val);
  }
  absl::Status ReadScalar(absl::string_view name, absl::string_view key,
                          tstring* val) const override {
    return Scalar(name, key, val);
  }
  absl::Status ReadTensor(absl::string_view key, Tensor* val) const override {
    return ReadTensor(kName, key, val);
  }
  absl::Status ReadTensor(tensorflow::FunctionLibraryRuntime*,
                          absl::string_view key, Tensor* val) const override {
    return ReadTensor(kName, key, val);
  }
  absl::Status ReadTensor(absl::string_view name, absl::string_view key,
                          Tensor* val) const override {
    return Find(name, key, tensorflow::DT_INVALID, val);
  }
  absl::Status ReadTensor(tensorflow::FunctionLibraryRuntime*,
                          absl::string_view name, absl::string_view key,
                          Tensor* val) const override {
    return ReadTensor(name, key, val);
  }

  absl::Status WriteScalar(absl::string_view key, const int64_t val) override {
    return WriteScalar(kName, key, val);
  }
  absl::Status WriteScalar(absl::string_view name, absl::string_view key,
                           const int64_t val) override {
    return WriteTensor(name, key, Tensor(val));
  }
  absl::Status WriteScalar(absl::string_view key,
                           const tstring& val) override {
    return WriteScalar(kName, key, val);
  }
  absl::Status WriteScalar(absl::string_view name, absl::string_view key,
                           const tstring& val) override {
    return WriteTensor(name, key, Tensor(val));
  }
  absl::Status WriteTensor(absl::string_view key, const Tensor& val) override {
    return WriteTensor(kName, key, val);
  }
  absl::Status WriteTensor(absl::string_view name, absl::string_view key,
                           const Tensor& val) override {
    const bool added = values_.emplace(KeyOf(name, key), val).second;
    if (!added) {
      return absl::AlreadyExistsError(absl::StrCat("written twice: ", key));
    }
    return absl::OkStatus();
  }

 private:
  template <typename T>
  absl::Status Scalar(absl::string_view name, absl::string_view key,
                      T* val) const {
    Tensor tensor;
    TF_RETURN_IF_ERROR(
        Find(name, key, tensorflow::DataTypeToEnum<T>::value, &tensor));
    *val = tensor.scalar<T>()();
    return absl::OkStatus();
  }

  // `dtype` DT_INVALID: any type.
  absl::Status Find(absl::string_view name, absl::string_view key,
                    tensorflow::DataType dtype, Tensor* tensor) const {
    auto it = values_.find(KeyOf(name, key));
    if (it == values_.end()) {
      return absl::NotFoundError(absl::StrCat("no record ", key));
    }
    if (dtype != tensorflow::DT_INVALID && it->second.dtype() != dtype) {
      return absl::InvalidArgumentError(absl::StrCat("wrong type: ", key));
    }
    *tensor = it->second;
    return absl::OkStatus();
  }

  std::map<std::string, Tensor> values_;
};

Tensor Int64Vector(std::vector<int64_t> values) {
  Tensor tensor(tensorflow::DT_INT64,
                tensorflow::TensorShape({static_cast<int64_t>(values.size())}));
  for (size_t i = 0; i < values.size(); ++i) {
    tensor.vec<int64_t>()(i) = values[i];
  }
  return tensor;
}

BufferedElement Element(std::vector<Tensor> tensors) {
  BufferedElement element;
  for (const Tensor& tensor : tensors) element.bytes += tensor.TotalBytes();
  element.tensors = std::move(tensors);
  return element;
}

BufferedElement ErrorElement(absl::Status status) {
  BufferedElement element;
  element.status = std::move(status);
  return element;
}

PoolRecord FullRecord() {
  PoolRecord record;
  record.symbolic = false;
  record.cycle_length = 2;
  record.block_length = 3;
  record.buffer_output_elements = 4;
  record.prefetch_input_elements = 1;
  record.sloppy = 1;
  record.scheduler.started = true;
  record.scheduler.cycle = {5, -1};
  record.scheduler.next_index = 1;
  record.scheduler.block_count = 2;
  record.scheduler.next_source = 6;
  record.scheduler.inputs_known = 7;
  record.scheduler.input_ended = true;
  record.scheduler.sloppy_skips = 9;
  record.scheduler.promoted = {6};
  record.scheduler.promotions = 1;
  record.sources_pulled = 7;
  record.input_ended = true;
  record.skipped = {SkippedInput{3, "shard-3", 12, "DATA_LOSS: truncated"}};

  SourceRecord open;
  open.source = 5;
  open.retries = 1;
  open.input_element = {Tensor(tstring("shard-5")), Int64Vector({1, 2, 3})};
  open.produced = 11;
  open.open = true;
  open.buffer.push_back(Element({Int64Vector({40, 41})}));
  open.buffer.push_back(
      ErrorElement(absl::InternalError("the fourth element failed")));
  record.live.push_back(std::move(open));

  SourceRecord staged;
  staged.source = 6;
  staged.input_element = {Tensor(tstring("shard-6"))};
  staged.needs_open = true;
  staged.skipped = true;
  staged.skip_error = absl::UnavailableError("shard-6 is offline");
  staged.ended = true;
  record.live.push_back(std::move(staged));
  return record;
}

std::string Text(const Tensor& tensor) { return tensor.DebugString(100); }

void CheckSameTensors(const std::vector<Tensor>& a,
                      const std::vector<Tensor>& b) {
  CHECK_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK_EQ(Text(a[i]), Text(b[i])) << " (tensor " << i << ")";
  }
}

void CheckSameElements(const std::deque<BufferedElement>& a,
                       const std::deque<BufferedElement>& b) {
  CHECK_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].status == b[i].status) << " (element " << i << ")";
    CHECK_EQ(a[i].bytes, b[i].bytes) << " (element " << i << ")";
    CheckSameTensors(a[i].tensors, b[i].tensors);
  }
}

void CheckSameRecords(const PoolRecord& a, const PoolRecord& b) {
  CHECK_EQ(a.symbolic, b.symbolic);
  CHECK_EQ(a.cycle_length, b.cycle_length);
  CHECK_EQ(a.block_length, b.block_length);
  CHECK_EQ(a.buffer_output_elements, b.buffer_output_elements);
  CHECK_EQ(a.prefetch_input_elements, b.prefetch_input_elements);
  CHECK_EQ(a.sloppy, b.sloppy);
  CHECK_EQ(a.scheduler.started, b.scheduler.started);
  CHECK_EQ(a.scheduler.cycle, b.scheduler.cycle);
  CHECK_EQ(a.scheduler.next_index, b.scheduler.next_index);
  CHECK_EQ(a.scheduler.block_count, b.scheduler.block_count);
  CHECK_EQ(a.scheduler.next_source, b.scheduler.next_source);
  CHECK_EQ(a.scheduler.inputs_known, b.scheduler.inputs_known);
  CHECK_EQ(a.scheduler.input_ended, b.scheduler.input_ended);
  CHECK_EQ(a.scheduler.sloppy_skips, b.scheduler.sloppy_skips);
  CHECK_EQ(a.scheduler.promoted, b.scheduler.promoted);
  CHECK_EQ(a.scheduler.promotions, b.scheduler.promotions);
  CHECK_EQ(a.sources_pulled, b.sources_pulled);
  CHECK_EQ(a.input_ended, b.input_ended);
  CHECK_EQ(a.skipped.size(), b.skipped.size());
  for (size_t i = 0; i < a.skipped.size(); ++i) {
    CHECK_EQ(a.skipped[i].source, b.skipped[i].source);
    CHECK_EQ(a.skipped[i].label, b.skipped[i].label);
    CHECK_EQ(a.skipped[i].element_index, b.skipped[i].element_index);
    CHECK_EQ(a.skipped[i].error, b.skipped[i].error);
  }
  CHECK_EQ(a.live.size(), b.live.size());
  for (size_t i = 0; i < a.live.size(); ++i) {
    const SourceRecord& x = a.live[i];
    const SourceRecord& y = b.live[i];
    CHECK_EQ(x.source, y.source);
    CHECK_EQ(x.retries, y.retries);
    CheckSameTensors(x.input_element, y.input_element);
    CHECK_EQ(x.skipped, y.skipped);
    CHECK(x.skip_error == y.skip_error) << " (source " << x.source << ")";
    CHECK_EQ(x.ended, y.ended);
    CHECK_EQ(x.needs_open, y.needs_open);
    CHECK_EQ(x.produced, y.produced);
    CheckSameElements(x.buffer, y.buffer);
    CHECK_EQ(x.open, y.open);
    CHECK_EQ(x.delivered, y.delivered);
    CHECK_EQ(x.stop_at, y.stop_at);
    CHECK_EQ(x.input_failed, y.input_failed);
    CHECK(x.input_error == y.input_error) << " (source " << x.source << ")";
  }
}

absl::Status Write(const PoolRecord& record, MemoryStore* store) {
  return CheckpointWriter(store, kName).Pool(record);
}

absl::Status Read(MemoryStore* store, PoolRecord* record) {
  return CheckpointReader(/*flr=*/nullptr, store, kName).Pool(record);
}

// Writes FullRecord(), changes one record with `key` = `value` (or removes it
// when `value` is absent), and reads it all back.
absl::Status ReadAltered(absl::string_view key,
                         std::optional<int64_t> value) {
  MemoryStore store;
  const absl::Status written = Write(FullRecord(), &store);
  if (!written.ok()) return written;
  const std::string full_key = MemoryStore::KeyOf(kName, key);
  if (value.has_value()) {
    store.values()[full_key] = Tensor(*value);
  } else {
    store.values().erase(full_key);
  }
  PoolRecord read;
  return Read(&store, &read);
}

TEST(FullRecordReadsBackUnchanged) {
  const PoolRecord written = FullRecord();
  MemoryStore store;
  CHECK(Write(written, &store).ok());
  PoolRecord read;
  const absl::Status status = Read(&store, &read);
  CHECK(status.ok()) << " " << status;
  CheckSameRecords(written, read);
}

TEST(SymbolicRecordReadsBackUnchanged) {
  PoolRecord written = FullRecord();
  written.symbolic = true;
  for (SourceRecord& source : written.live) {
    // A symbolic checkpoint keeps positions, not produced elements.
    source.ended = false;
    source.needs_open = false;
    source.produced = 0;
    source.buffer.clear();
    source.open = false;
  }
  written.live[0].delivered = 8;
  written.live[0].stop_at = 13;
  written.live[1].input_failed = true;
  written.live[1].input_error = absl::NotFoundError("shard-6: no such file");
  MemoryStore store;
  CHECK(Write(written, &store).ok());
  CHECK(!store.Contains(kName, "live.0.buffer.size"));
  PoolRecord read;
  const absl::Status status = Read(&store, &read);
  CHECK(status.ok()) << " " << status;
  CheckSameRecords(written, read);
}

TEST(EveryRecordIsUnderTheIteratorsName) {
  MemoryStore store;
  CHECK(Write(FullRecord(), &store).ok());
  CHECK(store.values().size() > 50) << " " << store.values().size();
  const std::string prefix = absl::StrCat(kName, "|");
  for (const auto& entry : store.values()) {
    CHECK(absl::StartsWith(entry.first, prefix)) << " " << entry.first;
  }
  CHECK_EQ(store.values()
               .at(MemoryStore::KeyOf(kName, "format"))
               .scalar<int64_t>()(),
           kCheckpointFormat);
}

TEST(OtherFormatIsRefusedAndNamed) {
  const absl::Status status = ReadAltered("format", kCheckpointFormat + 1);
  CHECK(absl::IsFailedPrecondition(status)) << " " << status;
  const std::string message(status.message());
  CHECK(absl::StrContains(
      message, absl::StrCat("checkpoint format ", kCheckpointFormat + 1)))
      << " " << message;
  CHECK(absl::StrContains(
      message, absl::StrCat("reads format ", kCheckpointFormat)))
      << " " << message;
}

TEST(MissingFormatIsRefusedAndNamed) {
  const absl::Status status = ReadAltered("format", std::nullopt);
  CHECK(absl::IsFailedPrecondition(status)) << " " << status;
  const std::string message(status.message());
  CHECK(absl::StrContains(message, "no tf_interleave checkpoint format"))
      << " " << message;
  CHECK(absl::StrContains(message, kName)) << " " << message;
}

TEST(MissingRecordFailsAtThatRecord) {
  const absl::Status status = ReadAltered("live.1.needs_open", std::nullopt);
  CHECK(absl::IsNotFound(status)) << " " << status;
  CHECK(absl::StrContains(status.message(), "live.1.needs_open"))
      << " " << status;
}

TEST(CorruptCountsAreDataLossNotAllocations) {
  const std::vector<std::pair<std::string, int64_t>> corruptions = {
      {"live.size", int64_t{1} << 40},
      {"skipped.size", -1},
      {"scheduler.cycle.size", int64_t{1} << 30},
      {"live.0.buffer.size", -3},
      {"live.0.input.size", int64_t{1} << 62},
  };
  for (const auto& [key, count] : corruptions) {
    const absl::Status status = ReadAltered(key, count);
    CHECK(absl::IsDataLoss(status)) << " " << key << ": " << status;
    CHECK(absl::StrContains(status.message(), absl::StrCat(" = ", count)))
        << " " << status;
  }
}

TEST(TruncatedListFailsAtItsFirstMissingEntry) {
  // Claims more open sources than were written.
  const absl::Status status = ReadAltered("live.size", 3);
  CHECK(absl::IsNotFound(status)) << " " << status;
  CHECK(absl::StrContains(status.message(), "live.2.source"))
      << " " << status;
}

}  // namespace
}  // namespace tf_interleave
