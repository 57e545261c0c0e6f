"""What `python -m trainers.train` prints (issue: 79 of `make train`'s 96 lines were TensorFlow and absl log
records): at the default verbosity the run's own lines and no TensorFlow or absl record; a user who sets
TF_CPP_MIN_LOG_LEVEL gets TensorFlow's records back. The commands run as a user runs them: a fresh process whose
environment does not set TF_CPP_MIN_LOG_LEVEL (conftest's run_module sets it), stdout and stderr read together."""

import io
import os
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT, TINY_CORPUS
from trainers import cli

# One pattern per kind of record a run used to print.
LOG_RECORD_PATTERNS = {
    "absl (Python)": r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ",
    "absl (C++)": r"^[IWEF]0000 ",
    "TensorFlow C++": r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+\] ",
    "TensorFlow's Python handler": r"^(INFO|WARNING|ERROR):tensorflow:",
    "absl's pre-parse notice": r"^WARNING: (Logging before flag parsing|All log messages before absl::InitializeLog)",
}


def _log_records(output: str):
    """{kind: the lines of that kind} of the log records in output."""
    found = {kind: [line for line in output.splitlines() if re.search(pattern, line)]
             for kind, pattern in LOG_RECORD_PATTERNS.items()}
    return {kind: lines for kind, lines in found.items() if lines}


def _train(tmp_path, *args, **environment):
    """`python -m trainers.train` on a small built-in corpus; (exit code, stdout + stderr as one text)."""
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "trainers.train", f"--model_dir={tmp_path / 'model'}",
               f"--cache_dir={tmp_path / 'cache'}", *TINY_CORPUS, *args]
    result = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, **environment}, timeout=600)
    return result.returncode, result.stdout


def test_a_run_prints_its_own_lines_and_no_log_record(tmp_path):
    returncode, output = _train(tmp_path, "--epochs=1", "--steps_per_epoch=20", "--log_every_steps=10")
    assert returncode == 0, output[-3000:]
    assert _log_records(output) == {}, output
    lines = output.splitlines()
    assert lines[0] == f"model_dir: {tmp_path / 'model'}  (tensorboard --logdir {tmp_path / 'model' / 'tensorboard'})"
    assert "local: --strategy=default, 1 replica(s) on the default device" in lines
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("epoch 1/1 step 20: loss "), output  # one an epoch
    assert "validation recall@10=" in epoch_lines[0] and "local: step" not in output, output
    assert any(line.startswith("held-out metric") and "most-popular" in line for line in lines)
    assert lines[-1].startswith(f"exported step 20 to {tmp_path / 'model' / 'export' / '1'}")
    assert not [line for line in lines if line.startswith("warning: ")], output  # tf-keras' export warning was one


def test_the_users_own_tf_cpp_min_log_level_shows_tensorflow_records(tmp_path):
    """A run stopped by a usage error after TensorFlow's import and device probing, which log at INFO."""
    returncode, output = _train(tmp_path, "--batch_size=100000", TF_CPP_MIN_LOG_LEVEL="0")
    assert returncode == 1 and output.splitlines()[-1].startswith("train.py: error: --batch_size=100000"), output
    assert "TensorFlow C++" in _log_records(output), output


def test_verbosity_is_read_before_absl_parses_it():
    """The C++ level is set before TensorFlow's import, so from --verbosity as absl will parse it."""
    assert cli.tensorflow_cpp_log_level(["-m", "--epochs=1"], {}) == cli.QUIET_TF_CPP_LOG_LEVEL
    assert cli.tensorflow_cpp_log_level(["-m", "--verbosity=0"], {}) == cli.QUIET_TF_CPP_LOG_LEVEL
    for verbose in (["--verbosity=1"], ["-v", "1"], ["--v=2"], ["--verbosity", "1", "--epochs=1"]):
        assert cli.tensorflow_cpp_log_level(["-m", *verbose], {}) == cli.VERBOSE_TF_CPP_LOG_LEVEL, verbose
    assert cli.tensorflow_cpp_log_level(["-m", "--verbosity=many"], {}) == cli.QUIET_TF_CPP_LOG_LEVEL  # absl says
    assert cli.tensorflow_cpp_log_level(["-m", "--verbosity=1"], {"TF_CPP_MIN_LOG_LEVEL": "2"}) is None


def test_progress_line_is_redrawn_in_place_within_the_terminals_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # shutil.get_terminal_size reads it first
    stream = io.StringIO()
    line = cli.ProgressLine(stream)
    line.start_epoch(2, 3, 100)
    line.draw(50, 5.8648)
    line.clear()
    drawn, cleared = stream.getvalue().split(cli.CLEAR_LINE)[1:]
    assert drawn == "epoch 2/3  50/100 [==========>         ]"[:39] and cleared == ""
