"""The README's "Your own data" walk, run command by command on a CSV log generated here."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

NUM_USERS, NUM_ITEMS, NUM_GENRES, PER_USER = 300, 400, 8, 30


def readme_commands():
    """The shell commands of the first ```sh block under "## Your own data", continuation lines joined."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as file:
        text = file.read()
    section = text.split("## Your own data", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def write_logs(directory):
    """Two CSV shards: each user likes one genre (item i has genre i % NUM_GENRES) and picks mostly from it, by
    popularity; recommending the most popular items to everyone then finds about 16% of the held-out items."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.5
    genre = np.arange(NUM_ITEMS) % NUM_GENRES
    os.makedirs(directory)
    for shard in range(2):
        lines = ["user,item,time,genres"]
        for user in range(shard, NUM_USERS, 2):
            liked = genre == rng.integers(NUM_GENRES)
            weights = np.where(liked, popularity, 0.02 * popularity)
            items = rng.choice(NUM_ITEMS, PER_USER, p=weights / weights.sum())
            for time, item in enumerate(items):
                parity = "odd" if item % 2 else "even"
                lines.append(f"user{user},item{item},{1_700_000_000 + time},g{genre[item]}|{parity}")
        with open(os.path.join(directory, f"part-{shard}.csv"), "w") as file:
            file.write("\n".join(lines) + "\n")


@pytest.mark.slow
def test_readme_walk_from_a_csv_to_a_trained_model_and_a_top_k_query(tmp_path):
    write_logs(tmp_path / "my_logs")
    commands = readme_commands()
    modules = [command[2] for command in commands]
    assert modules[:2] == ["data.prepare", "trainers.train"] and commands[0][0] == ".venv/bin/python"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO_ROOT}

    def run(command):
        result = subprocess.run(
            [sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
        )
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-3000:]}"

    run(commands[0])
    prepared = json.loads((tmp_path / "my_corpus" / "metadata.json").read_text())
    assert prepared["rows"]["read"] == {"input": NUM_USERS * PER_USER} and prepared["num_users"] == NUM_USERS
    run(commands[1])
    metrics = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())
    assert metrics["model"]["recall_at_10"] > 1.5 * metrics["most_popular"]["recall_at_10"]
    if importlib.util.find_spec("trainers.retrieve") is None or not (tmp_path / "runs/mine/export").exists():
        pytest.skip("the README walk ran to a trained model; its top-K step needs trainers.retrieve and an export")
    run([*commands[2], f"--output_json={tmp_path / 'top_k.json'}"])  # the README's command, its answer as JSON too
    items = json.loads((tmp_path / "top_k.json").read_text())["items"]
    keys = [item["item_key"] for item in items]
    assert len(set(keys)) == 10 and all(re.fullmatch(r"item\d+", key) for key in keys), items  # the log's own keys
