"""Benchmarks tf_interleave against TensorFlow's built-in interleaves.

Runs every workload for every contender (tf_interleave, the legacy
`tf.data.experimental.parallel_interleave`, and `Dataset.interleave` with
`num_parallel_calls=AUTOTUNE`; deterministic and sloppy; plus the legacy op a
second time as the noise floor), each measurement in its own process. Each
repetition runs every contender once per workload, in a shuffled order, so
that ratios can be taken between runs of the same repetition.

Usage:
  python bench/run.py [--quick] [--check] [--repetitions N]
                      [--workloads overhead,io,...] [--out bench/results]

Writes OUT/results.json (every run, and the summary) and OUT/chart.png, and
prints the table. `--quick` runs tiny sizes once (a smoke test, not a
measurement); `--check` exits non-zero if any run crashed, lost or invented
elements, or if tf_interleave's deterministic order differs from the legacy
op's.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import report  # pylint: disable=g-import-not-at-top
import workloads  # pylint: disable=g-import-not-at-top

RUN_ONE = os.path.join(HERE, "run_one.py")


def run_process(args, timeout: float):
  """Runs run_one.py with `args`; returns (JSON results, error or None)."""
  command = [sys.executable, RUN_ONE, *args]
  try:
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout
    done, error = None, f"timed out after {timeout:.0f}s"
  else:
    stdout, error = done.stdout, None
    if done.returncode != 0:
      last = (done.stderr.strip().splitlines() or [""])[-1]
      error = f"exit code {done.returncode}: {last}"
  results = []
  for line in (stdout or "").splitlines():
    if line.startswith("{"):
      results.append(json.loads(line))
  return results, error


def plan(names, repetitions: int, noise_floor: bool, seed: int,
         together: bool):
  """(repetition, workload, contenders) per process, shuffled per repetition.

  One contender per process, unless `together`: then a workload's contenders
  share one process.
  """
  rng = random.Random(seed)
  jobs = []
  for rep in range(repetitions):
    for name in names:
      order = workloads.contenders(noise_floor)
      rng.shuffle(order)
      if together:
        jobs.append((rep, name, order))
      else:
        jobs.extend((rep, name, [c]) for c in order)
  return jobs


def git_commit() -> str:
  try:
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                          capture_output=True, text=True,
                          check=False).stdout.strip()
  except OSError:
    return ""


def describe(w: workloads.Workload) -> dict:
  return {"description": w.description, **w.params(), "elements": w.elements,
          "limits": w.limits()}


def main() -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes, 1 repetition, one process per "
                      "workload, 2 processes at once")
  parser.add_argument("--check", action="store_true",
                      help="exit 1 if any run failed or was wrong")
  parser.add_argument("--repetitions", type=int, default=None,
                      help="default 5 (1 with --quick)")
  parser.add_argument("--workloads", default=",".join(workloads.NAMES),
                      help="comma-separated subset of " +
                      ",".join(workloads.NAMES))
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  parser.add_argument("--data-dir", default=None,
                      help="for the TFRecord shards (default OUT/data)")
  parser.add_argument("--jobs", type=int, default=None,
                      help="processes at once; >1 spoils the timings "
                      "(default 1, 2 with --quick)")
  parser.add_argument("--no-noise-floor", action="store_true",
                      help="skip the second legacy run (default with --quick)")
  parser.add_argument("--seed", type=int, default=0,
                      help="for the order of contenders")
  parser.add_argument("--timeout", type=float, default=None,
                      help="seconds per run (default 600, 300 with --quick)")
  args = parser.parse_args()

  names = [n.strip() for n in args.workloads.split(",") if n.strip()]
  for name in names:
    workloads.workload(name)  # Fails early on an unknown name.
  repetitions = args.repetitions or (1 if args.quick else 5)
  jobs = args.jobs or (2 if args.quick else 1)
  timeout = args.timeout or (300 if args.quick else 600)
  noise_floor = not (args.no_noise_floor or args.quick)
  data_dir = args.data_dir or os.path.join(args.out, "data")
  os.makedirs(args.out, exist_ok=True)
  common = ["--data-dir", data_dir] + (["--quick"] if args.quick else [])

  started = time.time()
  for name in names:
    if workloads.workload(name, args.quick).reads_tfrecords:
      print(f"writing {name}'s TFRecord shards (once) ...", file=sys.stderr,
            flush=True)
      _, error = run_process(["--workload", name, "--prepare", *common],
                             timeout)
      if error:
        print(f"preparing {name} failed: {error}", file=sys.stderr)
        return 1

  todo = plan(names, repetitions, noise_floor, args.seed, args.quick)
  runs = []

  def one(job):
    rep, name, contenders = job
    flags = [f for c in contenders for f in ("--contender", c.name)]
    results, error = run_process(
        ["--workload", name, *flags, "--json", *common],
        timeout * len(contenders))
    done = {r["contender"]: r for r in results}
    return [dict(done.get(c.name, {"error": error or "no result"}),
                 repetition=rep, workload=name, contender=c.name)
            for c in contenders]

  total = sum(len(job[2]) for job in todo)
  with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    for results in pool.map(one, todo):
      for result in results:
        result["position"] = len(runs)
        runs.append(result)
        status = (f"ERROR {result['error']}" if "error" in result
                  else f"{result['elements_per_s']:,.0f} el/s")
        print(f"[{len(runs)}/{total}] rep {result['repetition']} "
              f"{result['workload']} {result['contender']}: {status}",
              file=sys.stderr, flush=True)

  rows = report.summarize(runs, names, repetitions)
  problems = report.check(runs)
  plain = [r["threads_started_plain_pipeline"] for r in runs
           if "error" not in r]
  text = report.table(rows, args.quick, repetitions,
                      statistics.median(plain) if plain else None)
  notes = report.order_notes(runs)
  title = report.title(args.quick, repetitions, os.cpu_count())

  results = {
      "meta": {
          "date": datetime.datetime.now().isoformat(timespec="seconds"),
          "quick": args.quick, "repetitions": repetitions, "jobs": jobs,
          "noise_floor": noise_floor, "seed": args.seed,
          "cpus": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "tensorflow": next(
              (r["tensorflow"] for r in runs if "tensorflow" in r), None),
          "git_commit": git_commit(),
          "seconds": round(time.time() - started, 1)},
      "workloads": {n: describe(workloads.workload(n, args.quick))
                    for n in names},
      "summary": rows,
      "problems": problems,
      "runs": runs,
  }
  json_path = os.path.join(args.out, "results.json")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=1)
  chart_path = os.path.join(args.out, "chart.png")
  report.chart(rows, chart_path, title, args.quick)

  print(text)
  for line in notes:
    print(line)
  print(f"\n{len(runs)} runs in {time.time() - started:.0f}s; wrote "
        f"{json_path} and {chart_path}")
  if jobs > 1:
    print(f"({jobs} processes ran at once: timings are not comparable)")
  if problems:
    print(f"\n{len(problems)} problem(s):")
    for problem in problems:
      print("  " + problem)
  return 1 if (args.check and problems) else 0


if __name__ == "__main__":
  sys.exit(main())
