"""trainers/task_status.py: the status file a task of a distributed job keeps, and how recording() ends it."""

import json
import signal

import pytest

from trainers import cli, distribute, task_status


def _worker(index=0):
    return distribute.parse_tf_config(json.dumps({"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]},
                                                  "task": {"type": "worker", "index": index}}))


def _read(model_dir, name="worker-1"):
    return json.loads((model_dir / "task_status" / f"{name}.json").read_text())


def test_each_phase_rewrites_the_file_and_a_normal_end_is_finished(tmp_path):
    status = task_status.TaskStatus.of_task(str(tmp_path), _worker(1))
    with status.recording():
        status("waiting_for_workers", missing={"worker 0": "127.0.0.1:2001"})
        waiting = _read(tmp_path)
        status("training")
        assert _read(tmp_path)["phase"] == "training" and "missing" not in _read(tmp_path)
    assert waiting["task"] == "worker 1" and waiting["missing"] == {"worker 0": "127.0.0.1:2001"}
    assert waiting["phase"] == "waiting_for_workers" and isinstance(waiting["pid"], int)
    assert _read(tmp_path)["phase"] == "finished"
    assert [path.name for path in (tmp_path / "task_status").iterdir()] == ["worker-1.json"], "no temporary left"


def test_a_signal_is_stopped_during_the_phase_it_came_in(tmp_path):
    status = task_status.TaskStatus.of_task(str(tmp_path), _worker(1))
    with pytest.raises(cli.Stopped):
        with status.recording():
            status("waiting_for_workers", missing={"worker 0": "127.0.0.1:2001"})
            raise cli.Stopped("worker 1: stopped by SIGTERM while waiting", signal.SIGTERM)
    stopped = _read(tmp_path)
    assert stopped["phase"] == "stopped" and stopped["during"] == "waiting_for_workers"
    assert stopped["signal"] == "SIGTERM" and stopped["exit_code"] == 128 + signal.SIGTERM
    assert stopped["missing"] == {"worker 0": "127.0.0.1:2001"}
    assert stopped["message"] == "worker 1: stopped by SIGTERM while waiting"


@pytest.mark.parametrize("error, exit_code, message", [
    (SystemExit("worker 1: stopped: non-finite loss\nat step 3"), 1, "worker 1: stopped: non-finite loss at step 3"),
    (SystemExit(2), 2, "exited with code 2"),
    (ValueError("bad"), 1, "bad"),
])
def test_an_error_is_failed_with_its_line_and_goes_on(tmp_path, error, exit_code, message):
    status = task_status.TaskStatus.of_task(str(tmp_path), _worker(1))
    with pytest.raises(type(error)):
        with status.recording():
            status("training")
            raise error
    assert _read(tmp_path) | {"pid": 0, "time": 0} == {"task": "worker 1", "pid": 0, "time": 0, "phase": "failed",
                                                       "exit_code": exit_code, "message": message}


def test_a_single_process_or_a_task_without_model_dir_writes_nothing(tmp_path):
    for status in (task_status.TaskStatus.of_task(str(tmp_path), distribute.parse_tf_config(None)),
                   task_status.TaskStatus.of_task("", _worker(0))):
        with status.recording():
            status("training")
    assert not (tmp_path / "task_status").exists()


def test_a_status_that_cannot_be_written_is_one_warning_and_the_task_goes_on(tmp_path, caplog):
    (tmp_path / "task_status").write_text("a file where the directory goes")
    status = task_status.TaskStatus.of_task(str(tmp_path), _worker(0))
    with status.recording():
        status("training")
        status("training")
    assert status.file is None
    warnings = [record.getMessage() for record in caplog.records if "cannot write its status" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("worker 0: ")
