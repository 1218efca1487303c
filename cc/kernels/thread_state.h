// Threads as the system sees them: their ids, their timer slack, and whether
// one is waiting for something (a read, a sleep, a lock) or only for a CPU.
// A call that has run long while its thread stayed runnable was preempted on
// a busy machine, not blocked: a sloppy consumer need not hand its inputs to
// workers for that. Linux only; elsewhere they say nothing and do nothing.
#ifndef TF_INTERLEAVE_CC_KERNELS_THREAD_STATE_H_
#define TF_INTERLEAVE_CC_KERNELS_THREAD_STATE_H_

#include <cstdint>

namespace tf_interleave {

enum class ThreadRunState {
  kRunnable,  // On a CPU or waiting for one.
  kWaiting,   // Asleep until something happens (I/O, a timer, a lock).
  kUnknown,   // The system does not say (not Linux, or no /proc).
};

// The calling thread's system-wide id (Linux: its tid), or -1 where the
// system has none that `RunStateOf` can read.
int64_t CurrentThreadId();

// What the thread `thread_id` of this process does right now. Reads
// /proc, so meant for rare checks (a call that has already run long), not
// for every call.
ThreadRunState RunStateOf(int64_t thread_id);

// Asks for the tightest timer slack on the calling thread. Timed waits on a
// worker (a nested dataset's sleep, a reader's poll with a timeout, a
// retry's backoff) otherwise end up to the thread's slack late: 50 us by
// default, 5% of a 1 ms wait, lost on every element of a latency-bound
// source. Threads the caller starts inherit it.
void UsePreciseTimers();

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_THREAD_STATE_H_
