"""scripts/launch_local_cluster.py with the real trainer: per-task TF_CONFIG and log prefixes, and every process
it started stopped when one task fails or when the launcher itself is stopped. The job (the cluster, the tasks'
pids and exit codes, the outcome) is read from the --cluster_json file the launcher writes, and training is under
way once the chief has saved a checkpoint (which takes both workers); the launcher's output, kept in a file, is
read only at the end, to check that every line names its task."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import launch_local_cluster  # noqa: E402

TRAINER = [
    "--strategy=multi_worker",
    "--num_items=2000",
    "--num_users=1000",
    "--num_interactions=40000",
    "--batch_size=256",
    "--num_sampled=200",
    "--epochs=20",
    "--log_every_steps=5",
    "--checkpoint_every_steps=10",
    "--projector_items=0",
]


def test_cluster_layouts_get_distinct_free_ports():
    workers_only = launch_local_cluster.cluster_spec(3, 0)
    assert set(workers_only) == {"worker"} and len(workers_only["worker"]) == 3
    with_ps = launch_local_cluster.cluster_spec(2, 2)
    addresses = [address for task_addresses in with_ps.values() for address in task_addresses]
    assert {task: len(value) for task, value in with_ps.items()} == {"chief": 1, "worker": 2, "ps": 2}
    assert len(set(addresses)) == 5 and all(address.startswith("127.0.0.1:") for address in addresses)
    assert launch_local_cluster.tasks_of(with_ps)[:2] == [("ps", 0), ("ps", 1)], "servers start first"


def _start(tmp_path):
    """The launcher, its output (every task's lines, prefixed) going to <tmp_path>/launcher.txt."""
    with open(tmp_path / "launcher.txt", "w") as output:
        return subprocess.Popen(
            [sys.executable, "scripts/launch_local_cluster.py", "--workers=2", "--grace_seconds=5",
             f"--cluster_json={tmp_path / 'cluster.json'}", "--",
             f"--model_dir={tmp_path / 'model'}", f"--cache_dir={tmp_path / 'cache'}", *TRAINER],
            cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )


def _output(tmp_path):
    return (tmp_path / "launcher.txt").read_text()


def _cluster_json(tmp_path, timeout_seconds=30):
    """The launcher's --cluster_json, once it is there (it writes it when every task has started)."""
    path, deadline = tmp_path / "cluster.json", time.monotonic() + timeout_seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"the launcher wrote no {path}"
        time.sleep(0.1)
    return json.loads(path.read_text())


def _wait_until_training(launcher, tmp_path, timeout_seconds=300):
    """Until the chief (worker 0) has saved a checkpoint into <model_dir>/checkpoints: a multi_worker save runs on
    both workers, so both are training."""
    directory, deadline = tmp_path / "model" / "checkpoints", time.monotonic() + timeout_seconds
    while not (directory.is_dir() and any(name.endswith(".index") for name in os.listdir(directory))):
        assert launcher.poll() is None, f"the launcher ended before training:\n{_output(tmp_path)[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint within {timeout_seconds} s:\n{_output(tmp_path)[-3000:]}"
        time.sleep(0.1)


def _every_line_names_its_task(tmp_path, cluster):
    names = ["launcher", *cluster["tasks"]]
    lines = _output(tmp_path).splitlines()
    assert lines and all(any(line.startswith(f"[{name}] ") for name in names) for line in lines), lines[-40:]
    assert all(any(line.startswith(f"[{name}] ") for line in lines) for name in names)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(pid, 0); its state in /proc says it is gone.
    with open(f"/proc/{pid}/stat") as file:
        return file.read().split(") ", 1)[1][0] != "Z"


@pytest.mark.slow
def test_a_failed_worker_stops_the_job_with_its_exit_code(tmp_path):
    launcher = _start(tmp_path)
    try:
        _wait_until_training(launcher, tmp_path)
        started = _cluster_json(tmp_path)
        assert len(started["cluster"]["worker"]) == 2
        assert {name: task["address"] for name, task in started["tasks"].items()} == {
            f"worker {index}": address for index, address in enumerate(started["cluster"]["worker"])}
        assert started["exit_code"] is None and all(task["exit_code"] is None for task in started["tasks"].values())
        os.kill(started["tasks"]["worker 1"]["pid"], signal.SIGKILL)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGKILL, _output(tmp_path)[-3000:]
    ended = _cluster_json(tmp_path)
    assert ended["exit_code"] == 128 + signal.SIGKILL and ended["signal"] is None
    assert ended["failed_task"] == "worker 1" and ended["tasks"]["worker 1"]["exit_code"] == -signal.SIGKILL
    assert not _alive(started["tasks"]["worker 0"]["pid"]), "worker 0 (waiting on its peer's collectives) was stopped"
    _every_line_names_its_task(tmp_path, ended)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_task(tmp_path):
    launcher = _start(tmp_path)
    try:
        _wait_until_training(launcher, tmp_path)
        pids = [task["pid"] for task in _cluster_json(tmp_path)["tasks"].values()]
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, _output(tmp_path)[-3000:]
    ended = _cluster_json(tmp_path)
    assert ended["signal"] == signal.SIGTERM and ended["exit_code"] == 128 + signal.SIGTERM
    assert ended["failed_task"] is None and all(task["exit_code"] is not None for task in ended["tasks"].values())
    time.sleep(0.5)
    assert len(pids) == 2 and not any(_alive(pid) for pid in pids)
