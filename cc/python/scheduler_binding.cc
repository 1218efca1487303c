// Python binding of InterleaveScheduler, for the property tests
// (tests/test_scheduler_property.py builds it with pybind11; it is not part
// of the package).
//
//   s = scheduler_binding.InterleaveScheduler(cycle_length, block_length, sloppy)
//   s.on_input_opened(); s.on_input_ended()
//   kind, source, released = s.next(lambda source: "ready")
//       kind: "emit", "wait_for_source", "wait_for_input", "wait_for_any" or
//       "end_of_sequence"; the callback returns "ready", "pending" or
//       "finished".
//   s.state() -> dict;  s.restore(dict) -> "" or what is wrong with it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cc/kernels/interleave_scheduler.h"
#include "pybind11/pybind11.h"
#include "pybind11/stl.h"

namespace tf_interleave {
namespace {

namespace py = pybind11;
using Kind = InterleaveScheduler::Decision::Kind;
using State = InterleaveScheduler::State;

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kEmit:
      return "emit";
    case Kind::kWaitForSource:
      return "wait_for_source";
    case Kind::kWaitForInput:
      return "wait_for_input";
    case Kind::kWaitForAny:
      return "wait_for_any";
    case Kind::kEndOfSequence:
      return "end_of_sequence";
  }
  return "unknown";
}

SourceState ParseSourceState(const py::object& value) {
  const std::string name = py::cast<std::string>(value);
  if (name == "ready") return SourceState::kReady;
  if (name == "pending") return SourceState::kPending;
  if (name == "finished") return SourceState::kFinished;
  throw py::value_error("source state must be 'ready', 'pending' or "
                        "'finished', not '" + name + "'");
}

py::dict StateToDict(const State& state) {
  py::dict d;
  d["started"] = state.started;
  d["cycle"] = state.cycle;
  d["next_index"] = state.next_index;
  d["block_count"] = state.block_count;
  d["next_source"] = state.next_source;
  d["inputs_known"] = state.inputs_known;
  d["input_ended"] = state.input_ended;
  d["sloppy_skips"] = state.sloppy_skips;
  d["promoted"] = state.promoted;
  d["promotions"] = state.promotions;
  return d;
}

// Every field is required: a missing key raises KeyError.
State StateFromDict(const py::dict& d) {
  auto get = [&d](const char* key) -> py::object {
    if (!d.contains(key)) throw py::key_error(key);
    return d[key];
  };
  State state;
  state.started = py::cast<bool>(get("started"));
  state.cycle = py::cast<std::vector<int64_t>>(get("cycle"));
  state.next_index = py::cast<int64_t>(get("next_index"));
  state.block_count = py::cast<int64_t>(get("block_count"));
  state.next_source = py::cast<int64_t>(get("next_source"));
  state.inputs_known = py::cast<int64_t>(get("inputs_known"));
  state.input_ended = py::cast<bool>(get("input_ended"));
  state.sloppy_skips = py::cast<int64_t>(get("sloppy_skips"));
  state.promoted = py::cast<std::vector<int64_t>>(get("promoted"));
  state.promotions = py::cast<int64_t>(get("promotions"));
  return state;
}

}  // namespace
}  // namespace tf_interleave

PYBIND11_MODULE(scheduler_binding, m) {
  namespace py = pybind11;
  using tf_interleave::InterleaveScheduler;
  using tf_interleave::KindName;
  using tf_interleave::ParseSourceState;
  using tf_interleave::StateFromDict;
  using tf_interleave::StateToDict;
  m.doc() = "InterleaveScheduler, for tests.";
  m.attr("EMPTY_SLOT") = InterleaveScheduler::kEmptySlot;
  m.attr("AWAITING_SLOT") = InterleaveScheduler::kAwaitingSlot;

  py::class_<InterleaveScheduler>(m, "InterleaveScheduler")
      .def(py::init([](int64_t cycle_length, int64_t block_length,
                       bool sloppy) {
             if (cycle_length <= 0 || block_length <= 0) {
               throw py::value_error(
                   "cycle_length and block_length must be > 0, got " +
                   std::to_string(cycle_length) + " and " +
                   std::to_string(block_length));
             }
             return std::make_unique<InterleaveScheduler>(
                 cycle_length, block_length, sloppy);
           }),
           py::arg("cycle_length"), py::arg("block_length"),
           py::arg("sloppy"))
      .def("on_input_opened", &InterleaveScheduler::OnInputOpened)
      .def("on_input_ended", &InterleaveScheduler::OnInputEnded)
      .def(
          "next",
          [](InterleaveScheduler& scheduler, const py::function& state_fn,
             const py::object& cost_fn) {
            std::vector<int64_t> released;
            InterleaveScheduler::CostFn staged_cost;
            if (!cost_fn.is_none()) {
              staged_cost = [&cost_fn](int64_t source) {
                return py::cast<int64_t>(cost_fn(source));
              };
            }
            const InterleaveScheduler::Decision decision = scheduler.Next(
                [&state_fn](int64_t source) {
                  return ParseSourceState(state_fn(source));
                },
                &released, staged_cost);
            return py::make_tuple(KindName(decision.kind), decision.source,
                                  released);
          },
          py::arg("state_fn"), py::arg("cost_fn") = py::none(),
          "Returns (kind, source, released sources). `cost_fn(source)` "
          "gives a staged source's cost (sloppy mode).")
      .def(
          "next_from_staging",
          [](InterleaveScheduler& scheduler, const py::function& state_fn) {
            std::vector<int64_t> released;
            const InterleaveScheduler::Decision decision =
                scheduler.NextFromStaging(
                    [&state_fn](int64_t source) {
                      return ParseSourceState(state_fn(source));
                    },
                    &released);
            return py::make_tuple(KindName(decision.kind), decision.source,
                                  released);
          },
          py::arg("state_fn"),
          "Returns (kind, source, released sources): a staged source's "
          "element when the cycle has none ready (sloppy mode).")
      .def("state",
           [](const InterleaveScheduler& scheduler) {
             return StateToDict(scheduler.state());
           })
      .def(
          "restore",
          [](InterleaveScheduler& scheduler, const py::dict& state) {
            return scheduler.Restore(StateFromDict(state));
          },
          py::arg("state"),
          "Returns '' on success, otherwise what is wrong with the state.")
      .def("live_sources", &InterleaveScheduler::LiveSources)
      .def_property_readonly("cycle_length",
                             &InterleaveScheduler::cycle_length)
      .def_property_readonly("block_length",
                             &InterleaveScheduler::block_length)
      .def_property_readonly("sloppy", &InterleaveScheduler::sloppy);
}
