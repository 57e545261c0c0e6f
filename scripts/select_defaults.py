"""Chooses the default model on the validation split: trains each candidate setting over seeds, never reads the
test split.

    .venv/bin/python scripts/select_defaults.py --data=movielens --seeds=42,43,44 --work_dir=/tmp/select \\
        --candidate="default=" --candidate="gru=--history_encoder=gru" --output_json=/tmp/select.json

Each candidate is a name and the trainer flags it adds to `--data` and `--seed` (`name=--flag=value --flag2`).
Every (candidate, seed) is a real `python -m trainers.train` run in a subprocess (its own model_dir, no export);
the trained model is then scored by `python -m trainers.evaluate --split=validation`, once with the user's
training items ranked and once with `--exclude_seen`, the two protocols of the README's MovieLens table, read
back from the evaluation JSON each writes. The table gives the mean and (min-max) of recall@K over the seeds, with
the training seconds; the JSON every figure.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from trainers.run_config import EvaluationConfig  # noqa: E402  (imports TensorFlow, after TF_USE_LEGACY_KERAS)

PROTOCOLS = {"seen": [], "exclude_seen": ["--exclude_seen"]}

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "movielens", "The trainer's --data (it must have a validation split).")
flags.DEFINE_list("seeds", ["42", "43", "44"], "The trainer's --seed of each repeat.")
flags.DEFINE_multi_string("candidate", ["default="], "NAME=FLAGS: a candidate setting (repeatable).")
flags.DEFINE_string("work_dir", "/tmp/select_defaults", "Where each run's model_dir goes.")
flags.DEFINE_string("output_json", "", "Write every figure here (default <work_dir>/select_defaults.json).")
flags.DEFINE_list("eval_top_k", [str(k) for k in EvaluationConfig.eval_top_k], "Cut-offs K (the trainer's).")


def _run(module: str, args: List[str]) -> None:
    command = [sys.executable, "-m", module, *args]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def _validation_metrics(model_dir: str, protocol_flags: List[str]) -> Dict[str, float]:
    """The validation metrics of the run's newest checkpoint under one protocol (trainers.evaluate's JSON)."""
    _run("trainers.evaluate", [f"--model_dir={model_dir}", "--split=validation",
                               f"--eval_top_k={','.join(FLAGS.eval_top_k)}", *protocol_flags])
    evaluations = os.path.join(model_dir, "evaluation")
    newest = max(os.listdir(evaluations), key=lambda name: os.path.getmtime(os.path.join(evaluations, name)))
    with open(os.path.join(evaluations, newest)) as file:
        return json.load(file)["metrics"]


def _train_and_score(name: str, trainer_flags: List[str], seed: str) -> dict:
    model_dir = os.path.join(FLAGS.work_dir, f"{name}-seed{seed}")
    start = time.monotonic()
    _run("trainers.train", [f"--data={FLAGS.data}", f"--seed={seed}", f"--model_dir={model_dir}", "--noexport",
                            f"--eval_top_k={','.join(FLAGS.eval_top_k)}", *trainer_flags])
    seconds = time.monotonic() - start
    scores = {protocol: _validation_metrics(model_dir, extra) for protocol, extra in PROTOCOLS.items()}
    return {"seed": int(seed), "train_seconds": seconds, **scores}


def _summary(runs: List[dict], protocol: str, k: str) -> str:
    values = [run[protocol][f"recall_at_{k}"] for run in runs]
    return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def main(argv):
    del argv
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    results = {}
    for candidate in FLAGS.candidate:
        name, _, trainer_flags = candidate.partition("=")
        results[name] = {"flags": trainer_flags.split(),
                         "runs": [_train_and_score(name, trainer_flags.split(), seed) for seed in FLAGS.seeds]}
        with open(FLAGS.output_json or os.path.join(FLAGS.work_dir, "select_defaults.json"), "w") as file:
            json.dump({"data": FLAGS.data, "split": "validation", "candidates": results}, file, indent=2)
    header = " | ".join(f"{protocol} recall@{k}" for protocol in PROTOCOLS for k in FLAGS.eval_top_k)
    print(f"| candidate | {header} | train s |")
    print("|---" * (2 + len(PROTOCOLS) * len(FLAGS.eval_top_k)) + "|")
    for name, result in results.items():
        cells = " | ".join(_summary(result["runs"], protocol, k) for protocol in PROTOCOLS for k in FLAGS.eval_top_k)
        seconds = statistics.mean(run["train_seconds"] for run in result["runs"])
        print(f"| {name} | {cells} | {seconds:.0f} |")


if __name__ == "__main__":
    app.run(main)
