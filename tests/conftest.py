"""Shared test set-up: `retrieval` first (TF_USE_LEGACY_KERAS), quiet TensorFlow, helpers to run the CLI."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import retrieval  # noqa: E402,F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A built-in corpus that trains in seconds: the trainer tests' common flags.
TINY_CORPUS = [
    "--num_items=2000",
    "--num_users=1000",
    "--num_interactions=40000",
    "--batch_size=256",
    "--num_sampled=200",
    "--seed=7",
]


def run_module(module, *args, timeout=600, env=None):
    """Runs `python -m module args` from the repository root; returns the CompletedProcess (text)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def prepare_csv(log_path, output_dir, timestamp_column: str, *flags) -> str:
    """`python -m data.prepare` of a CSV log with user, item and timestamp columns (and flags); the corpus dir."""
    prepared = run_module("data.prepare", f"--input={log_path}", f"--output_dir={output_dir}", "--user_column=user",
                          "--item_column=item", f"--timestamp_column={timestamp_column}", *flags)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    return str(output_dir)


def train_on(corpus_dir, model_dir, *flags):
    """`python -m trainers.train --data=corpus_dir --model_dir=model_dir flags`, asserted to succeed."""
    trained = run_module("trainers.train", f"--data={corpus_dir}", f"--model_dir={model_dir}", *flags)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return trained
