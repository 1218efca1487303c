#include "cc/kernels/source_pool.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cc/kernels/checkpoint_io.h"
#include "tensorflow/core/lib/gtl/cleanup.h"
#include "tensorflow/core/platform/env_time.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/platform/logging.h"
#include "tensorflow/core/profiler/lib/traceme.h"
#include "tensorflow/core/profiler/lib/traceme_encode.h"

namespace tf_interleave {
namespace {

using ::tensorflow::CancellationManager;
using ::tensorflow::EnvTime;
using ::tensorflow::mutex_lock;
using ::tensorflow::Tensor;
using ::tensorflow::data::IteratorBase;
using ::tensorflow::data::IteratorContext;
using ::tensorflow::profiler::TraceMe;
using ::tensorflow::profiler::TraceMeEncode;

// Producing an element faster than this marks a source as fast.
constexpr int64_t kFastSourceNanos = 50 * 1000;
// Retry delays stop doubling here.
constexpr int64_t kMaxRetryBackoffMicros = 10 * 1000 * 1000;
// Finished inputs kept in stats, most recent last.
constexpr size_t kFinishedInputsInStats = 64;
// Longest input label kept.
constexpr size_t kMaxLabelLength = 256;

int64_t BytesOf(const std::vector<Tensor>& tensors) {
  int64_t bytes = 0;
  for (const Tensor& tensor : tensors) bytes += tensor.TotalBytes();
  return bytes;
}

// A file name when the input element is one scalar string, else its index.
std::string LabelOf(const std::vector<Tensor>& element, int64_t source) {
  if (element.size() == 1 && element[0].dtype() == tensorflow::DT_STRING &&
      element[0].NumElements() == 1) {
    std::string label(element[0].flat<tensorflow::tstring>()(0));
    if (label.size() > kMaxLabelLength) label.resize(kMaxLabelLength);
    return label;
  }
  return absl::StrCat("input #", source);
}

}  // namespace

SourcePool::SourcePool(const SourcePoolOptions& options,
                       SourcePoolCallbacks callbacks)
    : options_(options),
      callbacks_(std::move(callbacks)),
      num_seats_(options.cycle_length + options.prefetch_input_elements),
      scheduler_(options.cycle_length, options.block_length, options.sloppy) {}

SourcePool::~SourcePool() {
  // Leave the registry first: it may be reading this pool's stats.
  if (stats_id_ != 0) StatsRegistry::Global().Deregister(stats_id_);
  // Deregistering waits for a running parent callback, so none can touch
  // this object once destruction goes on.
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
  symbolic_ = ctx->symbolic_checkpoint();
  if (symbolic_) {
    mutex_lock l(mu_);
    input_checkpoint_ = std::make_unique<tensorflow::data::MemoryCheckpoint>(
        ctx->id_registry());
  }
  TF_RETURN_IF_ERROR(tensorflow::RegisterCancellationCallback(
      ctx->cancellation_manager(), [this]() { Cancel(); },
      &deregister_parent_cancellation_));
  stats_id_ = StatsRegistry::Global().Register(this);
  return absl::OkStatus();
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
  // Nested iterators are checkpointed by this pool (as positions), not
  // through the context; input pulls record their own symbolic state.
  params.symbolic_checkpoint = false;
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
  const int64_t budget = options_.memory_budget_bytes;
  while (!cancelled_) {
    bool wait = pause_requests_ > 0;
    if (!wait && need_room) {
      wait = static_cast<int64_t>(seat->buffer.size()) >=
                 options_.buffer_output_elements ||
             (budget > 0 && buffered_bytes_ >= budget &&
              !(seat->buffer.empty() && ConsumerWaitsOn(*seat)));
    }
    if (!wait) break;
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
  mutex_lock input_lock(input_mu_);
  {
    mutex_lock l(mu_);
    if (input_ended_ || !BeginCall(seat, l, /*need_room=*/false)) return false;
  }
  std::vector<Tensor> element;
  bool end_of_input = false;
  absl::Status status;
  // With symbolic checkpoints the input's state change is collected here
  // and handed to the consumer's context with the pool's own state.
  std::unique_ptr<IteratorContext> pull_ctx;
  if (symbolic_) {
    IteratorContext::Params params(ctx);
    params.symbolic_checkpoint = true;
    pull_ctx = std::make_unique<IteratorContext>(std::move(params));
  }
  {
    TraceMe trace("TfInterleaveSeat::PullInput");
    status = callbacks_.pull_input(pull_ctx ? pull_ctx.get() : ctx, &element,
                                   &end_of_input);
  }
  mutex_lock l(mu_);
  EndCall();
  if (cancelled_) return false;
  if (pull_ctx) input_checkpoint_->Merge(pull_ctx->checkpoint());
  if (status.ok() && end_of_input) {
    input_ended_ = true;
    scheduler_.OnInputEnded();
    WakeConsumer(ConsumerWait::kInput, -1);
    return false;
  }
  const int64_t source = sources_pulled_++;
  seat->source = source;
  seat->label = LabelOf(element, source);
  seat->source_ended = false;
  seat->released = false;
  seat->skipped = false;
  seat->produced = 0;
  seat->delivered = 0;
  seat->delivered_bytes = 0;
  seat->retries = 0;
  seat->wait_nanos = 0;
  seat->buffer.clear();
  seat->buffered_bytes = 0;
  seat->input_element = std::move(element);
  seat->input_error = status;
  seat->needs_open = status.ok();
  if (!status.ok()) {
    // An input error becomes a source whose only element is that error, so
    // it is delivered at the input's position.
    seat->buffer.push_back(BufferedElement{status, {}, 0});
    seat->produced = 1;
  }
  seat_of_source_[source] = seat;
  scheduler_.OnInputOpened();
  WakeConsumer(ConsumerWait::kInput, -1);
  if (static_cast<int64_t>(seats_.size()) < num_seats_) {
    StartSeatThread(AddSeat());
  }
  return true;
}

absl::Status SourcePool::OpenIterator(Seat* seat) {
  IteratorContext* ctx = seat_ctx_.get();
  int64_t source, to_skip;
  {
    mutex_lock l(mu_);
    source = seat->source;
    to_skip = seat->produced;
  }
  std::unique_ptr<IteratorBase> iterator;
  {
    TraceMe trace([source]() {
      return TraceMeEncode("TfInterleaveSeat::Open", {{"source", source}});
    });
    TF_RETURN_IF_ERROR(callbacks_.open_source(ctx, seat->input_element,
                                              source, &iterator));
  }
  // Reopened after an error or a symbolic restore: pass over what was
  // already produced. Errors at those positions were delivered (or
  // overcome) before, so they count as positions like elements.
  for (int64_t i = 0; i < to_skip; ++i) {
    std::vector<Tensor> ignored;
    bool end_of_source = false;
    const absl::Status status =
        iterator->GetNext(ctx, &ignored, &end_of_source);
    if (status.ok() && end_of_source) break;
    if (absl::IsCancelled(status)) return status;
  }
  mutex_lock l(mu_);
  seat->iterator = std::move(iterator);
  return absl::OkStatus();
}

void SourcePool::RunSource(Seat* seat) {
  IteratorContext* ctx = seat_ctx_.get();
  int64_t source;
  {
    mutex_lock l(mu_);
    source = seat->source;
  }
  bool finished = false;
  while (!finished) {
    bool opening;
    {
      mutex_lock l(mu_);
      if (seat->source_ended) return;
      if (!seat->needs_open && seat->iterator == nullptr) break;
      opening = seat->needs_open;
      if (!BeginCall(seat, l, /*need_room=*/!opening)) return;
    }
    BufferedElement next;
    bool end_of_source = false;
    int64_t elapsed_nanos = 0;
    absl::Status status;
    if (opening) {
      status = OpenIterator(seat);
    } else {
      const int64_t start_nanos = EnvTime::NowNanos();
      {
        TraceMe trace([source]() {
          return TraceMeEncode("TfInterleaveSeat::GetNext",
                               {{"source", source}});
        });
        next.status =
            seat->iterator->GetNext(ctx, &next.tensors, &end_of_source);
      }
      elapsed_nanos = EnvTime::NowNanos() - start_nanos;
      status = next.status;
    }
    // Declared before the lock: a dropped iterator is destroyed unlocked.
    std::unique_ptr<IteratorBase> dropped;
    mutex_lock l(mu_);
    EndCall();
    if (cancelled_) return;
    if (status.ok()) {
      if (opening) {
        seat->needs_open = false;
        continue;
      }
      seat->fast = elapsed_nanos < kFastSourceNanos;
      if (end_of_source) break;
      if (!Push(seat, std::move(next), l)) return;
      continue;
    }
    switch (OnSourceError(seat, status)) {
      case ErrorAction::kRetry:
        dropped = std::move(seat->iterator);
        seat->needs_open = true;
        WaitBeforeRetry(seat, l);
        break;
      case ErrorAction::kSkip:
        seat->skipped = true;
        finished = true;
        break;
      case ErrorAction::kDeliver:
        // After an error the source goes on, as the legacy op does: the
        // caller decides whether to keep reading. One that could not be
        // opened ends here.
        if (!Push(seat, BufferedElement{status, {}, 0}, l)) return;
        if (opening) seat->needs_open = false;
        break;
      case ErrorAction::kDeliverAndEnd: {
        std::vector<std::string> labels;
        for (const SkippedInput& skipped : skipped_inputs_) {
          labels.push_back(skipped.label);
        }
        const absl::Status limit(
            status.code(),
            absl::StrCat("Input '", seat->label, "' failed after ",
                         skipped_inputs_.size(),
                         " inputs were skipped (max_skipped_inputs=",
                         options_.max_skipped_inputs, "; skipped: ",
                         absl::StrJoin(labels, ", "), "): ",
                         status.message()));
        if (!Push(seat, BufferedElement{limit, {}, 0}, l)) return;
        finished = true;
        break;
      }
    }
  }
  EndSource(seat);
}

SourcePool::ErrorAction SourcePool::OnSourceError(Seat* seat,
                                                  const absl::Status& status) {
  if (seat->retries < options_.input_retries) {
    ++seat->retries;
    ++retries_;
    LOG(WARNING) << "tf_interleave: retrying input '" << seat->label
                 << "' (retry " << seat->retries << " of "
                 << options_.input_retries << ") after " << seat->produced
                 << " elements: " << status;
    return ErrorAction::kRetry;
  }
  if (!options_.skip_input_errors) return ErrorAction::kDeliver;
  if (options_.max_skipped_inputs >= 0 &&
      static_cast<int64_t>(skipped_inputs_.size()) >=
          options_.max_skipped_inputs) {
    return ErrorAction::kDeliverAndEnd;
  }
  skipped_inputs_.push_back(SkippedInput{seat->source, seat->label,
                                         seat->produced, status.ToString()});
  LOG(WARNING) << "tf_interleave: skipping the rest of input '" << seat->label
               << "' after " << seat->produced << " elements: " << status;
  return ErrorAction::kSkip;
}

void SourcePool::WaitBeforeRetry(Seat* seat, mutex_lock& lock) {
  const int shift = static_cast<int>(std::min<int64_t>(seat->retries - 1, 30));
  const int64_t delay_micros =
      std::min(kMaxRetryBackoffMicros, options_.retry_backoff_micros << shift);
  const int64_t deadline = EnvTime::NowMicros() + delay_micros;
  // `Cancel` notifies every seat, so teardown never waits out the delay.
  while (!cancelled_) {
    const int64_t remaining = deadline - EnvTime::NowMicros();
    if (remaining <= 0) break;
    seat->cond_var.wait_for(lock, std::chrono::microseconds(remaining));
  }
}

void SourcePool::EndSource(Seat* seat) {
  std::unique_ptr<IteratorBase> iterator;
  {
    mutex_lock l(mu_);
    seat->source_ended = true;
    seat->needs_open = false;
    iterator = std::move(seat->iterator);
    WakeConsumer(ConsumerWait::kSource, seat->source);
  }
  // Outside `mu_`: tearing a nested pipeline down may take a while.
  iterator.reset();
}

bool SourcePool::ConsumerWaitsOn(const Seat& seat) const {
  return consumer_wait_ == ConsumerWait::kAny ||
         (consumer_wait_ == ConsumerWait::kSource &&
          consumer_wait_source_ == seat.source);
}

bool SourcePool::BudgetAllows(const Seat& seat, int64_t bytes) const {
  const int64_t budget = options_.memory_budget_bytes;
  return budget <= 0 || buffered_bytes_ + bytes <= budget ||
         buffered_bytes_ == 0 || (seat.buffer.empty() && ConsumerWaitsOn(seat));
}

bool SourcePool::Push(Seat* seat, BufferedElement element, mutex_lock& lock) {
  element.bytes = BytesOf(element.tensors);
  while (!cancelled_ && !BudgetAllows(*seat, element.bytes)) {
    seat->waiting = true;
    seat->cond_var.wait(lock);
  }
  seat->waiting = false;
  if (cancelled_) return false;
  seat->buffered_bytes += element.bytes;
  buffered_bytes_ += element.bytes;
  seat->buffer.push_back(std::move(element));
  ++seat->produced;
  WakeConsumer(ConsumerWait::kSource, seat->source);
  return true;
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

void SourcePool::WakeSeatsWaitingForBudget() {
  for (auto& seat : seats_) WakeSeat(seat.get());
}

SourceState SourcePool::StateOf(int64_t source) const {
  const Seat* seat = seat_of_source_.at(source);
  if (!seat->buffer.empty()) return SourceState::kReady;
  return seat->source_ended ? SourceState::kFinished : SourceState::kPending;
}

InputStats SourcePool::StatsOf(const Seat& seat) const {
  InputStats stats;
  stats.source = seat.source;
  stats.label = seat.label;
  stats.state = seat.skipped ? "skipped" : seat.source_ended ? "ended" : "open";
  stats.elements = seat.delivered;
  stats.bytes = seat.delivered_bytes;
  stats.buffered_elements = seat.buffer.size();
  stats.buffered_bytes = seat.buffered_bytes;
  stats.consumer_wait_seconds = seat.wait_nanos * 1e-9;
  stats.retries = seat.retries;
  return stats;
}

void SourcePool::ReleaseSource(int64_t source) {
  auto it = seat_of_source_.find(source);
  Seat* seat = it->second;
  seat_of_source_.erase(it);
  InputStats stats = StatsOf(*seat);
  if (stats.state != "skipped") stats.state = "done";
  finished_inputs_.push_back(std::move(stats));
  if (finished_inputs_.size() > kFinishedInputsInStats) {
    finished_inputs_.pop_front();
  }
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

std::string SourcePool::WaitTargetLabel() const {
  switch (consumer_wait_) {
    case ConsumerWait::kSource: {
      auto it = seat_of_source_.find(consumer_wait_source_);
      return it == seat_of_source_.end() ? "" : it->second->label;
    }
    case ConsumerWait::kInput:
      return "the input dataset";
    case ConsumerWait::kAny:
      return "any input";
    case ConsumerWait::kNone:
      break;
  }
  return "";
}

void SourcePool::WaitAsConsumer(IteratorContext* ctx, mutex_lock& lock) {
  const ConsumerWait reason = consumer_wait_;
  const int64_t source = consumer_wait_source_;
  const int64_t start_nanos = EnvTime::NowNanos();
  waiting_on_ = WaitTargetLabel();
  if (options_.memory_budget_bytes > 0) WakeSeatsWaitingForBudget();
  callbacks_.record_stop(ctx);
  const bool watch = options_.stall_warning_seconds > 0 &&
                     reason != ConsumerWait::kAny;
  if (!watch) {
    consumer_cond_var_.wait(lock);
  } else {
    const int64_t stall_nanos =
        static_cast<int64_t>(options_.stall_warning_seconds * 1e9);
    const int64_t remaining = start_nanos + stall_nanos - EnvTime::NowNanos();
    if (remaining > 0 &&
        consumer_cond_var_.wait_for(lock, std::chrono::nanoseconds(
                                              remaining)) !=
            std::cv_status::timeout) {
      // Woken in time.
    } else if (!cancelled_) {
      ++stall_warnings_;
      LOG(WARNING) << "tf_interleave: the consumer has waited "
                   << options_.stall_warning_seconds << " s for "
                   << (waiting_on_.empty() ? "an input" : waiting_on_)
                   << " (stall_warning_seconds="
                   << options_.stall_warning_seconds << ")";
      // Keep waiting, without more warnings for this wait.
      while (!cancelled_ && consumer_wait_ == reason &&
             consumer_wait_source_ == source) {
        consumer_cond_var_.wait(lock);
      }
    }
  }
  callbacks_.record_start(ctx);
  const int64_t waited = EnvTime::NowNanos() - start_nanos;
  consumer_wait_nanos_ += waited;
  if (reason == ConsumerWait::kSource) {
    auto it = seat_of_source_.find(source);
    if (it != seat_of_source_.end()) it->second->wait_nanos += waited;
  }
  waiting_on_.clear();
  consumer_wait_ = ConsumerWait::kNone;
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
        seat->buffered_bytes -= element.bytes;
        buffered_bytes_ -= element.bytes;
        ++seat->delivered;
        seat->delivered_bytes += element.bytes;
        ++delivered_;
        delivered_bytes_ += element.bytes;
        if (options_.memory_budget_bytes > 0) {
          WakeSeatsWaitingForBudget();
        } else if (static_cast<int64_t>(seat->buffer.size()) <=
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
    WaitAsConsumer(ctx, l);
  }
}

IteratorStats SourcePool::Stats() const {
  mutex_lock l(mu_);
  IteratorStats stats;
  stats.name = options_.name;
  stats.cycle_length = options_.cycle_length;
  stats.block_length = options_.block_length;
  stats.sloppy = options_.sloppy;
  stats.elements = delivered_;
  stats.bytes = delivered_bytes_;
  stats.buffered_bytes = buffered_bytes_;
  stats.memory_budget_bytes = options_.memory_budget_bytes;
  stats.inputs_opened = sources_pulled_;
  stats.input_ended = input_ended_;
  stats.consumer_wait_seconds = consumer_wait_nanos_ * 1e-9;
  stats.waiting_on = waiting_on_;
  stats.sloppy_skips = scheduler_.state().sloppy_skips;
  stats.retries = retries_;
  stats.stall_warnings = stall_warnings_;
  stats.skipped_inputs = skipped_inputs_;
  stats.inputs.assign(finished_inputs_.begin(), finished_inputs_.end());
  std::vector<int64_t> live;
  for (const auto& entry : seat_of_source_) live.push_back(entry.first);
  std::sort(live.begin(), live.end());
  for (int64_t source : live) {
    const Seat& seat = *seat_of_source_.at(source);
    stats.buffered_elements += seat.buffer.size();
    stats.inputs.push_back(StatsOf(seat));
  }
  return stats;
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

absl::Status SourcePool::WriteState(
    tensorflow::data::SerializationContext* ctx,
    tensorflow::data::IteratorStateWriter* writer, const std::string& name,
    bool symbolic, const std::unique_ptr<IteratorBase>& input) {
  CheckpointWriter out(writer, name);
  TF_RETURN_IF_ERROR(out.Int("symbolic", symbolic));
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
  if (!symbolic) TF_RETURN_IF_ERROR(callbacks_.save_iterator(ctx, writer, input));

  std::vector<int64_t> live;
  for (const auto& entry : seat_of_source_) live.push_back(entry.first);
  std::sort(live.begin(), live.end());
  TF_RETURN_IF_ERROR(out.Int("live.size", live.size()));
  for (size_t i = 0; i < live.size(); ++i) {
    const Seat& seat = *seat_of_source_.at(live[i]);
    const std::string key = absl::StrCat("live.", i);
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".source"), live[i]));
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".retries"), seat.retries));
    TF_RETURN_IF_ERROR(out.Tensors(absl::StrCat(key, ".input"),
                                   seat.input_element));
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".skipped"), seat.skipped));
    if (symbolic) {
      // A position: the source is reopened and skips what it delivered. A
      // failed input pull cannot be repeated, so its error is kept instead.
      TF_RETURN_IF_ERROR(
          out.Int(absl::StrCat(key, ".delivered"), seat.delivered));
      std::deque<BufferedElement> input_error;
      if (!seat.input_error.ok() && seat.delivered == 0) {
        input_error.push_back(BufferedElement{seat.input_error, {}, 0});
      }
      TF_RETURN_IF_ERROR(
          out.Int(absl::StrCat(key, ".input_failed"), !seat.input_error.ok()));
      TF_RETURN_IF_ERROR(
          out.Elements(absl::StrCat(key, ".input_error"), input_error));
      continue;
    }
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".ended"), seat.source_ended));
    TF_RETURN_IF_ERROR(
        out.Int(absl::StrCat(key, ".needs_open"), seat.needs_open));
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".produced"), seat.produced));
    TF_RETURN_IF_ERROR(out.Elements(absl::StrCat(key, ".buffer"), seat.buffer));
    const bool open = seat.iterator != nullptr;
    TF_RETURN_IF_ERROR(out.Int(absl::StrCat(key, ".open"), open));
    if (open) {
      TF_RETURN_IF_ERROR(callbacks_.save_iterator(ctx, writer, seat.iterator));
    }
  }
  return absl::OkStatus();
}

absl::Status SourcePool::Save(tensorflow::data::SerializationContext* ctx,
                              tensorflow::data::IteratorStateWriter* writer,
                              const std::string& name,
                              const std::unique_ptr<IteratorBase>& input) {
  mutex_lock l(mu_);
  if (ctx->symbolic_checkpoint()) {
    return WriteState(ctx, writer, name, /*symbolic=*/true, input);
  }
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
  if (seat_ctx_ != nullptr || !seats_.empty()) {
    return absl::FailedPreconditionError(
        "A tf_interleave iterator can only be restored before its first "
        "element is read.");
  }
  // A symbolic checkpoint taken before the first element holds nothing of
  // this iterator yet: it starts afresh.
  if (ctx->symbolic_checkpoint() && !reader->Contains(name, "symbolic")) {
    return absl::OkStatus();
  }
  CheckpointReader in(ctx, reader, name);
  int64_t symbolic, cycle_length, block_length, buffer_output_elements,
      prefetch_input_elements, sloppy;
  TF_RETURN_IF_ERROR(in.Int("symbolic", &symbolic));
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
  params.symbolic_checkpoint = false;
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
    TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".retries"), &seat->retries));
    TF_RETURN_IF_ERROR(
        in.Tensors(absl::StrCat(key, ".input"), &seat->input_element));
    seat->label = LabelOf(seat->input_element, seat->source);
    TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".skipped"), &value));
    seat->skipped = value != 0;
    if (symbolic != 0) {
      TF_RETURN_IF_ERROR(
          in.Int(absl::StrCat(key, ".delivered"), &seat->delivered));
      seat->produced = seat->delivered;
      TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".input_failed"), &value));
      const bool input_failed = value != 0;
      TF_RETURN_IF_ERROR(
          in.Elements(absl::StrCat(key, ".input_error"), &seat->buffer));
      seat->source_ended = seat->skipped || (input_failed && seat->buffer.empty());
      seat->needs_open = !seat->skipped && !input_failed;
    } else {
      TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".ended"), &value));
      seat->source_ended = value != 0;
      TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".needs_open"), &value));
      seat->needs_open = value != 0;
      TF_RETURN_IF_ERROR(
          in.Int(absl::StrCat(key, ".produced"), &seat->produced));
      TF_RETURN_IF_ERROR(
          in.Elements(absl::StrCat(key, ".buffer"), &seat->buffer));
      for (const BufferedElement& element : seat->buffer) {
        seat->buffered_bytes += element.bytes;
        buffered_bytes_ += element.bytes;
      }
      TF_RETURN_IF_ERROR(in.Int(absl::StrCat(key, ".open"), &value));
      if (value != 0) {
        TF_RETURN_IF_ERROR(callbacks_.open_source(
            &nested_ctx, seat->input_element, seat->source, &seat->iterator));
        TF_RETURN_IF_ERROR(
            callbacks_.restore_iterator(&nested_ctx, reader, seat->iterator));
      }
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
  return absl::OkStatus();
}

}  // namespace tf_interleave
