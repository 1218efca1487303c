#include "cc/kernels/thread_state.h"

#include <cstdio>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace tf_interleave {

int64_t CurrentThreadId() {
#if defined(__linux__)
  // One system call per thread, not per query.
  static thread_local const int64_t thread_id = syscall(SYS_gettid);
  return thread_id;
#else
  return -1;
#endif
}

ThreadRunState RunStateOf(int64_t thread_id) {
#if defined(__linux__)
  if (thread_id < 0) return ThreadRunState::kUnknown;
  const std::string path =
      "/proc/self/task/" + std::to_string(thread_id) + "/stat";
  FILE* file = std::fopen(path.c_str(), "re");
  if (file == nullptr) return ThreadRunState::kUnknown;
  char line[512];
  const size_t read = std::fread(line, 1, sizeof(line) - 1, file);
  std::fclose(file);
  line[read] = '\0';
  // "tid (name) S ...": the name may hold spaces and parentheses, so the
  // state follows the last ')'.
  const char* name_end = std::strrchr(line, ')');
  if (name_end == nullptr || name_end[1] != ' ') {
    return ThreadRunState::kUnknown;
  }
  switch (name_end[2]) {
    case 'R':
      return ThreadRunState::kRunnable;
    case 'S':
    case 'D':
      return ThreadRunState::kWaiting;
    default:
      return ThreadRunState::kUnknown;
  }
#else
  (void)thread_id;
  return ThreadRunState::kUnknown;
#endif
}

void UsePreciseTimers() {
#if defined(__linux__)
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
}

}  // namespace tf_interleave
