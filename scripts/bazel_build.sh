#!/usr/bin/env bash
# Build the op library with Bazel, offline, and print the path of the .so.
#
#   scripts/bazel_build.sh                 # builds //:tf_interleave/_tf_interleave_ops.so
#   SO="$(scripts/bazel_build.sh)"         # stdout is only the .so's absolute path
#
# If no Bazel is installed it installs Debian's bazel-bootstrap (Bazel 4.2.3)
# with apt-get (needs root, or passwordless sudo). Nothing else is downloaded:
# WORKSPACE uses in-tree stand-ins for @rules_cc/@rules_java and the installed
# TensorFlow (see third_party/tf/tf_configure.bzl).
#
# Environment:
#   PYTHON_BIN_PATH   Python with TensorFlow (default: $VIRTUAL_ENV/bin/python,
#                     else ${TF_INTERLEAVE_VENV:-.venv}/bin/python, else python3)
#   BAZEL             Bazel binary to use (default: bazel-4, bazel-4.2.3,
#                     bazelisk, bazel; first found)
#   BAZEL_JOBS        parallel jobs (default 2)
#   BAZEL_OUTPUT_USER_ROOT  Bazel's output/cache dir
#                     (default ${XDG_CACHE_HOME:-$HOME/.cache}/tf_interleave_bazel)
#   CI                when set (as in CI), the Bazel server is shut down after
#                     the build to give its memory back to the tests.
#   Extra arguments are passed to `bazel build` (options only, not targets).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="//:tf_interleave/_tf_interleave_ops.so"
SO_RELPATH="tf_interleave/_tf_interleave_ops.so"

log() { echo "bazel_build.sh: $*" >&2; }

find_bazel() {
  # Debian's /usr/bin/bazel is a wrapper that wants /usr/bin/bazel-<version
  # from .bazelversion> (bazel-4.2.3), but the package installs bazel-4: call
  # that directly.
  local b
  for b in bazel-4 bazel-4.2.3 bazelisk bazel; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

install_bazel() {
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      log "no Bazel found and not root: install it with" \
          "'apt-get install bazel-bootstrap' (Debian/Ubuntu) or set BAZEL"
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no Bazel found and no apt-get to install bazel-bootstrap; set BAZEL"
    exit 1
  fi
  log "installing Debian's bazel-bootstrap (Bazel 4.2.3) with apt-get"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends bazel-bootstrap >&2
}

if [[ -n "${BAZEL:-}" ]]; then
  BAZEL_BIN="$(command -v "$BAZEL")" || { log "BAZEL=$BAZEL not found"; exit 1; }
else
  BAZEL_BIN="$(find_bazel)" || { install_bazel; BAZEL_BIN="$(find_bazel)"; }
fi

if [[ -z "${PYTHON_BIN_PATH:-}" ]]; then
  project_venv="${TF_INTERLEAVE_VENV:-$REPO_ROOT/.venv}"  # scripts/setup_env.sh's
  if [[ -n "${VIRTUAL_ENV:-}" && -x "${VIRTUAL_ENV}/bin/python" ]]; then
    PYTHON_BIN_PATH="${VIRTUAL_ENV}/bin/python"
  elif [[ -x "$project_venv/bin/python" ]]; then
    PYTHON_BIN_PATH="$project_venv/bin/python"
  else
    PYTHON_BIN_PATH="$(command -v python3 || true)"
  fi
fi
if [[ -z "$PYTHON_BIN_PATH" ]]; then
  log "no python3 found; set PYTHON_BIN_PATH to a Python with TensorFlow"
  exit 1
fi
# The repository rule reads it from the environment (and reruns when it changes).
export PYTHON_BIN_PATH
log "bazel: $BAZEL_BIN; python: $PYTHON_BIN_PATH"

OUTPUT_USER_ROOT="${BAZEL_OUTPUT_USER_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/tf_interleave_bazel}"
mkdir -p "$OUTPUT_USER_ROOT"

# The server exits by itself after 10 idle minutes.
STARTUP=(--output_user_root="$OUTPUT_USER_ROOT" --max_idle_secs=600)
FLAGS=()
if [[ ! -t 2 ]]; then
  FLAGS+=(--color=no --curses=no)
fi

cd "$REPO_ROOT"
"$BAZEL_BIN" "${STARTUP[@]}" build "${FLAGS[@]}" --jobs="${BAZEL_JOBS:-2}" \
  "$@" "$TARGET" >&2

BIN_DIR="$("$BAZEL_BIN" "${STARTUP[@]}" info "${FLAGS[@]}" "$@" bazel-bin 2>/dev/null)"
if [[ -n "${CI:-}" ]]; then
  "$BAZEL_BIN" "${STARTUP[@]}" shutdown >&2 || true
fi
SO_PATH="$BIN_DIR/$SO_RELPATH"
if [[ ! -f "$SO_PATH" ]]; then
  log "build succeeded but $SO_PATH is missing"
  exit 1
fi
echo "$SO_PATH"
