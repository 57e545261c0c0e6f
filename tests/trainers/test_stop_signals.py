"""A task waiting for a peer that never comes honours SIGTERM: one real process of a 2-task job on 127.0.0.1,
started alone, stops promptly with one line naming what it waited for."""

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
    """Starts one task of the cluster; returns (process, its stderr file)."""
    stderr = tmp_path / "stderr.txt"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
    with open(stderr, "w") as file:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainers.train", f"--model_dir={tmp_path / 'model'}",
             f"--cache_dir={tmp_path / 'cache'}", *TINY, *flags],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=file, env=env,
        )
    return process, stderr


def _stop_when_it_says(process, stderr, words, seconds=120):
    """Waits for `words` on the task's stderr, sends SIGTERM; returns (seconds it took to exit, its stderr)."""
    deadline = time.monotonic() + seconds
    try:
        while words not in stderr.read_text():
            assert process.poll() is None, f"exited early:\n{stderr.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never said {words!r}:\n{stderr.read_text()[-3000:]}"
            time.sleep(0.1)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        return time.monotonic() - sent, stderr.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_multi_worker_task_whose_peer_never_comes_stops_on_sigterm_with_one_line(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    process, stderr = _start_alone(tmp_path, cluster, {"type": "worker", "index": 0}, "--strategy=multi_worker")
    took, text = _stop_when_it_says(process, stderr, "waiting for worker 1")
    assert process.returncode == 128 + signal.SIGTERM
    assert took < 5, f"took {took:.1f} s to stop"
    last_line = text.strip().splitlines()[-1]
    assert "worker 0: stopped by SIGTERM" in last_line and f"worker 1 at 127.0.0.1:{ports[1]}" in last_line
    assert "Traceback" not in text
    assert not (tmp_path / "model" / "config.json").exists() and not (tmp_path / "model" / "checkpoints").exists()


@pytest.mark.slow
def test_parameter_server_task_stops_on_sigterm_with_one_line(tmp_path):
    ports = _free_ports(3)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"],
               "ps": [f"127.0.0.1:{ports[2]}"]}
    process, stderr = _start_alone(tmp_path, cluster, {"type": "ps", "index": 0})
    took, text = _stop_when_it_says(process, stderr, "ps 0: serving the parameter_server job")
    assert process.returncode == 128 + signal.SIGTERM
    assert took < 5, f"took {took:.1f} s to stop"
    assert "ps 0: stopped by SIGTERM while serving the parameter_server job" in text.strip().splitlines()[-1]
    assert "Traceback" not in text
