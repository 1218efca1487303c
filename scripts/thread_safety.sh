#!/usr/bin/env bash
# Checks the op library's lock annotations (TF_GUARDED_BY,
# TF_EXCLUSIVE_LOCKS_REQUIRED, TF_LOCKS_EXCLUDED...) with clang's
# thread-safety analysis, which g++ does not run: every source of
# cc/sources.bzl is parsed (not compiled) with TensorFlow's flags, and any
# thread-safety warning fails the check. Installs clang from apt when no
# clang++ is found.
#
# Usage: scripts/thread_safety.sh
# Environment: PY (a Python with TensorFlow; default .venv/bin/python if
#   present, else python3), CLANGXX (default: the first clang++ found).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_clang() {
  local candidate
  for candidate in "${CLANGXX:-}" clang++ clang++-19 clang++-18 clang++-17 \
      clang++-16 clang++-15 clang++-14; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if ! CLANG="$(find_clang)"; then
  echo "== no clang++ found: installing clang from apt =="
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq clang
  CLANG="$(find_clang)"
fi

PY="${PY:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
if ! TF_FLAGS="$(cd / && TF_CPP_MIN_LOG_LEVEL=3 "$PY" -c '
import tensorflow as tf
print(" ".join(tf.sysconfig.get_compile_flags()))')"; then
  echo "needs a Python with TensorFlow: $PY has none (set PY)" >&2
  exit 1
fi

mapfile -t SRCS < <(python3 - <<'EOF'
scope = {}
exec(open("cc/sources.bzl").read(), scope)
print("\n".join(scope["OP_LIBRARY_SRCS"]))
EOF
)

echo "== $("$CLANG" --version | head -1): -Wthread-safety over ${#SRCS[@]} sources =="
failed=0
for src in "${SRCS[@]}"; do
  # Only the analysis: every other warning is off (TensorFlow's headers warn
  # a lot, and the build checks the rest).
  # shellcheck disable=SC2086  # the flags are words
  if ! "$CLANG" -fsyntax-only -std=c++17 -I"$ROOT" $TF_FLAGS -Wno-everything \
      -Wthread-safety -Werror=thread-safety "$src"; then
    failed=1
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "== thread-safety analysis failed ==" >&2
  exit 1
fi
echo "== thread-safety analysis clean =="
