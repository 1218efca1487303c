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
//     elements are buffered in all.
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
  // Saves the input iterator and a nested iterator (checkpoints).
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

class SourcePool {
 public:
  SourcePool(const SourcePoolOptions& options, SourcePoolCallbacks callbacks);
  // Cancels, wakes every waiter and joins every seat thread.
  ~SourcePool();

  SourcePool(const SourcePool&) = delete;
  SourcePool& operator=(const SourcePool&) = delete;

  // Links the pool's cancellation to the iterator's. Call once, from the
  // iterator's `Initialize`, before making the input iterator with
  // `cancellation_manager()`.
  absl::Status Initialize(tensorflow::data::IteratorContext* ctx);
  tensorflow::CancellationManager* cancellation_manager() const {
    return cancellation_manager_.get();
  }

  // Returns the next element in the scheduler's order, or the error that
  // sits at that position.
  absl::Status GetNext(tensorflow::data::IteratorContext* ctx,
                       std::vector<tensorflow::Tensor>* out_tensors,
                       bool* end_of_sequence) TF_LOCKS_EXCLUDED(mu_);

  // Writes the whole state (scheduler, buffered elements, open nested
  // iterators, the input iterator `input`) under `name`.
  absl::Status Save(tensorflow::data::SerializationContext* ctx,
                    tensorflow::data::IteratorStateWriter* writer,
                    const std::string& name,
                    const std::unique_ptr<tensorflow::data::IteratorBase>& input)
      TF_LOCKS_EXCLUDED(mu_);
  // Reads a state written by `Save` into a pool that has not started.
  absl::Status Restore(tensorflow::data::IteratorContext* ctx,
                       tensorflow::data::IteratorStateReader* reader,
                       const std::string& name,
                       const std::unique_ptr<tensorflow::data::IteratorBase>& input)
      TF_LOCKS_EXCLUDED(mu_);

  // Stops every seat and makes pending and future `GetNext` calls return
  // `Cancelled`. Safe to call more than once, from any thread.
  void Cancel() TF_LOCKS_EXCLUDED(mu_);

 private:
  struct Seat {
    int64_t source = -1;        // The source this seat holds, or -1.
    bool source_ended = false;  // The source will add nothing more.
    bool released = false;      // The scheduler is done with the source.
    bool waiting = false;       // The seat thread waits on `cond_var`.
    // The last element took less than kFastSourceNanos to produce: refill
    // in batches (see `RefillThreshold`).
    bool fast = false;
    std::deque<BufferedElement> buffer;
    // See invariant 4.
    std::vector<tensorflow::Tensor> input_element;
    std::unique_ptr<tensorflow::data::IteratorBase> iterator;
    tensorflow::condition_variable cond_var;
    std::unique_ptr<tensorflow::Thread> thread;
  };

  // Why the consumer waits, so that workers wake it only when it matters.
  enum class ConsumerWait { kNone, kSource, kInput, kAny };

  absl::Status EnsureStarted(tensorflow::data::IteratorContext* ctx)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Seat* AddSeat() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartSeatThread(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SeatThread(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Pulls the next input element and opens its source on `seat`. Returns
  // false when the seat should exit (input ended or cancelled).
  bool AcquireSource(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Fills the seat's buffer from its source until the source ends.
  void RunSource(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Marks the seat's source ended and drops its iterator.
  void EndSource(Seat* seat) TF_LOCKS_EXCLUDED(mu_);
  // Blocks while a pause is requested (or the buffer is full, when
  // `need_room`), then counts the caller in `active_calls_`. False when
  // cancelled.
  bool BeginCall(Seat* seat, tensorflow::mutex_lock& lock, bool need_room)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndCall() TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Push(Seat* seat, BufferedElement element)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The consumer wakes a worker waiting for room once its buffer holds at
  // most this many elements. A fast source is refilled only when empty, so
  // each wake-up yields a whole buffer instead of one element (wake-ups, not
  // the elements, dominate the cost of tiny elements); a slow source is
  // woken as soon as there is room, so its latency stays hidden.
  int64_t RefillThreshold(const Seat& seat) const;
  // Wakes the seat's thread if it waits; each wait needs one notification.
  void WakeSeat(Seat* seat) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  SourceState StateOf(int64_t source) const TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseSource(int64_t source) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeConsumer(ConsumerWait reason, int64_t source)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckArguments(int64_t cycle_length, int64_t block_length,
                              int64_t buffer_output_elements,
                              int64_t prefetch_input_elements,
                              int64_t sloppy) const;

  const SourcePoolOptions options_;
  const SourcePoolCallbacks callbacks_;
  const int64_t num_seats_;

  // Serializes `pull_input`; always taken before `mu_`.
  tensorflow::mutex input_mu_;

  tensorflow::mutex mu_;
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
