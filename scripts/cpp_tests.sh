#!/usr/bin/env bash
# Builds and runs the C++ tests of the scheduler, the source pace and the
# thread-state probe (cc/tests/, no TensorFlow needed) three ways: plain
# (-O2), under ThreadSanitizer, and under AddressSanitizer +
# UndefinedBehaviorSanitizer.
# Fails on any failed check and on any sanitizer report.
#
# Usage: scripts/cpp_tests.sh [plain|tsan|asan ...]   (default: all three)
# Environment: CXX (default g++), BUILD_DIR (default build/cpp_tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CXX="${CXX:-g++}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/cpp_tests}"
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(plain tsan asan)

# The sources the tests link: the one list in cc/sources.bzl.
mapfile -t TEST_SRCS < <(python3 - <<'EOF'
scope = {}
exec(open("cc/sources.bzl").read(), scope)
print("\n".join(scope["CPP_TEST_SRCS"]))
EOF
)
TESTS=(interleave_scheduler_test scheduler_threaded_test source_pace_test
       thread_state_test)
COMMON_FLAGS=(-std=c++17 -pthread -Wall -Wextra -I"$ROOT")

mkdir -p "$BUILD_DIR"

# Installs the sanitizer runtimes from apt when the compiler cannot link them.
ensure_sanitizer() {
  local flag="$1"
  local probe="$BUILD_DIR/probe_${flag//[^a-z]/_}"
  if echo 'int main() { return 0; }' |
      "$CXX" -x c++ - -fsanitize="$flag" -o "$probe" 2>/dev/null; then
    return 0
  fi
  echo "== $CXX cannot link -fsanitize=$flag: installing sanitizer runtimes =="
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq libtsan2 libasan8 libubsan1 ||
    $sudo apt-get install -y -qq "libgcc-$("$CXX" -dumpversion | cut -d. -f1)-dev"
  echo 'int main() { return 0; }' |
    "$CXX" -x c++ - -fsanitize="$flag" -o "$probe"
}

# Runs a TSan binary; retries without address randomization when the kernel's
# mmap layout is one this TSan runtime does not support.
run_tsan() {
  local log="$BUILD_DIR/tsan_run.log"
  if "$@" 2>"$log"; then
    cat "$log" >&2
    return 0
  fi
  if grep -q "unexpected memory mapping" "$log" && command -v setarch >/dev/null; then
    echo "(retrying under setarch -R: TSan does not support this mmap layout)"
    setarch "$(uname -m)" -R "$@"
    return
  fi
  cat "$log" >&2
  return 1
}

build_and_run() {
  local mode="$1"
  local flags=()
  local runner=()
  case "$mode" in
    plain)
      flags=(-O2 -Werror)
      ;;
    tsan)
      ensure_sanitizer thread
      flags=(-O1 -g -fsanitize=thread)
      runner=(run_tsan)
      export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
      ;;
    asan)
      ensure_sanitizer address,undefined
      flags=(-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
             -fno-sanitize-recover=all)
      export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1:strict_init_order=1:${ASAN_OPTIONS:-}"
      export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
      ;;
    *)
      echo "unknown mode '$mode' (plain, tsan or asan)" >&2
      return 2
      ;;
  esac
  local dir="$BUILD_DIR/$mode"
  mkdir -p "$dir"
  local objects=()
  for src in "${TEST_SRCS[@]}"; do
    local object="$dir/$(basename "${src%.cc}").o"
    "$CXX" "${COMMON_FLAGS[@]}" "${flags[@]}" -c "$src" -o "$object"
    objects+=("$object")
  done
  # The test binaries compile side by side (two jobs at most).
  local running=0
  for test in "${TESTS[@]}"; do
    if [ "$running" -ge 2 ]; then
      wait -n
      running=$((running - 1))
    fi
    "$CXX" "${COMMON_FLAGS[@]}" "${flags[@]}" "cc/tests/$test.cc" \
      "${objects[@]}" -o "$dir/$test" &
    running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do
    wait -n
    running=$((running - 1))
  done
  for test in "${TESTS[@]}"; do
    echo "== $mode: $test =="
    "${runner[@]}" "$dir/$test"
  done
}

start=$SECONDS
for mode in "${MODES[@]}"; do
  build_and_run "$mode"
done
echo "== C++ tests passed (${MODES[*]}) in $((SECONDS - start)) s =="
