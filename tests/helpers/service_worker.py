"""Entry point of a tf.data service worker process that has tf_interleave's op registered.

Usage: ``python service_worker.py --dispatcher HOST:PORT [--max-seconds N]``

The worker listens on a free port (port 0) and advertises ``127.0.0.1:<port>``
to the dispatcher. Once it serves, it prints ``READY <address>`` on stdout.
It exits when its stdin reaches end of file (the parent closed the pipe or
died) or after ``--max-seconds``, so it can never outlive a test by long.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading


def _exit_when_stdin_closes() -> None:
    try:
        while sys.stdin.buffer.read(1):
            pass
    finally:
        os._exit(0)


def _exit_after(seconds: float) -> None:
    timer = threading.Timer(seconds, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dispatcher", required=True, help="dispatcher address, HOST:PORT")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()

    _exit_after(args.max_seconds)
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tf_interleave  # noqa: F401  (registers TfInterleave>ParallelInterleaveDataset)

    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(
            dispatcher_address=args.dispatcher,
            worker_address="127.0.0.1:%port%",
            port=0,
        ))
    print(f"READY {worker._address}", flush=True)  # pylint: disable=protected-access
    worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
