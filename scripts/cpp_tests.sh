#!/usr/bin/env bash
# Builds and runs the C++ tests of the scheduler, the source pace and the
# thread-state probe (cc/tests/, no TensorFlow needed) three ways: plain
# (-O2), under ThreadSanitizer, and under AddressSanitizer +
# UndefinedBehaviorSanitizer; and, as mode `tf`, the tests that link the
# installed TensorFlow's framework library (the checkpoint records), plain.
# (The op library itself runs under the sanitizers in scripts/asan_tests.sh.)
# Fails on any failed check and on any sanitizer report.
#
# Usage: scripts/cpp_tests.sh [plain|tsan|asan|tf ...]   (default: all four)
# Environment: CXX (default g++), BUILD_DIR (default build/cpp_tests),
#   PY (mode tf: a Python with TensorFlow; default .venv/bin/python if
#   present, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CXX="${CXX:-g++}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/cpp_tests}"
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(plain tsan asan tf)

# Prints one list of cc/sources.bzl, one path per line.
source_list() {
  python3 - "$1" <<'EOF'
import sys
scope = {}
exec(open("cc/sources.bzl").read(), scope)
print("\n".join(scope[sys.argv[1]]))
EOF
}

# The sources the tests link: the lists in cc/sources.bzl.
mapfile -t TEST_SRCS < <(source_list CPP_TEST_SRCS)
mapfile -t TF_TEST_SRCS < <(source_list CPP_TF_TEST_SRCS)
TESTS=(interleave_scheduler_test scheduler_threaded_test source_pace_test
       thread_state_test)
TF_TESTS=(checkpoint_io_test)
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

# Builds the TensorFlow-linked tests with tf.sysconfig's flags (and -w, as
# the op library: the headers warn a lot) and runs them.
build_and_run_tf() {
  local py="${PY:-}"
  if [ -z "$py" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then py="$ROOT/.venv/bin/python"; else py=python3; fi
  fi
  local flags
  if ! flags="$(cd / && TF_CPP_MIN_LOG_LEVEL=3 "$py" -c '
import tensorflow as tf
print(" ".join(tf.sysconfig.get_compile_flags()))
print(" ".join(tf.sysconfig.get_link_flags()))
print(tf.sysconfig.get_lib())')"; then
    echo "mode tf needs a Python with TensorFlow: $py has none (set PY)" >&2
    return 1
  fi
  local compile link lib
  { read -r compile; read -r link; read -r lib; } <<<"$flags"
  local dir="$BUILD_DIR/tf"
  mkdir -p "$dir"
  for test in "${TF_TESTS[@]}"; do
    # shellcheck disable=SC2086  # the flags are words
    "$CXX" -O1 -w -pthread -I"$ROOT" $compile "cc/tests/$test.cc" \
      "${TF_TEST_SRCS[@]}" -o "$dir/$test" $link -Wl,-rpath,"$lib"
  done
  for test in "${TF_TESTS[@]}"; do
    echo "== tf: $test =="
    TF_CPP_MIN_LOG_LEVEL=3 "$dir/$test"
  done
}

build_and_run() {
  local mode="$1"
  if [ "$mode" = tf ]; then
    build_and_run_tf
    return
  fi
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
      echo "unknown mode '$mode' (plain, tsan, asan or tf)" >&2
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
