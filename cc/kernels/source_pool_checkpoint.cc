// SourcePool's checkpoints: what a full or symbolic checkpoint records of the
// pool, and how a pool that has not started is rebuilt from it. The record's
// encoding lives in checkpoint_io.{h,cc}; the pool's workers in source_pool.cc,
// its consumer in source_pool_consumer.cc.
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cc/kernels/checkpoint_io.h"
#include "cc/kernels/source_pool.h"
#include "tensorflow/core/lib/gtl/cleanup.h"
#include "tensorflow/core/platform/errors.h"

namespace tf_interleave {
namespace {

using ::tensorflow::mutex_lock;
using ::tensorflow::data::IteratorBase;
using ::tensorflow::data::IteratorContext;

}  // namespace

absl::Status SourcePool::CheckArguments(int64_t cycle_length,
                                        int64_t block_length,
                                        int64_t buffer_output_elements,
                                        int64_t prefetch_input_elements,
                                        int64_t sloppy) const {
  const SourcePoolOptions& o = options_;
  if (cycle_length == o.cycle_length && block_length == o.block_length &&
      buffer_output_elements == o.buffer_output_elements &&
      prefetch_input_elements == o.prefetch_input_elements &&
      (sloppy != 0) == o.sloppy) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "The checkpoint was written by a tf_interleave.parallel_interleave with "
      "cycle_length=", cycle_length, ", block_length=", block_length,
      ", buffer_output_elements=", buffer_output_elements,
      ", prefetch_input_elements=", prefetch_input_elements,
      ", sloppy=", sloppy != 0 ? "True" : "False",
      ", but it is being restored into one with "
      "cycle_length=", o.cycle_length, ", block_length=", o.block_length,
      ", buffer_output_elements=", o.buffer_output_elements,
      ", prefetch_input_elements=", o.prefetch_input_elements,
      ", sloppy=", o.sloppy ? "True" : "False", "."));
}

absl::Status SourcePool::WriteState(
    tensorflow::data::SerializationContext* ctx,
    tensorflow::data::IteratorStateWriter* writer, const std::string& name,
    bool symbolic, const std::unique_ptr<IteratorBase>& input) {
  PoolRecord record;
  record.symbolic = symbolic;
  record.cycle_length = options_.cycle_length;
  record.block_length = options_.block_length;
  record.buffer_output_elements = options_.buffer_output_elements;
  record.prefetch_input_elements = options_.prefetch_input_elements;
  record.sloppy = options_.sloppy;
  record.scheduler = scheduler_.state();
  record.sources_pulled = sources_pulled_;
  record.input_ended = input_ended_;
  record.skipped = skipped_inputs_;
  std::vector<const Seat*> live;
  for (const auto& entry : seat_of_source_) live.push_back(entry.second);
  std::sort(live.begin(), live.end(), [](const Seat* a, const Seat* b) {
    return a->source < b->source;
  });
  for (const Seat* seat : live) {
    record.live.push_back(RecordOf(*seat, symbolic));
  }
  TF_RETURN_IF_ERROR(CheckpointWriter(writer, name).Pool(record));
  if (symbolic) return absl::OkStatus();
  TF_RETURN_IF_ERROR(callbacks_.save_iterator(ctx, writer, input));
  for (const Seat* seat : live) {
    if (seat->iterator != nullptr) {
      TF_RETURN_IF_ERROR(
          callbacks_.save_iterator(ctx, writer, seat->iterator));
    }
  }
  return absl::OkStatus();
}

SourceRecord SourcePool::RecordOf(const Seat& seat, bool symbolic) const {
  SourceRecord record;
  record.source = seat.source;
  record.retries = seat.retries;
  record.input_element = seat.input_element;
  record.skipped = seat.skipped;
  if (seat.skipped) record.skip_error = seat.skip_error;
  if (symbolic) {
    // A position: the source is reopened and skips what it delivered; one
    // that ended (a skipped error or a failed open included) stops again
    // where it ended, so a delivered open error is not made again. A failed
    // input pull cannot be repeated, so its error is kept instead.
    record.delivered = seat.delivered;
    record.stop_at = seat.skipped || seat.source_ended ? seat.produced : -1;
    record.input_failed = !seat.input_error.ok();
    if (record.input_failed && seat.delivered == 0) {
      record.input_error = seat.input_error;
    }
    return record;
  }
  record.ended = seat.source_ended;
  record.needs_open = seat.needs_open;
  record.produced = seat.produced;
  // An element waiting for the memory budget is saved as buffered.
  record.buffer = seat.buffer;
  record.buffer.insert(record.buffer.end(), seat.pending.begin(),
                       seat.pending.end());
  record.open = seat.iterator != nullptr;
  return record;
}

absl::Status SourcePool::Save(tensorflow::data::SerializationContext* ctx,
                              tensorflow::data::IteratorStateWriter* writer,
                              const std::string& name,
                              const std::unique_ptr<IteratorBase>& input) {
  mutex_lock l(mu_);
  if (ctx->symbolic_checkpoint()) {
    // The input's state is recorded with each element; pulls since the last
    // one are only in `input_checkpoint_`. Written with the pool's current
    // state, so that a source pulled since then is not pulled again.
    if (input_checkpoint_) TF_RETURN_IF_ERROR(input_checkpoint_->Save(writer));
    return WriteState(ctx, writer, name, /*symbolic=*/true, input);
  }
  ++pause_requests_;
  auto resume = tensorflow::gtl::MakeCleanup([this]()
                                                 TF_NO_THREAD_SAFETY_ANALYSIS {
    if (--pause_requests_ == 0) WakeAllWorkers();
  });
  while (active_calls_ > 0 && !cancelled_) pause_cond_var_.wait(l);
  if (cancelled_) {
    return absl::CancelledError("tf_interleave iterator was cancelled");
  }
  return WriteState(ctx, writer, name, /*symbolic=*/false, input);
}

void SourcePool::RecordSymbolicCheckpoint(IteratorContext* ctx,
                                          const std::string& name) {
  if (!ctx->symbolic_checkpoint()) return;
  mutex_lock l(mu_);
  if (input_checkpoint_) {
    ctx->MergeCheckpoint(input_checkpoint_.get());
    input_checkpoint_ = std::make_unique<tensorflow::data::MemoryCheckpoint>(
        ctx->id_registry());
  }
  tensorflow::data::SerializationContext::Params params;
  params.symbolic_checkpoint = true;
  tensorflow::data::SerializationContext serialization_ctx(std::move(params));
  std::unique_ptr<IteratorBase> no_input;
  ctx->UpdateCheckpointStatus([&]() TF_NO_THREAD_SAFETY_ANALYSIS {
    return WriteState(&serialization_ctx, ctx->checkpoint(), name,
                      /*symbolic=*/true, no_input);
  });
}

absl::Status SourcePool::Restore(IteratorContext* ctx,
                                 tensorflow::data::IteratorStateReader* reader,
                                 const std::string& name,
                                 const std::unique_ptr<IteratorBase>& input) {
  mutex_lock l(mu_);
  if (seat_ctx_ != nullptr || !seats_.empty() || sources_pulled_ > 0) {
    return absl::FailedPreconditionError(
        "A tf_interleave iterator can only be restored before its first "
        "element is read.");
  }
  // A symbolic checkpoint taken before the first element holds nothing of
  // this iterator yet: it starts afresh.
  if (ctx->symbolic_checkpoint() && !reader->Contains(name, "symbolic")) {
    return absl::OkStatus();
  }
  PoolRecord record;
  TF_RETURN_IF_ERROR(
      CheckpointReader(ctx->flr(), reader, name).Pool(&record));
  TF_RETURN_IF_ERROR(CheckArguments(
      record.cycle_length, record.block_length, record.buffer_output_elements,
      record.prefetch_input_elements, record.sloppy));
  const InterleaveScheduler::State& state = record.scheduler;
  const std::string problem = scheduler_.Restore(state);
  if (!problem.empty()) {
    return absl::DataLossError(
        absl::StrCat("tf_interleave checkpoint is inconsistent: ", problem));
  }
  sources_pulled_ = record.sources_pulled;
  input_ended_ = record.input_ended;
  if (sources_pulled_ != state.inputs_known ||
      input_ended_ != state.input_ended) {
    return absl::DataLossError(absl::StrCat(
        "tf_interleave checkpoint is inconsistent: the pool pulled ",
        sources_pulled_, " inputs (input ended: ",
        input_ended_ ? "yes" : "no", ") but the scheduler knows ",
        state.inputs_known, " (input ended: ",
        state.input_ended ? "yes" : "no", ")"));
  }
  if (static_cast<int64_t>(record.skipped.size()) > sources_pulled_) {
    return absl::DataLossError(absl::StrCat(
        "tf_interleave checkpoint lists ", record.skipped.size(),
        " skipped inputs of only ", sources_pulled_, " pulled"));
  }
  if (static_cast<int64_t>(record.live.size()) > num_seats_) {
    return absl::DataLossError(absl::StrCat(
        "tf_interleave checkpoint holds ", record.live.size(),
        " open sources for ", num_seats_, " seats"));
  }
  TF_RETURN_IF_ERROR(callbacks_.restore_iterator(ctx, reader, input));
  skipped_inputs_ = std::move(record.skipped);

  // Nested iterators are remade with the pool's cancellation manager, like
  // the ones the seats open.
  IteratorContext::Params params(ctx);
  params.cancellation_manager = cancellation_manager_.get();
  params.symbolic_checkpoint = false;
  IteratorContext nested_ctx(std::move(params));
  for (SourceRecord& saved : record.live) {
    seats_.push_back(std::make_unique<Seat>());
    Seat* seat = seats_.back().get();
    seat->source = saved.source;
    seat->retries = saved.retries;
    seat->input_element = std::move(saved.input_element);
    seat->label = LabelOf(seat->input_element, seat->source);
    seat->skipped = saved.skipped;
    seat->skip_error = saved.skip_error;
    if (record.symbolic) {
      seat->delivered = seat->produced = saved.delivered;
      seat->stop_at = saved.stop_at;
      // Kept for a later checkpoint of this seat.
      seat->input_error = saved.input_error;
      if (!saved.input_error.ok()) {
        seat->buffer.push_back(BufferedElement{saved.input_error, {}, 0});
        ++seat->produced;
      }
      // A source whose input pull failed has nothing to open, delivered
      // or not.
      seat->source_ended =
          saved.input_failed ||
          (seat->stop_at >= 0 && seat->produced >= seat->stop_at);
      seat->needs_open = !seat->source_ended;
    } else {
      seat->source_ended = saved.ended;
      seat->needs_open = saved.needs_open;
      seat->produced = saved.produced;
      seat->buffer = std::move(saved.buffer);
      for (const BufferedElement& element : seat->buffer) {
        seat->buffered_bytes += element.bytes;
        buffered_bytes_ += element.bytes;
      }
      if (saved.open) {
        TF_RETURN_IF_ERROR(callbacks_.open_source(
            &nested_ctx, seat->input_element, seat->source, &seat->iterator));
        TF_RETURN_IF_ERROR(
            callbacks_.restore_iterator(&nested_ctx, reader, seat->iterator));
      }
    }
    if (seat->source < 0 || seat->source >= sources_pulled_ ||
        !seat_of_source_.emplace(seat->source, seat).second) {
      return absl::DataLossError(absl::StrCat(
          "tf_interleave checkpoint holds source ", seat->source,
          " twice or outside the ", sources_pulled_, " inputs pulled"));
    }
  }
  // Every source the scheduler may ask about must be held by a seat: the
  // staged ones (not those that entered the cycle early, which may have
  // ended since) and the cycle's.
  for (int64_t source = state.next_source; source < state.inputs_known;
       ++source) {
    if (!seat_of_source_.contains(source) &&
        !std::binary_search(state.promoted.begin(), state.promoted.end(),
                            source)) {
      return absl::DataLossError(absl::StrCat(
          "tf_interleave checkpoint lacks staged source ", source));
    }
  }
  for (int64_t source : scheduler_.LiveSources()) {
    if (!seat_of_source_.contains(source)) {
      return absl::DataLossError(absl::StrCat(
          "tf_interleave checkpoint lacks source ", source,
          " of the cycle"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tf_interleave
