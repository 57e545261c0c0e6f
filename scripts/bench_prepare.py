"""Rows/s and peak memory per process of data.prepare's two runners, and the streaming trainer's memory, at two log
sizes 10x apart over one catalogue (issue 20).

    python scripts/bench_prepare.py --output=docs/bench_prepare.md

Every row is one run of a real command in a child process, side by side in this one invocation:
  in_process    python -m data.prepare (one process reads the whole log)
  beam, N       python -m data.prepare --runner=beam --beam_options=--direct_num_workers=N: Beam's FnApiRunner,
                the driver process (which on this local runner also holds the GroupByKey's shuffle; on Dataflow,
                Flink or Spark the engine holds it) and N worker processes, reported apart
  trainer       python -m trainers.train on each written-history corpus: the history model for --train_steps
                steps, held-out evaluation and export (streamed records: nothing read whole)
Peak memory is each process's VmHWM (the kernel's high-water mark of resident memory), polled every 0.1 s until it
exits. Every prepare writes histories (--history_length), as a corpus for the streaming trainer needs them.
The logs: --num_users users, --num_items items drawn from a Zipf law, timestamps increasing per user, written as
--num_files CSV files (Beam reads one file per element: a log's parallelism is its number of files).
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["1000000", "10000000"], "Log sizes (rows), 10x apart.")
flags.DEFINE_integer("num_users", 100_000, "Users of every log (the catalogue stays).", lower_bound=1)
flags.DEFINE_integer("num_items", 50_000, "Items of every log.", lower_bound=1)
flags.DEFINE_integer("num_files", 8, "CSV files per log.", lower_bound=1)
flags.DEFINE_list("beam_workers", ["1", "2"], "Beam worker processes to run with.")
flags.DEFINE_integer("history_length", 20, "data.prepare --history_length (and the trainer's).", lower_bound=1)
flags.DEFINE_integer("train_steps", 300, "Trainer steps per corpus.", lower_bound=1)
flags.DEFINE_string("work_dir", "", "Where logs and corpora go (default: a temporary directory, removed).")
flags.DEFINE_string("output", "", "Also write the tables and the command to this markdown file.")

PREPARE = ["--user_column=user", "--item_column=item", "--timestamp_column=time"]


def write_log(directory: str, rows: int, num_users: int, num_items: int, num_files: int, seed: int = 0) -> str:
    """CSV files user,item,time of `rows` interactions; returns their glob."""
    rng = np.random.default_rng(seed)
    users = rng.integers(num_users, size=rows)
    items = (rng.zipf(1.1, size=rows) - 1) % num_items
    times = 1_600_000_000 + np.arange(rows) * 7  # file order is time order; users interleave
    os.makedirs(directory, exist_ok=True)
    for index, part in enumerate(np.array_split(np.arange(rows), num_files)):
        with open(os.path.join(directory, f"log-{index:03d}.csv"), "w") as file:
            file.write("user,item,time\n")
            np.savetxt(file, np.stack([users[part], items[part], times[part]], axis=1), fmt="u%d,i%d,%d")
    return os.path.join(directory, "log-*.csv")


def _descendants(root: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def _peak_kb(pid: int) -> Tuple[str, int]:
    """(command line, VmHWM in kB) of a live process, or ("", 0)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return command, int(line.split()[1])
    except OSError:
        pass
    return "", 0


def run_measured(command: List[str]) -> Dict:
    """Runs command; {"seconds", "returncode", "driver_bytes", "worker_bytes": [each worker's peak], "stderr"}."""
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peaks: Dict[int, Tuple[str, int]] = {}
    while process.poll() is None:
        for pid in _descendants(process.pid):
            command_line, peak = _peak_kb(pid)
            if peak:
                peaks[pid] = (command_line, max(peak, peaks.get(pid, ("", 0))[1]))
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    workers = [peak * 1024 for pid, (line, peak) in peaks.items()
               if pid != process.pid and "sdk_worker_main" in line and "python" in line.split()[0]]  # not sh -c
    driver = peaks.get(process.pid, ("", 0))[1] * 1024
    return {"seconds": seconds, "returncode": process.returncode, "driver_bytes": driver, "worker_bytes": workers,
            "stdout": stdout, "stderr": stderr[-2000:]}


def prepare_runs(log: str, rows: int, work_dir: str) -> List[Dict]:
    runs = [("in_process", [])] + [(f"beam, {count} worker(s)", ["--runner=beam",
                                                                   f"--beam_options=--direct_num_workers={count}"])
                                   for count in FLAGS.beam_workers]
    results = []
    for name, extra in runs:
        output_dir = os.path.join(work_dir, f"corpus-{rows}-{name.split(',')[0]}-{len(results)}")
        command = [sys.executable, "-m", "data.prepare", f"--input={log}", f"--output_dir={output_dir}", *PREPARE,
                   f"--history_length={FLAGS.history_length}", *extra]
        result = run_measured(command)
        if result["returncode"]:
            raise RuntimeError(f"{name} at {rows} rows failed: {result['stderr']}")
        results.append({"runner": name, "rows": rows, "output_dir": output_dir, **result})
        print(_prepare_line(results[-1]), flush=True)
    return results


def train_run(corpus_dir: str, rows: int, work_dir: str) -> Dict:
    model_dir = os.path.join(work_dir, f"model-{rows}")
    command = [sys.executable, "-m", "trainers.train", f"--data={corpus_dir}", f"--model_dir={model_dir}",
               "--query_features=history", f"--history_length={FLAGS.history_length}", "--batch_size=1024",
               "--num_sampled=1000", "--epochs=1", f"--steps_per_epoch={FLAGS.train_steps}", "--projector_items=0",
               "--eval_top_k=10,100", "--export_top_k=100", "--seed=1"]
    result = run_measured(command)
    metrics = os.path.join(model_dir, "metrics.json")
    exported = os.path.isdir(os.path.join(model_dir, "export"))
    outcome = {"rows": rows, "model_dir": model_dir, "evaluated": os.path.isfile(metrics), "exported": exported,
               **result}
    if outcome["evaluated"]:
        with open(metrics) as file:
            outcome["recall_at_100"] = json.load(file)["model"]["recall_at_100"]
    print(_train_line(outcome), flush=True)
    return outcome


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f}"


def _prepare_line(run: Dict) -> str:
    workers = "/".join(_gb(value) for value in sorted(run["worker_bytes"])) or "-"
    return (f"| {run['runner']} | {run['rows']:,} | {run['seconds']:.1f} | {run['rows'] / run['seconds']:,.0f} | "
            f"{_gb(run['driver_bytes'])} | {workers} |")


def _train_line(run: Dict) -> str:
    return (f"| {run['rows']:,} | {run['seconds']:.1f} | {_gb(run['driver_bytes'])} | {run['returncode']} | "
            f"{'yes' if run['evaluated'] else 'no'} | {'yes' if run['exported'] else 'no'} | "
            f"{run.get('recall_at_100', float('nan')):.4f} |")


PREPARE_HEADER = ["| runner | rows | seconds | rows/s | driver peak GB | worker peak GB (each) |", "|---|---|---|---|---|---|"]
TRAIN_HEADER = ["| rows | seconds | trainer peak GB | exit | evaluated | exported | recall@100 |",
                "|---|---|---|---|---|---|---|"]


def main(argv):
    del argv
    sizes = [int(value) for value in FLAGS.rows]
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="bench_prepare-")
    print("\n".join(PREPARE_HEADER), flush=True)
    prepared, trained = [], []
    try:
        for rows in sizes:
            log = write_log(os.path.join(work_dir, f"log-{rows}"), rows, FLAGS.num_users, FLAGS.num_items,
                            FLAGS.num_files)
            prepared += prepare_runs(log, rows, work_dir)
        print("\n".join(TRAIN_HEADER), flush=True)
        for rows in sizes:
            corpus_dir = next(run["output_dir"] for run in prepared if run["rows"] == rows)
            trained.append(train_run(corpus_dir, rows, work_dir))
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    if FLAGS.output:
        _write_markdown(FLAGS.output, prepared, trained)


def _write_markdown(path: str, prepared: List[Dict], trained: List[Dict]) -> None:
    command = " ".join(["python", "scripts/bench_prepare.py", *sys.argv[1:]])
    lines = ["# data.prepare's runners and the streaming trainer at two log sizes", "",
             f"    {command}", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared). Logs: {FLAGS.num_users:,} users, "
             f"{FLAGS.num_items:,} Zipf items, {FLAGS.num_files} CSV files; every prepare writes histories "
             f"(--history_length={FLAGS.history_length}).", "", *PREPARE_HEADER,
             *[_prepare_line(run) for run in prepared], "", *TRAIN_HEADER, *[_train_line(run) for run in trained], ""]
    with open(path, "w") as file:
        file.write("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
