"""The trainer as a user runs it: `python -m trainers.train` in a fresh process, real files and event logs."""

import json
import os

import pytest

from tests.conftest import TINY_CORPUS, run_module
from trainers.event_reader import hparams_of, read_scalars

TINY = [*TINY_CORPUS, "--epochs=3", "--log_every_steps=10"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    model_dir = root / "model"
    result = run_module("trainers.train", f"--model_dir={model_dir}", f"--cache_dir={root / 'cache'}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def test_training_lowers_loss_and_beats_popularity(trained_run):
    model_dir, result = trained_run
    losses = read_scalars(str(model_dir / "tensorboard" / "train"))["batch_loss"]
    first, last = losses[0][1], losses[-1][1]
    assert last < 0.8 * first, f"loss went from {first} to {last}"
    final = json.loads((model_dir / "metrics.json").read_text())
    assert final["split"] == "test"
    assert final["model"]["recall_at_100"] > 1.5 * final["most_popular"]["recall_at_100"]


def test_tensorboard_shows_loss_and_recall_curves(trained_run):
    model_dir, _ = trained_run
    train_scalars = read_scalars(str(model_dir / "tensorboard" / "train"))
    assert len(train_scalars["batch_loss"]) >= 10
    assert "initial_loss" in train_scalars
    eval_scalars = read_scalars(str(model_dir / "tensorboard" / "eval"))
    for k in (10, 50, 100):
        recall = eval_scalars[f"recall_at_{k}"]
        assert len(recall) == 3, "one point per epoch"
    assert eval_scalars["recall_at_100"][-1][1] > eval_scalars["recall_at_100"][0][1] * 0.9
    # The baseline is a run of its own under the same tags, so TensorBoard overlays it on the model's charts.
    baseline = read_scalars(str(model_dir / "tensorboard" / "most_popular"))["recall_at_100"]
    final = json.loads((model_dir / "metrics.json").read_text())["most_popular"]["recall_at_100"]
    assert [step for step, _ in baseline] == [0, eval_scalars["recall_at_100"][-1][0]]
    assert all(value == pytest.approx(final, rel=1e-6) for _, value in baseline)


def test_config_and_checkpoints_are_written(trained_run):
    model_dir, _ = trained_run
    config = json.loads((model_dir / "config.json").read_text())
    loss = config["loss"]
    assert loss["loss"] == "sampled_softmax" and loss["num_sampled"] == 200 and loss["subtract_log_q"] is True
    assert "--num_sampled=200" in (model_dir / "flags.txt").read_text().splitlines()
    assert any(name.startswith("ckpt-") for name in os.listdir(model_dir / "checkpoints"))


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--loss=foo", "--loss"),
        ("--num_sampled=0", "--num_sampled"),
        ("--batch_size=-1", "--batch_size"),
        ("--label_smoothing=1.5", "--label_smoothing"),
        ("--num_sampled=5000", "num_sampled"),  # >= corpus size with unique sampling
    ],
)
def test_bad_flags_stop_before_training_with_the_flag_named(tmp_path, flag, expected):
    result = run_module(
        "trainers.train", f"--model_dir={tmp_path / 'model'}", f"--cache_dir={tmp_path / 'cache'}", *TINY, flag
    )
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model" / "checkpoints").exists()


def test_model_dir_that_is_a_file_is_refused(tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("keep me")
    result = run_module("trainers.train", f"--model_dir={not_a_dir}", *TINY)
    assert result.returncode != 0 and "--model_dir" in result.stderr and "Traceback" not in result.stderr
    assert not_a_dir.read_text() == "keep me"


def test_step_zero_check_warns_on_a_bad_start_and_not_on_a_good_one(tmp_path, trained_run):
    good_dir, _ = trained_run
    good = json.loads((good_dir / "initial_loss.json").read_text())
    assert good["within_tolerance"] is True and good["tolerance"] == 0.25
    assert abs(good["initial_loss"] - good["initial_loss_zero_scores"]) <= 0.25 * good["initial_loss_zero_scores"]
    assert good["initial_loss_expected"] == pytest.approx(5.3033, abs=1e-4)  # ln(1 + 200)
    logged = read_scalars(str(good_dir / "tensorboard" / "train"))["initial_loss"]
    assert logged[0][1] == pytest.approx(good["initial_loss"], rel=1e-6), "the figure TensorBoard shows"
    result = run_module(
        "trainers.train",
        f"--model_dir={tmp_path / 'model'}",
        f"--cache_dir={tmp_path / 'cache'}",
        *TINY,
        "--temperature=0.002",  # scores divided by 0.002: a fresh model no longer scores candidates alike
        "--query_features=user_id",  # (a fresh history query, a projected mean of 50 small vectors, stays near 0)
        "--epochs=1",
        "--steps_per_epoch=4",
        "--profile_steps=2,3",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    bad = json.loads((tmp_path / "model" / "initial_loss.json").read_text())
    assert bad["within_tolerance"] is False
    assert abs(bad["initial_loss"] - bad["initial_loss_zero_scores"]) > 0.25 * bad["initial_loss_zero_scores"]
    traces = list((tmp_path / "model" / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert traces, "--profile_steps writes a profiler trace"


def test_several_positives_per_row(tmp_path):
    result = run_module(
        "trainers.train",
        f"--model_dir={tmp_path / 'model'}",
        f"--cache_dir={tmp_path / 'cache'}",
        *TINY,
        "--num_true=3",
        "--epochs=1",
        "--steps_per_epoch=5",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "model" / "config.json").read_text())["loss"]["num_true"] == 3
    expected = read_scalars(str(tmp_path / "model" / "tensorboard" / "train"))["initial_loss_expected"]
    assert expected[0][1] == pytest.approx(5.3132, abs=1e-4)  # ln(3 + 200)


def test_tensorboard_has_throughput_diagnostics_hparams_and_projector(trained_run):
    model_dir, _ = trained_run
    train_scalars = read_scalars(str(model_dir / "tensorboard" / "train"))
    for tag in (
        "batch_loss",
        "examples_per_second",
        "step_time_ms",
        "learning_rate",
        "batch_accidental_hits_removed",
        "batch_mean_log_q_negatives",
        "batch_distinct_negatives",
    ):
        assert tag in train_scalars, f"missing {tag}: {sorted(train_scalars)}"
    assert all(value > 0 for _, value in train_scalars["examples_per_second"])
    assert all(value == pytest.approx(0.005) for _, value in train_scalars["learning_rate"])
    # 200 unique log-uniform negatives per step, and their log Q is below log(1) on a 2000-item corpus.
    assert all(value == 200 for _, value in train_scalars["batch_distinct_negatives"])
    assert all(value < 0 for _, value in train_scalars["batch_mean_log_q_negatives"])
    hparams = hparams_of(str(model_dir / "tensorboard"))
    assert hparams["loss"] == "sampled_softmax" and hparams["num_sampled"] == 200
    assert hparams["subtract_log_q"] is True and hparams["remove_accidental_hits"] is True
    projector_dir = model_dir / "tensorboard" / "projector"
    metadata = (projector_dir / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "item_id\tcount" and len(metadata) == 1 + 2000  # the built-in corpus has no keys
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(projector_dir)), "a run to TensorBoard"
    assert "metadata.tsv" in (projector_dir / "projector_config.pbtxt").read_text()


def test_mixed_precision_trains(tmp_path):
    """mixed_float16 towers on the CPU: the loss-scaled step must still learn (unscaled gradients would not)."""
    result = run_module(
        "trainers.train", f"--model_dir={tmp_path / 'model'}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
        "--mixed_precision", "--epochs=2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    final = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert final["model"]["recall_at_100"] > 1.3 * final["most_popular"]["recall_at_100"]
