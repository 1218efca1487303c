// The consumer's side of a `SourcePool`: `GetNext`, its waits, and the
// elements it produces itself (see source_pool.h for the threads and the
// invariants).
#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cc/kernels/source_pool.h"
#include "tensorflow/core/lib/gtl/cleanup.h"
#include "tensorflow/core/platform/env_time.h"
#include "tensorflow/core/platform/logging.h"

namespace tf_interleave {
namespace {

using ::tensorflow::EnvTime;
using ::tensorflow::mutex_lock;
using ::tensorflow::Tensor;
using ::tensorflow::data::IteratorBase;
using ::tensorflow::data::IteratorContext;

}  // namespace

std::vector<const SourcePool::Seat*> SourcePool::PendingCycleSeats() const {
  std::vector<const Seat*> pending;
  for (int64_t source : scheduler_.state().cycle) {
    if (source < 0) continue;
    auto it = seat_of_source_.find(source);
    if (it == seat_of_source_.end()) continue;
    const Seat* seat = it->second;
    if (seat->buffer.empty() && !seat->source_ended) pending.push_back(seat);
  }
  return pending;
}

int64_t SourcePool::CycleBlocksFrom(int64_t now_nanos) const {
  // Without a call or open under way (one queued for a worker), nothing
  // says when the cycle would block: ask again after kStallNanos.
  int64_t from = now_nanos + SourcePace::kStallNanos;
  for (const Seat* seat : PendingCycleSeats()) {
    if (seat->pace.Blocking(now_nanos) || seat->retry_until_nanos > now_nanos) {
      return now_nanos;
    }
    const int64_t seat_from = seat->pace.BlockingFromNanos();
    if (seat_from == 0) continue;
    if (seat_from <= now_nanos) return now_nanos;
    from = std::min(from, seat_from);
  }
  return from;
}

std::string SourcePool::WaitTargetLabel(ConsumerWait reason,
                                        int64_t source) const {
  switch (reason) {
    case ConsumerWait::kSource: {
      auto it = seat_of_source_.find(source);
      return it == seat_of_source_.end() ? "" : it->second->label;
    }
    case ConsumerWait::kInput:
      return "the input dataset";
    case ConsumerWait::kAny: {
      // Sloppy: the consumer waits for whichever input of the cycle comes
      // first; name it when only one can.
      const std::vector<const Seat*> pending = PendingCycleSeats();
      if (pending.empty()) return "the input dataset";
      if (pending.size() == 1) return pending[0]->label;
      std::vector<std::string> labels;
      for (size_t i = 0; i < pending.size() && i < 4; ++i) {
        labels.push_back(pending[i]->label);
      }
      if (pending.size() > labels.size()) labels.push_back("...");
      return absl::StrCat("any of ", pending.size(), " inputs (",
                          absl::StrJoin(labels, ", "), ")");
    }
    case ConsumerWait::kNone:
      break;
  }
  return "";
}

void SourcePool::WaitAsConsumer(IteratorContext* ctx, StallClock* stall,
                                mutex_lock& lock) {
  const ConsumerWait reason = consumer_wait_;
  const int64_t wait_source = consumer_wait_source_;
  // The input the wait is on, if it is one input: also a sloppy wait when
  // only one input of the cycle can still produce.
  int64_t source = reason == ConsumerWait::kSource ? wait_source : -1;
  if (reason == ConsumerWait::kAny) {
    const std::vector<const Seat*> pending = PendingCycleSeats();
    if (pending.size() == 1) source = pending[0]->source;
  }
  const int64_t start_nanos = EnvTime::NowNanos();
  // Stats name the target when they are read: what a sloppy wait waits on
  // changes as inputs open.
  wait_reason_ = reason;
  wait_reason_source_ = wait_source;
  // Sloppy, with a budget: the cycle's seats marked awaited meanwhile.
  std::vector<Seat*> marked;
  if (options_.memory_budget_bytes > 0) {
    marked = ServeAwaitedSources(reason, wait_source);
  }
  if (reason == ConsumerWait::kSource) {
    // The awaited source goes first, whatever else is queued.
    auto it = seat_of_source_.find(wait_source);
    if (it != seat_of_source_.end()) {
      Seat* seat = it->second;
      Offer(seat, /*urgent=*/false);
      if (seat->queued) {
        work_queue_.erase(
            std::find(work_queue_.begin(), work_queue_.end(), seat));
        work_queue_.push_front(seat);
        WakeWorker(/*parallel=*/true);
      }
    }
  }
  // Whatever the consumer waits for may sit in the queue of a lazy refill.
  WakeForRemainingWork();
  callbacks_.record_stop(ctx);
  // Sloppy, with the cycle busy but not blocked: ask again when a call
  // under way would come to count as blocking, if nothing comes first.
  const int64_t recheck_at = recheck_staging_at_nanos_;
  recheck_staging_at_nanos_ = 0;
  const int64_t stall_source =
      reason == ConsumerWait::kSource ? wait_source : -1;
  if (stall->since_nanos == 0 || stall->reason != reason ||
      stall->source != stall_source) {
    *stall = StallClock{reason, stall_source, start_nanos, false};
  }
  const int64_t warn_at =
      options_.stall_warning_seconds > 0 && !stall->warned
          ? stall->since_nanos +
                static_cast<int64_t>(options_.stall_warning_seconds * 1e9)
          : 0;
  int64_t until = recheck_at;
  if (warn_at > 0 && (until == 0 || warn_at < until)) until = warn_at;
  bool timed_out = false;
  if (until == 0) {
    consumer_cond_var_.wait(lock);
  } else {
    const int64_t remaining =
        until - static_cast<int64_t>(EnvTime::NowNanos());
    timed_out = remaining <= 0 ||
                consumer_cond_var_.wait_for(
                    lock, std::chrono::nanoseconds(remaining)) ==
                    std::cv_status::timeout;
  }
  if (timed_out && warn_at > 0 &&
      static_cast<int64_t>(EnvTime::NowNanos()) >= warn_at &&
      !cancelled_) {
    stall->warned = true;
    ++stall_warnings_;
    const std::string label = WaitTargetLabel(reason, wait_source);
    LOG(WARNING) << "tf_interleave: the consumer has waited "
                 << options_.stall_warning_seconds << " s for "
                 << (label.empty() ? "an input" : label)
                 << " (stall_warning_seconds="
                 << options_.stall_warning_seconds << ")";
    if (recheck_at == 0) {
      // Keep waiting, without more warnings for this call.
      while (!cancelled_ && consumer_wait_ == reason &&
             consumer_wait_source_ == wait_source) {
        consumer_cond_var_.wait(lock);
      }
    }
  }
  callbacks_.record_start(ctx);
  const int64_t waited = EnvTime::NowNanos() - start_nanos;
  consumer_wait_nanos_ += waited;
  if (source >= 0) {
    auto it = seat_of_source_.find(source);
    if (it != seat_of_source_.end()) it->second->wait_nanos += waited;
  }
  wait_reason_ = ConsumerWait::kNone;
  consumer_wait_ = ConsumerWait::kNone;
  for (Seat* seat : marked) seat->awaited_in_cycle = false;
}

std::vector<SourcePool::Seat*> SourcePool::ServeAwaitedSources(
    ConsumerWait reason, int64_t source) {
  std::vector<Seat*> awaited;
  if (reason == ConsumerWait::kSource) {
    auto it = seat_of_source_.find(source);
    if (it != seat_of_source_.end()) awaited.push_back(it->second);
  } else if (reason == ConsumerWait::kAny) {
    // The cycle stays as it is until the consumer returns.
    for (int64_t cycle_source : scheduler_.state().cycle) {
      auto it = seat_of_source_.find(cycle_source);
      if (it == seat_of_source_.end()) continue;
      it->second->awaited_in_cycle = true;
      awaited.push_back(it->second);
    }
  }
  // Any one element ends a sloppy wait: if a parked worker holds one, it
  // alone wakes (waking all would have the others park again at once).
  const bool marked = reason == ConsumerWait::kAny;
  for (Seat* seat : awaited) {
    if (seat->buffer.empty() && WakeParkedWorker(seat)) {
      return marked ? awaited : std::vector<Seat*>();
    }
  }
  for (Seat* seat : awaited) {
    if (seat->buffer.empty()) Offer(seat, /*urgent=*/false);
  }
  return marked ? awaited : std::vector<Seat*>();
}

BufferedElement SourcePool::TakeElement(Seat* seat) {
  BufferedElement element = std::move(seat->buffer.front());
  seat->buffer.pop_front();
  seat->buffered_bytes -= element.bytes;
  buffered_bytes_ -= element.bytes;
  ++seat->delivered;
  seat->delivered_bytes += element.bytes;
  ++delivered_;
  delivered_bytes_ += element.bytes;
  if (options_.memory_budget_bytes > 0) {
    if (budget_held_.empty()) {
      Offer(seat, /*urgent=*/false);
    } else if (!seat->queued && WorkOf(*seat) != Work::kNone) {
      // The budget is contended: the freed bytes go where they are needed
      // soonest, which is rarely the source just read.
      HoldForBudget(seat);
    }
    UseFreedBudget();
    if (!work_queue_.empty()) WakeWorker(/*parallel=*/false);
  } else {
    // A source the consumer produces itself waits for it (or for a worker
    // that is awake anyway).
    Offer(seat, /*urgent=*/!ConsumerProduces(*seat) &&
                    static_cast<int64_t>(seat->buffer.size()) <=
                        RefillThreshold(*seat));
  }
  return element;
}

absl::Status SourcePool::GetNext(IteratorContext* ctx,
                                 std::vector<Tensor>* out_tensors,
                                 bool* end_of_sequence) {
  using Kind = InterleaveScheduler::Decision::Kind;
  mutex_lock l(mu_);
  // Runs before `l` is released.
  consumer_inside_ = true;
  auto leave = tensorflow::gtl::MakeCleanup(
      [this]() TF_NO_THREAD_SAFETY_ANALYSIS {
        consumer_inside_ = false;
        consumer_left_nanos_ = EnvTime::NowNanos();
        CallWatcher();
      });
  TF_RETURN_IF_ERROR(EnsureStarted(ctx));
  const InterleaveScheduler::StateFn state_of =
      [this](int64_t source) TF_NO_THREAD_SAFETY_ANALYSIS {
        return StateOf(source);
      };
  // Sloppy: stragglers waiting in staging enter the cycle first. A
  // decision may weigh every staged source: one clock reading serves them
  // all (read only when one is asked about).
  int64_t cost_now_nanos = 0;
  InterleaveScheduler::CostFn staged_cost;
  if (options_.sloppy) {
    staged_cost = [this, &cost_now_nanos](int64_t source)
        TF_NO_THREAD_SAFETY_ANALYSIS {
          if (cost_now_nanos == 0) cost_now_nanos = EnvTime::NowNanos();
          return seat_of_source_.at(source)->pace.StragglerCostNanos(
              cost_now_nanos);
        };
  }
  if (!stashed_.empty()) {
    BufferedElement element = std::move(stashed_.back());
    stashed_.pop_back();
    *out_tensors = std::move(element.tensors);
    *end_of_sequence = false;
    return element.status;
  }
  StallClock stall;
  while (true) {
    if (cancelled_) {
      return absl::CancelledError("tf_interleave iterator was cancelled");
    }
    released_.clear();
    cost_now_nanos = 0;
    InterleaveScheduler::Decision decision =
        scheduler_.Next(state_of, &released_, staged_cost);
    absl::Status skip_status = ReleaseSources();
    if (skip_status.ok() && decision.kind == Kind::kWaitForAny) {
      // Sloppy, nothing ready in the cycle: a cheap source of the cycle is
      // produced here first (it would otherwise wait for a worker), then a
      // staged source's ready element beats waiting.
      if (ProduceInlineForCycle(l)) continue;
      const int64_t now_nanos = EnvTime::NowNanos();
      const int64_t blocks_from = CycleBlocksFrom(now_nanos);
      if (blocks_from <= now_nanos) {
        released_.clear();
        decision = scheduler_.NextFromStaging(state_of, &released_);
        if (decision.kind == Kind::kEmit) ++staged_elements_;
        skip_status = ReleaseSources();
      } else {
        // The cycle's sources are only busy (a saturated CPU, a hand-off
        // under way): taking staged elements would spread the reading over
        // every seat for nothing. Ask again once a call may have blocked.
        recheck_staging_at_nanos_ = blocks_from;
      }
    }
    if (!skip_status.ok()) {
      // One skip too many: the error takes the place where that input
      // ended; an element the scheduler already chose comes next time.
      if (decision.kind == Kind::kEmit) {
        Seat* seat = seat_of_source_.at(decision.source);
        stashed_.push_back(TakeElement(seat));
      }
      *end_of_sequence = false;
      return skip_status;
    }
    switch (decision.kind) {
      case Kind::kEmit: {
        BufferedElement element =
            TakeElement(seat_of_source_.at(decision.source));
        *out_tensors = std::move(element.tensors);
        *end_of_sequence = false;
        return element.status;
      }
      case Kind::kEndOfSequence:
        *end_of_sequence = true;
        return absl::OkStatus();
      case Kind::kWaitForSource:
        if (ProduceInline(seat_of_source_.at(decision.source), l)) continue;
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
    WaitAsConsumer(ctx, &stall, l);
  }
}

absl::Status SourcePool::ReleaseSources() {
  absl::Status skip_status;
  for (int64_t source : released_) {
    const absl::Status status = ReleaseSource(source);
    if (skip_status.ok()) skip_status = status;
  }
  return skip_status;
}

bool SourcePool::ProduceInlineForCycle(mutex_lock& lock) {
  // Even while a worker produces for another source of the cycle: both
  // cores then produce, instead of the consumer waiting for each hand-off.
  // In slot order, not from the slot the scheduler looks at next, which
  // would shorten the scheduler's scan: tiny elements then ran 10-20%
  // faster, but 2 KB TFRecord records 3-16% slower at more CPU per record,
  // the consumer's calls spread over every source instead of the same few.
  for (int64_t source : scheduler_.state().cycle) {
    auto it = seat_of_source_.find(source);
    if (it != seat_of_source_.end() && it->second->buffer.empty() &&
        ProduceInline(it->second, lock)) {
      return true;
    }
  }
  return false;
}

bool SourcePool::ConsumerProduces(const Seat& seat) const {
  // With retries, a failed call would make the consumer sit out the retry
  // delay: workers take those sources.
  return options_.produce_inline &&
         seat.pace.kind() == SourcePace::Kind::kInline &&
         options_.input_retries == 0 &&
         (!options_.sloppy ||
          (seat.pace.proven() && !slow_ends_.Expected(seat.produced) &&
           !inline_pause_.Paused(delivered_)));
}

bool SourcePool::ProduceInline(Seat* seat, mutex_lock& lock) {
  if (cancelled_ || pause_requests_ > 0 || !ConsumerProduces(*seat) ||
      seat->needs_open || !HasWork(*seat)) {
    return false;
  }
  if (seat->queued) {
    work_queue_.erase(std::find(work_queue_.begin(), work_queue_.end(), seat));
    seat->queued = false;
  }
  ClaimSeat(seat, TaskKind::kProduce);
  Task task;
  task.kind = TaskKind::kProduce;
  task.seat = seat;
  const int64_t call_start_nanos = EnvTime::NowNanos();
  inline_start_nanos_ = last_inline_nanos_ = call_start_nanos;
  if (options_.sloppy) {
    // For `LookAtInlineCall`; a deterministic pool never looks.
    inline_thread_id_ = CurrentThreadId();
    inline_looked_at_ = false;
    inline_seen_ = ThreadRunState::kUnknown;
  }
  // Make sure a worker watches this call (see `WaitAsIdleWorker`); once one
  // does, inline calls in a row need no wake-up.
  if (!watcher_ && !idle_workers_.empty()) WakeIdleWorker();
  IteratorContext* const ctx = seat_ctx_.get();
  WithoutLock(&mu_, [this, &task, ctx] { RunTask(&task, ctx); });
  inline_start_nanos_ = 0;
  inline_stalled_ = false;
  if (task.status.ok() && !task.end) ++inline_elements_;
  // While the consumer sat in a call that blocked, other sources may have
  // had elements for it: workers then produce for a while. The call's end
  // is its start plus its length: no clock read per element for this.
  if (options_.sloppy &&
      inline_pause_.RecordCall(task.elapsed_nanos, inline_seen_, delivered_,
                               call_start_nanos + task.elapsed_nanos)) {
    ++inline_pauses_;
  }
  if (--active_calls_ == 0 && pause_requests_ > 0) {
    pause_cond_var_.notify_all();
  }
  --producing_;
  std::unique_ptr<IteratorBase> dropped;
  // The consumer waits on this source as far as the memory budget goes: its
  // element may always be buffered, or the consumer would wait on itself.
  consumer_wait_ = ConsumerWait::kSource;
  consumer_wait_source_ = seat->source;
  FinishTask(&task, lock, &dropped);
  consumer_wait_ = ConsumerWait::kNone;
  if (task.follow_up != nullptr) Offer(task.follow_up, /*urgent=*/false);
  if (dropped != nullptr) WithoutLock(&mu_, [&dropped] { dropped.reset(); });
  return true;
}

}  // namespace tf_interleave
