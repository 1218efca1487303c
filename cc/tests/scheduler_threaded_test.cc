// The scheduler driven by real threads, the way SourcePool drives it: one
// mutex guards the scheduler and every buffer; seat threads pull input
// elements in order (serialized by an input mutex), fill bounded per-source
// buffers and wake the consumer only when it waits for what they changed;
// the consumer follows the decisions, releases finished sources (which frees
// their seats) and sleeps on a condition variable. No TensorFlow: elements
// are (source, index) pairs and timing is shaken by random yields and sleeps.
//
// Checks: the deterministic order equals the single-threaded model whatever
// the timing, sloppy mode delivers every element once and in order within
// each source, a stopped consumer shuts every thread down, and nothing
// stalls. Meant to run under ThreadSanitizer as well.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cc/kernels/interleave_scheduler.h"
#include "cc/tests/scheduler_test_util.h"
#include "cc/tests/test_main.h"

namespace tf_interleave {
namespace {

using Decision = InterleaveScheduler::Decision;
using Kind = Decision::Kind;
using Element = std::pair<int64_t, int64_t>;  // (source, index in source).

struct PoolConfig {
  std::vector<int64_t> sizes;
  int64_t cycle_length = 1;
  int64_t block_length = 1;
  int64_t buffer_output_elements = 1;
  int64_t prefetch_input_elements = 0;
  bool sloppy = false;
  // Stop after this many elements (-1: read to the end).
  int64_t stop_after = -1;
  uint64_t seed = 0;
};

std::ostream& operator<<(std::ostream& out, const PoolConfig& c) {
  out << "sizes=[";
  for (size_t i = 0; i < c.sizes.size(); ++i) {
    out << (i ? "," : "") << c.sizes[i];
  }
  return out << "] cycle_length=" << c.cycle_length
             << " block_length=" << c.block_length
             << " buffer=" << c.buffer_output_elements
             << " prefetch=" << c.prefetch_input_elements
             << " sloppy=" << c.sloppy << " stop_after=" << c.stop_after
             << " seed=" << c.seed;
}

// Random short delays, one generator per thread.
class Jitter {
 public:
  explicit Jitter(uint64_t seed) : random_(seed) {}
  void operator()() {
    const uint64_t r = random_() % 16;
    if (r < 8) return;
    if (r < 14) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(random_() % 200));
    }
  }

 private:
  std::mt19937_64 random_;
};

class ThreadedPool {
 public:
  explicit ThreadedPool(const PoolConfig& config)
      : config_(config),
        scheduler_(std::make_unique<InterleaveScheduler>(
            config.cycle_length, config.block_length, config.sloppy)) {
    const int64_t seats = config.cycle_length + config.prefetch_input_elements;
    std::lock_guard<std::mutex> l(mu_);
    for (int64_t i = 0; i < seats; ++i) {
      seats_.push_back(std::make_unique<Seat>());
    }
    for (int64_t i = 0; i < seats; ++i) {
      Seat* seat = seats_[i].get();
      seat->thread = std::thread([this, seat, i]() {
        SeatThread(seat, config_.seed * 1000 + i);
      });
    }
  }

  // Cancels, wakes every waiter and joins every seat thread.
  ~ThreadedPool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      cancelled_ = true;
      consumer_cv_.notify_all();
      for (auto& seat : seats_) seat->cv.notify_all();
    }
    for (auto& seat : seats_) seat->thread.join();
  }

  // The consumer: returns the elements in the order received, or stops with
  // `*stalled` set when no wake-up came for a long time.
  std::vector<Element> Consume(bool* stalled) {
    Jitter jitter(config_.seed * 1000 + 999);
    std::mt19937_64 random(config_.seed);
    std::vector<Element> out;
    std::unique_lock<std::mutex> l(mu_);
    std::vector<int64_t> released;
    *stalled = false;
    const auto state_of = [this](int64_t source) { return StateOf(source); };
    while (config_.stop_after < 0 ||
           static_cast<int64_t>(out.size()) < config_.stop_after) {
      if (random() % 8 == 0) RoundTripState();
      released.clear();
      Decision decision = scheduler_->Next(state_of, &released);
      if (decision.kind == Kind::kWaitForAny) {
        // As the pool does: a staged source's element before waiting.
        decision = scheduler_->NextFromStaging(state_of, &released);
      }
      for (int64_t source : released) Release(source);
      if (decision.kind == Kind::kEndOfSequence) break;
      if (decision.kind == Kind::kEmit) {
        Seat* seat = seat_of_source_.at(decision.source);
        out.emplace_back(decision.source, seat->buffer.front());
        seat->buffer.pop_front();
        if (seat->waiting) seat->cv.notify_one();
        l.unlock();
        jitter();
        l.lock();
        continue;
      }
      wait_ = decision.kind;
      wait_source_ = decision.source;
      // Generous: only a lost wake-up (a real bug) takes this long.
      if (consumer_cv_.wait_for(l, std::chrono::seconds(60)) ==
          std::cv_status::timeout) {
        *stalled = true;
        break;
      }
      wait_ = Kind::kEmit;  // Not waiting.
    }
    return out;
  }

  int64_t sources_released() {
    std::lock_guard<std::mutex> l(mu_);
    return sources_released_;
  }
  // Whether Restore rejected a state the scheduler reached.
  bool restore_failed() {
    std::lock_guard<std::mutex> l(mu_);
    return restore_failed_;
  }

 private:
  struct Seat {
    int64_t source = -1;
    bool ended = false;
    bool released = false;
    bool waiting = false;
    std::deque<int64_t> buffer;
    std::condition_variable cv;
    std::thread thread;
  };

  // Requires mu_.
  SourceState StateOf(int64_t source) const {
    const Seat* seat = seat_of_source_.at(source);
    if (!seat->buffer.empty()) return SourceState::kReady;
    return seat->ended ? SourceState::kFinished : SourceState::kPending;
  }

  // Requires mu_.
  void Release(int64_t source) {
    auto it = seat_of_source_.find(source);
    Seat* seat = it->second;
    seat_of_source_.erase(it);
    seat->released = true;
    ++sources_released_;
    if (seat->waiting) seat->cv.notify_one();
  }

  // Requires mu_. Wakes the consumer when it waits for this change; one
  // notification per wait (the consumer no longer counts as waiting).
  void WakeConsumer(bool input_event, int64_t source) {
    bool wake = false;
    switch (wait_) {
      case Kind::kWaitForAny:
        wake = true;
        break;
      case Kind::kWaitForInput:
        wake = input_event;
        break;
      case Kind::kWaitForSource:
        wake = !input_event && source == wait_source_;
        break;
      default:
        break;
    }
    if (wake) {
      wait_ = Kind::kEmit;
      consumer_cv_.notify_one();
    }
  }

  // Requires mu_. Continues with a scheduler restored from the state, as if
  // the iterator had been checkpointed and restored here.
  void RoundTripState() {
    auto copy = std::make_unique<InterleaveScheduler>(
        config_.cycle_length, config_.block_length, config_.sloppy);
    if (!copy->Restore(scheduler_->state()).empty()) {
      restore_failed_ = true;
      return;
    }
    scheduler_ = std::move(copy);
  }

  // Requires mu_ held by `l`. Waits on the seat's condition variable while
  // `blocked()` and not cancelled. Returns false when cancelled.
  template <typename Blocked>
  bool SeatWait(Seat* seat, std::unique_lock<std::mutex>& l, Blocked blocked) {
    while (!cancelled_ && blocked()) {
      seat->waiting = true;
      seat->cv.wait(l);
    }
    seat->waiting = false;
    return !cancelled_;
  }

  void SeatThread(Seat* seat, uint64_t seed) {
    Jitter jitter(seed);
    while (true) {
      int64_t source;
      {
        // Pull the next input element: sources are numbered in input order.
        std::lock_guard<std::mutex> input_lock(input_mu_);
        {
          std::lock_guard<std::mutex> l(mu_);
          if (cancelled_ || input_ended_) return;
        }
        jitter();
        std::lock_guard<std::mutex> l(mu_);
        if (cancelled_) return;
        if (next_input_ == static_cast<int64_t>(config_.sizes.size())) {
          input_ended_ = true;
          scheduler_->OnInputEnded();
          WakeConsumer(/*input_event=*/true, -1);
          return;
        }
        source = next_input_++;
        seat->source = source;
        seat->ended = false;
        seat->released = false;
        seat->buffer.clear();
        seat_of_source_[source] = seat;
        scheduler_->OnInputOpened();
        WakeConsumer(/*input_event=*/true, -1);
      }
      for (int64_t index = 0; index < config_.sizes[source]; ++index) {
        jitter();
        std::unique_lock<std::mutex> l(mu_);
        if (!SeatWait(seat, l, [&]() {
              return static_cast<int64_t>(seat->buffer.size()) >=
                     config_.buffer_output_elements;
            })) {
          return;
        }
        seat->buffer.push_back(index);
        WakeConsumer(/*input_event=*/false, source);
      }
      jitter();
      std::unique_lock<std::mutex> l(mu_);
      seat->ended = true;
      WakeConsumer(/*input_event=*/false, source);
      // The seat is free once the scheduler is done with its source.
      if (!SeatWait(seat, l, [&]() { return !seat->released; })) return;
      seat->source = -1;
    }
  }

  const PoolConfig config_;
  std::mutex input_mu_;  // Taken before mu_.
  int64_t next_input_ = 0;  // Guarded by input_mu_ and mu_ (written under both).

  std::mutex mu_;
  std::condition_variable consumer_cv_;
  std::unique_ptr<InterleaveScheduler> scheduler_;  // Guarded by mu_.
  std::vector<std::unique_ptr<Seat>> seats_;        // Guarded by mu_.
  std::map<int64_t, Seat*> seat_of_source_;         // Guarded by mu_.
  bool input_ended_ = false;                        // Guarded by mu_.
  bool cancelled_ = false;                          // Guarded by mu_.
  int64_t sources_released_ = 0;                    // Guarded by mu_.
  Kind wait_ = Kind::kEmit;                         // Guarded by mu_.
  int64_t wait_source_ = -1;                        // Guarded by mu_.
  bool restore_failed_ = false;                     // Guarded by mu_.
};

PoolConfig RandomPoolConfig(std::mt19937_64& random, bool sloppy) {
  PoolConfig c;
  c.sizes.resize(random() % 12);
  for (int64_t& size : c.sizes) size = random() % 4 == 0 ? 0 : random() % 12;
  c.cycle_length = 1 + random() % 4;
  c.block_length = 1 + random() % 3;
  c.buffer_output_elements = 1 + random() % 3;
  c.prefetch_input_elements = random() % 3;
  c.sloppy = sloppy;
  c.seed = random();
  return c;
}

// Runs one pool to the end (or to `stop_after`) and checks what it gave.
void RunAndCheck(const PoolConfig& config) {
  std::vector<Element> out;
  bool stalled = false;
  int64_t released = 0;
  bool restore_failed = false;
  {
    ThreadedPool pool(config);
    out = pool.Consume(&stalled);
    released = pool.sources_released();
    restore_failed = pool.restore_failed();
  }  // Joins every seat thread, finished or not.
  CHECK(!stalled) << "consumer stalled for " << config;
  CHECK(!restore_failed) << "a reachable state was rejected, " << config;
  // Within a source, elements come in order.
  std::map<int64_t, int64_t> next_index;
  for (const Element& e : out) {
    CHECK_EQ(e.second, next_index[e.first]++) << " for " << config;
  }
  const std::vector<int64_t> model =
      ModelOrder(config.sizes, config.cycle_length, config.block_length);
  if (config.stop_after >= 0) {
    CHECK_EQ(static_cast<int64_t>(out.size()),
             std::min<int64_t>(config.stop_after, model.size()));
  } else {
    CHECK_EQ(released, static_cast<int64_t>(config.sizes.size()))
        << " for " << config;
    CHECK_EQ(out.size(), model.size()) << " for " << config;
  }
  if (!config.sloppy) {
    std::vector<int64_t> sources;
    for (const Element& e : out) sources.push_back(e.first);
    const std::vector<int64_t> prefix(model.begin(),
                                      model.begin() + sources.size());
    CHECK_EQ(sources, prefix) << " for " << config;
  } else if (config.stop_after < 0) {
    for (size_t k = 0; k < config.sizes.size(); ++k) {
      CHECK_EQ(next_index[k], config.sizes[k]) << " source " << k;
    }
  }
}

TEST(ThreadedDeterministicOrderEqualsModel) {
  std::mt19937_64 random(31);
  for (int iteration = 0; iteration < 200; ++iteration) {
    RunAndCheck(RandomPoolConfig(random, /*sloppy=*/false));
  }
}

TEST(ThreadedSloppyDeliversEveryElement) {
  std::mt19937_64 random(32);
  for (int iteration = 0; iteration < 200; ++iteration) {
    RunAndCheck(RandomPoolConfig(random, /*sloppy=*/true));
  }
}

TEST(ThreadedSameCaseManyTimings) {
  // One case with blocks, refills and the end-of-input quirk, many seeds.
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    PoolConfig c;
    c.sizes = {5, 2, 4, 2, 0, 3, 6};
    c.cycle_length = 3;
    c.block_length = 2;
    c.buffer_output_elements = 1;
    c.prefetch_input_elements = 1;
    c.seed = seed;
    RunAndCheck(c);
  }
}

TEST(ThreadedStopMidStreamShutsDown) {
  std::mt19937_64 random(33);
  for (int iteration = 0; iteration < 100; ++iteration) {
    PoolConfig c = RandomPoolConfig(random, /*sloppy=*/iteration % 2 == 1);
    c.stop_after = random() % 6;
    RunAndCheck(c);
  }
}

}  // namespace
}  // namespace tf_interleave
