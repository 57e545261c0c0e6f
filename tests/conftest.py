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
