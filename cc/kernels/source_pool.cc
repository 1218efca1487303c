// SourcePool's workers: starting and waking them, their tasks (pulling the
// input, opening sources, producing elements) and what each task's result
// does to its seat; also cancellation and stats. The consumer's side is in
// source_pool_consumer.cc, checkpoints in source_pool_checkpoint.cc.
#include "cc/kernels/source_pool.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tensorflow/core/platform/env_time.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/platform/logging.h"
#include "tsl/profiler/lib/traceme.h"
#include "tsl/profiler/lib/traceme_encode.h"

namespace tf_interleave {
namespace {

using ::tensorflow::CancellationManager;
using ::tensorflow::EnvTime;
using ::tensorflow::mutex_lock;
using ::tensorflow::Tensor;
using ::tensorflow::data::IteratorBase;
using ::tensorflow::data::IteratorContext;
using ::tsl::profiler::TraceMe;
using ::tsl::profiler::TraceMeEncode;

// Retry delays stop doubling here.
constexpr int64_t kMaxRetryBackoffMicros = 10 * 1000 * 1000;
// Finished inputs kept in stats, most recent last.
constexpr size_t kFinishedInputsInStats = 64;
// Longest input label kept.
constexpr size_t kMaxLabelLength = 256;

// cycle_length + prefetch_input_elements, saturating: both may be huge
// (the seats are made as inputs are pulled).
int64_t SeatsFor(const SourcePoolOptions& options) {
  const int64_t max = std::numeric_limits<int64_t>::max();
  return options.prefetch_input_elements > max - options.cycle_length
             ? max
             : options.cycle_length + options.prefetch_input_elements;
}

int64_t BytesOf(const std::vector<Tensor>& tensors) {
  int64_t bytes = 0;
  for (const Tensor& tensor : tensors) bytes += tensor.TotalBytes();
  return bytes;
}

}  // namespace

std::string SourcePool::LabelOf(const std::vector<Tensor>& element,
                                int64_t source) {
  if (element.size() == 1 && element[0].dtype() == tensorflow::DT_STRING &&
      element[0].NumElements() == 1) {
    std::string label(element[0].flat<tensorflow::tstring>()(0));
    if (label.size() > kMaxLabelLength) label.resize(kMaxLabelLength);
    return label;
  }
  return absl::StrCat("input #", source);
}

SourcePool::SourcePool(const SourcePoolOptions& options,
                       SourcePoolCallbacks callbacks)
    : options_(options),
      callbacks_(std::move(callbacks)),
      num_seats_(SeatsFor(options)),
      scheduler_(options.cycle_length, options.block_length, options.sloppy),
      worker_threads_(std::make_shared<WorkerThreads>()) {}

SourcePool::~SourcePool() {
  // Leave the registry first: it may be reading this pool's stats.
  if (stats_id_ != 0) StatsRegistry::Global().Deregister(stats_id_);
  // Deregistering waits for a running parent callback, so none can touch
  // this object once destruction goes on.
  if (deregister_parent_cancellation_) deregister_parent_cancellation_();
  Cancel();
  std::vector<std::unique_ptr<tensorflow::Thread>> workers;
  {
    mutex_lock l(mu_);
    workers.swap(workers_);
  }
  workers.clear();  // Joins every worker.
}

absl::Status SourcePool::Initialize(IteratorContext* ctx) {
  cancellation_manager_ =
      std::make_unique<CancellationManager>(ctx->cancellation_manager());
  symbolic_ = ctx->symbolic_checkpoint();
  {
    mutex_lock l(mu_);
    // Time lost in blocked inline calls is weighed against the time since.
    inline_pause_.Begin(EnvTime::NowNanos());
    if (symbolic_) {
      input_checkpoint_ = std::make_unique<tensorflow::data::MemoryCheckpoint>(
          ctx->id_registry());
    }
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
    WakeAllWorkers();
    retry_cond_var_.notify_all();
    while (!budget_parked_.empty()) WakeParkedWorker(budget_parked_.front());
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
  // Seats restored from a checkpoint already hold their sources; the others
  // are made as inputs are pulled (`TakeFreeSeat`).
  for (auto& seat : seats_) {
    if (seat->source >= 0) Offer(seat.get(), /*urgent=*/true);
  }
  if (!input_ended_) WakeWorker(/*parallel=*/true);
  return absl::OkStatus();
}

SourcePool::Work SourcePool::WorkOf(const Seat& seat) const {
  if (seat.claimed || seat.source < 0 || seat.source_ended) return Work::kNone;
  if (seat.needs_open) return Work::kReady;
  if (seat.iterator == nullptr) return Work::kNone;
  if (static_cast<int64_t>(seat.buffer.size()) >=
      options_.buffer_output_elements) {
    return Work::kNone;
  }
  if (!BudgetHolds(seat)) return Work::kReady;
  // The source the consumer waits on may always make an element, or a
  // budget smaller than an element would deadlock. A sloppy wait awaits
  // every source of the cycle: one such call at a time ends it as surely,
  // where one each would make a cycle of elements beyond the budget.
  if (seat.buffer.empty() && ConsumerWaitsOn(seat) &&
      (consumer_wait_ == ConsumerWait::kSource || beyond_budget_calls_ == 0)) {
    return Work::kReady;
  }
  return Work::kHeldByBudget;
}

bool SourcePool::BudgetHolds(const Seat& seat) const {
  const int64_t budget = options_.memory_budget_bytes;
  if (budget <= 0) return false;
  if (buffered_bytes_ >= budget) return true;
  // A call starts only while the budget has room beyond what is buffered,
  // parked and under way (counted at the usual size), so that every worker
  // of a large cycle cannot make an element at once and park it: before
  // any element is measured, one call at a time.
  if (measured_elements_ == 0
          ? producing_ > 0
          : buffered_bytes_ + parked_bytes_ +
                    UsualElementBytes() * producing_ >= budget) {
    return true;
  }
  // Deterministic: an element beyond the source's next block is read a
  // whole cycle later at the soonest. While the budget could not hold a
  // cycle's blocks, it would only keep the next blocks of other sources
  // out, which the consumer reads first.
  // (The budget's elements <= cycle_length * block_length, written so that
  // the product cannot overflow.)
  return !options_.sloppy &&
         static_cast<int64_t>(seat.buffer.size()) >= options_.block_length &&
         (BudgetElements() - 1) / options_.block_length <
             options_.cycle_length;
}

void SourcePool::ClaimSeat(Seat* seat, TaskKind kind) {
  seat->claimed = true;
  ++active_calls_;
  if (kind == TaskKind::kProduce) ++producing_;
}

void SourcePool::ClaimForWorker(Task* task) {
  Seat* seat = task->seat;
  switch (task->kind) {
    case TaskKind::kProduce:
      // Asked before the call counts among those producing, which the
      // budget weighs.
      task->beyond_budget = BudgetHolds(*seat);
      if (task->beyond_budget) ++beyond_budget_calls_;
      NoteCallStart(seat);
      break;
    case TaskKind::kOpen:
      if (options_.sloppy) seat->pace.OpenStarted(EnvTime::NowNanos());
      break;
    case TaskKind::kPull:
    case TaskKind::kNone:
      break;
  }
  ClaimSeat(seat, task->kind);
}

void SourcePool::EndBeyondBudgetCall() {
  --beyond_budget_calls_;
  // The sources of a sloppy wait that this call kept back may start one.
  if (consumer_wait_ != ConsumerWait::kAny) return;
  for (int64_t source : scheduler_.state().cycle) {
    auto it = seat_of_source_.find(source);
    if (it == seat_of_source_.end() || !it->second->awaited_in_cycle ||
        !it->second->buffer.empty()) {
      continue;
    }
    Unhold(it->second);
    Offer(it->second, /*urgent=*/false);
  }
  WakeForRemainingWork();
}

int64_t SourcePool::UsualElementBytes() const {
  return std::max<int64_t>(
      1, measured_elements_ > 0 ? measured_bytes_ / measured_elements_ : 1);
}

int64_t SourcePool::BudgetElements() const {
  return options_.memory_budget_bytes / UsualElementBytes();
}

void SourcePool::AddToList(std::list<Seat*>* list, Seat* seat,
                           SeatPlace* place) {
  if (place->listed) return;
  place->listed = true;
  place->at = list->insert(list->end(), seat);
}

bool SourcePool::RemoveFromList(std::list<Seat*>* list, SeatPlace* place) {
  if (!place->listed) return false;
  place->listed = false;
  list->erase(place->at);
  return true;
}

void SourcePool::OfferHeld(Seat* seat, int64_t usual_bytes, int64_t* room) {
  Unhold(seat);
  Offer(seat, /*urgent=*/false);
  if (seat->queued) *room -= usual_bytes;
}

void SourcePool::UseFreedBudget() {
  const int64_t budget = options_.memory_budget_bytes;
  int64_t room = budget - buffered_bytes_;
  // Parked workers first: their elements exist already.
  for (auto it = budget_parked_.begin();
       room > 0 && it != budget_parked_.end();) {
    Seat* seat = *it++;  // Before waking takes the seat off the list.
    const int64_t bytes = seat->pending.front().bytes;
    if (bytes > room) continue;
    room -= bytes;
    WakeParkedWorker(seat);
  }
  OfferHeldWork();
}

void SourcePool::OfferHeldWork() {
  // As many held seats as elements of the usual size fit in the budget once
  // the buffered and parked elements (woken or not) and the calls queued or
  // under way are counted: over-offering only makes workers produce
  // elements that then park, beyond the budget.
  const int64_t usual_bytes = UsualElementBytes();
  int64_t room = options_.memory_budget_bytes - buffered_bytes_ -
                 parked_bytes_ -
                 usual_bytes * (static_cast<int64_t>(work_queue_.size()) +
                                producing_);
  // The elements the consumer reads soonest first: the next block of each
  // source of the cycle, from its next slot on, as far as the budget could
  // hold them; then, oldest first, the rest (elements read a cycle later,
  // staged sources).
  const InterleaveScheduler::State& order = scheduler_.state();
  const int64_t slots = std::min<int64_t>(
      order.cycle.size(), BudgetElements() + 1);
  for (int64_t k = 0; room > 0 && k < slots && !budget_held_.empty(); ++k) {
    auto it = seat_of_source_.find(
        order.cycle[(order.next_index + k) % order.cycle.size()]);
    if (it == seat_of_source_.end() || !it->second->held.listed) continue;
    Seat* seat = it->second;
    if (static_cast<int64_t>(seat->buffer.size()) >= options_.block_length) {
      continue;
    }
    OfferHeld(seat, usual_bytes, &room);
  }
  // Each held seat once: one the budget still holds goes to the back.
  for (int64_t n = budget_held_.size(); room > 0 && n > 0; --n) {
    OfferHeld(budget_held_.front(), usual_bytes, &room);
  }
}

bool SourcePool::WakeParkedWorker(Seat* seat) {
  if (!RemoveFromList(&budget_parked_, &seat->parked)) return false;
  seat->budget_cond_var.notify_one();
  return true;
}

void SourcePool::Offer(Seat* seat, bool urgent) {
  if (!seat->queued) {
    switch (WorkOf(*seat)) {
      case Work::kReady:
        seat->queued = true;
        work_queue_.push_back(seat);
        break;
      case Work::kHeldByBudget:
        HoldForBudget(seat);
        break;
      case Work::kNone:
        break;
    }
  }
  if (urgent && seat->queued) {
    WakeWorker(seat->needs_open ||
               seat->pace.kind() == SourcePace::Kind::kSlow);
  }
}

int64_t SourcePool::TasksWaiting() const {
  const bool pull_waiting = !input_busy_ && !input_ended_ && SeatAvailable();
  return static_cast<int64_t>(work_queue_.size()) + (pull_waiting ? 1 : 0);
}

bool SourcePool::SeatAvailable() const {
  return !free_seats_.empty() ||
         static_cast<int64_t>(seats_.size()) < num_seats_;
}

SourcePool::Seat* SourcePool::TakeFreeSeat() {
  if (free_seats_.empty()) {
    seats_.push_back(std::make_unique<Seat>());
    return seats_.back().get();
  }
  Seat* seat = free_seats_.front();
  free_seats_.pop_front();
  return seat;
}

int64_t SourcePool::WorkerLimit() const {
  return std::min(num_seats_, kMaxWorkers + budget_parked_workers_);
}

void SourcePool::WakeWorker(bool parallel) {
  if (cancelled_ || seat_ctx_ == nullptr) return;
  // Each worker on its way takes a task when it arrives: waking one more
  // than there are tasks only makes it find nothing and sleep again.
  const int64_t coming = wakes_pending_ + workers_starting_;
  if (parallel ? TasksWaiting() <= coming : coming > 0) return;
  if (!idle_workers_.empty()) {
    WakeIdleWorker();
  } else if (static_cast<int64_t>(workers_.size()) < WorkerLimit()) {
    ++workers_starting_;
    const int64_t rank = workers_.size();
    workers_.push_back(seat_ctx_->StartThread(
        absl::StrCat("tf_interleave_worker_", rank),
        [this, rank]() { WorkerThread(rank); }));
  }
}

void SourcePool::WakeIdleWorker() {
  // The first started idle worker: the same few threads take turns on the
  // sources, so their allocator keeps less memory for each (a reader's
  // buffer freed on one thread is reused only by the thread that made it)
  // and their caches stay warm.
  IdleWorker* worker = idle_workers_.front();
  idle_workers_.erase(idle_workers_.begin());
  worker->woken = true;
  worker->counted = true;
  ++wakes_pending_;
  worker->cond_var.notify_one();
}

void SourcePool::WakeAllWorkers() {
  for (IdleWorker* worker : idle_workers_) {
    worker->woken = true;
    worker->cond_var.notify_one();
  }
  idle_workers_.clear();
}

void SourcePool::CallWatcher() {
  if (watcher_ || watch_called_ || work_queue_.empty() || wakes_pending_ > 0 ||
      workers_starting_ > 0 || idle_workers_.empty() ||
      idle_workers_.size() < workers_.size()) {
    return;
  }
  // Not a wake-up for a task: the worker finds work queued and watches it.
  watch_called_ = true;
  idle_workers_.front()->cond_var.notify_one();
}

void SourcePool::WakeForRemainingWork() { WakeWorker(/*parallel=*/true); }

bool SourcePool::Drained() const {
  return input_ended_ && seat_of_source_.empty();
}

SourcePool::Task SourcePool::NextTask() {
  Task task;
  if (cancelled_ || pause_requests_ > 0) return task;
  if (!input_busy_ && !input_ended_ && SeatAvailable()) {
    task.kind = TaskKind::kPull;
    task.seat = TakeFreeSeat();
    input_busy_ = true;
  } else {
    while (!work_queue_.empty()) {
      Seat* seat = work_queue_.front();
      work_queue_.pop_front();
      seat->queued = false;
      const Work work = WorkOf(*seat);
      if (work == Work::kHeldByBudget) HoldForBudget(seat);
      if (work != Work::kReady) continue;
      task.seat = seat;
      task.kind = seat->needs_open ? TaskKind::kOpen : TaskKind::kProduce;
      break;
    }
    if (task.kind == TaskKind::kNone) return task;
  }
  ClaimForWorker(&task);
  return task;
}

void SourcePool::WorkerThread(int64_t rank) {
  UsePreciseTimers();
  const WorkerContext worker_ctx(seat_ctx_.get(), worker_threads_);
  IteratorContext* ctx = worker_ctx.get();
  callbacks_.record_start(ctx);
  {
    mutex_lock l(mu_);
    --workers_starting_;
  }
  Task task;
  std::unique_ptr<IteratorBase> dropped;
  bool exit = false;
  while (!exit) {
    dropped.reset();  // Without `mu_`: tearing a pipeline down takes time.
    if (task.kind != TaskKind::kNone) RunTask(&task, ctx);
    mutex_lock l(mu_);
    // Before `FinishTask`: its seat is still claimed while `mu_` is released.
    LookAtInlineCall();
    Seat* follow_up = nullptr;
    if (task.kind != TaskKind::kNone) {
      if (--active_calls_ == 0 && pause_requests_ > 0) {
        pause_cond_var_.notify_all();
      }
      if (task.kind == TaskKind::kProduce) --producing_;
      if (task.beyond_budget) EndBeyondBudgetCall();
      FinishTask(&task, l, &dropped);
      follow_up = task.follow_up;
      task = Task();
    }
    if (follow_up != nullptr) {
      if (!cancelled_ && pause_requests_ == 0 && !follow_up->queued &&
          HasWork(*follow_up)) {
        task.kind = TaskKind::kProduce;
        task.seat = follow_up;
        ClaimForWorker(&task);
        continue;
      }
      Offer(follow_up, /*urgent=*/false);
    }
    while (true) {
      task = NextTask();
      if (task.kind != TaskKind::kNone) {
        // A task that may block (a pull, an open, a slow source) must not
        // hold back the rest of the queue.
        // So must every task while the consumer is stuck in an inline
        // call: the other sources may block the same way.
        if (task.kind != TaskKind::kProduce ||
            task.seat->pace.kind() == SourcePace::Kind::kSlow ||
            inline_stalled_) {
          WakeForRemainingWork();
        }
        break;
      }
      if (cancelled_ || Drained()) {
        // Every other sleeping worker has nothing left either.
        WakeAllWorkers();
        exit = true;
        break;
      }
      callbacks_.record_stop(ctx);
      WaitAsIdleWorker(rank, l);
      callbacks_.record_start(ctx);
    }
  }
  dropped.reset();
  callbacks_.record_stop(ctx);
}

void SourcePool::LookAtInlineCall() {
  // Only a sloppy consumer asks (see `InlinePause`).
  if (!options_.sloppy || inline_start_nanos_ == 0 || inline_looked_at_ ||
      EnvTime::NowNanos() - inline_start_nanos_ < kInlineWatchNanos) {
    return;
  }
  inline_looked_at_ = true;
  const int64_t call_start_nanos = inline_start_nanos_;
  const int64_t thread_id = inline_thread_id_;
  ThreadRunState seen;
  // Without the lock: a consumer whose call has just ended would otherwise be
  // found waiting for it.
  WithoutLock(&mu_, [&seen, thread_id] { seen = RunStateOf(thread_id); });
  // The same call still runs (the clock reading tells calls apart).
  if (inline_start_nanos_ == call_start_nanos) inline_seen_ = seen;
}

void SourcePool::NoteCallStart(Seat* seat) {
  // Only sloppy mode asks what a staged source's call under way costs; a
  // deterministic pool saves the clock reading.
  if (options_.sloppy) seat->pace.CallStarted(EnvTime::NowNanos());
}

void SourcePool::WaitAsIdleWorker(int64_t rank, mutex_lock& lock) {
  IdleWorker self;
  self.rank = rank;
  idle_workers_.insert(
      std::upper_bound(idle_workers_.begin(), idle_workers_.end(), rank,
                       [](int64_t value, const IdleWorker* worker) {
                         return value < worker->rank;
                       }),
      &self);
  while (!self.woken) {
    const bool inline_recently =
        last_inline_nanos_ != 0 &&
        EnvTime::NowNanos() - last_inline_nanos_ < kInlineRecentNanos;
    if (watcher_ || (!inline_recently && work_queue_.empty())) {
      self.cond_var.wait(lock);
      watch_called_ = false;
      continue;
    }
    // The watcher: wakes up now and then while the consumer produces inline,
    // to take over the other sources' work if an inline call blocks, and
    // while work waits in the queue for a worker that is awake anyway (a
    // buffer topped up once empty, or one the consumer fills itself), to
    // do it if the consumer stays away.
    watcher_ = true;
    // Only a sloppy consumer's calls are looked at (and marked once they are).
    const int64_t unseen_call_start_nanos =
        options_.sloppy && !inline_looked_at_ ? inline_start_nanos_ : 0;
    self.cond_var.wait_for(
        lock, std::chrono::nanoseconds(WatcherWaitNanos(
                  EnvTime::NowNanos(), unseen_call_start_nanos,
                  kInlineWatchNanos)));
    watcher_ = false;
    watch_called_ = false;
    if (self.woken) break;
    if (inline_start_nanos_ != 0 &&
        EnvTime::NowNanos() - inline_start_nanos_ >= kInlineWatchNanos) {
      inline_stalled_ = true;
      LookAtInlineCall();
      break;
    }
    // The consumer has been away for a while: refill the buffers it would
    // otherwise fill itself, so that they are ready when it comes back.
    if (!consumer_inside_ && !work_queue_.empty() &&
        EnvTime::NowNanos() - consumer_left_nanos_ >= kInlineWatchNanos) {
      break;
    }
    if (cancelled_ || Drained()) break;
  }
  if (!self.woken) {
    idle_workers_.erase(
        std::find(idle_workers_.begin(), idle_workers_.end(), &self));
  }
  if (self.counted) --wakes_pending_;
}

void SourcePool::RunTask(Task* task, IteratorContext* ctx) {
  Seat* seat = task->seat;
  switch (task->kind) {
    case TaskKind::kPull: {
      // With symbolic checkpoints the input's state change is collected
      // here and handed to the consumer's context with the pool's own state.
      std::unique_ptr<IteratorContext> pull_ctx;
      if (symbolic_) {
        IteratorContext::Params params(ctx);
        params.symbolic_checkpoint = true;
        pull_ctx = std::make_unique<IteratorContext>(std::move(params));
      }
      {
        TraceMe trace("TfInterleaveSeat::PullInput");
        task->status = callbacks_.pull_input(pull_ctx ? pull_ctx.get() : ctx,
                                             &task->element.tensors,
                                             &task->end);
      }
      if (pull_ctx) {
        task->input_checkpoint =
            std::make_unique<tensorflow::data::MemoryCheckpoint>(
                ctx->id_registry());
        task->input_checkpoint->Merge(pull_ctx->checkpoint());
      }
      break;
    }
    case TaskKind::kOpen:
      task->status = OpenIterator(seat, ctx);
      break;
    case TaskKind::kProduce: {
      const int64_t source = seat->source;
      const int64_t start_nanos = EnvTime::NowNanos();
      {
        TraceMe trace([source]() {
          return TraceMeEncode("TfInterleaveSeat::GetNext",
                               {{"source", source}});
        });
        task->status = seat->iterator->GetNext(
            ctx, &task->element.tensors, &task->end);
      }
      task->elapsed_nanos = EnvTime::NowNanos() - start_nanos;
      break;
    }
    case TaskKind::kNone:
      break;
  }
}

void SourcePool::FinishPull(Task* task) {
  Seat* seat = task->seat;
  input_busy_ = false;
  if (task->input_checkpoint) {
    input_checkpoint_->Merge(task->input_checkpoint.get());
  }
  if (task->status.ok() && task->end) {
    input_ended_ = true;
    scheduler_.OnInputEnded();
    free_seats_.push_back(seat);
    WakeConsumer(ConsumerWait::kInput, -1);
    return;
  }
  const int64_t source = sources_pulled_++;
  seat->source = source;
  seat->label = LabelOf(task->element.tensors, source);
  seat->source_ended = false;
  seat->skipped = false;
  seat->skip_error = absl::OkStatus();
  seat->stop_at = -1;
  seat->pace.Reset();
  seat->produced = 0;
  seat->delivered = 0;
  seat->delivered_bytes = 0;
  seat->retries = 0;
  seat->wait_nanos = 0;
  seat->buffer.clear();
  seat->buffered_bytes = 0;
  seat->input_element = std::move(task->element.tensors);
  seat->input_error = task->status;
  seat->needs_open = task->status.ok();
  if (!task->status.ok()) {
    // An input error becomes a source whose only element is that error, so
    // it is delivered at the input's position.
    seat->buffer.push_back(BufferedElement{task->status, {}, 0});
    seat->produced = 1;
    seat->source_ended = true;
  }
  seat_of_source_[source] = seat;
  scheduler_.OnInputOpened();
  WakeConsumer(ConsumerWait::kInput, -1);
}

void SourcePool::FinishTask(Task* task, mutex_lock& lock,
                            std::unique_ptr<IteratorBase>* dropped) {
  Seat* seat = task->seat;
  seat->claimed = false;
  if (cancelled_) return;
  switch (task->kind) {
    case TaskKind::kPull:
      FinishPull(task);
      // Opening may be slow: another worker does it while this one pulls on.
      Offer(seat, /*urgent=*/true);
      return;
    case TaskKind::kOpen:
      seat->pace.OpenEnded();
      if (task->status.ok()) {
        seat->needs_open = false;
        if (seat->stop_at >= 0 && seat->produced >= seat->stop_at) {
          EndSource(seat, dropped);
          return;
        }
        Offer(seat, /*urgent=*/true);
        return;
      }
      break;
    case TaskKind::kProduce:
      if (seat->produced == 0) slow_ends_.RecordFirstCall(task->elapsed_nanos);
      seat->pace.Record(task->elapsed_nanos);
      if (task->status.ok()) {
        if (task->end) {
          slow_ends_.RecordEnd(seat->produced, task->elapsed_nanos);
          EndSource(seat, dropped);
          return;
        }
        seat->claimed = true;  // Still this worker's while it waits to push.
        const bool pushed = Push(seat, std::move(task->element), lock);
        seat->claimed = false;
        if (!pushed) return;
        if (seat->stop_at >= 0 && seat->produced >= seat->stop_at) {
          EndSource(seat, dropped);  // Where it ended before a restore.
          return;
        }
        // The worker goes on filling this buffer (see `WorkerThread`), so a
        // source that is being read keeps its worker.
        task->follow_up = seat;
        return;
      }
      break;
    case TaskKind::kNone:
      return;
  }
  FinishFailure(task, lock, dropped);
}

void SourcePool::FinishFailure(Task* task, mutex_lock& lock,
                               std::unique_ptr<IteratorBase>* dropped) {
  Seat* seat = task->seat;
  const bool opening = task->kind == TaskKind::kOpen;
  const absl::Status& status = task->status;
  switch (OnSourceError(seat, status)) {
    case ErrorAction::kRetry:
      *dropped = std::move(seat->iterator);
      seat->needs_open = true;
      seat->pace.Reset();
      seat->claimed = true;  // Nobody reopens it before the delay is over.
      WaitBeforeRetry(seat, lock);
      seat->claimed = false;
      Offer(seat, /*urgent=*/true);
      return;
    case ErrorAction::kSkip:
      // Counted (and maybe refused, see `AccountSkip`) when the consumer
      // reaches this point of the order, so the count follows the order.
      seat->skipped = true;
      seat->skip_error = status;
      EndSource(seat, dropped);
      return;
    case ErrorAction::kDeliver:
      // After an error the source goes on, as the legacy op does: the
      // caller decides whether to keep reading. One that could not be
      // opened ends here.
      seat->claimed = true;
      if (!Push(seat, BufferedElement{status, {}, 0}, lock)) return;
      seat->claimed = false;
      if (opening) {
        seat->needs_open = false;
        EndSource(seat, dropped);
      } else {
        Offer(seat, /*urgent=*/false);
      }
      return;
  }
}

absl::Status SourcePool::OpenIterator(Seat* seat, IteratorContext* ctx) {
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
  return options_.skip_input_errors ? ErrorAction::kSkip
                                    : ErrorAction::kDeliver;
}

absl::Status SourcePool::AccountSkip(const Seat& seat) {
  if (options_.max_skipped_inputs >= 0 &&
      static_cast<int64_t>(skipped_inputs_.size()) >=
          options_.max_skipped_inputs) {
    std::vector<std::string> labels;
    for (const SkippedInput& skipped : skipped_inputs_) {
      labels.push_back(skipped.label);
    }
    return absl::Status(
        seat.skip_error.code(),
        absl::StrCat("Input '", seat.label, "' failed after ",
                     skipped_inputs_.size(),
                     " inputs were skipped (max_skipped_inputs=",
                     options_.max_skipped_inputs, "; skipped: ",
                     absl::StrJoin(labels, ", "), "): ",
                     seat.skip_error.message()));
  }
  skipped_inputs_.push_back(SkippedInput{seat.source, seat.label,
                                         seat.produced,
                                         seat.skip_error.ToString()});
  LOG(WARNING) << "tf_interleave: skipping the rest of input '" << seat.label
               << "' after " << seat.produced
               << " elements: " << seat.skip_error;
  return absl::OkStatus();
}

void SourcePool::WaitBeforeRetry(Seat* seat, mutex_lock& lock) {
  const int shift = static_cast<int>(std::min<int64_t>(seat->retries - 1, 30));
  const int64_t delay_micros =
      std::min(kMaxRetryBackoffMicros, options_.retry_backoff_micros << shift);
  const int64_t deadline = EnvTime::NowMicros() + delay_micros;
  seat->retry_until_nanos = deadline * 1000;
  WakeForRemainingWork();
  // Sloppy: the cycle blocks on this source meanwhile (`CycleBlocksFrom`),
  // so the consumer may take staged sources' elements.
  if (options_.sloppy) WakeConsumer(ConsumerWait::kSource, seat->source);
  // `Cancel` notifies `retry_cond_var_`, so teardown never waits this out.
  while (!cancelled_) {
    const int64_t remaining = deadline - EnvTime::NowMicros();
    if (remaining <= 0) break;
    retry_cond_var_.wait_for(lock, std::chrono::microseconds(remaining));
  }
  seat->retry_until_nanos = 0;
}

void SourcePool::EndSource(Seat* seat, std::unique_ptr<IteratorBase>* dropped) {
  seat->source_ended = true;
  seat->needs_open = false;
  *dropped = std::move(seat->iterator);
  WakeConsumer(ConsumerWait::kSource, seat->source);
}

bool SourcePool::ConsumerWaitsOn(const Seat& seat) const {
  if (consumer_wait_ == ConsumerWait::kSource) {
    return consumer_wait_source_ == seat.source;
  }
  // Sloppy: any source of the cycle. Staged ones may be emitted too, but the
  // memory budget makes no exception for them: the cycle's ensure progress.
  return consumer_wait_ == ConsumerWait::kAny && seat.awaited_in_cycle;
}

bool SourcePool::BudgetAllows(const Seat& seat, int64_t bytes) const {
  const int64_t budget = options_.memory_budget_bytes;
  return budget <= 0 || buffered_bytes_ + bytes <= budget ||
         (seat.buffer.empty() && ConsumerWaitsOn(seat));
}

bool SourcePool::Push(Seat* seat, BufferedElement element, mutex_lock& lock) {
  element.bytes = BytesOf(element.tensors);
  ++measured_elements_;
  measured_bytes_ += element.bytes;
  if (!BudgetAllows(*seat, element.bytes)) {
    // Held in `pending` meanwhile, so a checkpoint taken now keeps it.
    parked_bytes_ += element.bytes;
    seat->pending.push_back(std::move(element));
    ++budget_parked_workers_;
    WakeForRemainingWork();
    // Woken when the element fits, or the consumer waits on the source; if
    // another element took the room meanwhile, park again.
    while (!cancelled_ && !BudgetAllows(*seat, seat->pending.front().bytes)) {
      AddToList(&budget_parked_, seat, &seat->parked);
      while (!cancelled_ && seat->parked.listed) {
        seat->budget_cond_var.wait(lock);
      }
    }
    --budget_parked_workers_;
    parked_bytes_ -= seat->pending.front().bytes;
    if (cancelled_) return false;
    element = std::move(seat->pending.front());
    seat->pending.pop_front();
  }
  seat->buffered_bytes += element.bytes;
  buffered_bytes_ += element.bytes;
  seat->buffer.push_back(std::move(element));
  ++seat->produced;
  WakeConsumer(ConsumerWait::kSource, seat->source);
  // The element may be smaller than the usual size its call was counted
  // at, or the first measured: work the budget held may fit now. (No parked
  // element fits better than before: the buffers only grew.)
  if (!budget_held_.empty()) OfferHeldWork();
  return true;
}

int64_t SourcePool::RefillThreshold(const Seat& seat) const {
  return seat.pace.kind() == SourcePace::Kind::kSlow
             ? options_.buffer_output_elements - 1
             : 0;
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

absl::Status SourcePool::ReleaseSource(int64_t source) {
  auto it = seat_of_source_.find(source);
  Seat* seat = it->second;
  seat_of_source_.erase(it);
  const absl::Status skip_status =
      seat->skipped ? AccountSkip(*seat) : absl::OkStatus();
  InputStats stats = StatsOf(*seat);
  if (stats.state != "skipped") stats.state = "done";
  finished_inputs_.push_back(std::move(stats));
  if (finished_inputs_.size() > kFinishedInputsInStats) {
    finished_inputs_.pop_front();
  }
  seat->source = -1;
  seat->input_element.clear();
  seat->input_error = absl::OkStatus();
  if (input_ended_) {
    // No task can come for this seat; idle workers may be done for good.
    if (Drained()) WakeAllWorkers();
    return skip_status;
  }
  free_seats_.push_back(seat);
  WakeWorker(/*parallel=*/true);
  return skip_status;
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
  stats.waiting_on = WaitTargetLabel(wait_reason_, wait_reason_source_);
  stats.sloppy_skips = scheduler_.state().sloppy_skips;
  stats.promoted_inputs = scheduler_.state().promotions;
  stats.staged_elements = staged_elements_;
  stats.inline_elements = inline_elements_;
  stats.inline_pauses = inline_pauses_;
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

}  // namespace tf_interleave
