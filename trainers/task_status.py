"""Where each task of a distributed job is: <model_dir>/task_status/<task>.json ("worker 1" -> worker-1.json),
rewritten whole (data.atomic.write_json_atomically) at every change, for a launcher, a test or a person to poll.

    {"task": "worker 0", "pid": 4242, "time": 1700000000.0, "phase": "waiting_for_workers",
     "missing": {"worker 1": "127.0.0.1:2223"}}

phase and its keys:
    waiting_for_workers  a multi_worker task waiting for the others to listen (distribute.wait_for_peers):
                         "missing" {task name: TF_CONFIG address}, rewritten when that set changes
    training             the strategy is being built or fit runs (the task's peers, if any, have come)
    serving              a ps task, or a worker of a parameter_server job, serving until it is stopped
    stopped              stopped by a signal: "signal" ("SIGTERM", "SIGINT"), "exit_code" (128 + its number),
                         "during" (the phase it stopped in, whose keys are kept) and "message" (the line printed)
    failed               ended by an error: "exit_code", "message" (the error's line)
    finished             training (and on the chief the report and export) done

Written by the tasks of a TF_CONFIG job only, and only when --model_dir is given (a ps task may run without one);
a single process's run is described by run_summary.json. A status that cannot be written is one warning, and the
task goes on: it is a report, not part of the run. A task killed outright (SIGKILL, or a signal while TensorFlow
holds the process in training) leaves the phase it was in: "pid" says whether it still runs.
"""

import contextlib
import os
import signal
import time
from typing import Any, Optional

from absl import logging

from data import atomic
from trainers import cli

DIRECTORY = "task_status"

WAITING_FOR_WORKERS = "waiting_for_workers"
TRAINING = "training"
SERVING = "serving"
STOPPED = "stopped"
FAILED = "failed"
FINISHED = "finished"


def path(model_dir: str, task_name: str) -> str:
    """<model_dir>/task_status/<task>.json, named as task_summaries/ names a task ("worker 1" -> worker-1.json)."""
    return os.path.join(model_dir, DIRECTORY, task_name.replace(" ", "-") + ".json")


class TaskStatus:
    """The status file of one task (path None: none is written, every call is a no-op). Call it with a phase and
    its keys: status("waiting_for_workers", missing={...}); recording() writes the end."""

    def __init__(self, file: Optional[str], task_name: str):
        self.file, self.task_name = file, task_name
        self.phase, self.details = None, {}

    @classmethod
    def of_task(cls, model_dir: Optional[str], cluster) -> "TaskStatus":
        """The task's status in model_dir; a no-op without TF_CONFIG (cluster.task_type None) or model_dir."""
        written = cluster.task_type is not None and bool(model_dir)
        return cls(path(model_dir, cluster.task_name) if written else None, cluster.task_name)

    def __call__(self, phase: str, **details: Any) -> None:
        self.phase, self.details = phase, details
        self._write({"phase": phase, **details})

    def _write(self, status) -> None:
        if self.file is None:
            return
        try:
            atomic.write_json_atomically(self.file, {"task": self.task_name, "pid": os.getpid(), "time": time.time(),
                                                     **status})
        except OSError as error:
            logging.warning("%s: cannot write its status to %s (%s); it goes on without", self.task_name, self.file,
                            error)
            self.file = None

    @contextlib.contextmanager
    def recording(self):
        """Around the task's work: on the way out the status says finished, stopped (cli.Stopped, KeyboardInterrupt)
        or failed (an exception, or sys.exit with an error), and the exception goes on."""
        try:
            yield self
        except (cli.Stopped, KeyboardInterrupt) as error:
            signum = error.signum if isinstance(error, cli.Stopped) else signal.SIGINT
            self._write({"phase": STOPPED, "during": self.phase, "signal": signal.Signals(signum).name,
                         "exit_code": 128 + signum, **self.details, "message": str(error) or "interrupted"})
            raise
        except SystemExit as error:
            if error.code in (None, 0):
                self(FINISHED)
            elif isinstance(error.code, int):
                self._failed(error.code, f"exited with code {error.code}")
            else:  # sys.exit("message"): the line printed, exit code 1
                self._failed(1, str(error.code))
            raise
        except Exception as error:
            self._failed(1, str(error) or type(error).__name__)
            raise
        else:
            self(FINISHED)

    def _failed(self, exit_code: int, message: str) -> None:
        self._write({"phase": FAILED, "exit_code": exit_code, "message": " ".join(message.split())})
