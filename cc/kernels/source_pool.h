// The workers and buffers of a parallel interleave. Each open nested
// iterator (a "source") sits in one of cycle_length + prefetch_input_elements
// seats, with a bounded buffer; a pool of worker threads (never more than
// seats, nor than kMaxWorkers) pulls input elements into free seats, opens
// their nested iterators and fills their buffers. The consumer side
// (`GetNext`) asks an `InterleaveScheduler` which source emits next and
// takes the element from that source's buffer.
//
// Threads:
//  - Workers are not tied to seats: a worker takes the next task from a
//    queue of seats that have work (a pull, an open, room in the buffer),
//    runs it without holding `mu_`, and goes on with the next, sleeping only
//    when there is none. A source is worked on by one worker at a time.
//  - The consumer wakes a sleeping worker only when a source needs it soon
//    (a fast source's buffer is empty, a slow one has room, a seat is free,
//    or the consumer is about to wait); an awake worker also refills every
//    other buffer with room. Tiny elements thus cost a fraction of a
//    wake-up each, while a slow source's latency stays hidden.
//  - Elements cheaper than a hand-off between threads (an "inline" source,
//    see source_pace.h) are produced by the consumer itself when their
//    buffer is empty and no worker is on the source: no wake-up at all.
//    While it does, or while work waits in the queue for a worker that is
//    awake anyway, one idle worker (the watcher) wakes every millisecond; if
//    an inline call has lasted that long, workers take over the other
//    sources (which may block the same way). In sloppy mode the consumer
//    then leaves production to workers for a while if its thread was found
//    blocked rather than preempted (see `InlinePause`), and leaves them the
//    calls that may find an end once ends or opens have blocked
//    (`SlowEnds`). If the consumer has been out of `GetNext` that long, the
//    watcher fills the buffers in its absence.
//  - An idle worker is woken on its own condition variable, the first
//    started one first, so that the same few threads take turns on the
//    sources (warmer caches, and less memory kept by per-thread malloc
//    arenas).
//  - In sloppy mode the consumer tells the scheduler what each staged
//    source costs per element (`SourcePace::StragglerCostNanos`), so that a
//    straggler waiting in staging enters the cycle ahead of faster sources;
//    and when no source of the cycle has an element ready (nor a cheap one
//    to produce) and one of them blocks (`SourcePace::Blocking`), it takes
//    a staged source's instead of waiting. Sources that are only waiting
//    for a core do not count: on a saturated machine, reading staged
//    sources as well only spreads the same work over more memory.
//  - Functions that a worker's call runs (`map_func`, a nested dataset's own
//    functions) execute on that worker, not on the inter-op pool, whose few
//    threads would cap how many slow opens overlap; closures scheduled from
//    other threads (a nested parallel `map`) still go to the pool. Workers
//    ask for the tightest timer slack, so that a source's timed waits (a
//    sleep, a poll with a timeout) end on time.
//  - Input elements are pulled by one worker at a time, so sources are
//    numbered in input order; `map_func` runs on other workers meanwhile, so
//    a slow input or a slow `map_func` never stalls a consumer that has a
//    ready element.
//  - Workers start on demand, up to one per seat (enough to keep every seat
//    busy when every source blocks) but no more than kMaxWorkers, and exit
//    once the input has ended and every source is drained. Seats are made
//    as inputs are pulled, so a huge cycle over a short input costs only
//    the seats it fills.
//  - With a memory budget (which counts parked elements and the calls under
//    way too), work the budget holds back waits in a list, and
//    a worker whose element does not fit parks on its seat's condition
//    variable; bytes the consumer frees go to parked elements that fit,
//    then to the held inputs read soonest (`UseFreedBudget`), so a full
//    budget costs a wake-up per element, not one per seat.
//  - `Save` pauses the workers: none starts a task while a pause is
//    requested, and `Save` waits until the tasks under way end. Saving and
//    restoring are in source_pool_checkpoint.cc, the record's encoding in
//    checkpoint_io.h.
//
// Files: the workers' side in source_pool.cc, the consumer's (`GetNext`, its
// waits, inline production) in source_pool_consumer.cc, checkpoints in
// source_pool_checkpoint.cc, and how functions run on workers in
// worker_context.h.
//
// Invariants (under `mu_`):
//  1. A source is held by exactly one seat from the moment its input element
//     is pulled until the scheduler releases it.
//  2. A seat's buffer holds at most `buffer_output_elements` elements, so at
//     most (cycle_length + prefetch_input_elements) * buffer_output_elements
//     elements are buffered in all. With a memory budget, the buffers'
//     bytes stay within it, except that a buffer the consumer is waiting on
//     may always take one element (so the pipeline cannot deadlock).
//  3. After `cancelled_` is set no worker starts, no task starts, and every
//     wait ends.
//  4. A seat's `iterator` and `input_element` are touched by the worker that
//     claimed the seat, while it counts in `active_calls_`, and by `Save`
//     only when `active_calls_` is zero and a pause is requested.
#ifndef TF_INTERLEAVE_CC_KERNELS_SOURCE_POOL_H_
#define TF_INTERLEAVE_CC_KERNELS_SOURCE_POOL_H_

#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cc/kernels/buffered_element.h"
#include "cc/kernels/checkpoint_io.h"
#include "cc/kernels/interleave_scheduler.h"
#include "cc/kernels/interleave_stats.h"
#include "cc/kernels/source_pace.h"
#include "cc/kernels/thread_state.h"
#include "cc/kernels/worker_context.h"
#include "tensorflow/core/framework/cancellation.h"
#include "tensorflow/core/framework/dataset.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/platform/thread_annotations.h"

namespace tf_interleave {

struct SourcePoolOptions {
  int64_t cycle_length = 1;
  int64_t block_length = 1;
  int64_t buffer_output_elements = 1;
  int64_t prefetch_input_elements = 0;
  bool sloppy = false;
  // An error of a nested dataset or `map_func` ends that input instead of
  // being delivered (after `input_retries` retries).
  bool skip_input_errors = false;
  // With `skip_input_errors`: how many inputs may be skipped; -1: no limit.
  int64_t max_skipped_inputs = -1;
  // Times an input is reopened after an error, skipping what it delivered.
  int64_t input_retries = 0;
  // First retry delay; it doubles with each retry of the same input.
  int64_t retry_backoff_micros = 50 * 1000;
  // Bound on the bytes of all buffered elements; 0: none.
  int64_t memory_budget_bytes = 0;
  // Log a warning when the consumer waits this long on one input; 0: never.
  double stall_warning_seconds = 0;
  // The consumer may produce cheap sources' elements itself (see
  // source_pace.h); false leaves every call to workers.
  bool produce_inline = true;
  // Names the iterator in stats.
  std::string name;
};

// What the pool needs from the dataset it serves.
struct SourcePoolCallbacks {
  using Context = tensorflow::data::IteratorContext;
  using Iterator = tensorflow::data::IteratorBase;
  using Element = std::vector<tensorflow::Tensor>;

  // Pulls the next input element. Never called concurrently.
  std::function<absl::Status(Context* ctx, Element* element,
                             bool* end_of_input)>
      pull_input;
  // Runs `map_func` on an input element and makes its iterator.
  std::function<absl::Status(Context* ctx, const Element& element,
                             int64_t source,
                             std::unique_ptr<Iterator>* iterator)>
      open_source;
  // Saves and restores the input iterator or a nested one (checkpoints).
  std::function<absl::Status(tensorflow::data::SerializationContext* ctx,
                             tensorflow::data::IteratorStateWriter* writer,
                             const std::unique_ptr<Iterator>& iterator)>
      save_iterator;
  std::function<absl::Status(Context* ctx,
                             tensorflow::data::IteratorStateReader* reader,
                             const std::unique_ptr<Iterator>& iterator)>
      restore_iterator;
  // Autotune bookkeeping: a thread of the dataset starts / stops working.
  std::function<void(Context* ctx)> record_start;
  std::function<void(Context* ctx)> record_stop;
};

// Runs `fn` with the held `*mu` released, then takes it again: a call to a
// nested iterator, or a read of /proc, must not hold the pool's lock. The
// thread-safety analysis checks `fn`'s body as running without the lock (a
// scope object that unlocks would hide that), so it cannot touch state that
// `*mu` guards.
template <typename Fn>
void WithoutLock(tensorflow::mutex* mu, Fn&& fn)
    TF_EXCLUSIVE_LOCKS_REQUIRED(*mu) {
  mu->unlock();
  fn();
  mu->lock();
}

class SourcePool : public StatsSource {
 public:
  SourcePool(const SourcePoolOptions& options, SourcePoolCallbacks callbacks);
  // Cancels, wakes every waiter and joins every seat thread.
  ~SourcePool() override;

  SourcePool(const SourcePool&) = delete;
  SourcePool& operator=(const SourcePool&) = delete;

  // Links the pool's cancellation to the iterator's and lists the pool in
  // the stats registry. Call once, from the iterator's `Initialize`, before
  // making the input iterator with `cancellation_manager()`.
  absl::Status Initialize(tensorflow::data::IteratorContext* ctx);
  tensorflow::CancellationManager* cancellation_manager() const {
    return cancellation_manager_.get();
  }

  // Returns the next element in the scheduler's order, or the error that
  // sits at that position. With symbolic checkpointing, also records the
  // pool's position in `ctx->checkpoint()`.
  absl::Status GetNext(tensorflow::data::IteratorContext* ctx,
                       std::vector<tensorflow::Tensor>* out_tensors,
                       bool* end_of_sequence) TF_LOCKS_EXCLUDED(mu_);

  // Writes the state under `name`. A full checkpoint holds buffered
  // elements, open nested iterators and the input iterator `input`; a
  // symbolic one (`ctx->symbolic_checkpoint()`) only positions: which inputs
  // are open and how many elements each has delivered.
  absl::Status Save(tensorflow::data::SerializationContext* ctx,
                    tensorflow::data::IteratorStateWriter* writer,
                    const std::string& name,
                    const std::unique_ptr<tensorflow::data::IteratorBase>& input)
      TF_LOCKS_EXCLUDED(mu_);
  // Reads a state written by `Save` into a pool that has not started.
  absl::Status Restore(
      tensorflow::data::IteratorContext* ctx,
      tensorflow::data::IteratorStateReader* reader, const std::string& name,
      const std::unique_ptr<tensorflow::data::IteratorBase>& input)
      TF_LOCKS_EXCLUDED(mu_);
  // Records the current position in `ctx->checkpoint()` (symbolic
  // checkpointing only; otherwise does nothing).
  void RecordSymbolicCheckpoint(tensorflow::data::IteratorContext* ctx,
                                const std::string& name)
      TF_LOCKS_EXCLUDED(mu_);

  // Stops every seat and makes pending and future `GetNext` calls return
  // `Cancelled`. Safe to call more than once, from any thread.
  void Cancel() TF_LOCKS_EXCLUDED(mu_);

  IteratorStats Stats() const override TF_LOCKS_EXCLUDED(mu_);

 private:
  struct Seat;
  // A seat's place in a list of seats kept in arrival order, from which it
  // leaves in O(1) (see `AddToList`).
  struct SeatPlace {
    bool listed = false;
    std::list<Seat*>::iterator at;
  };
  // Every field of a Seat and of an IdleWorker is read and written under
  // the pool's `mu_` (members of a nested struct cannot name it in
  // TF_GUARDED_BY), except `iterator` and `input_element`: invariant 4.
  struct Seat {
    int64_t source = -1;        // The source this seat holds, or -1.
    std::string label;          // Names the source's input in stats and logs.
    bool source_ended = false;  // The source will add nothing more.
    bool needs_open = false;    // The nested iterator is (re)opened next.
    bool skipped = false;       // The source ended on a skipped error.
    absl::Status skip_error;    // That error; counted when the consumer
                                // reaches the end of the source.
    // After a symbolic restore of a source that had ended: where it stops.
    int64_t stop_at = -1;
    absl::Status input_error;   // Pulling the input element failed.
    // Who produces the source's elements, and when (see source_pace.h).
    SourcePace pace;
    int64_t produced = 0;  // Elements (and errors) the source has produced.
    int64_t delivered = 0;  // Elements (and errors) the consumer has taken.
    int64_t delivered_bytes = 0;
    int64_t retries = 0;
    // While the source waits out a retry delay: when the delay ends.
    int64_t retry_until_nanos = 0;
    int64_t wait_nanos = 0;  // Consumer time spent waiting on this source.
    std::deque<BufferedElement> buffer;
    int64_t buffered_bytes = 0;
    // See invariant 4.
    std::vector<tensorflow::Tensor> input_element;
    std::unique_ptr<tensorflow::data::IteratorBase> iterator;
    // An element waiting for the memory budget (saved with the buffer).
    std::deque<BufferedElement> pending;
    bool claimed = false;  // A worker runs a task on this seat.
    bool queued = false;   // The seat is in `work_queue_`.
    // The memory budget: the seat's place among the seats whose task the
    // budget holds back (`budget_held_`) and among those whose worker is
    // parked in `Push` (`budget_parked_`). A parked worker waits on the
    // seat's own condition variable until `WakeParkedWorker` takes the seat
    // off its list, so freed bytes wake only the workers whose elements fit.
    SeatPlace held;
    SeatPlace parked;
    tensorflow::condition_variable budget_cond_var;
    // Sloppy: the source is in the cycle while the consumer waits for any
    // of it (kAny), so the budget lets its empty buffer take an element.
    bool awaited_in_cycle = false;
  };

  // A worker waiting for work, on its own condition variable so that the
  // pool chooses which one wakes (see `WakeIdleWorker`).
  struct IdleWorker {
    int64_t rank = 0;  // The worker's start order: the lowest wakes first.
    tensorflow::condition_variable cond_var;
    bool woken = false;    // Taken off `idle_workers_` by a waker.
    bool counted = false;  // Woken for a task: counts in `wakes_pending_`.
  };

  enum class TaskKind { kNone, kPull, kOpen, kProduce };
  // One unit of a worker's work, and what running it produced.
  struct Task {
    TaskKind kind = TaskKind::kNone;
    Seat* seat = nullptr;
    absl::Status status;
    BufferedElement element;  // kPull: the input element; kProduce: output.
    bool end = false;         // End of the input / of the source.
    int64_t elapsed_nanos = 0;
    std::unique_ptr<tensorflow::data::MemoryCheckpoint> input_checkpoint;
    // A seat the worker goes on producing for, without queueing it.
    Seat* follow_up = nullptr;
    // kProduce: only the consumer's wait let the call start, the memory
    // budget would have held it (counted in `beyond_budget_calls_`).
    bool beyond_budget = false;
  };

  // Why the consumer waits, so that workers wake it only when it matters.
  enum class ConsumerWait { kNone, kSource, kInput, kAny };
  // What a seat does after its source fails.
  enum class ErrorAction { kRetry, kSkip, kDeliver };

  absl::Status EnsureStarted(tensorflow::data::IteratorContext* ctx)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerThread(int64_t rank) TF_LOCKS_EXCLUDED(mu_);
  // Picks the next task and claims its seat; kNone when there is none.
  Task NextTask() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Once the consumer's inline call has lasted kInlineWatchNanos, the first
  // other thread to pass by (the watcher, or a worker between tasks) reads
  // whether the consumer's thread is blocked or only preempted, without
  // `mu_` meanwhile.
  void LookAtInlineCall() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A worker is about to call the seat's nested iterator (see
  // `SourcePace::StragglerCostNanos`).
  void NoteCallStart(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs a task's TensorFlow work, without `mu_`, in `ctx` (a worker's own
  // context, or `seat_ctx_` for the consumer).
  void RunTask(Task* task, tensorflow::data::IteratorContext* ctx)
      TF_LOCKS_EXCLUDED(mu_);
  // Applies a task's result to its seat and releases the claim. A dropped
  // nested iterator goes to `*dropped`, to be destroyed without `mu_`.
  void FinishTask(Task* task, tensorflow::mutex_lock& lock,
                  std::unique_ptr<tensorflow::data::IteratorBase>* dropped)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishPull(Task* task) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishFailure(Task* task, tensorflow::mutex_lock& lock,
                     std::unique_ptr<tensorflow::data::IteratorBase>* dropped)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the nested iterator from the input element and skips the elements
  // the source already produced (when reopening after an error or after a
  // symbolic restore). Runs as an active call.
  absl::Status OpenIterator(Seat* seat,
                            tensorflow::data::IteratorContext* ctx)
      TF_LOCKS_EXCLUDED(mu_);
  ErrorAction OnSourceError(Seat* seat, const absl::Status& status)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for the retry delay of the seat's `retries`-th retry.
  void WaitBeforeRetry(Seat* seat, tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the seat's source ended; its iterator goes to `*dropped`.
  void EndSource(Seat* seat,
                 std::unique_ptr<tensorflow::data::IteratorBase>* dropped)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds an element to the seat's buffer, first waiting until its bytes fit
  // the memory budget. False when cancelled.
  bool Push(Seat* seat, BufferedElement element, tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool BudgetAllows(const Seat& seat, int64_t bytes) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ConsumerWaitsOn(const Seat& seat) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What a worker could do on the seat now: nothing, a task the memory
  // budget holds back until bytes are freed, or a task.
  enum class Work { kNone, kHeldByBudget, kReady };
  Work WorkOf(const Seat& seat) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a worker could run a task on the seat now.
  bool HasWork(const Seat& seat) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return WorkOf(seat) == Work::kReady;
  }
  // Whether the memory budget alone would hold back a call on the seat.
  bool BudgetHolds(const Seat& seat) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the seat taken by a call of `kind` and counts the call.
  void ClaimSeat(Seat* seat, TaskKind kind) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Claims the seat of a worker's task: `ClaimSeat`, and what the pace and
  // the memory budget note when a worker's open or call starts.
  void ClaimForWorker(Task* task) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A call that started beyond the budget has returned: a sloppy wait's
  // sources it kept back may start theirs.
  void EndBeyondBudgetCall() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The mean size of the elements produced so far (1 before any), and how
  // many such elements the memory budget holds.
  int64_t UsualElementBytes() const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t BudgetElements() const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends the seat to the list unless it is on it already; takes it off
  // again, returning whether it was on.
  static void AddToList(std::list<Seat*>* list, Seat* seat, SeatPlace* place);
  static bool RemoveFromList(std::list<Seat*>* list, SeatPlace* place);
  // Remembers a seat whose task the budget holds back (`budget_held_`), and
  // forgets it again.
  void HoldForBudget(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    AddToList(&budget_held_, seat, &seat->held);
  }
  void Unhold(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    RemoveFromList(&budget_held_, &seat->held);
  }
  // Offers a held seat, counting an element of the usual size against
  // `room` if it is queued.
  void OfferHeld(Seat* seat, int64_t usual_bytes, int64_t* room)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After the consumer took an element: as far as the bytes now free go,
  // wakes parked workers whose elements fit (oldest first), then offers
  // held seats (the inputs read soonest first), instead of waking and
  // offering every seat for each element.
  void UseFreedBudget() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The second half of `UseFreedBudget`: offers held seats as far as the
  // budget has room for new elements.
  void OfferHeldWork() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes the worker parked in `Push` on the seat, if one is not woken yet;
  // returns whether one was.
  bool WakeParkedWorker(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // As the consumer starts waiting with a memory budget: the sources it
  // waits on may exceed the budget by one element, so their parked workers
  // wake and their seats are offered. A sloppy wait marks the cycle's seats
  // `awaited_in_cycle` and returns them, for the consumer to unmark when
  // the wait ends.
  std::vector<Seat*> ServeAwaitedSources(ConsumerWait reason, int64_t source)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues the seat if it has work; wakes a worker when `urgent`.
  void Offer(Seat* seat, bool urgent) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes a sleeping worker, or starts one if none sleeps and fewer than
  // `WorkerLimit()` run, unless the workers already on their way are enough
  // for the tasks waiting. Work on a fast source (`parallel` false) needs no
  // worker of its own: if one is already on its way, it will do it.
  void WakeWorker(bool parallel) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes the first started idle worker for a task.
  void WakeIdleWorker() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes every idle worker (cancellation, the end of a pause, no work
  // left), without counting them as coming for a task.
  void WakeAllWorkers() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An idle worker's wait: until woken, or, for the one watcher, until the
  // consumer's current inline call has lasted kInlineWatchNanos (then
  // `inline_stalled_` is set and the worker goes on to queued work) or the
  // consumer has been out of `GetNext` that long with work queued.
  void WaitAsIdleWorker(int64_t rank, tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tasks a worker could take now: queued seats and a pull of the input.
  int64_t TasksWaiting() const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a pull has a seat to go to: a freed one, or one not made yet.
  bool SeatAvailable() const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes a freed seat, or makes one; requires `SeatAvailable()`.
  Seat* TakeFreeSeat() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many workers may run: one per seat, at most kMaxWorkers besides
  // those parked in `Push` until the memory budget allows their element.
  int64_t WorkerLimit() const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // As the consumer leaves `GetNext`: when work waits in the queue and every
  // worker sleeps without a watcher, makes one of them the watcher, so that
  // the buffers fill while the consumer is away.
  void CallWatcher() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes a worker for queued work when the caller is about to block.
  void WakeForRemainingWork() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True once no task can ever come: workers may exit.
  bool Drained() const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The consumer wakes a worker for a source with room once its buffer
  // holds at most this many elements. A fast source is refilled only when
  // empty, so each wake-up yields whole buffers instead of one element
  // (wake-ups, not the elements, dominate the cost of tiny elements); a slow
  // source is woken for as soon as there is room, so its latency stays
  // hidden.
  int64_t RefillThreshold(const Seat& seat) const;

  SourceState StateOf(int64_t source) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes the front element of the seat's buffer for the consumer.
  BufferedElement TakeElement(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees the seat of a source the scheduler is done with. Returns the error
  // to deliver at this point of the order when the source was skipped one
  // time too many (`max_skipped_inputs`), else OK.
  absl::Status ReleaseSource(int64_t source) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases every source in `released_`; returns the first skip error.
  absl::Status ReleaseSources() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts a skipped input at its place in the consumer's order.
  absl::Status AccountSkip(const Seat& seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sources of the cycle with nothing buffered that have not ended.
  std::vector<const Seat*> PendingCycleSeats() const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeConsumer(ConsumerWait reason, int64_t source)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the consumer produces the seat's elements itself when it needs
  // them (an inline source; in sloppy mode also a proven one whose next
  // call is not expected to block at its end, and not while inline
  // production is paused).
  bool ConsumerProduces(const Seat& seat) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Instead of waiting for a worker, the consumer produces the next element
  // of an inline source itself when no worker is on it. Returns false (and
  // does nothing) when it cannot. Releases `mu_` meanwhile.
  bool ProduceInline(Seat* seat, tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sloppy: the same for the first source of the cycle that can.
  bool ProduceInlineForCycle(tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Within one `GetNext` call: what the consumer waits for (the source for
  // kSource, else -1), since when, and whether that stall was warned about.
  // A stall spans the call's waits for the same thing, as a sloppy consumer
  // may wait in many short rechecks.
  struct StallClock {
    ConsumerWait reason = ConsumerWait::kNone;
    int64_t source = -1;
    int64_t since_nanos = 0;
    bool warned = false;
  };
  // Waits on `consumer_cond_var_` for the reason in `consumer_wait_`,
  // accounting the time and warning once when a stall has lasted
  // `stall_warning_seconds`.
  void WaitAsConsumer(tensorflow::data::IteratorContext* ctx,
                      StallClock* stall, tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sloppy: from when a source of the cycle that has nothing ready blocks
  // (`SourcePace::Blocking`: slow on average, or a call or open under way
  // for long; or waiting out a retry delay), so that staged sources'
  // elements should go first:
  // `now_nanos` if one blocks already, else when the first call or open
  // under way would.
  int64_t CycleBlocksFrom(int64_t now_nanos) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Names what the consumer waits on, for stats and warnings.
  std::string WaitTargetLabel(ConsumerWait reason, int64_t source) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  InputStats StatsOf(const Seat& seat) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A file name when the input element is one scalar string, else its index.
  static std::string LabelOf(const std::vector<tensorflow::Tensor>& element,
                             int64_t source);

  // Checkpoints (source_pool_checkpoint.cc, like `Save` and `Restore`).
  // Fails unless the checkpoint's arguments are this pool's.
  absl::Status CheckArguments(int64_t cycle_length, int64_t block_length,
                              int64_t buffer_output_elements,
                              int64_t prefetch_input_elements,
                              int64_t sloppy) const;
  absl::Status WriteState(tensorflow::data::SerializationContext* ctx,
                          tensorflow::data::IteratorStateWriter* writer,
                          const std::string& name, bool symbolic,
                          const std::unique_ptr<tensorflow::data::IteratorBase>&
                              input) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What a checkpoint holds of the seat's source.
  SourceRecord RecordOf(const Seat& seat, bool symbolic) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Beyond this many threads, sources that all block at once wait for a
  // worker in turn rather than exhaust the process's threads.
  static constexpr int64_t kMaxWorkers = 4096;

  const SourcePoolOptions options_;
  const SourcePoolCallbacks callbacks_;
  const int64_t num_seats_;

  mutable tensorflow::mutex mu_;
  tensorflow::condition_variable consumer_cond_var_;
  // Signalled when `active_calls_` drops to zero during a pause.
  tensorflow::condition_variable pause_cond_var_;
  InterleaveScheduler scheduler_ TF_GUARDED_BY(mu_);
  // The running workers' threads: their contexts run functions inline on
  // any of them (see `WorkerContext`).
  const std::shared_ptr<WorkerThreads> worker_threads_;
  std::vector<std::unique_ptr<Seat>> seats_ TF_GUARDED_BY(mu_);
  std::deque<Seat*> free_seats_ TF_GUARDED_BY(mu_);
  std::deque<Seat*> work_queue_ TF_GUARDED_BY(mu_);
  bool input_busy_ TF_GUARDED_BY(mu_) = false;  // A worker pulls the input.
  std::vector<std::unique_ptr<tensorflow::Thread>> workers_ TF_GUARDED_BY(mu_);
  // Idle workers in start order (see `WakeIdleWorker`); a worker leaves the
  // list when it is woken.
  std::vector<IdleWorker*> idle_workers_ TF_GUARDED_BY(mu_);
  // Workers woken for a task that have not resumed yet, and started ones
  // that have not begun.
  int64_t wakes_pending_ TF_GUARDED_BY(mu_) = 0;
  int64_t workers_starting_ TF_GUARDED_BY(mu_) = 0;
  // Workers parked in `Push` until the budget allows their element: each
  // holds a seat the consumer is not waiting on, so they do not count
  // toward kMaxWorkers (the awaited source can always get a worker).
  int64_t budget_parked_workers_ TF_GUARDED_BY(mu_) = 0;
  // While the consumer has produced an element inline within the last
  // kInlineRecentNanos, or work waits in the queue, one idle worker wakes
  // every kInlineWatchNanos: when an inline call has lasted that long,
  // workers take over the other sources; when the consumer has been away
  // that long, they fill the buffers for its return.
  static constexpr int64_t kInlineWatchNanos = 1000 * 1000;
  static constexpr int64_t kInlineRecentNanos = 10 * 1000 * 1000;
  // The consumer's inline calls (see `ProduceInline`): when the current one
  // started (0: none runs), when the last one did, whether an idle worker
  // watches them, and whether the current one has lasted long enough that
  // workers should take over the other sources.
  int64_t inline_start_nanos_ TF_GUARDED_BY(mu_) = 0;
  int64_t last_inline_nanos_ TF_GUARDED_BY(mu_) = 0;
  bool watcher_ TF_GUARDED_BY(mu_) = false;
  bool watch_called_ TF_GUARDED_BY(mu_) = false;  // See `CallWatcher`.
  bool inline_stalled_ TF_GUARDED_BY(mu_) = false;
  // The current inline call's thread, whether another thread has looked at
  // it once the call had lasted kInlineWatchNanos, and what it saw (see
  // `LookAtInlineCall`).
  int64_t inline_thread_id_ TF_GUARDED_BY(mu_) = -1;
  bool inline_looked_at_ TF_GUARDED_BY(mu_) = false;
  ThreadRunState inline_seen_ TF_GUARDED_BY(mu_) = ThreadRunState::kUnknown;
  // Whether the consumer is in `GetNext`, and when it last left: while it is
  // away, the watcher refills the buffers of sources it produces itself.
  bool consumer_inside_ TF_GUARDED_BY(mu_) = false;
  int64_t consumer_left_nanos_ TF_GUARDED_BY(mu_) = 0;
  // Sloppy: when inline calls wait after one blocked (see `ProduceInline`).
  InlinePause inline_pause_ TF_GUARDED_BY(mu_);
  // Sloppy: where sources' ends blocked (or whether their opens did, before
  // any has ended), so that the consumer leaves those calls to workers.
  SlowEnds slow_ends_ TF_GUARDED_BY(mu_);
  // Workers waiting out a retry delay.
  tensorflow::condition_variable retry_cond_var_;
  // Seats whose workers are parked in `Push` for the memory budget and not
  // woken yet, and seats with a task the budget holds back (a seat's state
  // may have changed since it was held), oldest first.
  std::list<Seat*> budget_parked_ TF_GUARDED_BY(mu_);
  std::list<Seat*> budget_held_ TF_GUARDED_BY(mu_);
  absl::flat_hash_map<int64_t, Seat*> seat_of_source_ TF_GUARDED_BY(mu_);
  int64_t sources_pulled_ TF_GUARDED_BY(mu_) = 0;
  bool input_ended_ TF_GUARDED_BY(mu_) = false;
  bool cancelled_ TF_GUARDED_BY(mu_) = false;
  int64_t active_calls_ TF_GUARDED_BY(mu_) = 0;
  int64_t pause_requests_ TF_GUARDED_BY(mu_) = 0;
  ConsumerWait consumer_wait_ TF_GUARDED_BY(mu_) = ConsumerWait::kNone;
  int64_t consumer_wait_source_ TF_GUARDED_BY(mu_) = -1;
  std::vector<int64_t> released_ TF_GUARDED_BY(mu_);
  // An element already taken from its buffer, returned by the next
  // `GetNext` because an error had to come first.
  std::vector<BufferedElement> stashed_ TF_GUARDED_BY(mu_);
  int64_t buffered_bytes_ TF_GUARDED_BY(mu_) = 0;
  // The memory budget counts what is not buffered yet as well: elements
  // whose workers are parked in `Push`, and calls under way that will
  // produce one (`producing_`, worker and inline calls alike).
  int64_t parked_bytes_ TF_GUARDED_BY(mu_) = 0;
  int64_t producing_ TF_GUARDED_BY(mu_) = 0;
  // Of those, the worker calls that only the consumer's wait let start
  // (see `WorkOf`).
  int64_t beyond_budget_calls_ TF_GUARDED_BY(mu_) = 0;
  // Elements produced so far and their bytes, for `UsualElementBytes`.
  int64_t measured_elements_ TF_GUARDED_BY(mu_) = 0;
  int64_t measured_bytes_ TF_GUARDED_BY(mu_) = 0;

  // Stats (see interleave_stats.h).
  int64_t delivered_ TF_GUARDED_BY(mu_) = 0;
  // Sloppy: elements taken from staged sources (stats only).
  int64_t staged_elements_ TF_GUARDED_BY(mu_) = 0;
  // Elements the consumer's thread produced itself (`ProduceInline`), and
  // the inline calls that paused that (sloppy, `InlinePause`).
  int64_t inline_elements_ TF_GUARDED_BY(mu_) = 0;
  int64_t inline_pauses_ TF_GUARDED_BY(mu_) = 0;
  // Sloppy: when not 0, the consumer's next wait ends at this clock reading
  // at the latest, to ask again whether the cycle blocks (`CycleBlocksFrom`).
  int64_t recheck_staging_at_nanos_ TF_GUARDED_BY(mu_) = 0;
  int64_t delivered_bytes_ TF_GUARDED_BY(mu_) = 0;
  int64_t consumer_wait_nanos_ TF_GUARDED_BY(mu_) = 0;
  int64_t retries_ TF_GUARDED_BY(mu_) = 0;
  int64_t stall_warnings_ TF_GUARDED_BY(mu_) = 0;
  // What the consumer waits on while it does (kNone otherwise).
  ConsumerWait wait_reason_ TF_GUARDED_BY(mu_) = ConsumerWait::kNone;
  int64_t wait_reason_source_ TF_GUARDED_BY(mu_) = -1;
  std::vector<SkippedInput> skipped_inputs_ TF_GUARDED_BY(mu_);
  std::deque<InputStats> finished_inputs_ TF_GUARDED_BY(mu_);
  int64_t stats_id_ = 0;

  // Input iterator state written by seats' pulls since the consumer last
  // recorded a symbolic checkpoint.
  std::unique_ptr<tensorflow::data::MemoryCheckpoint> input_checkpoint_
      TF_GUARDED_BY(mu_);
  bool symbolic_ = false;  // Set in `Initialize`, read-only afterwards.

  // Cancels the input's and nested iterators' blocking calls on teardown.
  // Child of the iterator's cancellation manager; set in `Initialize`.
  std::unique_ptr<tensorflow::CancellationManager> cancellation_manager_;
  std::function<void()> deregister_parent_cancellation_;
  // The context every worker runs with (copied from the first `GetNext`,
  // with `cancellation_manager_`). Set once, under `mu_`, before the first
  // worker starts; read-only afterwards, so workers read it unlocked.
  std::unique_ptr<tensorflow::data::IteratorContext> seat_ctx_;
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_SOURCE_POOL_H_
