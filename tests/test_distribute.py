"""``tf.distribute.MirroredStrategy`` over two logical CPU devices, with a pipeline using the op.

Logical devices can only be configured before TensorFlow initializes its
devices, so the strategy runs in a fresh process (``helpers/mirrored_strategy.py``)
that imports tf_interleave; this test checks what it printed.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from typing import List

import pytest

from pipelines import nested_values
from reference_model import interleave_order

# Must match helpers/mirrored_strategy.py.
SIZES = (3, 0, 5, 1, 4, 2, 6, 0, 2, 7)
GLOBAL_BATCH = 4
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "mirrored_strategy.py")
TIMEOUT_SECONDS = 90


@pytest.fixture(scope="module")
def strategy_run() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.Popen([sys.executable, HELPER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"the MirroredStrategy process did not finish in {TIMEOUT_SECONDS} s:\n{stderr[-5000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"the MirroredStrategy process failed ({process.returncode}):\n{stderr[-5000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def _expected() -> List[int]:
    return interleave_order(nested_values(SIZES), 3, 2, 1)


def _flatten(steps: List[List[List[int]]]) -> List[int]:
    return [value for step in steps for replica in step for value in replica]


def test_two_replicas(strategy_run: dict) -> None:
    assert strategy_run["replicas"] == 2
    for name in ("distribute_dataset", "from_function"):
        assert all(len(step) == 2 for step in strategy_run[name]), strategy_run[name]


def test_experimental_distribute_dataset_delivers_every_element(strategy_run: dict) -> None:
    """The global batches are split between the replicas: in order, each element once."""
    steps = strategy_run["distribute_dataset"]
    assert _flatten(steps) == _expected()
    assert all(len(replica) <= GLOBAL_BATCH // 2 for step in steps for replica in step)
    assert any(step[1] for step in steps), "the second replica received nothing"


def test_distribute_datasets_from_function_delivers_every_element(strategy_run: dict) -> None:
    steps = strategy_run["from_function"]
    assert collections.Counter(_flatten(steps)) == collections.Counter(_expected())
    assert any(step[1] for step in steps), "the second replica received nothing"


def test_replicated_step_in_tf_function(strategy_run: dict) -> None:
    expected = _expected()
    assert strategy_run["replicated_sum"] == [sum(expected), len(expected)]
