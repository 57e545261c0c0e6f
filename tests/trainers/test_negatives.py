"""The trainer with the negatives beyond the sampler (streaming Q, cross-batch memory, hard negatives): the same
losses on two mirrored replicas as on one device, and streaming estimates that survive a restart."""

import json

import numpy as np
import pytest

from tests.conftest import TINY_CORPUS, run_module
from trainers.event_reader import read_scalars

TINY = [*TINY_CORPUS, "--projector_items=0", "--noexport"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        ["--loss=in_batch", "--frequency_estimation=streaming"],
        ["--loss=in_batch", "--cross_batch_batches=3"],
        ["--num_hard_negatives=20"],
    ],
    ids=["streaming", "cross_batch", "hard_negatives"],
)
def test_mirrored_on_two_logical_cpus_gives_the_single_device_losses(tmp_path, cache_dir, flags):
    steps = ["--epochs=1", "--steps_per_epoch=8", "--log_every_steps=1", "--checkpoint_every_steps=0"]
    losses = {}
    for strategy in ("default", "mirrored"):
        model_dir = tmp_path / strategy
        result = run_module(
            "trainers.train", f"--model_dir={model_dir}", f"--cache_dir={cache_dir}", *TINY, *steps, *flags,
            f"--strategy={strategy}", *(["--cpu_replicas=2"] if strategy == "mirrored" else []),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        losses[strategy] = [value for _, value in read_scalars(str(model_dir / "tensorboard" / "train"))["batch_loss"]]
    assert len(losses["default"]) == 8 and len(set(round(value, 3) for value in losses["default"])) > 4
    assert losses["mirrored"] == pytest.approx(losses["default"], abs=1e-4)


def _estimator_state(checkpoint_prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(checkpoint_prefix))
    names = [name for name, _ in tf.train.list_variables(str(checkpoint_prefix)) if "/frequency/" in name]
    assert {name.split("/frequency/")[1].split("/")[0] for name in names} >= {"gap", "weight", "last_step"}, names
    return {name: reader.get_tensor(name) for name in names}


@pytest.mark.slow
def test_streaming_estimates_continue_from_a_checkpoint_where_they_were(tmp_path, cache_dir):
    common = [f"--cache_dir={cache_dir}", *TINY, "--loss=in_batch", "--frequency_estimation=streaming",
              "--steps_per_epoch=10", "--checkpoint_every_steps=10"]
    whole = run_module("trainers.train", f"--model_dir={tmp_path / 'whole'}", *common, "--epochs=2")
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = run_module("trainers.train", f"--model_dir={tmp_path / 'split'}", *common, "--epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_module("trainers.train", f"--model_dir={tmp_path / 'split'}", *common, "--epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((tmp_path / "split" / "run_summary.json").read_text())["restored_from_step"] == 10
    uninterrupted = _estimator_state(tmp_path / "whole" / "checkpoints" / "ckpt-20")
    restored = _estimator_state(tmp_path / "split" / "checkpoints" / "ckpt-20")
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    first_step = next(value for name, value in restored.items() if "first_step" in name)
    assert first_step == 0, "the estimate runs from the first step, not from the restart"
    last_step = next(value for name, value in restored.items() if "last_step" in name)
    assert last_step.max() == 19 and (last_step >= 0).sum() > 100
