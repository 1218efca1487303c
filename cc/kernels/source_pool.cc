#include "cc/kernels/source_pool.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/profiler/lib/traceme.h"
#include "tensorflow/core/profiler/lib/traceme_encode.h"

namespace tf_interleave {

using ::tensorflow::CancellationManager;
using ::tensorflow::mutex_lock;
using ::tensorflow::Tensor;
using ::tensorflow::data::IteratorBase;
using ::tensorflow::data::IteratorContext;

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
  if (num_seats_ > 0) StartSeat(0);
  return absl::OkStatus();
}

void SourcePool::StartSeat(int64_t seat_index) {
  seats_.push_back(std::make_unique<Seat>());
  ++seats_started_;
  seats_.back()->thread = seat_ctx_->StartThread(
      absl::StrCat("tf_interleave_seat_", seat_index),
      [this, seat_index]() { SeatThread(seat_index); });
}

void SourcePool::SeatThread(int64_t seat_index) {
  Seat* seat;
  {
    mutex_lock l(mu_);
    seat = seats_[seat_index].get();
  }
  IteratorContext* ctx = seat_ctx_.get();
  callbacks_.record_start(ctx);
  while (true) {
    std::vector<Tensor> element;
    absl::Status input_status;
    if (!AcquireSource(seat, seat_index, &element, &input_status)) break;
    RunSource(seat, element, input_status);
    mutex_lock l(mu_);
    while (!cancelled_ && !seat->released) {
      seat->waiting = true;
      callbacks_.record_stop(ctx);
      seat->cond_var.wait(l);
      callbacks_.record_start(ctx);
    }
    seat->waiting = false;
    if (cancelled_) break;
  }
  callbacks_.record_stop(ctx);
}

bool SourcePool::AcquireSource(Seat* seat, int64_t seat_index,
                               std::vector<Tensor>* element,
                               absl::Status* input_status) {
  mutex_lock input_lock(input_mu_);
  {
    mutex_lock l(mu_);
    if (cancelled_ || input_ended_) return false;
  }
  bool end_of_input = false;
  {
    tensorflow::profiler::TraceMe trace("TfInterleaveSeat::PullInput");
    *input_status =
        callbacks_.pull_input(seat_ctx_.get(), element, &end_of_input);
  }
  mutex_lock l(mu_);
  if (cancelled_) return false;
  if (input_status->ok() && end_of_input) {
    input_ended_ = true;
    scheduler_.OnInputEnded();
    WakeConsumer(ConsumerWait::kInput, -1);
    return false;
  }
  // An input error becomes a source whose only element is that error, so
  // it is delivered at the input's position.
  const int64_t source = sources_pulled_++;
  seat->source = source;
  seat->source_ended = false;
  seat->released = false;
  seat->buffer.clear();
  seat_of_source_[source] = seat;
  scheduler_.OnInputOpened();
  WakeConsumer(ConsumerWait::kInput, -1);
  if (seats_started_ < num_seats_) StartSeat(seats_started_);
  return true;
}

void SourcePool::RunSource(Seat* seat, const std::vector<Tensor>& element,
                           const absl::Status& input_status) {
  IteratorContext* ctx = seat_ctx_.get();
  std::unique_ptr<IteratorBase> iterator;
  absl::Status status = input_status;
  int64_t source;
  {
    mutex_lock l(mu_);
    source = seat->source;
  }
  if (status.ok()) {
    tensorflow::profiler::TraceMe trace([source]() {
      return tensorflow::profiler::TraceMeEncode("TfInterleaveSeat::Open",
                                                 {{"source", source}});
    });
    status = callbacks_.open_source(ctx, element, source, &iterator);
  }
  if (!status.ok()) {
    mutex_lock l(mu_);
    if (!cancelled_) Push(seat, Element{status, {}});
  } else {
    while (true) {
      {
        mutex_lock l(mu_);
        if (!WaitForRoom(seat, l)) break;
      }
      Element next;
      bool end_of_source = false;
      {
        tensorflow::profiler::TraceMe trace([source]() {
          return tensorflow::profiler::TraceMeEncode(
              "TfInterleaveSeat::GetNext", {{"source", source}});
        });
        next.status = iterator->GetNext(ctx, &next.tensors, &end_of_source);
      }
      mutex_lock l(mu_);
      if (cancelled_) break;
      if (next.status.ok() && end_of_source) break;
      // After an error the source goes on, as the legacy op does: the caller
      // decides whether to keep reading.
      Push(seat, std::move(next));
    }
  }
  {
    mutex_lock l(mu_);
    seat->source_ended = true;
    WakeConsumer(ConsumerWait::kSource, source);
  }
  // Outside `mu_`: tearing a nested pipeline down may take a while.
  iterator.reset();
}

bool SourcePool::WaitForRoom(Seat* seat, mutex_lock& lock) {
  while (!cancelled_ &&
         static_cast<int64_t>(seat->buffer.size()) >=
             options_.buffer_output_elements) {
    seat->waiting = true;
    callbacks_.record_stop(seat_ctx_.get());
    seat->cond_var.wait(lock);
    callbacks_.record_start(seat_ctx_.get());
  }
  seat->waiting = false;
  return !cancelled_;
}

void SourcePool::Push(Seat* seat, Element element) {
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
  if (seat->waiting) seat->cond_var.notify_one();
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
  if (wake) consumer_cond_var_.notify_one();
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
        Element element = std::move(seat->buffer.front());
        seat->buffer.pop_front();
        if (seat->waiting) seat->cond_var.notify_one();
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

}  // namespace tf_interleave
