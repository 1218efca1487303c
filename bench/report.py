"""Summarizes the runs of `run.py`: paired ratios, checks, table and chart.

`python bench/report.py bench/results/results.json` prints the table of a
saved run again and redraws its chart.
"""

import json
import os
import statistics
import sys
from typing import Dict, List, Optional, Tuple

import workloads

LEGACY = "legacy"
NOISE = "legacy (noise floor)"
OURS = "tf_interleave"


def _ok(run: dict) -> bool:
  return "error" not in run


def _index(runs: List[dict]) -> Dict[Tuple[int, str, str], dict]:
  """(repetition, workload, contender name) -> successful run."""
  return {(r["repetition"], r["workload"], r["contender"]): r
          for r in runs if _ok(r)}


def _median(values: List[float]) -> Optional[float]:
  return statistics.median(values) if values else None


def _spread(values: List[float]) -> Dict[str, Optional[float]]:
  return {"median": _median(values), "min": min(values, default=None),
          "max": max(values, default=None)}


def summarize(runs: List[dict], names: List[str],
              repetitions: int) -> List[dict]:
  """One row per workload and contender, with medians and paired ratios.

  Ratios are paired: within each repetition the contender's elements/s is
  divided by the built-in's from the same repetition, and the median of
  those ratios is reported. "best built-in" is, per repetition, the faster
  of `legacy` and `Dataset.interleave` in the same mode.
  """
  by_key = _index(runs)
  rows = []
  for name in names:
    for contender in workloads.contenders():
      key = contender.name
      mine = [by_key.get((rep, name, key)) for rep in range(repetitions)]
      attempted = [r for r in runs
                   if r["workload"] == name and r["contender"] == key]
      if not attempted:
        continue
      good = [r for r in mine if r is not None]
      rates = [r["elements_per_s"] for r in good]
      ratio_legacy, ratio_best = [], []
      for rep, run in enumerate(mine):
        if run is None:
          continue
        legacy = by_key.get(
            (rep, name, workloads.Contender(LEGACY, contender.mode).name))
        builtins = [by_key.get((rep, name,
                                workloads.Contender(b, contender.mode).name))
                    for b in workloads.BUILTINS]
        if legacy:
          ratio_legacy.append(run["elements_per_s"] / legacy["elements_per_s"])
        if all(builtins):
          best = max(b["elements_per_s"] for b in builtins)
          ratio_best.append(run["elements_per_s"] / best)
      rows.append({
          "workload": name,
          "contender": key,
          "implementation": contender.implementation,
          "mode": contender.mode,
          "runs": len(attempted),
          "failed": len(attempted) - len(good),
          "elements_per_s": _spread(rates),
          "ratio_to_legacy": _spread(ratio_legacy),
          "ratio_to_best_builtin": _spread(ratio_best),
          "cpu_s_per_1k": _median([r["cpu_s_per_1k"] for r in good]),
          "peak_rss_mb": _median([r["peak_rss_mb"] for r in good]),
          "threads_started": _median([r["threads_started"] for r in good]),
          "threads_peak": _median([r["threads_peak"] for r in good]),
          "first_batch_s": _median([r["first_batch_s"] for r in good
                                    if r["first_batch_s"] is not None]),
      })
  return rows


def check(runs: List[dict]) -> List[str]:
  """Problems that make `--check` fail; every run is checked.

  Each run must finish with the expected number of elements, and the same
  elements (sum of fingerprints) as the legacy deterministic run of its
  repetition. tf_interleave's deterministic order must equal the legacy op's.
  """
  problems = []
  by_key = _index(runs)
  for run in runs:
    where = (f"repetition {run['repetition']}, {run['workload']}, "
             f"{run['contender']}")
    if not _ok(run):
      problems.append(f"{where}: {run['error']}")
      continue
    if run["elements"] != run["expected_elements"]:
      problems.append(f"{where}: {run['elements']} elements, expected "
                      f"{run['expected_elements']}")
    reference = by_key.get((run["repetition"], run["workload"],
                            workloads.Contender(LEGACY, "deterministic").name))
    if reference is None:
      continue
    if run["sum"] != reference["sum"]:
      problems.append(f"{where}: not the same elements as the legacy op")
    if (run["contender"] == workloads.Contender(OURS, "deterministic").name
        and run["order_hash"] != reference["order_hash"]):
      problems.append(f"{where}: order differs from the legacy op's")
  return problems


def order_notes(runs: List[dict]) -> List[str]:
  """Deterministic built-ins whose order differed from the legacy op's."""
  notes = []
  by_key = _index(runs)
  for run in runs:
    if (not _ok(run) or run["contender"].startswith(OURS)
        or not run["contender"].endswith("[deterministic]")):
      continue
    reference = by_key.get((run["repetition"], run["workload"],
                            workloads.Contender(LEGACY, "deterministic").name))
    if reference and run["order_hash"] != reference["order_hash"]:
      notes.append(f"note: {run['contender']} on {run['workload']} "
                   f"(repetition {run['repetition']}) gave another order "
                   "than legacy [deterministic]")
  return notes


def _fmt(value: Optional[float], spec: str) -> str:
  return "-" if value is None else format(value, spec)


def _limit_note(w: workloads.Workload, row: dict) -> str:
  rate = row["elements_per_s"]["median"]
  limits = w.limits()
  if rate is None:
    return ""
  if "sloppy limit" in limits and row["mode"] == "sloppy":
    limit = limits["sloppy limit"]
    return f"{100 * rate / limit:.0f}% of sloppy limit {limit:,.0f}/s"
  if "physical limit" in limits:
    limit = limits["physical limit"]
    return f"{100 * rate / limit:.0f}% of limit {limit:,.0f}/s"
  if "bound" in limits and row["mode"] == "sloppy":
    bound = limits["bound"]
    return f"{100 * rate / bound:.0f}% of bound {bound:,.0f}/s"
  return ""


def table(rows: List[dict], quick: bool, repetitions: int,
          plain_threads: Optional[float] = None) -> str:
  """The text table: one block per workload, then its noise floor."""
  header = (f"{'contender':<35}{'el/s med':>11}{'min':>10}{'max':>10}"
            f"{'x legacy':>10}{'x best':>8}{'CPU s/1k':>10}{'RSS MB':>8}"
            f"{'threads':>8}  vs physical limit")
  lines = []
  if quick:
    lines.append("QUICK MODE: tiny sizes, not a measurement.")
  lines.append(f"{repetitions} repetition(s). x legacy, x best: median of "
               "paired per-repetition ratios to the legacy op, to the faster "
               "built-in (same mode).")
  lines.append("CPU s/1k: process CPU seconds per 1,000 elements. threads: new "
               "threads seen while the iterator lived"
               + (f" (a pipeline without interleave starts {plain_threads:.0f})"
                  if plain_threads is not None else "") + ".")
  for name in dict.fromkeys(r["workload"] for r in rows):
    w = workloads.workload(name, quick)
    lines.append("")
    lines.append(f"== {name}: {w.description}; cycle_length={w.cycle_length}"
                 f", block_length={w.block_length}, {w.elements:,} elements")
    lines.append(header)
    noise = {}
    for row in (r for r in rows if r["workload"] == name):
      eps = row["elements_per_s"]
      failed = (f"  FAILED {row['failed']}/{row['runs']}" if row["failed"]
                else "")
      lines.append(
          f"{row['contender']:<35}{_fmt(eps['median'], ',.0f'):>11}"
          f"{_fmt(eps['min'], ',.0f'):>10}{_fmt(eps['max'], ',.0f'):>10}"
          f"{_fmt(row['ratio_to_legacy']['median'], '.2f'):>10}"
          f"{_fmt(row['ratio_to_best_builtin']['median'], '.2f'):>8}"
          f"{_fmt(row['cpu_s_per_1k'], '.3f'):>10}"
          f"{_fmt(row['peak_rss_mb'], ',.0f'):>8}"
          f"{_fmt(row['threads_started'], '.0f'):>8}"
          f"  {_limit_note(w, row)}{failed}")
      if row["implementation"] == NOISE:
        noise[row["mode"]] = row["ratio_to_legacy"]
    for mode, ratio in noise.items():
      if ratio["median"] is not None:
        lines.append(f"   noise floor [{mode}]: legacy vs itself "
                     f"{ratio['median']:.2f} (min {ratio['min']:.2f}, "
                     f"max {ratio['max']:.2f})")
  return "\n".join(lines)


def chart(rows: List[dict], path: str, title: str, quick: bool) -> None:
  """One panel per workload (elements/s, median with min-max whiskers), and a
  last panel with tf_interleave's paired ratio to the best built-in."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(dict.fromkeys(r["workload"] for r in rows))
  columns = 2
  panels = len(names) + 1
  fig, axes = plt.subplots((panels + columns - 1) // columns, columns,
                           figsize=(13, 3.8 * ((panels + 1) // columns)),
                           squeeze=False)
  colors = {OURS: "tab:green", LEGACY: "tab:blue", NOISE: "lightsteelblue",
            "Dataset.interleave": "tab:orange"}
  for ax, name in zip(axes.flat, names):
    mine = [r for r in rows if r["workload"] == name]
    labels, medians, low, high, color = [], [], [], [], []
    for row in mine:
      eps = row["elements_per_s"]
      labels.append(row["contender"])
      medians.append(eps["median"] or 0)
      low.append((eps["median"] or 0) - (eps["min"] or 0))
      high.append((eps["max"] or 0) - (eps["median"] or 0))
      color.append(colors[row["implementation"]])
    y = range(len(labels))
    ax.barh(y, medians, xerr=[low, high], color=color, capsize=3)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    w = workloads.workload(name, quick)
    for label, limit in w.limits().items():
      ax.axvline(limit, color="black", linestyle="--", linewidth=1)
      ax.text(limit, -0.6, f" {label}", fontsize=7, va="bottom")
    ax.set_title(f"{name} (cycle {w.cycle_length}, block {w.block_length})",
                 fontsize=10)
    ax.set_xlabel("elements/s (median, min-max)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)

  ax = axes.flat[len(names)]
  labels, ratios, low, high, bar_colors = [], [], [], [], []
  for name in names:
    for mode in workloads.MODES:
      for impl, color in ((OURS, "tab:green"), (NOISE, "lightsteelblue")):
        row = next((r for r in rows if r["workload"] == name
                    and r["implementation"] == impl and r["mode"] == mode),
                   None)
        ratio = row and row["ratio_to_best_builtin" if impl == OURS
                            else "ratio_to_legacy"]
        if not ratio or ratio["median"] is None:
          continue
        short = "det" if mode == "deterministic" else mode
        labels.append(f"{name} {short}" + (" (noise)" if impl == NOISE else ""))
        ratios.append(ratio["median"])
        low.append(ratio["median"] - ratio["min"])
        high.append(ratio["max"] - ratio["median"])
        bar_colors.append(color)
  y = range(len(labels))
  # Bars grow from parity on a log axis, so 0.5x and 2x look alike and one
  # wild repetition of the noise floor does not flatten every other bar.
  ax.barh(y, [r - 1.0 for r in ratios], left=1.0, xerr=[low, high],
          color=bar_colors, capsize=2)
  ax.set_xscale("log")
  lowest, highest = ax.get_xlim()
  ax.set_xticks([t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
                 if lowest <= t <= highest])
  ax.set_xticklabels([f"{t:g}" for t in ax.get_xticks()])
  ax.minorticks_off()
  ax.axvline(1.0, color="black", linewidth=1)
  ax.set_yticks(list(y), labels, fontsize=7)
  ax.invert_yaxis()
  ax.set_title("tf_interleave / best built-in, paired (median, min-max, log);\n"
               "noise: legacy / legacy", fontsize=9)
  ax.tick_params(axis="x", labelsize=8)
  for ax in list(axes.flat)[panels:]:
    ax.axis("off")
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(path: str) -> None:
  with open(path) as f:
    saved = json.load(f)
  meta, runs = saved["meta"], saved["runs"]
  rows = summarize(runs, list(saved["workloads"]), meta["repetitions"])
  plain = [r["threads_started_plain_pipeline"] for r in runs if _ok(r)]
  print(table(rows, meta["quick"], meta["repetitions"], _median(plain)))
  for line in order_notes(runs) + check(runs):
    print(line)
  chart(rows, os.path.join(os.path.dirname(path), "chart.png"),
        title(meta["quick"], meta["repetitions"], meta["cpus"]), meta["quick"])


def title(quick: bool, repetitions: int, cpus: int) -> str:
  note = " (quick: not a measurement)" if quick else ""
  return (f"tf_interleave benchmark{note}, {repetitions} repetition(s), "
          f"{cpus} CPUs")


if __name__ == "__main__":
  main(sys.argv[1])
