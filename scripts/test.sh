#!/usr/bin/env bash
# Sets everything up from scratch (see setup_env.sh) and runs the test suite
# against the installed package.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
# The `pytest` entry point (not `python -m pytest`) keeps the source tree off
# sys.path, so the tests import the package that `pip install .` built.
exec "$VENV/bin/pytest" tests "$@"
