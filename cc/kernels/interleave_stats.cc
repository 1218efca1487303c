#include "cc/kernels/interleave_stats.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/base/no_destructor.h"
#include "absl/strings/str_cat.h"

namespace tf_interleave {
namespace {

std::string Quote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string Number(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.6f", value);
  return text;
}

std::string InputToJson(const InputStats& input) {
  return absl::StrCat(
      "{\"source\":", input.source, ",\"label\":", Quote(input.label),
      ",\"state\":", Quote(input.state), ",\"elements\":", input.elements,
      ",\"bytes\":", input.bytes,
      ",\"buffered_elements\":", input.buffered_elements,
      ",\"buffered_bytes\":", input.buffered_bytes,
      ",\"consumer_wait_seconds\":", Number(input.consumer_wait_seconds),
      ",\"retries\":", input.retries, "}");
}

std::string SkippedToJson(const SkippedInput& skipped) {
  return absl::StrCat("{\"source\":", skipped.source,
                      ",\"label\":", Quote(skipped.label),
                      ",\"element_index\":", skipped.element_index,
                      ",\"error\":", Quote(skipped.error), "}");
}

template <typename T, typename F>
std::string List(const std::vector<T>& items, F to_json) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ",";
    out += to_json(items[i]);
  }
  return out + "]";
}

}  // namespace

std::string StatsToJson(const IteratorStats& s) {
  return absl::StrCat(
      "{\"id\":", s.id, ",\"name\":", Quote(s.name),
      ",\"cycle_length\":", s.cycle_length,
      ",\"block_length\":", s.block_length,
      ",\"sloppy\":", s.sloppy ? "true" : "false",
      ",\"elements\":", s.elements, ",\"bytes\":", s.bytes,
      ",\"buffered_elements\":", s.buffered_elements,
      ",\"buffered_bytes\":", s.buffered_bytes,
      ",\"memory_budget_bytes\":", s.memory_budget_bytes,
      ",\"inputs_opened\":", s.inputs_opened,
      ",\"input_ended\":", s.input_ended ? "true" : "false",
      ",\"consumer_wait_seconds\":", Number(s.consumer_wait_seconds),
      ",\"waiting_on\":", s.waiting_on.empty() ? "null" : Quote(s.waiting_on),
      ",\"sloppy_skips\":", s.sloppy_skips,
      ",\"promoted_inputs\":", s.promoted_inputs,
      ",\"staged_elements\":", s.staged_elements,
      ",\"inline_elements\":", s.inline_elements,
      ",\"inline_pauses\":", s.inline_pauses, ",\"retries\":", s.retries,
      ",\"stall_warnings\":", s.stall_warnings,
      ",\"inputs\":", List(s.inputs, InputToJson),
      ",\"skipped_inputs\":", List(s.skipped_inputs, SkippedToJson), "}");
}

StatsRegistry& StatsRegistry::Global() {
  // Never destroyed: iterators may deregister during process exit.
  static absl::NoDestructor<StatsRegistry> registry;
  return *registry;
}

int64_t StatsRegistry::Register(const StatsSource* source) {
  tensorflow::mutex_lock l(mu_);
  const int64_t id = next_id_++;
  sources_[id] = source;
  return id;
}

void StatsRegistry::Deregister(int64_t id) {
  tensorflow::mutex_lock l(mu_);
  sources_.erase(id);
}

std::string StatsRegistry::ToJson() const {
  tensorflow::mutex_lock l(mu_);
  std::string out = "[";
  bool first = true;
  for (const auto& entry : sources_) {
    IteratorStats stats = entry.second->Stats();
    stats.id = entry.first;
    if (!first) out += ",";
    first = false;
    out += StatsToJson(stats);
  }
  return out + "]";
}

}  // namespace tf_interleave

// C entry points for the Python package (through ctypes), so stats can be
// read in every execution mode without running a TensorFlow op.
extern "C" {

// Returns a JSON list of the live iterators' stats; free it with
// `TfInterleaveFreeString`.
__attribute__((visibility("default"))) char* TfInterleaveStatsJson() {
  const std::string json = tf_interleave::StatsRegistry::Global().ToJson();
  char* out = static_cast<char*>(std::malloc(json.size() + 1));
  if (out != nullptr) std::memcpy(out, json.c_str(), json.size() + 1);
  return out;
}

__attribute__((visibility("default"))) void TfInterleaveFreeString(char* text) {
  std::free(text);
}

}  // extern "C"
