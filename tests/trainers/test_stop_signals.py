"""A task waiting for a peer that never comes honours SIGTERM: one real process of a 2-task job on 127.0.0.1,
started alone, stops promptly, and its <model_dir>/task_status/<task>.json says what it waited for and that the
signal stopped it (trainers/task_status.py). The test waits on that file, not on the task's log lines."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, TINY_CORPUS

TINY = [*TINY_CORPUS, "--projector_items=0", "--epochs=1", "--steps_per_epoch=5"]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _start_alone(tmp_path, cluster, task, *flags):
    """Starts one task of the cluster; returns (process, its stderr file, its task_status file)."""
    stderr = tmp_path / "stderr.txt"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
    with open(stderr, "w") as file:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainers.train", f"--model_dir={tmp_path / 'model'}",
             f"--cache_dir={tmp_path / 'cache'}", *TINY, *flags],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=file, env=env,
        )
    status = tmp_path / "model" / "task_status" / f"{task['type']}-{task['index']}.json"
    return process, stderr, status


def _status(path):
    return json.loads(path.read_text()) if path.exists() else None


def _stop_when_in_phase(process, stderr, status, phase, seconds=120):
    """Waits until the task's status says `phase`, sends SIGTERM; returns (that status, seconds the task took to
    exit, its status then, its stderr)."""
    deadline = time.monotonic() + seconds
    try:
        while (before := _status(status)) is None or before["phase"] != phase:
            assert process.poll() is None, f"exited early ({_status(status)}):\n{stderr.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never {phase} ({_status(status)}):\n{stderr.read_text()[-3000:]}"
            time.sleep(0.1)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        return before, time.monotonic() - sent, _status(status), stderr.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_multi_worker_task_whose_peer_never_comes_stops_on_sigterm(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    process, stderr, status = _start_alone(tmp_path, cluster, {"type": "worker", "index": 0}, "--strategy=multi_worker")
    waiting, took, stopped, text = _stop_when_in_phase(process, stderr, status, "waiting_for_workers")
    assert waiting["task"] == "worker 0" and waiting["pid"] == process.pid
    assert waiting["missing"] == {"worker 1": f"127.0.0.1:{ports[1]}"}
    assert process.returncode == 128 + signal.SIGTERM
    assert took < 5, f"took {took:.1f} s to stop"
    assert stopped["phase"] == "stopped" and stopped["signal"] == "SIGTERM"
    assert stopped["exit_code"] == 128 + signal.SIGTERM
    assert stopped["during"] == "waiting_for_workers" and stopped["missing"] == waiting["missing"]
    assert "Traceback" not in text
    assert not (tmp_path / "model" / "config.json").exists() and not (tmp_path / "model" / "checkpoints").exists()


@pytest.mark.slow
def test_parameter_server_task_stops_on_sigterm(tmp_path):
    ports = _free_ports(3)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"],
               "ps": [f"127.0.0.1:{ports[2]}"]}
    process, stderr, status = _start_alone(tmp_path, cluster, {"type": "ps", "index": 0})
    serving, took, stopped, text = _stop_when_in_phase(process, stderr, status, "serving")
    assert serving["task"] == "ps 0"
    assert process.returncode == 128 + signal.SIGTERM
    assert took < 5, f"took {took:.1f} s to stop"
    assert stopped["phase"] == "stopped" and stopped["signal"] == "SIGTERM" and stopped["during"] == "serving"
    assert stopped["exit_code"] == 128 + signal.SIGTERM
    assert "Traceback" not in text
