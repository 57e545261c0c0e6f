"""Training that survives faults: a SIGKILLed run resumes at its checkpointed step and data position, and a run
driven to NaN stops with the step and the fixes, leaving the last good checkpoint loadable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, TINY_CORPUS, run_module  # noqa: I001  (retrieval before TensorFlow)

import tensorflow as tf  # noqa: E402

TINY = [*TINY_CORPUS, "--projector_items=0"]


def _checkpoint_steps(model_dir):
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name[len("ckpt-"):-len(".index")]) for name in os.listdir(directory) if name.endswith(".index"))


@pytest.mark.slow
def test_run_killed_mid_training_resumes_at_its_checkpointed_step_and_finishes(tmp_path):
    model_dir = str(tmp_path / "model")
    args = [
        f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
        "--epochs=3", "--steps_per_epoch=100", "--checkpoint_every_steps=10", "--log_every_steps=10",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "trainers.train", *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        deadline = time.monotonic() + 240
        while not [step for step in _checkpoint_steps(model_dir) if step >= 30] and first.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint at step 30 within 240 s"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    assert first.returncode == -signal.SIGKILL, "the run was killed, not finished"
    # The newest checkpoint the manager completed: a kill during a save leaves files it never registered.
    newest = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints")).model_checkpoint_path
    saved = [int(newest.rsplit("ckpt-", 1)[1])]
    assert 20 <= saved[-1] < 300 and saved[-1] % 10 == 0, (saved, _checkpoint_steps(model_dir))

    second = run_module("trainers.train", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(open(os.path.join(model_dir, "run_summary.json")).read())
    assert summary["restored_from_step"] == saved[-1], "resumed at the newest checkpoint, not at 0"
    assert summary["restored_from"].endswith(f"ckpt-{saved[-1]}")
    assert summary["final_step"] == 300
    assert _checkpoint_steps(model_dir)[-1] == 300
    assert json.loads(open(os.path.join(model_dir, "metrics.json")).read())["model"]["recall_at_10"] > 0.1


@pytest.mark.slow
def test_run_driven_to_nan_stops_with_the_step_and_the_last_good_checkpoint_evaluates(tmp_path):
    model_dir = tmp_path / "model"
    common = [f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY, "--steps_per_epoch=10"]
    good = run_module("trainers.train", *common, "--epochs=1", "--checkpoint_every_steps=5")
    assert good.returncode == 0, good.stderr[-3000:]
    good_metrics = json.loads((model_dir / "metrics.json").read_text())["model"]
    assert _checkpoint_steps(model_dir) == [5, 10]

    # Resumed with a learning rate that overflows float32: step 11's loss (on good weights) is finite, but the
    # weights it writes are not. The guard must stop before checkpointing them.
    bad = run_module("trainers.train", *common, "--epochs=2", "--checkpoint_every_steps=1", "--learning_rate=1e39")
    assert bad.returncode != 0
    assert "at step 11" in bad.stderr and "non-finite" in bad.stderr, bad.stderr[-3000:]
    assert "--label_smoothing" in bad.stderr and "--learning_rate" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert _checkpoint_steps(model_dir) == [5, 10], "no checkpoint of the bad weights"

    evaluated = run_module("trainers.evaluate", f"--model_dir={model_dir}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    evaluation = json.loads((model_dir / "evaluation" / "step-10.json").read_text())
    assert evaluation["step"] == 10 and evaluation["checkpoint"].endswith("ckpt-10")
    assert evaluation["metrics"]["recall_at_100"] == pytest.approx(good_metrics["recall_at_100"], abs=1e-6)


@pytest.mark.slow
def test_stopped_multi_worker_job_continues_from_its_backup(tmp_path):
    """BackupAndRestore: a 2-worker job stopped mid-training and started again continues on both workers."""
    args = [
        "--strategy=multi_worker", f"--model_dir={tmp_path / 'model'}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
        "--epochs=2", "--steps_per_epoch=60", "--checkpoint_every_steps=10", "--log_every_steps=10",
    ]
    launcher_command = [sys.executable, "scripts/launch_local_cluster.py", "--workers=2", "--grace_seconds=1", "--"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = tmp_path / "first.txt"  # the job's lines, for the failure message: a job that fails before step 30 says why
    with open(log, "w") as output:
        first = subprocess.Popen([*launcher_command, *args], cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT,
                                 env=env)
    try:
        # The chief's checkpoint of step 30 (the backup of step 30 is saved before it, callbacks.make_callbacks).
        deadline = time.monotonic() + 240
        while not [step for step in _checkpoint_steps(tmp_path / "model") if step >= 30]:
            assert first.poll() is None, f"the job ended before step 30:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint at step 30 within 240 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
    second = subprocess.run(
        [*launcher_command, *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert second.returncode == 0, second.stdout[-3000:]
    model_dir = tmp_path / "model"
    chief = json.loads((model_dir / "run_summary.json").read_text())
    other = json.loads((model_dir / "task_summaries" / "worker-1.json").read_text())
    assert chief["restored_from"] == other["restored_from"] == "backup"
    assert chief["restored_from_step"] == other["restored_from_step"]
    assert 30 <= chief["restored_from_step"] < 120
    assert chief["final_step"] == other["final_step"] == 120
    assert chief["weights_fingerprint"] == other["weights_fingerprint"]


# A damaged newest checkpoint. The run of `damaged_run` leaves ckpt-10, ckpt-20 and ckpt-30; each test damages a
# copy of it the way a failing disk or a full one would.
DAMAGE_RUN = [*TINY, "--steps_per_epoch=30", "--checkpoint_every_steps=10", "--noexport"]


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    trained = run_module("trainers.train", f"--model_dir={root / 'model'}", f"--cache_dir={root / 'cache'}",
                         *DAMAGE_RUN, "--epochs=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert _checkpoint_steps(root / "model") == [10, 20, 30]
    return root


def _copy_of(damaged_run, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(damaged_run / "model", model_dir)
    return model_dir, [f"--model_dir={model_dir}", f"--cache_dir={damaged_run / 'cache'}"]


def _data_file(model_dir, step):
    return model_dir / "checkpoints" / f"ckpt-{step}.data-00000-of-00001"


def _registered_steps(model_dir):
    state = tf.train.get_checkpoint_state(str(model_dir / "checkpoints"))
    return [int(path.rsplit("ckpt-", 1)[1]) for path in state.all_model_checkpoint_paths]


@pytest.mark.slow
def test_restart_sets_a_truncated_newest_checkpoint_aside_and_resumes_from_the_newest_intact_one(damaged_run, tmp_path):
    model_dir, where = _copy_of(damaged_run, tmp_path)
    half = _data_file(model_dir, 30).stat().st_size // 2
    os.truncate(_data_file(model_dir, 30), half)
    partial = model_dir / "checkpoints" / "ckpt-40_temp"  # what a kill during the save of step 40 leaves
    partial.mkdir()
    (partial / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)

    restarted = run_module("trainers.train", *where, *DAMAGE_RUN, "--epochs=2")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "Traceback" not in restarted.stderr
    summary = json.loads((model_dir / "run_summary.json").read_text())
    assert summary["restored_from_step"] == 20 and summary["restored_from"].endswith("ckpt-20")
    assert summary["final_step"] == 60
    [warning] = summary["warnings"]
    assert warning["kind"] == "damaged_checkpoint" and warning["checkpoint"].endswith("ckpt-30")
    assert "ckpt-30" in warning["message"] and "ckpt-20" in warning["message"]
    set_aside = model_dir / "checkpoints" / "damaged"
    assert sorted(path.name for path in set_aside.iterdir()) == ["ckpt-30.data-00000-of-00001", "ckpt-30.index"]
    assert (set_aside / "ckpt-30.data-00000-of-00001").stat().st_size == half, "moved as it was, not deleted"
    assert summary["removed_partial_saves"] == ["ckpt-40_temp"] and not partial.exists()
    # The manager still keeps the 3 newest: the restored checkpoints were registered anew with their timestamps.
    assert _registered_steps(model_dir) == [40, 50, 60] == _checkpoint_steps(model_dir)


@pytest.mark.slow
def test_evaluate_sets_a_zeroed_newest_checkpoint_aside_once_and_reports_the_newest_intact_one(damaged_run, tmp_path):
    model_dir, where = _copy_of(damaged_run, tmp_path)
    _data_file(model_dir, 30).write_bytes(b"\0" * _data_file(model_dir, 30).stat().st_size)

    evaluated = run_module("trainers.evaluate", where[0])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Traceback" not in evaluated.stderr
    report = json.loads((model_dir / "evaluation" / "step-20.json").read_text())
    assert report["step"] == 20 and report["checkpoint"].endswith("ckpt-20")
    assert [warning["kind"] for warning in report["warnings"]] == ["damaged_checkpoint"]
    assert "ckpt-30" in report["warnings"][0]["message"]
    assert not (model_dir / "evaluation" / "step-30.json").exists()
    assert _registered_steps(model_dir) == [10, 20], "dropped from the checkpoint state"
    assert (model_dir / "checkpoints" / "damaged" / "ckpt-30.index").exists()

    again = run_module("trainers.evaluate", where[0])
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((model_dir / "evaluation" / "step-20.json").read_text())["warnings"] == [], "not picked again"


@pytest.mark.slow
def test_no_intact_checkpoint_is_a_one_line_error_that_leaves_every_file_in_place(damaged_run, tmp_path):
    model_dir, where = _copy_of(damaged_run, tmp_path)
    for step in (10, 20, 30):
        os.truncate(_data_file(model_dir, step), 64)
    before = sorted(path.name for path in (model_dir / "checkpoints").iterdir())

    for command in (["trainers.evaluate", where[0]], ["trainers.train", *where, *DAMAGE_RUN, "--epochs=2"]):
        result = run_module(*command)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        last_line = result.stderr.strip().splitlines()[-1]
        assert "no intact checkpoint" in last_line and all(f"ckpt-{step}" in last_line for step in (10, 20, 30))
    assert sorted(path.name for path in (model_dir / "checkpoints").iterdir()) == before
    assert json.loads((model_dir / "run_summary.json").read_text())["final_step"] == 30, "the first run's summary"


@pytest.mark.slow
def test_restart_with_another_model_shape_is_a_one_line_error(damaged_run, tmp_path):
    model_dir, where = _copy_of(damaged_run, tmp_path)
    written = {name: (model_dir / name).read_bytes() for name in ("config.json", "flags.txt")}
    result = run_module("trainers.train", *where, *DAMAGE_RUN, "--epochs=2", "--embedding_dim=32")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ckpt-30 does not fit this run's model" in last_line and "--model_dir" in last_line
    assert _checkpoint_steps(model_dir) == [10, 20, 30] and not (model_dir / "checkpoints" / "damaged").exists()
    # The refused restart leaves the run's description alone: evaluate and export still rebuild the trained model.
    assert {name: (model_dir / name).read_bytes() for name in written} == written


def test_restore_policy_sets_aside_a_bit_flip_and_an_unreadable_state_and_rebuilds_the_state(tmp_path):
    """checkpoints.newest_intact_checkpoint on checkpoints written here: a flipped bit (which a plain restore reads
    without a word) makes the newest damaged, a garbled state file (which TensorFlow ignores, so a run would start
    over) is set aside and rebuilt from the files on disk, and a partial save is removed."""
    from trainers import checkpoints

    directory = str(tmp_path / "checkpoints")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(table=tf.Variable(tf.ones([1000, 8]))), directory, 3)
    for step in (10, 20, 30):
        manager.save(checkpoint_number=step)
    data = tmp_path / "checkpoints" / "ckpt-30.data-00000-of-00001"
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 1
    data.write_bytes(bytes(content))
    (tmp_path / "checkpoints" / "checkpoint").write_text("garbled {")
    (tmp_path / "checkpoints" / "ckpt-40_temp").mkdir()

    choice = checkpoints.newest_intact_checkpoint(tf, directory, repair=True)
    assert choice.path.endswith("ckpt-20") and choice.removed_partial_saves == ("ckpt-40_temp",)
    assert [warning["kind"] for warning in choice.warnings] == ["damaged_checkpoint_state", "damaged_checkpoint"]
    assert "Checksum" in choice.warnings[1]["message"]
    damaged = sorted(path.name for path in (tmp_path / "checkpoints" / "damaged").iterdir())
    assert damaged == ["checkpoint", "ckpt-30.data-00000-of-00001", "ckpt-30.index"]
    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(path) for path in state.all_model_checkpoint_paths] == ["ckpt-10", "ckpt-20"]
    assert checkpoints.newest_intact_checkpoint(tf, directory, repair=True).warnings == (), "set aside once"
