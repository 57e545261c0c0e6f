"""A run that learns nothing says so: TensorFlow Recommenders' tutorial settings under this project's mean loss
(and --loss_reduction=sum, TFRS's, which learns with them), and a setting that leaves rows without negatives.
The warnings are read from run_summary.json (trainers/health.py defines them)."""

import json

import pytest

from tests.conftest import TINY_CORPUS, run_module
from trainers import health
from trainers.event_reader import read_scalars

TINY = [*TINY_CORPUS, "--projector_items=0", "--noexport"]
# TFRS's basic retrieval tutorial: user-id embeddings, in-batch softmax, Adagrad at 0.1 (its batch of 8192 is 256
# here: the corpus is small, and the mean divides the gradients by the batch size all the same).
TFRS_TUTORIAL = [
    "--loss=in_batch", "--optimizer=adagrad", "--learning_rate=0.1", "--epochs=1", "--query_features=user_id",
    "--nonormalize", "--temperature=1",  # TFRS's raw dot products
]


def _train(tmp_path, name, *flags):
    model_dir = tmp_path / name
    result = run_module("trainers.train", f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
                        *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((model_dir / "run_summary.json").read_text())
    return model_dir, summary, json.loads((model_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_tfrs_tutorial_settings_warn_under_the_mean_and_learn_with_loss_reduction_sum(tmp_path):
    _, mean_summary, mean_metrics = _train(tmp_path, "mean", *TFRS_TUTORIAL)
    assert mean_summary["final_step"] >= health.CHECK_STEP
    [warning] = mean_summary["warnings"]
    assert warning["kind"] == "loss_not_moving" and warning["step"] == health.CHECK_STEP
    assert warning["relative_change"] <= health.TOLERANCE
    assert "--loss_reduction=sum" in warning["message"] and "--learning_rate" in warning["message"]

    model_dir, sum_summary, sum_metrics = _train(tmp_path, "sum", *TFRS_TUTORIAL, "--loss_reduction=sum")
    assert sum_summary["warnings"] == []
    assert json.loads((model_dir / "config.json").read_text())["optimization"]["loss_reduction"] == "sum"
    assert "--loss_reduction=sum" in (model_dir / "flags.txt").read_text().splitlines()
    popular = sum_metrics["most_popular"]["recall_at_100"]
    assert sum_metrics["model"]["recall_at_100"] > 1.5 * popular > 3 * mean_metrics["model"]["recall_at_100"]


@pytest.mark.slow
def test_in_batch_loss_with_a_batch_of_one_warns_that_rows_have_no_negatives(tmp_path):
    model_dir, summary, _ = _train(tmp_path, "one", "--loss=in_batch", "--batch_size=1", "--epochs=1",
                                   "--steps_per_epoch=5", "--log_every_steps=1")
    assert [warning["kind"] for warning in summary["warnings"]] == ["no_negatives"]
    assert "--batch_size=1" in summary["warnings"][0]["message"]
    assert {value for _, value in read_scalars(str(model_dir / "tensorboard" / "train"))["batch_loss"]} == {0.0}


@pytest.mark.slow
def test_summed_loss_is_the_global_batch_sum_under_mirrored_replicas(tmp_path):
    """--loss_reduction=sum on two logical CPUs logs the losses of one device, each batch_size times the mean's."""
    steps = ["--loss=in_batch", "--epochs=1", "--steps_per_epoch=6", "--log_every_steps=1",
             "--checkpoint_every_steps=0"]
    losses = {}
    for name, flags in [("mean", ["--strategy=default"]), ("sum", ["--strategy=default", "--loss_reduction=sum"]),
                        ("sum_mirrored", ["--strategy=mirrored", "--cpu_replicas=2", "--loss_reduction=sum"])]:
        model_dir, summary, _ = _train(tmp_path, name, *steps, *flags)
        losses[name] = [value for _, value in read_scalars(str(model_dir / "tensorboard" / "train"))["batch_loss"]]
        assert len(losses[name]) == 6
    assert summary["num_replicas"] == 2
    assert losses["sum_mirrored"] == pytest.approx(losses["sum"], rel=1e-4)
    assert losses["sum"][0] == pytest.approx(256 * losses["mean"][0], rel=1e-4), "the same first step, summed"
