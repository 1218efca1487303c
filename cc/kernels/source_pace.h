// How fast a source produces its elements, and so who should produce them.
// No threads, no TensorFlow types: the pool records how long each call to a
// nested iterator took and asks for the source's pace.
//
// Handing an element from a worker to the consumer costs a wake-up and a
// context switch (tens of microseconds on a busy or virtualized machine).
// For elements cheaper than that, the consumer is faster producing them
// itself; for costlier ones, workers producing ahead on other cores win; for
// sources that block (remote reads, slow opens), workers hide the latency.
#ifndef TF_INTERLEAVE_CC_KERNELS_SOURCE_PACE_H_
#define TF_INTERLEAVE_CC_KERNELS_SOURCE_PACE_H_

#include <algorithm>
#include <cstdint>

#include "cc/kernels/thread_state.h"

namespace tf_interleave {

class SourcePace {
 public:
  enum class Kind {
    // Not measured yet, costly per element, or known to block at times:
    // workers produce ahead as soon as its buffer has room.
    kSlow,
    // Workers refill its buffer once it is empty, in one go; the consumer
    // may produce an element itself rather than wait for a worker.
    kFast,
    // Cheaper than a hand-off: the consumer produces its elements itself;
    // a worker does so only when it is awake anyway.
    kInline,
  };

  // A source is kInline while its average cost per element stays below
  // kInlineNanos, else kFast while its last element took less than
  // kFastNanos.
  static constexpr int64_t kInlineNanos = 10 * 1000;
  static constexpr int64_t kFastNanos = 50 * 1000;
  // A source with this many calls longer than kStallNanos blocks at times
  // (a remote read, a slow file): from then on workers produce it, so that
  // the consumer never sits through its waits. One such call is not enough:
  // a thread preempted on a busy machine makes any call that long.
  static constexpr int64_t kStallNanos = 1000 * 1000;
  static constexpr int64_t kStallsToBlock = 2;
  static constexpr int64_t kProvenCalls = 64;
  // A call that has run this long blocks (see `Blocking`).
  static constexpr int64_t kBlockedCallNanos = 10 * 1000 * 1000;

  // One call to the source's iterator (an element, its end or an error)
  // took `nanos`. The first call after opening is not counted in the
  // average: it usually pays for the open (file handles, first reads).
  void Record(int64_t nanos) {
    running_since_nanos_ = 0;
    ++calls_;
    ++calls_since_stall_;
    last_nanos_ = nanos;
    if (calls_ == 1) return;
    if (nanos > kStallNanos) {
      ++stalls_;
      calls_since_stall_ = 0;
    }
    // An exponential average that follows changes within a few elements.
    average_nanos_ =
        calls_ == 2 ? nanos : average_nanos_ + (nanos - average_nanos_) / 4;
  }

  // A call to the source's iterator starts at `now_nanos` (a clock reading);
  // `Record` ends it.
  void CallStarted(int64_t now_nanos) { running_since_nanos_ = now_nanos; }
  // Opening the source (`map_func`, making its iterator) starts at
  // `now_nanos`. It blocks the source like a call under way (`Blocking`)
  // but says nothing about its elements' cost, so `OpenEnded` ends it
  // without averaging it.
  void OpenStarted(int64_t now_nanos) { running_since_nanos_ = now_nanos; }
  void OpenEnded() { running_since_nanos_ = 0; }

  // A new or reopened source: nothing is known about it.
  void Reset() { *this = SourcePace(); }

  // What an element of the source costs as far as its calls tell, for
  // telling stragglers apart: the average, or the call under way if that
  // has run longer. The first call is left out (it may pay for the open);
  // 0 when nothing says that the source blocks (no call over kStallNanos).
  int64_t StragglerCostNanos(int64_t now_nanos) const {
    if (calls_ == 0) return 0;
    int64_t cost = calls_ >= 2 ? average_nanos_ : 0;
    if (running_since_nanos_ > 0) {
      cost = std::max(cost, now_nanos - running_since_nanos_);
    }
    return cost > kStallNanos ? cost : 0;
  }

  Kind kind() const {
    if (calls_ == 0 || blocks()) return Kind::kSlow;
    if (calls_ >= 2 && average_nanos_ < kInlineNanos) return Kind::kInline;
    // Refilling in batches pays as soon as the last element was cheap.
    return last_nanos_ < kFastNanos ? Kind::kFast : Kind::kSlow;
  }

  bool blocks() const { return stalls_ >= kStallsToBlock; }
  // Whether the source blocks right now, for a sloppy consumer deciding to
  // take a staged source's element instead of waiting: slow per element on
  // average (a remote read, a sleep) and in its last call too, or in a call
  // or open that has run longer than kBlockedCallNanos. Shorter calls may
  // only be waiting for a core; on a machine busy with the other sources'
  // work, taking from staging then spreads the reading over more inputs for
  // nothing (more memory touched, more page faults). The last call must be
  // slow too because one preempted call lifts the average over kStallNanos
  // for several calls after it.
  bool Blocking(int64_t now_nanos) const {
    if (calls_ >= 2 && average_nanos_ > kStallNanos &&
        last_nanos_ > kStallNanos) {
      return true;
    }
    return running_since_nanos_ > 0 &&
           now_nanos - running_since_nanos_ > kBlockedCallNanos;
  }
  // The clock reading from which the call or open under way makes
  // `Blocking` true; 0 when none is under way.
  int64_t BlockingFromNanos() const {
    return running_since_nanos_ > 0
               ? running_since_nanos_ + kBlockedCallNanos + 1
               : 0;
  }
  // Many calls, and no stall in the last kProvenCalls: a sloppy consumer
  // may produce inline (it would keep other sources' ready elements waiting
  // if a call blocked). A stall is forgiven after that many calls because on
  // a busy machine a preempted call looks like one; a source that stalls
  // again blocks for good (`blocks`) and is never produced inline.
  bool proven() const {
    return calls_ > kProvenCalls && calls_since_stall_ > kProvenCalls;
  }
  int64_t average_nanos() const { return average_nanos_; }

 private:
  int64_t calls_ = 0;
  int64_t last_nanos_ = 0;
  int64_t average_nanos_ = 0;
  int64_t stalls_ = 0;
  int64_t calls_since_stall_ = 0;  // All calls while there was none.
  int64_t running_since_nanos_ = 0;  // 0: no call or open under way.
};

// Where the sources of one interleave block at their end. Many inputs pay
// on the call that finds their end (a file's close, a remote read past the
// last record), and inputs of one pipeline tend to be alike: once a source's
// end-finding call has blocked, a sloppy consumer leaves the calls of other
// sources from that many elements on to workers, instead of sitting through
// the same wait while other sources have elements ready. Before any source
// has ended, first calls that took long (opens on remote storage: most of
// them, and at least two, since a thread starting among many others may take
// milliseconds too) say the ends may block as well: then every call is left
// to workers until a first end shows where ends are and what they cost.
class SlowEnds {
 public:
  // A first call longer than this is a slow open.
  static constexpr int64_t kSlowOpenNanos = 10 * 1000 * 1000;
  static constexpr int64_t kSlowOpensToExpect = 2;

  // A source's first call took `nanos` (it usually pays for the open).
  void RecordFirstCall(int64_t nanos) {
    ++opens_;
    if (nanos > kSlowOpenNanos) ++slow_opens_;
  }

  // The call that found a source's end, after `produced` elements, took
  // `nanos`. A source's first call is left out: it may have paid for the
  // open rather than for the end.
  void RecordEnd(int64_t produced, int64_t nanos) {
    if (produced == 0) return;
    end_seen_ = true;
    if (nanos <= SourcePace::kStallNanos) return;
    if (first_slow_end_ < 0 || produced < first_slow_end_) {
      first_slow_end_ = produced;
    }
  }

  // Whether a source's next call, after `produced` elements, may be one
  // that blocks at its end.
  bool Expected(int64_t produced) const {
    if (!end_seen_) {
      return slow_opens_ >= kSlowOpensToExpect && 2 * slow_opens_ > opens_;
    }
    return first_slow_end_ >= 0 && produced >= first_slow_end_;
  }

 private:
  int64_t opens_ = 0;            // Sources whose first call returned.
  int64_t slow_opens_ = 0;       // Of those, the ones that took long.
  bool end_seen_ = false;        // A source has ended after an element.
  int64_t first_slow_end_ = -1;  // Fewest elements before a slow end.
};

// Sloppy mode: when an inline call blocked, the consumer sat in it while
// other sources may have had elements ready; workers then produce every
// element for a while, longer each time. A call whose thread another thread
// found runnable once it had run long was preempted on a busy machine, not
// blocked: a worker would not have produced it sooner, and pausing inline
// production for that only adds a hand-off per element. Nor do blocked calls
// pause it while the time they kept the consumer away stays a small share of
// the time since the last pause: a few ms lost now and then (a page fault, a
// lock, on a busy machine) cost less than a hand-off for each of thousands of
// elements, and paused that way at every start-up hiccup, a pass over local
// files could end up with no inline production at all.
class InlinePause {
 public:
  // Elements delivered without inline calls after a blocked one: the first
  // time, and at most.
  static constexpr int64_t kFirstPauseElements = 4096;
  static constexpr int64_t kMaxPauseElements = int64_t{1} << 24;
  // Blocked calls pause inline production once the time they took is over
  // 1/kLostShareDivisor of the time since the last pause (or the start).
  static constexpr int64_t kLostShareDivisor = 8;
  // Past this span, the span and the time lost in it are halved, so that
  // the share follows what the sources do now, not over the whole pass.
  static constexpr int64_t kShareSpanNanos = 1000 * 1000 * 1000;

  // Inline production starts at `now_nanos` (else at the first call that
  // stalled, less its length).
  void Begin(int64_t now_nanos) { span_start_nanos_ = now_nanos; }

  // An inline call took `nanos`, ending at `now_nanos`, once `delivered`
  // elements had been delivered. `seen` is what its thread was doing when
  // another thread looked, once the call had lasted SourcePace::kStallNanos
  // (kUnknown: no thread could look, or the system does not say). Returns
  // whether the call pauses inline production (counted in the iterator's
  // stats). Calls that did not stall return at once: the span is only
  // weighed when time may have been lost.
  bool RecordCall(int64_t nanos, ThreadRunState seen, int64_t delivered,
                  int64_t now_nanos) {
    if (nanos <= SourcePace::kStallNanos) return false;
    if (span_start_nanos_ < 0) span_start_nanos_ = now_nanos - nanos;
    // Halved as often as it takes: after a long quiet span, a blocked call
    // is weighed against the last second or so, not half the quiet time.
    while (now_nanos - span_start_nanos_ > kShareSpanNanos) {
      span_start_nanos_ += (now_nanos - span_start_nanos_) / 2;
      lost_nanos_ /= 2;
    }
    const bool blocked = seen == ThreadRunState::kWaiting ||
                         nanos > SourcePace::kBlockedCallNanos;
    // Nothing says an unseen call blocked, nor that it did not.
    if (!blocked && seen != ThreadRunState::kUnknown) return false;
    lost_nanos_ += nanos;
    if (lost_nanos_ * kLostShareDivisor <= now_nanos - span_start_nanos_) {
      return false;
    }
    lost_nanos_ = 0;
    span_start_nanos_ = now_nanos;
    if (blocked) {
      paused_until_ = std::max(paused_until_, delivered + next_pause_);
      next_pause_ = std::min(8 * next_pause_, kMaxPauseElements);
    } else {
      // A short pause that does not grow.
      paused_until_ = std::max(paused_until_, delivered + kFirstPauseElements);
    }
    return true;
  }

  // Whether inline production waits until more elements are delivered.
  bool Paused(int64_t delivered) const { return delivered < paused_until_; }

 private:
  int64_t paused_until_ = 0;
  int64_t next_pause_ = kFirstPauseElements;
  int64_t span_start_nanos_ = -1;  // Set by `Begin` or the first stall.
  int64_t lost_nanos_ = 0;         // In blocked calls since then.
};

// How long the watcher (an idle worker that wakes every `period_nanos` while
// the consumer produces inline) sleeps, at `now_nanos`. An inline call under
// way that nobody has looked at yet (started at `unseen_call_start_nanos`, 0
// when there is none) is looked at once it has lasted one period: waking on
// the watcher's own beat instead would look up to a period later, after most
// calls of 1-2 ms have ended unseen.
inline int64_t WatcherWaitNanos(int64_t now_nanos,
                                int64_t unseen_call_start_nanos,
                                int64_t period_nanos) {
  if (unseen_call_start_nanos == 0) return period_nanos;
  return std::clamp<int64_t>(unseen_call_start_nanos + period_nanos - now_nanos,
                             0, period_nanos);
}

}  // namespace tf_interleave

#endif  // TF_INTERLEAVE_CC_KERNELS_SOURCE_PACE_H_
