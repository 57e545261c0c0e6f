"""retrieval.task.Retrieval, the task a TFRS model drops in: its loss against tf.nn on the same candidates, the
tutorial model trained with model.fit (one device and MirroredStrategy on logical CPUs), and its refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from retrieval.task import Retrieval, candidates_by_count
from tests.conftest import REPO_ROOT
from tests.retrieval import tutorial_model

KEYS = np.array(["c", "a", "e", "b", "d", "g", "f", "h", "i", "j"])
COUNTS = np.array([1, 5, 2, 5, 9, 0, 3, 4, 1, 2], np.float64)


def test_candidates_are_ranked_by_count_ties_in_the_given_order():
    keys, counts = candidates_by_count(KEYS, COUNTS)
    # d (9), a (5) before b (5) as given, h (4), f (3), e (2) before j (2), c (1) before i (1), g (0)
    assert keys.tolist() == ["d", "a", "b", "h", "f", "e", "j", "c", "i", "g"]
    assert counts.tolist() == [9, 5, 5, 4, 3, 2, 2, 1, 1, 0]


def _recording_sampler(task):
    """Keeps each candidate set the task's own sampler draws, so tf.nn can be given the same ones."""
    drawn, sample = [], task.retrieval_loss.sample
    task.retrieval_loss.sample = lambda true_ids: drawn.append(sample(true_ids)) or drawn[-1]
    return drawn


def _task_and_batch(**settings):
    candidate_model = tutorial_model.lookup_embedding(np.sort(KEYS), dim=4, seed=3)
    task = Retrieval(candidate_model, candidates=KEYS, candidate_counts=COUNTS, num_sampled=4, seed=5, **settings)
    positives = np.array(["a", "d", "d", "j", "g", "b"])
    queries = tf.random.stateless_normal([len(positives), 4], seed=[1, 2])
    return task, candidate_model, queries, positives


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sampled_softmax_equals_tf_nn_on_the_same_candidates(reduction):
    task, candidate_model, queries, positives = _task_and_batch(loss_reduction=reduction)
    drawn = _recording_sampler(task)
    weight = np.array([1.0, 2.0, 0.5, 1.0, 0.0, 3.0], np.float32)
    loss = task(queries, candidate_model(positives), sample_weight=weight, candidate_ids=positives)
    ids = task.candidate_ids(positives)
    assert ids.numpy().tolist() == [1, 0, 0, 6, 9, 2]  # the ids of candidates_by_count's order
    candidates = drawn[0]
    reference = tf.nn.sampled_softmax_loss(
        weights=candidate_model(task.keys), biases=tf.zeros([10]), labels=ids[:, None], inputs=queries,
        num_sampled=4, num_classes=10, remove_accidental_hits=True,
        sampled_values=(candidates.ids, candidates.true_expected_count, candidates.sampled_expected_count))
    weighted = reference * weight
    expected = tf.reduce_sum(weighted) if reduction == "sum" else tf.reduce_mean(weighted)
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-5)


def test_nce_equals_tf_nn_nce_loss_on_the_same_candidates():
    task, candidate_model, queries, positives = _task_and_batch(loss="nce", nce_log_partition=0.0,
                                                                remove_accidental_hits=False)
    drawn = _recording_sampler(task)
    loss = task(queries, positives)  # the keys alone: the task embeds the positives
    candidates = drawn[0]
    reference = tf.nn.nce_loss(
        weights=candidate_model(task.keys), biases=tf.zeros([10]), labels=task.candidate_ids(positives)[:, None],
        inputs=queries, num_sampled=4, num_classes=10,
        sampled_values=(candidates.ids, candidates.true_expected_count, candidates.sampled_expected_count))
    np.testing.assert_allclose(loss.numpy(), tf.reduce_sum(reference).numpy(), rtol=1e-5)


def test_refuses_unknown_keys_settings_and_a_stateful_call_without_training():
    task, _, queries, positives = _task_and_batch()
    with pytest.raises(tf.errors.InvalidArgumentError, match="not in candidates"):
        task(queries, np.array(["a", "zz", "b", "c", "d", "e"]))
    with pytest.raises(ValueError, match="unknown loss setting.*num_negatives"):
        Retrieval(tf.keras.layers.Embedding(10, 4), num_items=10, num_negatives=5)
    with pytest.raises(ValueError, match="distinct keys"):
        Retrieval(tf.keras.layers.Embedding(10, 4), candidates=["a", "a"])
    streaming, _, _, _ = _task_and_batch(loss="in_batch", frequency_estimation="streaming")
    with pytest.raises(ValueError, match="training=training"):
        streaming(queries, positives)


def test_the_tutorial_model_with_the_task_swapped_learns_with_fit():
    tf.keras.utils.set_random_seed(0)
    result = tutorial_model.train_and_measure(tf.distribute.get_strategy())
    # 120 movies in 12 topics of 10: chance is 10 / 120; a model that learned each user's topic gets most.
    assert result["recall_before"] < 0.2 and result["recall_after"] > 0.6, result
    assert result["factorized_top_10"] == pytest.approx(result["recall_after"], abs=0.02)  # TFRS's metric, by title
    mixed = tutorial_model.train_and_measure(tf.distribute.get_strategy(), epochs=3, sampler="mixed")
    assert mixed["recall_after"] > 0.5, mixed


@pytest.mark.slow
def test_the_tutorial_model_trains_under_mirrored_strategy(tmp_path):
    output = tmp_path / "result.json"
    command = [sys.executable, "-m", "tests.retrieval.tutorial_model", "--cpu_replicas=2", f"--output={output}"]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["num_replicas"] == 2 and result["recall_after"] > 0.5 > result["recall_before"], result
    assert result["mirrored_step_max_difference"] < 1e-6, result
