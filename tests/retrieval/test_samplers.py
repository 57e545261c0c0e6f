"""Samplers' expected counts against the formulas and the LOSSES.md reference values."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from retrieval import samplers


def test_log_uniform_probability_formula_sums_to_one():
    range_max = 1000
    probability = samplers.log_uniform_probability(np.arange(range_max), range_max)
    assert probability.sum() == pytest.approx(1.0)
    assert probability[0] == pytest.approx(np.log(2) / np.log(range_max + 1))
    assert np.all(np.diff(probability) < 0), "id 0 is the most likely"


def test_reference_expected_counts_from_losses_md():
    probability = samplers.log_uniform_probability([10, 100, 180], 600_000)
    counts = samplers.expected_count(probability, num_sampled=10, num_tries=10, unique=True)
    np.testing.assert_allclose(counts, [0.06539904, 0.00740513, 0.00414114], rtol=1e-6)


def _infer_num_tries(candidates, num_sampled, range_max):
    """The num_tries for which the unique-sampling formula gives the op's count of its rarest sampled id.

    The rarest id's count is far from saturation (1.0), so it pins num_tries down to one value.
    """
    probability = samplers.log_uniform_probability(candidates.ids.numpy(), range_max)
    rarest = np.argmin(probability)
    observed = candidates.sampled_expected_count.numpy()[rarest]
    for num_tries in range(num_sampled, 100 * num_sampled):
        if np.isclose(samplers.expected_count(probability[rarest], num_sampled, num_tries, True), observed, rtol=1e-5):
            return num_tries
    raise AssertionError("no num_tries reproduces the op's expected count")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_tensorflow_log_uniform_counts_follow_the_unique_formula(seed):
    num_sampled, range_max = 64, 2000
    true_ids = tf.constant([[10, 100, 180]], tf.int64)
    candidates = samplers.log_uniform(true_ids, num_sampled, range_max, unique=True, seed=seed)
    ids = candidates.ids.numpy()
    assert len(set(ids.tolist())) == num_sampled, "unique sampling returns distinct ids"
    num_tries = _infer_num_tries(candidates, num_sampled, range_max)
    assert num_tries > num_sampled, "64 draws from a Zipfian 2000 repeat with near certainty"
    for ids_, observed in ((ids, candidates.sampled_expected_count), ([10, 100, 180], candidates.true_expected_count[0])):
        expected = samplers.expected_count(
            samplers.log_uniform_probability(ids_, range_max), num_sampled, num_tries, unique=True
        )
        np.testing.assert_allclose(observed.numpy(), expected, rtol=1e-5)


def test_non_unique_counts_are_num_sampled_times_probability():
    num_sampled, range_max = 50, 300
    candidates = samplers.log_uniform(tf.constant([[0], [7]], tf.int64), num_sampled, range_max, unique=False, seed=9)
    expected = num_sampled * samplers.log_uniform_probability(candidates.ids.numpy(), range_max)
    np.testing.assert_allclose(candidates.sampled_expected_count.numpy(), expected, rtol=1e-5)
    uniform = samplers.uniform(tf.constant([[0]], tf.int64), num_sampled, range_max, unique=False, seed=9)
    np.testing.assert_allclose(uniform.sampled_expected_count.numpy(), num_sampled / range_max, rtol=1e-5)


def test_log_uniform_draws_follow_zipf():
    """Empirical frequency of ids over many non-unique draws matches num_sampled * P within sampling noise."""
    range_max, num_sampled, rounds = 100, 1000, 20
    counts = np.zeros(range_max)
    for seed in range(rounds):
        ids = samplers.log_uniform(tf.constant([[0]], tf.int64), num_sampled, range_max, unique=False, seed=seed).ids
        counts += np.bincount(ids.numpy(), minlength=range_max)
    expected = rounds * num_sampled * samplers.log_uniform_probability(np.arange(range_max), range_max)
    np.testing.assert_allclose(counts[:5], expected[:5], rtol=0.1)


def test_unigram_uses_distorted_counts():
    item_counts = np.array([100.0, 10.0, 1.0, 0.0, 50.0])
    candidates = samplers.unigram(tf.constant([[0]], tf.int64), 3, item_counts, distortion=0.75, unique=False, seed=1)
    weights = item_counts**0.75
    expected = 3 * weights[candidates.ids.numpy()] / weights.sum()
    np.testing.assert_allclose(candidates.sampled_expected_count.numpy(), expected, rtol=1e-5)
    assert 3 not in candidates.ids.numpy(), "an item never seen is never sampled"


def test_in_batch_counts_are_batch_frequencies():
    candidates = samplers.in_batch(tf.constant([4, 2, 4, 4], tf.int64))
    np.testing.assert_array_equal(candidates.ids.numpy(), [4, 2, 4, 4])
    np.testing.assert_allclose(candidates.sampled_expected_count.numpy(), [3, 1, 3, 3])
    np.testing.assert_allclose(candidates.true_expected_count.numpy()[:, 0], [3, 1, 3, 3])
    np.testing.assert_array_equal(candidates.own_positive.numpy(), np.eye(4, dtype=bool))
    probability = tf.constant([0.1, 0.2, 0.3, 0.1, 0.3])
    with_probability = samplers.in_batch(tf.constant([4, 2], tf.int64), probability)
    np.testing.assert_allclose(with_probability.sampled_expected_count.numpy(), [0.6, 0.6])


def test_registry_builds_every_sampler_by_name_and_mixed_takes_any_corpus_sampler():
    true_ids = tf.constant([[3], [0], [7], [3]], tf.int64)
    counts = np.arange(50, 0, -1)
    settings = samplers.SamplerSettings(num_items=50, num_sampled=10, seed=1, item_counts=counts)
    for name in samplers.SAMPLERS:
        candidates = samplers.make_sampler(name, settings)(true_ids)
        assert candidates.true_expected_count.shape == (4, 1), name
    mixed_uniform = samplers.make_sampler("mixed", dataclasses.replace(settings, mixed_corpus_sampler="uniform"))
    candidates = mixed_uniform(true_ids)
    # 4 in-batch columns, then 10 uniform ones, all with the uniform sampler's Q: 10 x 1/50 when no draw was
    # rejected, 1 - (1 - 1/50) ** num_tries otherwise (LOSSES.md), the same for every id.
    assert candidates.ids.shape == (14,) and candidates.own_positive.shape == (4, 14)
    corpus_q = candidates.sampled_expected_count.numpy()[4:]
    np.testing.assert_allclose(corpus_q, np.full(10, corpus_q[0]), rtol=1e-6)
    assert 0.18 <= corpus_q[0] < 0.5
    with pytest.raises(ValueError, match=r"sampler='zipf'; expected one of log_uniform, uniform"):
        samplers.make_sampler("zipf", settings)
    with pytest.raises(ValueError, match="mixed_corpus_sampler='in_batch'"):
        samplers.make_sampler("mixed", dataclasses.replace(settings, mixed_corpus_sampler="in_batch"))
