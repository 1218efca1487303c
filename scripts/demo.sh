#!/usr/bin/env bash
# Sets everything up from scratch (see setup_env.sh) and runs the demo: reads
# TFRecord shards with tf_interleave and with the built-in and prints a table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec "$PY" bench/demo.py "$@"
