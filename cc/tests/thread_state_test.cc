// Unit tests of the thread helpers: a running thread reads as runnable, one
// asleep on a condition variable as waiting; timer slack as asked.
#include "cc/kernels/thread_state.h"

#include <atomic>
#include <chrono>  // NOLINT(build/c++11)
#include <condition_variable>  // NOLINT(build/c++11)
#include <cstdint>
#include <mutex>  // NOLINT(build/c++11)
#include <thread>  // NOLINT(build/c++11)

#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include "cc/tests/test_main.h"

namespace tf_interleave {
namespace {

// Polls `thread_id` until it reads as `wanted`, for at most ten seconds.
bool EventuallyReads(int64_t thread_id, ThreadRunState wanted) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (RunStateOf(thread_id) == wanted) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

TEST(ThreadIdsAreStableAndDistinct) {
  const int64_t mine = CurrentThreadId();
  CHECK(mine > 0) << mine;
  CHECK_EQ(CurrentThreadId(), mine);
  int64_t other = -1;
  std::thread thread([&other]() { other = CurrentThreadId(); });
  thread.join();
  CHECK(other > 0) << other;
  CHECK(other != mine) << "a second thread has an id of its own";
}

TEST(TheCallingThreadIsRunnable) {
  CHECK(RunStateOf(CurrentThreadId()) == ThreadRunState::kRunnable);
}

TEST(AThreadAsleepOnAConditionVariableIsWaiting) {
  std::mutex mu;
  std::condition_variable cond_var;
  bool release = false;
  std::atomic<int64_t> thread_id{-1};
  std::thread sleeper([&]() {
    thread_id = CurrentThreadId();
    std::unique_lock<std::mutex> lock(mu);
    cond_var.wait(lock, [&release]() { return release; });
  });
  while (thread_id.load() < 0) std::this_thread::yield();
  CHECK(EventuallyReads(thread_id.load(), ThreadRunState::kWaiting));
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cond_var.notify_all();
  sleeper.join();
}

TEST(ABusyThreadIsRunnableWhateverTheCoresDo) {
  // Running or waiting for a core, it never reads as waiting.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> thread_id{-1};
  std::thread spinner([&]() {
    thread_id = CurrentThreadId();
    while (!stop.load(std::memory_order_relaxed)) {
    }
  });
  while (thread_id.load() < 0) std::this_thread::yield();
  for (int i = 0; i < 200; ++i) {
    CHECK(RunStateOf(thread_id.load()) == ThreadRunState::kRunnable)
        << "sample " << i;
  }
  stop = true;
  spinner.join();
}

TEST(PreciseTimersAskForTheTightestSlack) {
  std::thread thread([]() {
    UsePreciseTimers();
#if defined(__linux__)
    CHECK_EQ(prctl(PR_GET_TIMERSLACK, 0UL, 0UL, 0UL, 0UL), 1);
#endif
  });
  thread.join();
}

TEST(UnknownThreadsSayNothing) {
  CHECK(RunStateOf(-1) == ThreadRunState::kUnknown);
  // Above the kernel's largest thread id (pid_max is at most 2^22).
  CHECK(RunStateOf(int64_t{1} << 30) == ThreadRunState::kUnknown);
}

}  // namespace
}  // namespace tf_interleave
