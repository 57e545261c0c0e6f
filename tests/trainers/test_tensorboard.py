"""A finished run as a user sees it in TensorBoard: the real `tensorboard` server on `--logdir runs` (the README's
command), read through its HTTP data API (the routes of the installed plugins: projector_plugin.py, scalars_plugin.py,
hparams_plugin.py), checked against the files the run wrote."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT, prepare_csv, train_on

NUM_USERS, NUM_ITEMS, PER_USER = 300, 300, 20
TRAIN = ["--batch_size=64", "--num_sampled=50", "--embedding_dim=16", "--epochs=2", "--steps_per_epoch=10",
         "--eval_top_k=10", "--cold_users=0.2", "--log_every_steps=5", "--noexport", "--seed=3"]
RUN = "run/tensorboard"  # the run's TensorBoard directory, relative to --logdir runs
PROJECTOR_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
ITEM_TABLE = "model/item_tower/embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE"  # in the training checkpoints
STARTUP_SECONDS = 60  # a cold TensorBoard (TensorFlow import, first load of the event files) on a busy machine


def write_log(path):
    """A CSV log whose item keys (sku-<n>) are not ids, drawn by popularity so the vocabulary ranks them."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.7
    lines = ["user,item,time"]
    for user in range(NUM_USERS):
        for time_step, item in enumerate(rng.choice(NUM_ITEMS, PER_USER, p=popularity / popularity.sum())):
            lines.append(f"u{user},sku-{item},{1_700_000_000 + time_step}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(runs directory, model_dir) of a few-second training run on a prepared corpus with cold users."""
    root = tmp_path_factory.mktemp("tensorboard")
    write_log(root / "log.csv")
    corpus = prepare_csv(root / "log.csv", root / "corpus", "time")
    model_dir = root / "runs" / "run"
    train_on(corpus, model_dir, *TRAIN)
    return root / "runs", model_dir


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(finished_run, tmp_path_factory):
    """The base URL of `tensorboard --logdir runs` once it lists the run's six TensorBoard runs; killed after."""
    runs_dir, _ = finished_run
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "tensorboard.log", "w+")
    command = [os.path.join(os.path.dirname(sys.executable), "tensorboard"), f"--logdir={runs_dir}",
               "--host=127.0.0.1", f"--port={port}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        runs = ("train", "eval", "most_popular", "item_transitions", "projector")
        expected = {RUN, *(f"{RUN}/{name}" for name in runs)}
        wait_for(lambda: expected <= set(get_json(base, "/data/runs")), process, log)
        yield base
    finally:
        stop(process)
        log.close()


def stop(process):
    """SIGTERM (TensorBoard then closes its data server's stdin, which ends that process too), SIGKILL if stuck."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def wait_for(condition, process, log, seconds=STARTUP_SECONDS):
    """Waits until condition() holds while the server starts; fails with the server's log when it exits or times out."""
    def ready():
        assert process.poll() is None, f"tensorboard exited {process.returncode}: {server_log(log)}"
        return condition()

    if not eventually(ready, seconds):
        pytest.fail(f"tensorboard did not get ready in {seconds} s: {server_log(log)}")


def eventually(condition, seconds):
    """True once condition() holds (False or a connection error count as not yet), False after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return True
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def server_log(log):
    log.flush()
    log.seek(0)
    return log.read()[-3000:]


def get(base, route, **params):
    url = f"{base}{route}?{urllib.parse.urlencode(params)}" if params else base + route
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def get_json(base, route, **params):
    return json.loads(get(base, route, **params))


def test_projector_serves_the_item_embeddings_labelled_by_key(server, finished_run):
    _, model_dir = finished_run
    run = f"{RUN}/projector"
    assert get_json(server, "/data/plugin/projector/runs") == [run]
    config = get_json(server, "/data/plugin/projector/info", run=run)
    (embedding,) = config["embeddings"]
    assert embedding["tensorName"] == PROJECTOR_TENSOR and embedding["tensorShape"] == [NUM_ITEMS, 16]
    served = np.frombuffer(get(server, "/data/plugin/projector/tensor", run=run, name=PROJECTOR_TENSOR), np.float32)
    # The projector shows the final model's item embeddings: the newest training checkpoint's item table (at the
    # final step), through the item tower (id embeddings only here, L2-normalised: the default --normalize).
    summary = json.loads((model_dir / "run_summary.json").read_text())
    newest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert newest.endswith(f"ckpt-{summary['final_step']}")
    table = tf.train.load_checkpoint(newest).get_tensor(ITEM_TABLE)
    expected = table / np.linalg.norm(table, axis=1, keepdims=True)
    np.testing.assert_allclose(served.reshape(NUM_ITEMS, 16), expected, rtol=1e-5, atol=1e-6)
    header, *rows = get(server, "/data/plugin/projector/metadata", run=run, name=PROJECTOR_TENSOR).decode().splitlines()
    assert header.split("\t") == ["key", "item_id", "count"]  # the key first: the projector's default label
    keys, ids, counts = zip(*(row.split("\t") for row in rows))
    assert sorted(keys) == sorted(f"sku-{item}" for item in range(NUM_ITEMS))
    assert [int(item_id) for item_id in ids] == list(range(NUM_ITEMS))
    assert keys[0] == "sku-0"  # id 0, the most frequent item, is the log's most popular key by far
    # Counts are the trainer's (cold users' rows left out), at most the 5,700 training rows of the log.
    assert all(int(count) >= 0 for count in counts) and 0 < sum(map(int, counts)) <= NUM_USERS * (PER_USER - 1)


def test_projector_plugin_reports_itself_enabled(server):
    listing = get_json(server, "/data/plugins_listing")
    assert listing["scalars"]["enabled"] and listing["hparams"]["enabled"]
    # The projector decides whether it is active in a thread started by the first listing: enabled a moment later.
    assert eventually(lambda: get_json(server, "/data/plugins_listing")["projector"]["enabled"], seconds=20)


@pytest.mark.parametrize("baseline_run", ["most_popular", "item_transitions"])
@pytest.mark.parametrize("tag, group", [("recall_at_10", ()), ("cold_users/recall_at_10", ("cold_users",))])
def test_baseline_is_a_run_of_its_own_on_the_model_charts(server, finished_run, tag, group, baseline_run):
    _, model_dir = finished_run
    metrics = json.loads((model_dir / "metrics.json").read_text())
    for key in group:
        metrics = metrics[key]
    tags = get_json(server, "/data/plugin/scalars/tags")
    assert tag in tags[f"{RUN}/eval"] and tag in tags[f"{RUN}/{baseline_run}"]
    assert not [name for run in tags.values() for name in run if "most_popular/" in name], "no baseline tags left"
    final_step = json.loads((model_dir / "run_summary.json").read_text())["final_step"]
    baseline = get_json(server, "/data/plugin/scalars/scalars", run=f"{RUN}/{baseline_run}", tag=tag)
    assert [step for _, step, _ in baseline] == [0, final_step]  # a flat line under the model's whole curve
    assert all(value == pytest.approx(metrics[baseline_run]["recall_at_10"], rel=1e-6) for _, _, value in baseline)
    model = get_json(server, "/data/plugin/scalars/scalars", run=f"{RUN}/eval", tag=tag)
    assert model[-1][1] == final_step and model[-1][2] == pytest.approx(metrics["model"]["recall_at_10"], rel=1e-6)


def test_hparams_lists_the_run_settings_and_both_metric_runs(server):
    experiment = get_json(server, "/data/plugin/hparams/experiment", request=json.dumps({"experimentName": ""}))
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"loss", "num_sampled", "subtract_log_q", "cold_users", "embedding_dim"} <= names
    assert not {"num_items", "num_users", "taste_drift"} & names  # the built-in corpus's: not this run's corpus
    metrics = {(info["name"]["group"], info["name"]["tag"]) for info in experiment["metricInfos"]}
    assert {("eval", "recall_at_10"), ("most_popular", "recall_at_10"), ("item_transitions", "recall_at_10")} <= metrics
    request = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_RUNNING"],
               "colParams": [], "startIndex": 0, "sliceSize": 10}
    (group,) = get_json(server, "/data/plugin/hparams/session_groups", request=json.dumps(request))["sessionGroups"]
    hparams = group["hparams"]
    assert hparams["loss"] == "sampled_softmax" and hparams["num_sampled"] == 50 and hparams["embedding_dim"] == 16
    assert hparams["cold_users"] == pytest.approx(0.2) and hparams["subtract_log_q"] is True
