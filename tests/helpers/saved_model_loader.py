"""Loads a SavedModel written by ``test_serialization.py`` in a fresh process and calls it.

Usage: ``python saved_model_loader.py PATH [--import-tf-interleave]``

Prints one JSON line ``{"elements": {...}, "totals": {...}}`` with the results
of the model's functions for cycle lengths 1 to 3. Without
``--import-tf-interleave`` the op is not registered and loading is expected to
fail, naming the op.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--import-tf-interleave", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.import_tf_interleave:
        import tf_interleave  # noqa: F401  (registers TfInterleave>ParallelInterleaveDataset)
    elif "tf_interleave" in sys.modules:
        print("tf_interleave was imported although it must not be", file=sys.stderr)
        return 2

    model = tf.saved_model.load(args.path)
    elements, totals = {}, {}
    for cycle_length in (1, 2, 3):
        argument = tf.constant(cycle_length, tf.int64)
        elements[cycle_length] = model.elements(argument).numpy().tolist()
        totals[cycle_length] = int(model.total(argument).numpy())
    print(json.dumps({"elements": elements, "totals": totals}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
