"""trainers/distribute.py and the trainer under each strategy: real processes, real clusters on 127.0.0.1."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TINY_CORPUS, run_module
from trainers import distribute
from trainers.event_reader import read_scalars

TINY = [*TINY_CORPUS, "--projector_items=0"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _cluster(workers=2, ps=0):
    config = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if ps:
        config.update(chief=["127.0.0.1:1999"], ps=[f"127.0.0.1:{3000 + i}" for i in range(ps)])
    return config


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "not JSON"),
        (json.dumps({"cluster": _cluster()}), "no \"task\""),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "no \"cluster\""),
        (json.dumps({"cluster": _cluster(), "task": {"type": "worker", "index": 2}}), "expected 0..1"),
        (json.dumps({"cluster": _cluster(), "task": {"type": "ps", "index": 0}}), "not in the cluster"),
        (json.dumps({"cluster": {"worker": ["no-port"]}, "task": {"type": "worker", "index": 0}}), "host:port"),
        (json.dumps({"cluster": {"boss": ["a:1"]}, "task": {"type": "boss", "index": 0}}), "'boss'"),
    ],
)
def test_bad_tf_config_is_named(text, expected):
    with pytest.raises(distribute.DistributeError, match=re.escape(expected)) as error:
        distribute.parse_tf_config(text)
    assert "TF_CONFIG" in str(error.value) and "\n" not in str(error.value)


def test_auto_and_strategies_that_do_not_fit_the_cluster():
    local = distribute.parse_tf_config(None)
    two_workers = distribute.parse_tf_config(json.dumps({"cluster": _cluster(), "task": {"type": "worker", "index": 1}}))
    ps_job = distribute.parse_tf_config(json.dumps({"cluster": _cluster(ps=2), "task": {"type": "chief", "index": 0}}))
    assert distribute.resolve_strategy_name("auto", local, num_local_devices=0) == "default"
    assert distribute.resolve_strategy_name("auto", local, num_local_devices=4) == "mirrored"
    assert distribute.resolve_strategy_name("auto", two_workers, num_local_devices=0) == "multi_worker"
    assert distribute.resolve_strategy_name("auto", ps_job, num_local_devices=0) == "parameter_server"
    assert not two_workers.is_chief and two_workers.task_name == "worker 1" and ps_job.is_chief
    for name, spec, expected in [
        ("parameter_server", two_workers, "\"ps\" tasks"),
        ("multi_worker", local, "needs TF_CONFIG"),
        ("mirrored", two_workers, "use --strategy=multi_worker"),
        ("multi_worker", ps_job, "use --strategy=parameter_server"),
    ]:
        with pytest.raises(distribute.DistributeError, match=re.escape(expected)):
            distribute.resolve_strategy_name(name, spec, num_local_devices=0)


@pytest.mark.parametrize(
    "tf_config, flag, expected",
    [
        ("{not json", "--strategy=auto", "TF_CONFIG is not JSON"),
        (json.dumps({"cluster": _cluster(), "task": {"type": "worker", "index": 0}}), "--strategy=parameter_server",
         "--strategy=parameter_server needs TF_CONFIG with \"ps\" tasks"),
    ],
)
def test_bad_cluster_stops_the_trainer_before_training_with_one_line(tmp_path, cache_dir, tf_config, flag, expected):
    result = run_module(
        "trainers.train", f"--model_dir={tmp_path / 'model'}", f"--cache_dir={cache_dir}", *TINY, flag,
        env={"TF_CONFIG": tf_config},
    )
    assert result.returncode != 0
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists(), "nothing is written before the cluster is checked"


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sampled_softmax", "in_batch"])  # in_batch: negatives gathered over replicas
def test_mirrored_on_two_logical_cpus_gives_the_default_losses(tmp_path, cache_dir, loss):
    steps = ["--epochs=1", "--steps_per_epoch=8", "--log_every_steps=1", "--checkpoint_every_steps=0", f"--loss={loss}"]
    losses = {}
    for strategy in ("default", "mirrored"):
        model_dir = tmp_path / strategy
        result = run_module(
            "trainers.train", f"--model_dir={model_dir}", f"--cache_dir={cache_dir}", *TINY, *steps,
            f"--strategy={strategy}", *(["--cpu_replicas=2"] if strategy == "mirrored" else []),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        losses[strategy] = [value for _, value in read_scalars(str(model_dir / "tensorboard" / "train"))["batch_loss"]]
        if strategy == "mirrored":
            summary = json.loads((model_dir / "run_summary.json").read_text())
            assert summary["strategy"] == "mirrored" and summary["num_replicas"] == 2
            assert [device[-5:] for device in summary["replica_devices"]] == ["CPU:0", "CPU:1"]
    assert len(losses["default"]) == 8 and len(set(round(value, 3) for value in losses["default"])) > 4
    assert losses["mirrored"] == pytest.approx(losses["default"], abs=1e-4)


def _launch(tmp_path, workers, ps, *trainer_args, timeout=400):
    return subprocess.run(
        [sys.executable, "scripts/launch_local_cluster.py", f"--workers={workers}", f"--ps={ps}", "--",
         *trainer_args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def _phases(model_dir):
    """{task: its task_status phase (and, stopped, the phase it stopped in)} of every task of the job."""
    statuses = [json.loads(path.read_text()) for path in (model_dir / "task_status").glob("*.json")]
    return {status["task"]: (status["phase"], status.get("during")) for status in statuses}


def _summaries(model_dir):
    """{task: its summary}: the chief's run_summary.json and every other task's task_summaries/<task>.json."""
    chief = json.loads((model_dir / "run_summary.json").read_text())
    others = [json.loads(path.read_text()) for path in (model_dir / "task_summaries").glob("*.json")]
    return {summary["task"]: summary for summary in [chief, *others]}


@pytest.mark.slow
def test_multi_worker_job_trains_workers_agree_and_the_chief_exports_and_evaluates(tmp_path, cache_dir):
    model_dir = tmp_path / "model"
    result = _launch(
        tmp_path, 2, 0, "--strategy=multi_worker", f"--model_dir={model_dir}", f"--cache_dir={cache_dir}", *TINY,
        "--epochs=2", "--steps_per_epoch=10", "--log_every_steps=5", "--checkpoint_every_steps=5",
    )
    assert result.returncode == 0, result.stdout[-4000:]
    summaries = _summaries(model_dir)
    assert set(summaries) == {"worker 0", "worker 1"}
    assert [summary["final_step"] for summary in summaries.values()] == [20, 20]
    fingerprints = [summary["weights_fingerprint"] for summary in summaries.values()]
    assert fingerprints[0] == fingerprints[1], "synchronous workers end with the same weights"
    # Only the chief (worker 0) writes the run; worker 1's scratch checkpoints are gone.
    assert sorted(path.name for path in (model_dir / "checkpoints").glob("ckpt-*.index"))[-1] == "ckpt-20.index"
    assert list((model_dir / "tensorboard" / "train").iterdir())
    final = json.loads((model_dir / "metrics.json").read_text())
    assert final["model"]["recall_at_10"] > 1.5 * final["most_popular"]["recall_at_10"]
    # The chief alone exports (the trainer's --export, on by default) when the job is done.
    assert summaries["worker 0"]["export"] == {"path": str(model_dir / "export" / "1"), "step": 20}
    assert _phases(model_dir) == {"worker 0": ("finished", None), "worker 1": ("finished", None)}
    assert (model_dir / "export" / "1" / "saved_model.pb").exists() and not (model_dir / "export" / "2").exists()
    _assert_evaluate_reproduces(model_dir, 20, final["model"])


@pytest.mark.slow
def test_parameter_server_job_splits_the_item_table_over_both_ps_and_evaluates(tmp_path, cache_dir):
    model_dir = tmp_path / "model"
    result = _launch(
        tmp_path, 2, 2, "--strategy=parameter_server", f"--model_dir={model_dir}", f"--cache_dir={cache_dir}",
        *TINY, "--epochs=2", "--steps_per_epoch=10", "--log_every_steps=5", "--checkpoint_every_steps=5",
    )
    assert result.returncode == 0, result.stdout[-4000:]
    chief = json.loads((model_dir / "run_summary.json").read_text())
    assert chief["task"] == "chief 0" and chief["item_table"]["shape"] == [2000, 64]
    shards = chief["item_table"]["shards"]
    assert [shard["rows"] for shard in shards] == [1000, 1000], chief["item_table"]
    assert sorted(shard["device"] for shard in shards) == ["/job:ps/replica:0/task:0/device:CPU:0",
                                                            "/job:ps/replica:0/task:1/device:CPU:0"]
    final = json.loads((model_dir / "metrics.json").read_text())
    # Twenty asynchronous steps: recall@10 0.091-0.124 over 8 runs (4 at f5a3cdd, 4 at 72ba6fa), most popular
    # 0.067, a random ranking 10 / 2000 = 0.005. A bound of 1.5x most popular failed 2 runs in 9, code old or new.
    assert final["model"]["recall_at_10"] > 1.2 * final["most_popular"]["recall_at_10"]
    assert chief["export"]["path"] == str(model_dir / "export" / "1")
    assert not (model_dir / "export" / "2").exists(), "the chief alone exports"
    # The chief finished; the workers and ps served until the launcher stopped them with SIGTERM.
    assert _phases(model_dir) == {"chief 0": ("finished", None), **{
        task: ("stopped", "serving") for task in ("worker 0", "worker 1", "ps 0", "ps 1")}}
    # The sharded checkpoint restores into a single-process model and evaluates to the chief's figures.
    _assert_evaluate_reproduces(model_dir, chief["final_step"], final["model"])


def _assert_evaluate_reproduces(model_dir, step, trainer_metrics):
    """trainers.evaluate restores the job's newest checkpoint on one device and gets the trainer's figures."""
    evaluated = run_module("trainers.evaluate", f"--model_dir={model_dir}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((model_dir / "evaluation" / f"step-{step}.json").read_text())
    for k in (10, 100):
        assert report["metrics"][f"recall_at_{k}"] == pytest.approx(trainer_metrics[f"recall_at_{k}"], abs=1e-4)
