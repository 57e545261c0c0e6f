"""Runs a distributed training job on this machine: one `python -m trainers.train` process per task.

    python scripts/launch_local_cluster.py --workers=2 -- --strategy=multi_worker --model_dir=runs/mw ...
    python scripts/launch_local_cluster.py --workers=2 --ps=2 -- --strategy=parameter_server --model_dir=...

With --ps=0 the cluster is N workers (worker 0 is the chief, MultiWorkerMirroredStrategy's convention); with
--ps=M it is a chief + N workers + M ps (ParameterServerStrategy). Each task gets free 127.0.0.1 ports and its
own TF_CONFIG, the same one it would get on a real cluster (see README, "Distributed training"). Every output
line is prefixed with its task ("[worker 1] ..."). When a training task fails, or on Ctrl-C / SIGTERM, every
process started here is stopped; the exit code is the first failing task's (0 when the chief and the workers
succeed: ps tasks serve until stopped).

With --cluster_json=PATH the launcher writes the job as JSON once every task has started, and again when it ends:
    {"cluster": {task type: [address]}, "tasks": {"worker 0": {"pid", "address", "exit_code"}, ...},
     "exit_code": the launcher's, "failed_task": the first task that failed, "signal": the signal that stopped it}
(exit codes and the outcome are null while the job runs; "failed_task" and "signal" are null when none).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("workers", 2, "Worker tasks.", lower_bound=1)
flags.DEFINE_integer("ps", 0, "Parameter-server tasks (0: a multi_worker job, no chief).", lower_bound=0)
flags.DEFINE_string("python", sys.executable, "Python interpreter that runs the trainer.")
flags.DEFINE_string("module", "trainers.train", "Trainer module each task runs.")
flags.DEFINE_float("grace_seconds", 10.0, "Seconds between SIGTERM and SIGKILL when stopping tasks.", lower_bound=0)
flags.DEFINE_string("cluster_json", None, "Write the cluster, each task's pid and exit code, and the job's outcome to "
                    "this JSON file (see the module docstring).")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count: int):
    """count distinct free TCP ports on 127.0.0.1 (held open together so none is handed out twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cluster_spec(num_workers: int, num_ps: int):
    """{task type: ["127.0.0.1:port"]}: N workers, or a chief + N workers + M ps."""
    counts = {"worker": num_workers} if num_ps == 0 else {"chief": 1, "worker": num_workers, "ps": num_ps}
    ports = iter(free_ports(sum(counts.values())))
    return {task_type: [f"127.0.0.1:{next(ports)}" for _ in range(count)] for task_type, count in counts.items()}


def tasks_of(cluster):
    """(type, index) of every task, ps first so the servers listen before training tasks connect."""
    order = ("ps", "chief", "worker")
    return [(task_type, index) for task_type in order for index in range(len(cluster.get(task_type, [])))]


class Cluster:
    """The started task processes, their log pumps, and stopping them all."""

    def __init__(self, cluster, trainer_args):
        self.cluster = cluster
        self.processes = {}
        self.failed_task = None  # the name of the first task that failed
        self.pumps = []
        self.print_lock = threading.Lock()
        for task_type, index in tasks_of(cluster):
            env = {
                **os.environ,
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}),
                "PYTHONUNBUFFERED": "1",
            }
            process = subprocess.Popen(
                [FLAGS.python, "-m", FLAGS.module, *trainer_args],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,  # our Ctrl-C does not reach the tasks directly: we stop them in order
            )
            name = f"{task_type} {index}"
            self.processes[name] = process
            self._say(f"started {name} (pid {process.pid}) on {cluster[task_type][index]}")
            pump = threading.Thread(target=self._pump, args=(name, process), daemon=True)
            pump.start()
            self.pumps.append(pump)

    def _pump(self, name, process):
        for line in process.stdout:
            with self.print_lock:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()

    def wait(self) -> int:
        """Waits for the job; returns the first failure's exit code, or 0 when it is done: when the chief is done
        in a parameter_server job (its workers and ps serve until stopped), when every worker is otherwise."""
        done_when = "chief" if "chief" in self.cluster else "worker"
        training = {name: process for name, process in self.processes.items() if name.startswith(done_when)}
        while True:
            for name, process in self.processes.items():
                code = process.poll()
                if code is not None and code != 0:
                    self.failed_task = name
                    self._say(f"{name} exited with code {code}; stopping the other tasks")
                    return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it
            if all(process.poll() == 0 for process in training.values()):
                return 0
            time.sleep(0.2)

    def stop(self):
        """SIGTERM to every running task (its whole process group), SIGKILL after the grace period."""
        running = [process for process in self.processes.values() if process.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + FLAGS.grace_seconds
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for pump in self.pumps:
            pump.join(timeout=5)

    def tasks(self):
        """{task name: {"pid", "address", "exit_code" (None while it runs)}}."""
        addresses = {f"{task_type} {index}": self.cluster[task_type][index]
                     for task_type, index in tasks_of(self.cluster)}
        return {name: {"pid": process.pid, "address": addresses[name], "exit_code": process.poll()}
                for name, process in self.processes.items()}

    def _say(self, message):
        with self.print_lock:
            sys.stdout.write(f"[launcher] {message}\n")
            sys.stdout.flush()


def _signal_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def write_cluster_json(path, cluster_layout, cluster, exit_code=None, stop_signal=None):
    """--cluster_json (the module docstring), written to a temporary name and renamed: never read half written."""
    document = {
        "cluster": cluster_layout,
        "tasks": cluster.tasks() if cluster is not None else {},
        "exit_code": exit_code,
        "failed_task": cluster.failed_task if cluster is not None else None,
        "signal": stop_signal,
    }
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as file:
        json.dump(document, file, indent=2)
    os.replace(temporary, path)


class _Stop(Exception):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def main(argv):
    trainer_args = argv[1:]
    if trainer_args and trainer_args[0] == "--":
        trainer_args = trainer_args[1:]
    cluster_layout = cluster_spec(FLAGS.workers, FLAGS.ps)

    def on_signal(signum, frame):
        raise _Stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"[launcher] cluster {json.dumps(cluster_layout)}", flush=True)
    cluster, stop_signal = None, None
    try:
        cluster = Cluster(cluster_layout, trainer_args)
        if FLAGS.cluster_json:
            write_cluster_json(FLAGS.cluster_json, cluster_layout, cluster)
        code = cluster.wait()
    except _Stop as stop:
        code, stop_signal = 128 + stop.signum, stop.signum
        print(f"[launcher] got signal {stop.signum}; stopping every task", flush=True)
    finally:
        if cluster is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            cluster.stop()
    if FLAGS.cluster_json:
        write_cluster_json(FLAGS.cluster_json, cluster_layout, cluster, code, stop_signal)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
