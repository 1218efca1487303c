// Unit tests of SourcePace, SlowEnds and InlinePause: how measured calls
// decide who produces a source's elements.
#include "cc/kernels/source_pace.h"

#include <cstdint>

#include "cc/tests/test_main.h"

namespace tf_interleave {
namespace {

using Kind = SourcePace::Kind;
constexpr int64_t kMicros = 1000;

// Records `count` calls of `nanos` each.
void RecordMany(SourcePace* pace, int count, int64_t nanos) {
  for (int i = 0; i < count; ++i) pace->Record(nanos);
}

TEST(UnmeasuredSourceIsSlow) {
  SourcePace pace;
  CHECK(pace.kind() == Kind::kSlow);
  CHECK(!pace.blocks());
}

TEST(StragglerCostLeavesOutTheOpenAndCheapSources) {
  constexpr int64_t kMillis = 1000 * kMicros;
  constexpr int64_t kNow = 1000 * kMillis;
  SourcePace pace;
  CHECK_EQ(pace.StragglerCostNanos(kNow), 0);
  // The first call, under way or done, may be the open: it says nothing.
  pace.CallStarted(kNow - 30 * kMillis);
  CHECK_EQ(pace.StragglerCostNanos(kNow), 0);
  pace.Record(30 * kMillis);
  CHECK_EQ(pace.StragglerCostNanos(kNow), 0);
  // A second call that has run for 5 ms already costs that much.
  pace.CallStarted(kNow - 5 * kMillis);
  CHECK_EQ(pace.StragglerCostNanos(kNow), 5 * kMillis);
  pace.Record(20 * kMillis);
  CHECK_EQ(pace.StragglerCostNanos(kNow), 20 * kMillis);
  // A call under way counts once it has run longer than the average.
  pace.CallStarted(kNow - 2 * kMillis);
  CHECK_EQ(pace.StragglerCostNanos(kNow), 20 * kMillis);
  pace.CallStarted(kNow - 45 * kMillis);
  CHECK_EQ(pace.StragglerCostNanos(kNow), 45 * kMillis);
  // Sources that do not block are no stragglers, whatever their cost.
  SourcePace cheap;
  RecordMany(&cheap, 10, 900 * kMicros);
  CHECK_EQ(cheap.StragglerCostNanos(kNow), 0);
  cheap.Reset();
  CHECK_EQ(cheap.StragglerCostNanos(kNow), 0);
}

TEST(BlockingNeedsASlowAverageOrALongCallUnderWay) {
  constexpr int64_t kMillis = 1000 * kMicros;
  constexpr int64_t kNow = 1000 * kMillis;
  SourcePace pace;
  CHECK(!pace.Blocking(kNow)) << "nothing known, nothing under way";
  // A first call (an open) that has run for 30 ms blocks; one of 5 ms may
  // only be waiting for a core.
  pace.CallStarted(kNow - 5 * kMillis);
  CHECK(!pace.Blocking(kNow));
  pace.CallStarted(kNow - 30 * kMillis);
  CHECK(pace.Blocking(kNow));
  pace.Record(30 * kMillis);
  CHECK(!pace.Blocking(kNow)) << "the open is not averaged";
  // Cheap elements, with a few preempted calls over kStallNanos among them.
  RecordMany(&pace, 20, 80 * kMicros);
  pace.Record(3 * kMillis);
  RecordMany(&pace, 5, 80 * kMicros);
  CHECK(!pace.Blocking(kNow)) << pace.average_nanos();
  pace.CallStarted(kNow - SourcePace::kBlockedCallNanos);
  CHECK(!pace.Blocking(kNow)) << "exactly the limit is not over it";
  // The consumer waits until then before it asks again.
  CHECK_EQ(pace.BlockingFromNanos(), kNow + 1);
  CHECK(pace.Blocking(pace.BlockingFromNanos()));
  pace.CallStarted(kNow - SourcePace::kBlockedCallNanos - 1);
  CHECK(pace.Blocking(kNow));
  pace.Record(12 * kMillis);
  CHECK_EQ(pace.BlockingFromNanos(), 0) << "no call under way";
  CHECK(pace.Blocking(kNow)) << "a call that long weighs in the average";
  // One cheap call after it: the average is still over kStallNanos, but a
  // preempted call makes such a spike as well as a blocking one.
  pace.Record(80 * kMicros);
  CHECK(pace.average_nanos() > SourcePace::kStallNanos) << pace.average_nanos();
  CHECK(!pace.Blocking(kNow)) << pace.average_nanos();
  // Slow calls again: the average and the last call both say it blocks.
  pace.Record(4 * kMillis);
  CHECK(pace.Blocking(kNow)) << pace.average_nanos();
  RecordMany(&pace, 8, 80 * kMicros);
  CHECK(!pace.Blocking(kNow)) << pace.average_nanos();
  // Elements that each wait over kStallNanos (a sleep, a remote read).
  SourcePace slow;
  RecordMany(&slow, 4, 1200 * kMicros);
  CHECK(slow.Blocking(kNow)) << slow.average_nanos();
  SourcePace borderline;
  RecordMany(&borderline, 4, SourcePace::kStallNanos);
  CHECK(!borderline.Blocking(kNow)) << borderline.average_nanos();
}

TEST(AnOpenUnderWayBlocksButIsNotAveraged) {
  constexpr int64_t kMillis = 1000 * kMicros;
  constexpr int64_t kNow = 1000 * kMillis;
  SourcePace pace;
  pace.OpenStarted(kNow - 5 * kMillis);
  CHECK(!pace.Blocking(kNow)) << "a 5 ms open may only wait for a core";
  CHECK_EQ(pace.BlockingFromNanos(),
           kNow - 5 * kMillis + SourcePace::kBlockedCallNanos + 1);
  CHECK(pace.Blocking(pace.BlockingFromNanos()));
  CHECK(pace.kind() == Kind::kSlow) << "nothing measured yet";
  CHECK_EQ(pace.StragglerCostNanos(kNow + 50 * kMillis), 0)
      << "an open says nothing about the elements' cost";
  pace.OpenEnded();
  CHECK_EQ(pace.BlockingFromNanos(), 0) << "no open under way";
  CHECK(!pace.Blocking(kNow + 50 * kMillis));
  // Cheap elements after a 50 ms open: the open left no trace.
  RecordMany(&pace, 3, 5 * kMicros);
  CHECK(pace.kind() == Kind::kInline) << pace.average_nanos();
  CHECK(!pace.Blocking(kNow));
}

TEST(FirstCallIsNotAveraged) {
  // A 50 ms open followed by cheap elements: inline from the second call.
  SourcePace pace;
  pace.Record(50000 * kMicros);
  CHECK(pace.kind() == Kind::kSlow) << "the first call alone was slow";
  CHECK(!pace.blocks()) << "the first call never counts as a stall";
  pace.Record(2 * kMicros);
  CHECK(pace.kind() == Kind::kInline);
  CHECK_EQ(pace.average_nanos(), 2 * kMicros);
}

TEST(CheapFirstCallMakesTheSourceFast) {
  // One measurement is no average yet, but batching refills pays already.
  SourcePace pace;
  pace.Record(3 * kMicros);
  CHECK(pace.kind() == Kind::kFast);
}

TEST(AverageSeparatesInlineFastAndSlow) {
  SourcePace inline_pace, fast_pace, slow_pace;
  RecordMany(&inline_pace, 10, 5 * kMicros);
  RecordMany(&fast_pace, 10, 30 * kMicros);
  RecordMany(&slow_pace, 10, 200 * kMicros);
  CHECK(inline_pace.kind() == Kind::kInline);
  CHECK(fast_pace.kind() == Kind::kFast);
  CHECK(slow_pace.kind() == Kind::kSlow);
}

TEST(OneCostlyElementDoesNotEndInlineForLong) {
  // TFRecord-like: cheap records, and now and then a buffer refill.
  SourcePace pace;
  RecordMany(&pace, 20, 2 * kMicros);
  pace.Record(60 * kMicros);
  CHECK(pace.kind() == Kind::kSlow) << "the last element was costly";
  RecordMany(&pace, 8, 2 * kMicros);
  CHECK(pace.kind() == Kind::kInline) << "average " << pace.average_nanos();
}

TEST(AverageFollowsAChangeOfCost) {
  SourcePace pace;
  RecordMany(&pace, 20, 2 * kMicros);
  CHECK(pace.kind() == Kind::kInline);
  RecordMany(&pace, 20, 40 * kMicros);
  CHECK(pace.kind() == Kind::kFast) << "average " << pace.average_nanos();
  RecordMany(&pace, 20, 2 * kMicros);
  CHECK(pace.kind() == Kind::kInline) << "average " << pace.average_nanos();
}

TEST(OneStallIsForgiven) {
  // A preempted call: the source goes back to inline once the average is
  // down again.
  SourcePace pace;
  RecordMany(&pace, 10, 2 * kMicros);
  pace.Record(SourcePace::kStallNanos + 1);
  CHECK(!pace.blocks());
  RecordMany(&pace, 20, 2 * kMicros);
  CHECK(pace.kind() == Kind::kInline) << "average " << pace.average_nanos();
}

TEST(SecondStallMakesTheSourceSlowForGood) {
  // A remote file: cheap records between blocking reads.
  SourcePace pace;
  RecordMany(&pace, 10, 2 * kMicros);
  pace.Record(20000 * kMicros);
  RecordMany(&pace, 100, 2 * kMicros);
  pace.Record(20000 * kMicros);
  CHECK(pace.blocks());
  RecordMany(&pace, 1000, 1 * kMicros);
  CHECK(pace.kind() == Kind::kSlow);
}

TEST(StallThresholdIsExclusive) {
  SourcePace pace;
  RecordMany(&pace, 3, SourcePace::kStallNanos);
  CHECK(!pace.blocks()) << "calls of exactly kStallNanos are not stalls";
}

TEST(ProvenAfterManyCallsWithoutStall) {
  SourcePace pace;
  RecordMany(&pace, SourcePace::kProvenCalls, 2 * kMicros);
  CHECK(!pace.proven()) << "not yet: " << SourcePace::kProvenCalls;
  pace.Record(2 * kMicros);
  CHECK(pace.proven());
  pace.Record(SourcePace::kStallNanos + 1);
  CHECK(!pace.proven()) << "one stall is enough to lose it";
  RecordMany(&pace, SourcePace::kProvenCalls, 2 * kMicros);
  CHECK(!pace.proven()) << "for kProvenCalls calls";
  CHECK(pace.kind() == Kind::kInline) << "though still inline";
  pace.Record(2 * kMicros);
  CHECK(pace.proven()) << "then one stall (a preempted call) is forgiven";
  pace.Record(SourcePace::kStallNanos + 1);
  RecordMany(&pace, 1000, 2 * kMicros);
  CHECK(pace.blocks()) << "a second stall is not";
  CHECK(pace.kind() == Kind::kSlow);
}

TEST(AStallAmongTheFirstCallsDelaysTheProof) {
  SourcePace pace;
  RecordMany(&pace, 10, 2 * kMicros);
  pace.Record(SourcePace::kStallNanos + 1);
  RecordMany(&pace, SourcePace::kProvenCalls, 2 * kMicros);
  CHECK(!pace.proven()) << "kProvenCalls calls after the stall, not more";
  pace.Record(2 * kMicros);
  CHECK(pace.proven());
}

TEST(ResetForgetsEverything) {
  SourcePace pace;
  RecordMany(&pace, 5, 20000 * kMicros);
  CHECK(pace.blocks());
  pace.Reset();
  CHECK(!pace.blocks());
  CHECK(pace.kind() == Kind::kSlow);
  CHECK_EQ(pace.average_nanos(), int64_t{0});
  RecordMany(&pace, 3, 1 * kMicros);
  CHECK(pace.kind() == Kind::kInline);
}

TEST(NoSlowEndIsExpectedBeforeOneIsSeen) {
  SlowEnds ends;
  CHECK(!ends.Expected(0));
  CHECK(!ends.Expected(1 << 30));
  // Ends found quickly, or within a preemption's length, teach nothing.
  ends.RecordEnd(256, 3 * kMicros);
  ends.RecordEnd(256, SourcePace::kStallNanos);
  CHECK(!ends.Expected(256));
}

TEST(SlowEndIsExpectedFromThatManyElementsOn) {
  SlowEnds ends;
  ends.RecordEnd(256, 50000 * kMicros);
  CHECK(!ends.Expected(255)) << "the next call is an element of the source";
  CHECK(ends.Expected(256)) << "the next call may find the end";
  CHECK(ends.Expected(1000));
}

TEST(ShortestSlowEndCounts) {
  SlowEnds ends;
  ends.RecordEnd(300, 20000 * kMicros);
  ends.RecordEnd(100, 20000 * kMicros);
  ends.RecordEnd(200, 20000 * kMicros);
  CHECK(!ends.Expected(99));
  CHECK(ends.Expected(100));
  // An empty source's only call may have waited for its open instead.
  ends.RecordEnd(0, 20000 * kMicros);
  CHECK(!ends.Expected(99));
}

TEST(SlowOpensMakeEveryCallAPossibleEndUntilOneIsSeen) {
  SlowEnds ends;
  ends.RecordFirstCall(50000 * kMicros);
  CHECK(!ends.Expected(5)) << "one slow first call may be a preempted thread";
  ends.RecordFirstCall(50000 * kMicros);
  CHECK(ends.Expected(0));
  CHECK(ends.Expected(5)) << "opens on remote storage: ends may block too";
  // The first end shows where ends are and what they cost.
  ends.RecordEnd(256, 3 * kMicros);
  CHECK(!ends.Expected(5));
  CHECK(!ends.Expected(256));
}

TEST(SlowOpensCountOnlyAsMostOpens) {
  SlowEnds ends;
  // Threads starting together: a few first calls take milliseconds.
  ends.RecordFirstCall(12000 * kMicros);
  ends.RecordFirstCall(15000 * kMicros);
  for (int i = 0; i < 6; ++i) ends.RecordFirstCall(200 * kMicros);
  CHECK(!ends.Expected(5));
  // A local file's open, even a slow one, is below the bar.
  SlowEnds local;
  for (int i = 0; i < 8; ++i) local.RecordFirstCall(5000 * kMicros);
  CHECK(!local.Expected(5));
}

TEST(SlowEndAfterSlowOpensSetsTheBar) {
  SlowEnds ends;
  ends.RecordFirstCall(50000 * kMicros);
  ends.RecordFirstCall(50000 * kMicros);
  ends.RecordEnd(256, 50000 * kMicros);
  CHECK(!ends.Expected(255));
  CHECK(ends.Expected(256));
}

TEST(ShortInlineCallsNeverPause) {
  InlinePause pause;
  CHECK(!pause.RecordCall(SourcePace::kStallNanos, ThreadRunState::kWaiting,
                          10, SourcePace::kStallNanos));
  CHECK(!pause.Paused(10)) << "a call of exactly kStallNanos did not stall";
}

TEST(ABlockedInlineCallPausesLongerEachTime) {
  constexpr int64_t kFirst = InlinePause::kFirstPauseElements;
  constexpr int64_t kCall = 2 * SourcePace::kStallNanos;
  InlinePause pause;
  // Each call is all the time since the start or the last pause.
  CHECK(pause.RecordCall(kCall, ThreadRunState::kWaiting, 100, kCall));
  CHECK(pause.Paused(100));
  CHECK(pause.Paused(100 + kFirst - 1));
  CHECK(!pause.Paused(100 + kFirst));
  CHECK(pause.RecordCall(kCall, ThreadRunState::kWaiting, 200 + kFirst,
                         2 * kCall));
  CHECK(pause.Paused(200 + kFirst + 8 * kFirst - 1));
  CHECK(!pause.Paused(200 + kFirst + 8 * kFirst));
  // However often, no longer than kMaxPauseElements.
  for (int i = 0; i < 20; ++i) {
    CHECK(pause.RecordCall(kCall, ThreadRunState::kWaiting, 0, (3 + i) * kCall))
        << "call " << i;
  }
  CHECK(pause.Paused(InlinePause::kMaxPauseElements - 1));
  CHECK(!pause.Paused(InlinePause::kMaxPauseElements));
}

TEST(APreemptedInlineCallDoesNotPause) {
  constexpr int64_t kCall = 3 * SourcePace::kStallNanos;
  InlinePause pause;
  pause.Begin(0);
  for (int i = 0; i < 10; ++i) {
    CHECK(!pause.RecordCall(kCall, ThreadRunState::kRunnable, i,
                            (i + 1) * kCall))
        << "call " << i;
    CHECK(!pause.Paused(i)) << "call " << i;
  }
  // Once a call runs past kBlockedCallNanos, it counts as blocked whatever
  // its thread was doing at the one look: it may have blocked after it.
  constexpr int64_t kLong = SourcePace::kBlockedCallNanos + 1;
  CHECK(pause.RecordCall(kLong, ThreadRunState::kRunnable, 10,
                         10 * kCall + kLong));
  CHECK(pause.Paused(10));
  CHECK(!pause.Paused(10 + InlinePause::kFirstPauseElements));
}

TEST(AnUnseenInlineCallPausesBrieflyWithoutGrowing) {
  constexpr int64_t kFirst = InlinePause::kFirstPauseElements;
  constexpr int64_t kCall = 2 * SourcePace::kStallNanos;
  InlinePause pause;
  int64_t now = 0;
  for (int64_t i = 0; i < 5; ++i) {
    const int64_t delivered = i * 10 * kFirst;
    now += kCall;
    CHECK(pause.RecordCall(kCall, ThreadRunState::kUnknown, delivered, now))
        << "call " << i;
    CHECK(pause.Paused(delivered + kFirst - 1)) << "call " << i;
    CHECK(!pause.Paused(delivered + kFirst)) << "call " << i;
  }
  // Nor does it shorten a longer pause under way.
  now += kCall;
  CHECK(pause.RecordCall(kCall, ThreadRunState::kWaiting, 0, now));
  now += kCall;
  CHECK(pause.RecordCall(kCall, ThreadRunState::kWaiting, 0, now));
  CHECK(pause.Paused(8 * kFirst - 1));
  now += kCall;
  CHECK(pause.RecordCall(kCall, ThreadRunState::kUnknown, 0, now));
  CHECK(pause.Paused(8 * kFirst - 1));
}

TEST(BlockedCallsPauseOnlyOnceTheyCostAShareOfTheTime) {
  constexpr int64_t kCall = 2 * SourcePace::kStallNanos;
  constexpr int64_t kShare = InlinePause::kLostShareDivisor;
  InlinePause pause;
  pause.Begin(0);
  // A blocked call of 2 ms every 100 ms: a share of 1/50, never a pause.
  int64_t now = 0;
  for (int i = 0; i < 40; ++i) {
    now += 100 * SourcePace::kStallNanos;
    CHECK(!pause.RecordCall(kCall, ThreadRunState::kWaiting, i, now))
        << "call " << i;
    CHECK(!pause.Paused(i)) << "call " << i;
  }
  // Unseen calls count the same way.
  now += 100 * SourcePace::kStallNanos;
  CHECK(!pause.RecordCall(kCall, ThreadRunState::kUnknown, 40, now));
  // The span is halved once past kShareSpanNanos, so blocked calls in a row
  // reach the share within a fraction of it, however long the pass has run:
  // here, after some 1/(kShare-1) of the span.
  int64_t calls = 0;
  bool paused = false;
  while (!paused && calls < 1000) {
    now += kCall;
    paused = pause.RecordCall(kCall, ThreadRunState::kWaiting, 100, now);
    ++calls;
  }
  CHECK(paused);
  CHECK(calls * kCall <= InlinePause::kShareSpanNanos / (kShare - 1) + kCall)
      << calls << " calls";
  CHECK(pause.Paused(100 + InlinePause::kFirstPauseElements - 1));
  // The share starts afresh after a pause: one more blocked call that is
  // all the time since is over it, and pauses longer.
  now += kCall;
  CHECK(pause.RecordCall(kCall, ThreadRunState::kWaiting, 200, now));
  CHECK(pause.Paused(200 + 8 * InlinePause::kFirstPauseElements - 1));
}

TEST(AfterALongQuietSpanABlockedCallIsWeighedAgainstTheLastSecond) {
  constexpr int64_t kSecond = InlinePause::kShareSpanNanos;
  constexpr int64_t kCall = kSecond / 4;
  static_assert(kCall * InlinePause::kLostShareDivisor > kSecond,
                "the call must be over the share of one span");
  static_assert(kCall * InlinePause::kLostShareDivisor < 30 * kSecond,
                "the call must be under the share of half the quiet time");
  InlinePause pause;
  pause.Begin(0);
  // A call that did not stall is not weighed at all.
  CHECK(!pause.RecordCall(SourcePace::kStallNanos, ThreadRunState::kWaiting, 1,
                          30 * kSecond));
  // Sixty seconds on (the consumer took from workers, or nothing stalled),
  // one blocked call of a quarter second pauses: the span was halved down
  // to a second or less, not once to thirty.
  CHECK(pause.RecordCall(kCall, ThreadRunState::kWaiting, 2000,
                         60 * kSecond + kCall));
  CHECK(pause.Paused(2000));
}

TEST(TheWatcherKeepsItsBeatWithoutAnUnseenCall) {
  constexpr int64_t kPeriod = 1000 * 1000;
  CHECK_EQ(WatcherWaitNanos(5 * kPeriod, 0, kPeriod), kPeriod);
}

TEST(TheWatcherLooksAtAnUnseenCallOnePeriodAfterItStarted) {
  constexpr int64_t kPeriod = 1000 * 1000;
  const int64_t start = 7 * kPeriod;
  // Woken on its beat 0.3 periods into the call: the look is due in 0.7.
  CHECK_EQ(WatcherWaitNanos(start + 3 * kPeriod / 10, start, kPeriod),
           7 * kPeriod / 10);
  // Just after the call started: close to a whole period, never more.
  CHECK_EQ(WatcherWaitNanos(start, start, kPeriod), kPeriod);
  // The call has lasted a period already: at once.
  CHECK_EQ(WatcherWaitNanos(start + kPeriod, start, kPeriod), 0);
  CHECK_EQ(WatcherWaitNanos(start + 3 * kPeriod, start, kPeriod), 0);
}

}  // namespace
}  // namespace tf_interleave
