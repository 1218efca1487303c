// The workers and buffers of a parallel interleave: a fixed set of seats,
// each with one background thread that pulls the next input element, opens
// its nested iterator and fills a bounded buffer from it. The consumer side
// (`GetNext`) asks an `InterleaveScheduler` which source emits next and takes
// the element from that source's buffer.
//
// Threads:
//  - Seat threads pull input elements one at a time (serialized by
//    `input_mu_`, so sources are numbered in input order), then run
//    `map_func` and the nested iterator without holding any lock the
//    consumer needs. A slow input or a slow `map_func` therefore never
//    stalls a consumer that has a ready element.
//  - Seats start lazily, one more each time an input element is pulled, so
//    a short input never starts threads it cannot use. A seat thread exits
//    once the input has ended and its last source is drained.
//  - `Save` pauses the seats: none starts a call into TensorFlow while a
//    pause is requested, and `Save` waits until the calls under way end.
//
// Invariants (under `mu_`):
//  1. A source is held by exactly one seat from the moment its input element
//     is pulled until the scheduler releases it.
//  2. A seat's buffer holds at most `buffer_output_elements` elements, so at
//     most (cycle_length + prefetch_input_elements) * buffer_output_elements
//     elements are buffered in all. With a memory budget, the buffers'
//     bytes stay within it, except that a buffer the consumer is waiting on
//     may always take one element (so the pipeline cannot deadlock).
//  3. After `cancelled_` is set no seat starts a new thread or a new call
//     into TensorFlow, and every wait ends.
//  4. A seat's `iterator` and `input_element` are touched by its own thread
//     only while it counts in `active_calls_`, and by `Save` only when
//     `active_calls_` is zero and a pause is requested.
#ifndef TF_INTERLEAVE_CC_KERNELS_SOURCE_POOL_H_
#define TF_INTERLEAVE_CC_KERNELS_SOURCE_POOL_H_

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cc/kernels/buffered_element.h"
#include "cc/kernels/interleave_scheduler.h"
#include "cc/kernels/interleave_stats.h"
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
  struct Seat {
    int64_t source = -1;        // The source this seat holds, or -1.
    std::string label;          // Names the source's input in stats and logs.
    bool source_ended = false;  // The source will add nothing more.
    bool released = false;      // The scheduler is done with the source.
    bool waiting = false;       // The seat thread waits on `cond_var`.
    bool needs_open = false;    // The nested iterator is (re)opened next.
    bool skipped = false;       // The source ended on a skipped error.
    absl::Status input_error;   // Pulling the input element failed.
    // The last element took less than kFastSourceNanos to produce: refill
    // in batches (see `RefillThreshold`).
    bool fast = false;
    int64_t produced = 0;  // Elements (and errors) the source has produced.
    int64_t delivered = 0;  // Elements (and errors) the consumer has taken.
    int64_t delivered_bytes = 0;
    int64_t retries = 0;
    int64_t wait_nanos = 0;  // Consumer time spent waiting on this source.
    std::deque<BufferedElement> buffer;
    int64_t buffered_bytes = 0;
    // See invariant 4.
    std::vector<tensorflow::Tensor> input_element;
    std::unique_ptr<tensorflow::data::IteratorBase> iterator;
    tensorflow::condition_variable cond_var;
    std::unique_ptr<tensorflow::Thread> thread;
  };

  // Why the consumer waits, so that workers wake it only when it matters.
  enum class ConsumerWait { kNone, kSource, kInput, kAny };
  // What a seat does after its source fails.
  enum class ErrorAction { kRetry, kSkip, kDeliver, kDeliverAndEnd };

  absl::Status EnsureStarted(tensorflow::data::IteratorContext* ctx)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Seat* AddSeat() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartSeatThread(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SeatThread(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Pulls the next input element for `seat`. Returns false when the seat
  // should exit (input ended or cancelled).
  bool AcquireSource(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Opens the seat's nested iterator and fills its buffer from it until the
  // source ends (or fails for good).
  void RunSource(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Makes the nested iterator from the input element and skips the elements
  // the source already produced (when reopening after an error or after a
  // symbolic restore). Runs as an active call.
  absl::Status OpenIterator(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  ErrorAction OnSourceError(Seat* seat, const absl::Status& status)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for the retry delay of the seat's `retries`-th retry.
  void WaitBeforeRetry(Seat* seat, tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the seat's source ended and drops its iterator.
  void EndSource(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Blocks while a pause is requested (or, when `need_room`, while the
  // buffer or the memory budget is full), then counts the caller in
  // `active_calls_`. False when cancelled.
  bool BeginCall(Seat* seat, tensorflow::mutex_lock& lock, bool need_room)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndCall() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds an element to the seat's buffer, first waiting until its bytes fit
  // the memory budget. False when cancelled.
  bool Push(Seat* seat, BufferedElement element, tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool BudgetAllows(const Seat& seat, int64_t bytes) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ConsumerWaitsOn(const Seat& seat) const
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The consumer wakes a worker waiting for room once its buffer holds at
  // most this many elements. A fast source is refilled only when empty, so
  // each wake-up yields a whole buffer instead of one element (wake-ups, not
  // the elements, dominate the cost of tiny elements); a slow source is
  // woken as soon as there is room, so its latency stays hidden.
  int64_t RefillThreshold(const Seat& seat) const;
  // Wakes the seat's thread if it waits; each wait needs one notification.
  void WakeSeat(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeSeatsWaitingForBudget() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  SourceState StateOf(int64_t source) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseSource(int64_t source) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeConsumer(ConsumerWait reason, int64_t source)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits on `consumer_cond_var_` for the reason in `consumer_wait_`,
  // accounting the time and warning about long stalls.
  void WaitAsConsumer(tensorflow::data::IteratorContext* ctx,
                      tensorflow::mutex_lock& lock)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string WaitTargetLabel() const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status CheckArguments(int64_t cycle_length, int64_t block_length,
                              int64_t buffer_output_elements,
                              int64_t prefetch_input_elements,
                              int64_t sloppy) const;
  absl::Status WriteState(tensorflow::data::SerializationContext* ctx,
                          tensorflow::data::IteratorStateWriter* writer,
                          const std::string& name, bool symbolic,
                          const std::unique_ptr<tensorflow::data::IteratorBase>&
                              input) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  InputStats StatsOf(const Seat& seat) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SourcePoolOptions options_;
  const SourcePoolCallbacks callbacks_;
  const int64_t num_seats_;

  // Serializes `pull_input`; always taken before `mu_`.
  tensorflow::mutex input_mu_;

  mutable tensorflow::mutex mu_;
  tensorflow::condition_variable consumer_cond_var_;
  // Signalled when `active_calls_` drops to zero during a pause.
  tensorflow::condition_variable pause_cond_var_;
  InterleaveScheduler scheduler_ TF_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Seat>> seats_ TF_GUARDED_BY(mu_);
  absl::flat_hash_map<int64_t, Seat*> seat_of_source_ TF_GUARDED_BY(mu_);
  int64_t sources_pulled_ TF_GUARDED_BY(mu_) = 0;
  bool input_ended_ TF_GUARDED_BY(mu_) = false;
  bool cancelled_ TF_GUARDED_BY(mu_) = false;
  int64_t active_calls_ TF_GUARDED_BY(mu_) = 0;
  int64_t pause_requests_ TF_GUARDED_BY(mu_) = 0;
  ConsumerWait consumer_wait_ TF_GUARDED_BY(mu_) = ConsumerWait::kNone;
  int64_t consumer_wait_source_ TF_GUARDED_BY(mu_) = -1;
  std::vector<int64_t> released_ TF_GUARDED_BY(mu_);
  int64_t buffered_bytes_ TF_GUARDED_BY(mu_) = 0;
  int64_t seats_waiting_for_budget_ TF_GUARDED_BY(mu_) = 0;

  // Stats (see interleave_stats.h).
  int64_t delivered_ TF_GUARDED_BY(mu_) = 0;
  int64_t delivered_bytes_ TF_GUARDED_BY(mu_) = 0;
  int64_t consumer_wait_nanos_ TF_GUARDED_BY(mu_) = 0;
  int64_t retries_ TF_GUARDED_BY(mu_) = 0;
  int64_t stall_warnings_ TF_GUARDED_BY(mu_) = 0;
  std::string waiting_on_ TF_GUARDED_BY(mu_);
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
  // The context every seat thread runs with (copied from the first
  // `GetNext`, with `cancellation_manager_`). Set once, under `mu_`, before
  // the first seat starts; read-only afterwards, so seats read it unlocked.
  std::unique_ptr<tensorflow::data::IteratorContext> seat_ctx_;
};

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_SOURCE_POOL_H_
