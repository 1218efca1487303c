"""README's benchmark table is the published run, figure for figure.

The run behind the table is committed under bench/published/; this keeps the
table from drifting away from it when either one changes.
"""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
_HEADER = "| workload | mode | tf_interleave el/s |"
_CONTENDERS = ("tf_interleave", "legacy", "Dataset.interleave")


def _readme_rows():
  lines = (ROOT / "README.md").read_text().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(_HEADER))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    rows.append([cell.strip() for cell in line.strip("|").split("|")])
  return rows


def _published_run():
  text = (ROOT / "README.md").read_text()
  match = re.search(r"`(bench/published/results-(\w+)\.json)`", text)
  assert match, "README does not name the published results file"
  run = json.loads((ROOT / match.group(1)).read_text())
  return match.group(2), run


def test_readme_table_is_the_published_run():
  commit, run = _published_run()
  assert run["meta"]["git_commit"] == commit
  assert f"One run on commit `{commit}`" in (ROOT / "README.md").read_text()
  summary = {(row["workload"], row["contender"]): row for row in run["summary"]}
  rows = _readme_rows()
  assert len(rows) == 2 * len(run["workloads"])
  for workload, mode, *figures in rows:
    rates = [summary[(workload, f"{name} [{mode}]")]["elements_per_s"]["median"]
             for name in _CONTENDERS]
    ours = summary[(workload, f"tf_interleave [{mode}]")]
    expected = [f"{rate:,.0f}" for rate in rates] + [
        f"{ours['ratio_to_legacy']['median']:.2f}",
        f"{ours['ratio_to_best_builtin']['median']:.2f}"]
    assert figures == expected, (workload, mode)
