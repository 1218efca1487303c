#include "cc/kernels/source_pool.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cc/kernels/checkpoint_io.h"
#include "tensorflow/core/lib/gtl/cleanup.h"
#include "tensorflow/core/platform/env_time.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/profiler/lib/traceme.h"
#include "tensorflow/core/profiler/lib/traceme_encode.h"

namespace tf_interleave {
namespace {

// Producing an element faster than this marks a source as fast.
constexpr int64_t kFastSourceNanos = 50 * 1000;

}  // namespace

using ::tensorflow::CancellationManager;
using ::tensorflow::mutex_lock;
using ::tensorflow::Tensor;
using ::tensorflow::data::IteratorBase;
using ::tensorflow::data::IteratorContext;
using ::tensorflow::profiler::TraceMe;
using ::tensorflow::profiler::TraceMeEncode;

SourcePool::SourcePool(const SourcePoolOptions& options,
                       SourcePoolCallbacks callbacks)
    : options_(options),
      callbacks_(std::move(callbacks)),
      num_seats_(options.cycle_length + options.prefetch_input_elements),
      scheduler_(options.cycle_length, options.block_length, options.sloppy) {}

SourcePool::~SourcePool() {
  // Deregistering first waits for a running parent callback, so none can
  // touch this object once destruction goes on.
  if (deregister_parent_cancellation_) deregister_parent_cancellation_();
  Cancel();
  std::vector<std::unique_ptr<tensorflow::Thread>> threads;
  {
    mutex_lock l(mu_);
    for (auto& seat : seats_) threads.push_back(std::move(seat->thread));
  }
  threads.clear();  // Joins every seat thread.
}

absl::Status SourcePool::Initialize(IteratorContext* ctx) {
  cancellation_manager_ =
      std::make_unique<CancellationManager>(ctx->cancellation_manager());
  return tensorflow::RegisterCancellationCallback(
      ctx->cancellation_manager(), [this]() { Cancel(); },
      &deregister_parent_cancellation_);
}

void SourcePool::Cancel() {
  {
    mutex_lock l(mu_);
    cancelled_ = true;
    consumer_cond_var_.notify_all();
    pause_cond_var_.notify_all();
    for (auto& seat : seats_) seat->cond_var.notify_all();
  }
  // Outside `mu_`: cancellation callbacks of nested iterators may block.
  if (cancellation_manager_) cancellation_manager_->StartCancel();
}

absl::Status SourcePool::EnsureStarted(IteratorContext* ctx) {
  if (seat_ctx_) return absl::OkStatus();
  IteratorContext::Params params(ctx);
  if (cancellation_manager_) {
    params.cancellation_manager = cancellation_manager_.get();
  }
  seat_ctx_ = std::make_unique<IteratorContext>(std::move(params));
  // Seats restored from a checkpoint already hold their sources.
  for (auto& seat : seats_) StartSeatThread(seat.get());
  if (static_cast<int64_t>(seats_.size()) < num_seats_ && !input_ended_) {
    StartSeatThread(AddSeat());
  }
  return absl::OkStatus();
}

SourcePool::Seat* SourcePool::AddSeat() {
  seats_.push_back(std::make_unique<Seat>());
  return seats_.back().get();
}

void SourcePool::StartSeatThread(Seat* seat) {
  seat->thread = seat_ctx_->StartThread(
      absl::StrCat("tf_interleave_seat_", seats_.size()),
      [this, seat]() { SeatThread(seat); });
}

void SourcePool::SeatThread(Seat* seat) {
  IteratorContext* ctx = seat_ctx_.get();
  callbacks_.record_start(ctx);
  while (true) {
    bool holds_source;
    {
      mutex_lock l(mu_);
      holds_source = seat->source >= 0;
    }
    if (!holds_source && !AcquireSource(seat)) break;
    RunSource(seat);
    mutex_lock l(mu_);
    while (!cancelled_ && !seat->released) {
      seat->waiting = true;
      callbacks_.record_stop(ctx);
      seat->cond_var.wait(l);
      callbacks_.record_start(ctx);
    }
    seat->waiting = false;
    if (cancelled_) break;
    seat->source = -1;
  }
  callbacks_.record_stop(ctx);
}

bool SourcePool::BeginCall(Seat* seat, mutex_lock& lock, bool need_room) {
  while (!cancelled_ &&
         (pause_requests_ > 0 ||
          (need_room && static_cast<int64_t>(seat->buffer.size()) >=
                            options_.buffer_output_elements))) {
    seat->waiting = true;
    callbacks_.record_stop(seat_ctx_.get());
    seat->cond_var.wait(lock);
    callbacks_.record_start(seat_ctx_.get());
  }
  seat->waiting = false;
  if (cancelled_) return false;
  ++active_calls_;
  return true;
}

void SourcePool::EndCall() {
  if (--active_calls_ == 0 && pause_requests_ > 0) {
    pause_cond_var_.notify_all();
  }
}

bool SourcePool::AcquireSource(Seat* seat) {
  IteratorContext* ctx = seat_ctx_.get();
  int64_t source;
  absl::Status status;
  {
    mutex_lock input_lock(input_mu_);
    {
      mutex_lock l(mu_);
      if (input_ended_ || !BeginCall(seat, l, /*need_room=*/false)) {
        return false;
      }
    }
    std::vector<Tensor> element;
    bool end_of_input = false;
    {
      TraceMe trace("TfInterleaveSeat::PullInput");
      status = callbacks_.pull_input(ctx, &element, &end_of_input);
    }
    mutex_lock l(mu_);
    if (cancelled_ || (status.ok() && end_of_input)) {
      if (!cancelled_) {
        input_ended_ = true;
        scheduler_.OnInputEnded();
        WakeConsumer(ConsumerWait::kInput, -1);
      }
      EndCall();
      return false;
    }
    // An input error becomes a source whose only element is that error, so
    // it is delivered at the input's position.
    source = sources_pulled_++;
    seat->source = source;
    seat->source_ended = false;
    seat->released = false;
    seat->buffer.clear();
    seat->input_element = std::move(element);
    seat_of_source_[source] = seat;
    scheduler_.OnInputOpened();
    WakeConsumer(ConsumerWait::kInput, -1);
    if (static_cast<int64_t>(seats_.size()) < num_seats_) {
      StartSeatThread(AddSeat());
    }
  }
  // Outside `input_mu_`: other seats pull and open while `map_func` runs.
  if (status.ok()) {
    TraceMe trace([source]() {
      return TraceMeEncode("TfInterleaveSeat::Open", {{"source", source}});
    });
    status = callbacks_.open_source(ctx, seat->input_element, source,
                                    &seat->iterator);
  }
  mutex_lock l(mu_);
  if (!status.ok()) {
    seat->iterator.reset();
    if (!cancelled_) Push(seat, BufferedElement{status, {}});
  }
  EndCall();
  return true;
}

void SourcePool::RunSource(Seat* seat) {
  IteratorContext* ctx = seat_ctx_.get();
  int64_t source;
  {
    mutex_lock l(mu_);
    source = seat->source;
  }
  while (true) {
    {
      mutex_lock l(mu_);
      if (seat->source_ended || seat->iterator == nullptr) break;
      if (!BeginCall(seat, l, /*need_room=*/true)) return;
    }
    BufferedElement next;
    bool end_of_source = false;
    const int64_t start_nanos = tensorflow::EnvTime::NowNanos();
    {
      TraceMe trace([source]() {
        return TraceMeEncode("TfInterleaveSeat::GetNext", {{"source", source}});
      });
      next.status =
          seat->iterator->GetNext(ctx, &next.tensors, &end_of_source);
    }
    const int64_t elapsed_nanos = tensorflow::EnvTime::NowNanos() - start_nanos;
    mutex_lock l(mu_);
    EndCall();
    if (cancelled_) return;
    seat->fast = elapsed_nanos < kFastSourceNanos;
    if (next.status.ok() && end_of_source) break;
    // After an error the source goes on, as the legacy op does: the caller
    // decides whether to keep reading.
    Push(seat, std::move(next));
  }
  EndSource(seat);
}

void SourcePool::EndSource(Seat* seat) {
  std::unique_ptr<IteratorBase> iterator;
  {
    mutex_lock l(mu_);
    seat->source_ended = true;
    iterator = std::move(seat->iterator);
    seat->input_element.clear();
    WakeConsumer(ConsumerWait::kSource, seat->source);
  }
  // Outside `mu_`: tearing a nested pipeline down may take a while.
  iterator.reset();
}

int64_t SourcePool::RefillThreshold(const Seat& seat) const {
  return seat.fast ? 0 : options_.buffer_output_elements - 1;
}

void SourcePool::WakeSeat(Seat* seat) {
  if (seat->waiting) {
    seat->waiting = false;
    seat->cond_var.notify_one();
  }
}

void SourcePool::Push(Seat* seat, BufferedElement element) {
  seat->buffer.push_back(std::move(element));
  WakeConsumer(ConsumerWait::kSource, seat->source);
}

SourceState SourcePool::StateOf(int64_t source) const {
  const Seat* seat = seat_of_source_.at(source);
  if (!seat->buffer.empty()) return SourceState::kReady;
  return seat->source_ended ? SourceState::kFinished : SourceState::kPending;
}

void SourcePool::ReleaseSource(int64_t source) {
  auto it = seat_of_source_.find(source);
  Seat* seat = it->second;
  seat_of_source_.erase(it);
  seat->released = true;
  WakeSeat(seat);
}

void SourcePool::WakeConsumer(ConsumerWait reason, int64_t source) {
  bool wake = false;
  switch (consumer_wait_) {
    case ConsumerWait::kNone:
      break;
    case ConsumerWait::kAny:
      wake = true;
      break;
    case ConsumerWait::kInput:
      wake = reason == ConsumerWait::kInput;
      break;
    case ConsumerWait::kSource:
      wake = reason == ConsumerWait::kSource && source == consumer_wait_source_;
      break;
  }
  if (wake) {
    consumer_wait_ = ConsumerWait::kNone;
    consumer_cond_var_.notify_one();
  }
}

absl::Status SourcePool::GetNext(IteratorContext* ctx,
                                 std::vector<Tensor>* out_tensors,
                                 bool* end_of_sequence) {
  using Kind = InterleaveScheduler::Decision::Kind;
  mutex_lock l(mu_);
  TF_RETURN_IF_ERROR(EnsureStarted(ctx));
  const InterleaveScheduler::StateFn state_of =
      [this](int64_t source) TF_NO_THREAD_SAFETY_ANALYSIS {
        return StateOf(source);
      };
  while (true) {
    if (cancelled_) {
      return absl::CancelledError("tf_interleave iterator was cancelled");
    }
    released_.clear();
    const InterleaveScheduler::Decision decision =
        scheduler_.Next(state_of, &released_);
    for (int64_t source : released_) ReleaseSource(source);
    switch (decision.kind) {
      case Kind::kEmit: {
        Seat* seat = seat_of_source_.at(decision.source);
        BufferedElement element = std::move(seat->buffer.front());
        seat->buffer.pop_front();
        if (static_cast<int64_t>(seat->buffer.size()) <=
            RefillThreshold(*seat)) {
          WakeSeat(seat);
        }
        *out_tensors = std::move(element.tensors);
        *end_of_sequence = false;
        return element.status;
      }
      case Kind::kEndOfSequence:
        *end_of_sequence = true;
        return absl::OkStatus();
      case Kind::kWaitForSource:
        consumer_wait_ = ConsumerWait::kSource;
        consumer_wait_source_ = decision.source;
        break;
      case Kind::kWaitForInput:
        consumer_wait_ = ConsumerWait::kInput;
        break;
      case Kind::kWaitForAny:
        consumer_wait_ = ConsumerWait::kAny;
        break;
    }
    callbacks_.record_stop(ctx);
    consumer_cond_var_.wait(l);
    callbacks_.record_start(ctx);
    consumer_wait_ = ConsumerWait::kNone;
  }
}

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
      ", sloppy=", sloppy != 0, ", but it is being restored into one with "
      "cycle_length=", o.cycle_length, ", block_length=", o.block_length,
      ", buffer_output_elements=", o.buffer_output_elements,
      ", prefetch_input_elements=", o.prefetch_input_elements,
      ", sloppy=", o.sloppy, "."));
}

absl::Status SourcePool::Save(tensorflow::data::SerializationContext* ctx,
                              tensorflow::data::IteratorStateWriter* writer,
                              const std::string& name,
                              const std::unique_ptr<IteratorBase>& input) {
  mutex_lock l(mu_);
  ++pause_requests_;
  auto resume = tensorflow::gtl::MakeCleanup([this]()
                                                 TF_NO_THREAD_SAFETY_ANALYSIS {
    if (--pause_requests_ == 0) {
      for (auto& seat : seats_) seat->cond_var.notify_all();
    }
  });
  while (active_calls_ > 0 && !cancelled_) pause_cond_var_.wait(l);
  if (cancelled_) {
    return absl::CancelledError("tf_interleave iterator was cancelled");
  }
  CheckpointWriter out(writer, name);
  TF_RETURN_IF_ERROR(out.Int("cycle_length", options_.cycle_length));
  TF_RETURN_IF_ERROR(out.Int("block_length", options_.block_length));
  TF_RETURN_IF_ERROR(
      out.Int("buffer_output_elements", options_.buffer_output_elements));
  TF_RETURN_IF_ERROR(
      out.Int("prefetch_input_elements", options_.prefetch_input_elements));
  TF_RETURN_IF_ERROR(out.Int("sloppy", options_.sloppy));
  TF_RETURN_IF_ERROR(out.Scheduler("scheduler", scheduler_.state()));
  TF_RETURN_IF_ERROR(out.Int("sources_pulled", sources_pulled_));
  TF_RETURN_IF_ERROR(out.Int("input_ended", input_ended_));
  TF_RETURN_IF_ERROR(callbacks_.save_iterator(ctx, writer, input));

  std::vector<int64_t> live;
  for (const auto& entry : seat_of_source_) live.push_back(entry.first);
  std::sort(live.begin(), live.end());
  TF_RETURN_IF_ERROR(out.Int("live.size", live.size()));
  for (size_t i = 0; i < live.size(); ++i) {
    const Seat* seat = seat_of_source_.at(live[i]);
    const std::string key = absl::StrCat("live.", i);
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".source"), live[i]));
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".ended"), seat->source_ended));
    TF_RETURN_IF_ERROR(out.Elements(absl::StrCat(key, ".buffer"), seat->buffer));
    const bool open = seat->iterator != nullptr;
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".open"), open));
    if (open) {
      TF_RETURN_IF_ERROR(
          out.Tensors(absl::StrCat(key, ".input"), seat->input_element));
      TF_RETURN_IF_ERROR(
          callbacks_.save_iterator(ctx, writer, seat->iterator));
    }
  }
  return absl::OkStatus();
}

absl::Status SourcePool::Restore(IteratorContext* ctx,
                                 tensorflow::data::IteratorStateReader* reader,
                                 const std::string& name,
                                 const std::unique_ptr<IteratorBase>& input) {
  mutex_lock l(mu_);
  if (seat_ctx_ != nullptr || !seats_.empty()) {
    return absl::FailedPreconditionError(
        "A tf_interleave iterator can only be restored before its first "
        "element is read.");
  }
  CheckpointReader in(ctx, reader, name);
  int64_t cycle_length, block_length, buffer_output_elements,
      prefetch_input_elements, sloppy;
  TF_RETURN_IF_ERROR(in.Int("cycle_length", &cycle_length));
  TF_RETURN_IF_ERROR(in.Int("block_length", &block_length));
  TF_RETURN_IF_ERROR(in.Int("buffer_output_elements", &buffer_output_elements));
  TF_RETURN_IF_ERROR(
      in.Int("prefetch_input_elements", &prefetch_input_elements));
  TF_RETURN_IF_ERROR(in.Int("sloppy", &sloppy));
  TF_RETURN_IF_ERROR(CheckArguments(cycle_length, block_length,
                                    buffer_output_elements,
                                    prefetch_input_elements, sloppy));
  InterleaveScheduler::State state;
  TF_RETURN_IF_ERROR(in.Scheduler("scheduler", &state));
  const std::string problem = scheduler_.Restore(state);
  if (!problem.empty()) {
    return absl::DataLossError(
        absl::StrCat("tf_interleave checkpoint is inconsistent: ", problem));
  }
  int64_t value;
  TF_RETURN_IF_ERROR(in.Int("sources_pulled", &sources_pulled_));
  TF_RETURN_IF_ERROR(in.Int("input_ended", &value));
  input_ended_ = value != 0;
  if (sources_pulled_ != state.inputs_known ||
      input_ended_ != state.input_ended) {
    return absl::DataLossError(
        "tf_interleave checkpoint is inconsistent: input counters differ");
  }
  TF_RETURN_IF_ERROR(callbacks_.restore_iterator(ctx, reader, input));

  // Nested iterators are remade with the pool's cancellation manager, like
  // the ones the seats open.
  IteratorContext::Params params(ctx);
  params.cancellation_manager = cancellation_manager_.get();
  IteratorContext nested_ctx(std::move(params));
  int64_t live_size;
  TF_RETURN_IF_ERROR(in.Int("live.size", &live_size));
  if (live_size < 0 || live_size > num_seats_) {
    return absl::DataLossError(absl::StrCat(
        "tf_interleave checkpoint holds ", live_size, " open sources for ",
        num_seats_, " seats"));
  }
  for (int64_t i = 0; i < live_size; ++i) {
    const std::string key = absl::StrCat("live.", i);
    Seat* seat = AddSeat();
    TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".source"), &seat->source));
    TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".ended"), &value));
    seat->source_ended = value != 0;
    TF_RETURN_IF_ERROR(in.Elements(absl::StrCat(key, ".buffer"), &seat->buffer));
    TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".open"), &value));
    if (value != 0) {
      TF_RETURN_IF_ERROR(
          in.Tensors(absl::StrCat(key, ".input"), &seat->input_element));
      TF_RETURN_IF_ERROR(callbacks_.open_source(
          &nested_ctx, seat->input_element, seat->source, &seat->iterator));
      TF_RETURN_IF_ERROR(
          callbacks_.restore_iterator(&nested_ctx, reader, seat->iterator));
    }
    if (seat->source < 0 || seat->source >= sources_pulled_ ||
        !seat_of_source_.emplace(seat->source, seat).second) {
      return absl::DataLossError(
          "tf_interleave checkpoint holds an invalid source");
    }
  }
  // Every source the scheduler may ask about must be held by a seat.
  for (int64_t source = state.next_source; source < state.inputs_known;
       ++source) {
    if (!seat_of_source_.contains(source)) {
      return absl::DataLossError(
          "tf_interleave checkpoint lacks a staged source");
    }
  }
  for (int64_t source : scheduler_.LiveSources()) {
    if (!seat_of_source_.contains(source)) {
      return absl::DataLossError(
          "tf_interleave checkpoint lacks a source of the cycle");
    }
  }
  ctx->MergeCheckpoint(nested_ctx.checkpoint());
  return absl::OkStatus();
}

}  // namespace tf_interleave
