#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv, installs
# TensorFlow and the tools the tests and benchmarks need, then builds and
# installs tf_interleave into it with `pip install .`.
# Usage: source scripts/setup_env.sh   (sets VENV and PY)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TF_INTERLEAVE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TF_REQUIREMENT="${TF_REQUIREMENT:-tensorflow-cpu==2.21.0}"

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap apart (python3-venv);
    # virtualenv from PyPI needs only pip.
    rm -rf "$VENV"
    "$PYTHON" -m pip install --quiet --user virtualenv 2>/dev/null ||
      "$PYTHON" -m pip install --quiet --user --break-system-packages virtualenv
    "$PYTHON" -m virtualenv --quiet "$VENV"
  fi
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "$TF_REQUIREMENT" -r "$ROOT/requirements-dev.txt"
"$PY" -m pip install --quiet "$ROOT"
export VENV PY ROOT
