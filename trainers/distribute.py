"""The tf.distribute strategy of a run, chosen from --strategy, TF_CONFIG and the visible devices.

    default           one device (tf.distribute's default strategy)
    mirrored          every local GPU (or --cpu_replicas logical CPUs), synchronous all-reduce
    multi_worker      MultiWorkerMirroredStrategy over the TF_CONFIG cluster (chief and/or workers)
    parameter_server  ParameterServerStrategy: variables on the "ps" tasks, the item table (and its optimizer
                      slots) split across them, the "chief" coordinating with ClusterCoordinator
    auto              parameter_server when TF_CONFIG has ps tasks, multi_worker when it has several tasks,
                      mirrored with several GPUs (or --cpu_replicas), default otherwise

TF_CONFIG is checked before any TensorFlow runtime starts: a bad one is a one-line `DistributeError`. The settings a
resolved strategy cannot honour are trainers.checks' (check_strategy, check_replicas).
"""

import contextlib
import dataclasses
import json
import math
import os
import select
import socket
import time
from typing import Callable, Dict, List, Optional

from absl import logging

from trainers import cli

LOCAL_TASK = "local"  # the task name of a single process (no TF_CONFIG)

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "parameter_server")
TASK_TYPES = ("chief", "worker", "ps", "evaluator")

# The item table is split so that no shard is smaller than this (MinSizePartitioner), over at most every ps.
MIN_SHARD_BYTES = 256 << 10


class DistributeError(ValueError):
    """A TF_CONFIG or --strategy that does not describe a runnable job; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """TF_CONFIG, parsed: {task type: [host:port]} and this process's task (None without TF_CONFIG)."""

    cluster: Dict[str, List[str]]
    task_type: Optional[str]
    task_id: int

    @property
    def num_workers(self) -> int:
        """Tasks that run training steps: the chief (under multi_worker) and the workers."""
        return len(self.cluster.get("chief", [])) + len(self.cluster.get("worker", []))

    @property
    def is_chief(self) -> bool:
        """The task that writes the run's files: "chief", or worker 0 when the cluster has no chief."""
        if self.task_type is None:
            return True
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_id == 0

    @property
    def task_name(self) -> str:
        """'worker 1', 'chief 0', ... ('local' without TF_CONFIG): the prefix of this task's log lines."""
        return LOCAL_TASK if self.task_type is None else f"{self.task_type} {self.task_id}"


def parse_tf_config(text: Optional[str]) -> ClusterSpec:
    """TF_CONFIG text (None or empty: a single local process) -> ClusterSpec; DistributeError naming the fault."""
    if not text:
        return ClusterSpec({}, None, 0)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise DistributeError(f"TF_CONFIG is not JSON ({error}); expected {{\"cluster\": ..., \"task\": ...}}") from None
    if not isinstance(config, dict):
        raise DistributeError("TF_CONFIG must be a JSON object with \"cluster\" and \"task\"")
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError("TF_CONFIG has no \"cluster\"; expected {\"worker\": [\"host:port\", ...], ...}")
    for task_type, addresses in cluster.items():
        if task_type not in TASK_TYPES:
            raise DistributeError(f"TF_CONFIG cluster has task type {task_type!r}; expected {', '.join(TASK_TYPES)}")
        if not isinstance(addresses, list) or not addresses:
            raise DistributeError(f"TF_CONFIG cluster[{task_type!r}] must be a non-empty list of \"host:port\"")
        for index, address in enumerate(addresses):
            _check_address(task_type, index, address)
    if len(cluster.get("chief", [])) > 1:
        raise DistributeError(f"TF_CONFIG cluster has {len(cluster['chief'])} chiefs; expected at most one")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError("TF_CONFIG has no \"task\"; expected \"task\": {\"type\": \"worker\", \"index\": 0}")
    task_type, task_id = task["type"], task["index"]
    if task_type not in cluster:
        raise DistributeError(f"TF_CONFIG task type {task_type!r} is not in the cluster ({', '.join(cluster)})")
    if not isinstance(task_id, int) or not 0 <= task_id < len(cluster[task_type]):
        raise DistributeError(
            f"TF_CONFIG task index {task_id!r} is out of range; cluster[{task_type!r}] has "
            f"{len(cluster[task_type])} task(s), so expected 0..{len(cluster[task_type]) - 1}"
        )
    return ClusterSpec(cluster, task_type, task_id)


def _check_address(task_type: str, index: int, address) -> None:
    """DistributeError unless address is "host:port" ("[v6 address]:port" for IPv6) with a port in 1..65535.

    TensorFlow fails on a non-numeric port with a traceback, and binds a port beyond 65535 modulo 65536
    (99999 -> 34463) without a word, so each address is checked here, before any server starts.
    """
    where = f"TF_CONFIG cluster[{task_type!r}][{index}]"
    if not isinstance(address, str):
        raise DistributeError(f"{where} is {_short(address)}; expected a \"host:port\" string")
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]:")
        if not bracket or not host:
            example = '"[::1]:2222"'
            raise DistributeError(f"{where} = {_short(address)}: expected \"[IPv6 address]:port\", e.g. {example}")
    else:
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise DistributeError(f"{where} = {_short(address)}: expected \"host:port\", e.g. \"10.0.0.1:2222\"")
        if ":" in host:
            raise DistributeError(f"{where} = {_short(address)}: an IPv6 host goes in brackets, e.g. \"[::1]:2222\"")
    if any(character.isspace() for character in host):
        raise DistributeError(f"{where} = {_short(address)}: the host {_short(host)} contains white space")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise DistributeError(
            f"{where} = {_short(address)}: port {_short(port)} is not an integer in 1..65535; expected \"host:port\""
        )


def _short(value) -> str:
    """repr(value) cut to 80 characters, so that a message stays one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def resolve_strategy_name(name: str, spec: ClusterSpec, num_local_devices: int) -> str:
    """--strategy (auto resolved) that fits the cluster; DistributeError when it does not.

    num_local_devices: the devices a mirrored strategy would use here (GPUs, or --cpu_replicas logical CPUs).
    """
    if name not in STRATEGIES:
        raise DistributeError(f"--strategy={name}; expected one of {', '.join(STRATEGIES)}")
    has_cluster = spec.task_type is not None
    if name == "auto":
        if "ps" in spec.cluster:
            name = "parameter_server"
        elif spec.num_workers > 1:
            name = "multi_worker"
        elif num_local_devices > 1:
            name = "mirrored"
        else:
            name = "default"
    if name in ("default", "mirrored") and has_cluster and spec.num_workers > 1:
        raise DistributeError(
            f"--strategy={name} runs in one process, but TF_CONFIG describes {spec.num_workers} training tasks; "
            "use --strategy=multi_worker (or parameter_server), or unset TF_CONFIG"
        )
    if name == "multi_worker":
        if not has_cluster:
            raise DistributeError("--strategy=multi_worker needs TF_CONFIG with the cluster and this task")
        if "ps" in spec.cluster:
            raise DistributeError("--strategy=multi_worker: TF_CONFIG has ps tasks; use --strategy=parameter_server")
    if name == "parameter_server":
        if not has_cluster or "ps" not in spec.cluster:
            raise DistributeError(
                "--strategy=parameter_server needs TF_CONFIG with \"ps\" tasks (and a \"chief\" and \"worker\"s)"
            )
        if "chief" not in spec.cluster or "worker" not in spec.cluster:
            raise DistributeError(
                "--strategy=parameter_server: TF_CONFIG needs one \"chief\" (the coordinator) and \"worker\" tasks"
            )
    return name


def configure_local_devices(tf, cpu_replicas: int) -> None:
    """Splits the CPU into cpu_replicas logical devices (before the runtime starts), so `mirrored` runs its real
    code path on a machine without GPUs."""
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
        )


def make_strategy(tf, name: str, spec: ClusterSpec, cpu_replicas: int = 1, num_ps_shards: int = 0,
                  status: Optional[Callable[..., None]] = None):
    """The tf.distribute.Strategy for a resolved strategy name (status: as wait_for_peers').

    Under parameter_server every variable of at least MIN_SHARD_BYTES (in practice: the embedding tables) is
    split over the ps tasks (num_ps_shards, default all of them); small dense layers stay whole.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = None
        if not tf.config.list_logical_devices("GPU") and cpu_replicas > 1:
            devices = [device.name for device in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        return tf.distribute.MirroredStrategy(devices=devices)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if name == "multi_worker":
        wait_for_peers(spec, status)
        # RING collectives over gRPC: the only implementation on CPUs, and NCCL picks itself on GPUs via AUTO.
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    num_ps = len(spec.cluster["ps"])
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=MIN_SHARD_BYTES, max_shards=num_ps_shards or num_ps
    )
    return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def run_server(tf, spec: ClusterSpec, status: Optional[Callable[..., None]] = None) -> None:
    """Runs this ps (or parameter_server worker) task's gRPC server until the process is stopped: SIGTERM or
    SIGINT stop it with one line (cli.Stopped). The server runs on TensorFlow's threads while this one waits in
    Python, where the signals are handled (Server.join would wait inside TensorFlow). status (a
    trainers.task_status.TaskStatus, or any function of a phase and its keys) hears "serving" once it serves."""
    server = tf.distribute.Server(
        tf.train.ClusterSpec(spec.cluster), job_name=spec.task_type, task_index=spec.task_id, protocol="grpc",
        start=True,
    )
    with cli.stop_on_signals(lambda name: f"{spec.task_name}: stopped by {name} while serving the parameter_server "
                                          "job"):
        logging.info("%s: serving the parameter_server job (the chief drives training)", spec.task_name)
        if status is not None:
            status("serving")
        while server is not None:  # held until the process ends: a collected Server asks TensorFlow to stop it
            time.sleep(0.5)  # short sleeps: a signal the kernel hands to one of TensorFlow's threads does not end a
            # sleep of this thread, and Python runs the handler only when this thread next runs Python


# A multi_worker task's wait for the others: how often it looks, and how often it says whom it waits for.
PEER_POLL_SECONDS = 0.25
PEER_REPORT_SECONDS = 30.0


def host_and_port(address: str):
    """("host", port) of a checked TF_CONFIG address ("[v6]:port" gives the bare v6 address)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_peers(spec: ClusterSpec, status: Optional[Callable[..., None]] = None) -> None:
    """Waits, in Python, until every other training task of a multi_worker job accepts connections on its TF_CONFIG
    address, while this task listens on its own port so that the others see it too; logs whom it waits for.

    MultiWorkerMirroredStrategy waits for its peers inside TensorFlow, holding the interpreter, with TensorFlow's
    own SIGTERM handler installed (it only records the signal): a task whose peer never comes could then only be
    killed with SIGKILL. Waiting here first, SIGTERM or Ctrl-C stops it with one line naming the missing tasks
    (cli.Stopped). A peer that dies later, once all have met, still blocks TensorFlow's set-up. DistributeError when
    this task's port is taken. status (a trainers.task_status.TaskStatus, or any function of a phase and its keys)
    hears "waiting_for_workers" with missing={task name: address} whenever the missing ones change.
    """
    peers = {f"{task_type} {index}": address for task_type in ("chief", "worker")
             for index, address in enumerate(spec.cluster.get(task_type, []))
             if (task_type, index) != (spec.task_type, spec.task_id)}
    missing = dict(peers)
    with _listening(spec) as listener, cli.stop_on_signals(
        lambda name: f"{spec.task_name}: stopped by {name} while waiting for {_named(missing)} of the multi_worker "
                     "job to start; nothing was trained"
    ):
        reported, told = -math.inf, None
        while True:
            missing = {name: address for name, address in missing.items() if not _accepts(address)}
            if not missing:
                return
            if status is not None and missing != told:
                status("waiting_for_workers", missing=dict(missing))
                told = dict(missing)
            if time.monotonic() - reported >= PEER_REPORT_SECONDS:
                logging.info("%s: waiting for %s to start (TF_CONFIG)", spec.task_name, _named(missing))
                reported = time.monotonic()
            _answer(listener, PEER_POLL_SECONDS)


def _named(tasks: Dict[str, str]) -> str:
    return ", ".join(f"{name} at {address}" for name, address in tasks.items())


@contextlib.contextmanager
def _listening(spec: ClusterSpec):
    """A socket listening on this task's TF_CONFIG port (every interface), closed after the block."""
    task_address = spec.cluster[spec.task_type][spec.task_id]
    port = host_and_port(task_address)[1]
    dual = socket.has_dualstack_ipv6()
    try:
        listener = socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET,
                                        dualstack_ipv6=dual)
    except OSError as error:
        where = f"TF_CONFIG cluster[{spec.task_type!r}][{spec.task_id}] = {task_address!r}"
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise DistributeError(f"{where}: this task cannot listen on port {port} ({reason}); is another "
                              "process using it?") from None
    try:
        yield listener
    finally:
        listener.close()


def _accepts(address: str) -> bool:
    """Whether a TCP connection to address succeeds now."""
    try:
        socket.create_connection(host_and_port(address), timeout=1.0).close()
        return True
    except OSError:
        return False


def _answer(listener, seconds: float) -> None:
    """Accepts (and closes) the other tasks' probes for up to `seconds`, so they find this task listening."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([listener], [], [], left)[0]:
            connection, _ = listener.accept()
            connection.close()


def tf_config_from_environment() -> ClusterSpec:
    return parse_tf_config(os.environ.get("TF_CONFIG"))


def replica_devices(strategy) -> List[str]:
    """The devices the strategy's replicas run on ([] for the default and parameter_server strategies, which name
    none)."""
    try:
        return list(strategy.extended.worker_devices)
    except (RuntimeError, NotImplementedError, AttributeError):
        return []
