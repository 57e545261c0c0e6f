"""The retrieval loss as a Keras layer: a configured sampler feeding one of the losses in `losses.py`."""

import dataclasses
import math
from typing import Optional

import numpy as np
import tensorflow as tf

from retrieval import losses, samplers

# Samplers that draw from the corpus (and need num_sampled < num_items when unique).
CORPUS_SAMPLERS = ("log_uniform", "uniform", "unigram", "mixed")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Everything that changes the loss's math. Names are TensorFlow's (num_sampled, num_true, ...)."""

    loss: str = "sampled_softmax"
    sampler: str = "log_uniform"
    num_sampled: int = 1000
    num_true: int = 1
    unique: bool = True
    subtract_log_q: bool = True
    remove_accidental_hits: bool = True
    label_smoothing: float = 0.0
    temperature: float = 1.0
    focal_gamma: float = 0.0
    nce_positive_weight: float = 1.0
    nce_log_partition: Optional[float] = None  # None: ln(num_items), see losses.nce
    hinge_margin: float = 1.0
    unigram_distortion: float = 0.75
    seed: Optional[int] = None

    def effective_sampler(self) -> str:
        """`in_batch` loss always samples in-batch; `full_softmax` samples nothing."""
        if self.loss == "in_batch":
            return "in_batch"
        if self.loss == "full_softmax":
            return "none"
        return self.sampler

    def validate(self, num_items: int) -> None:
        """Raises ValueError naming the setting (by its flag name) and what is allowed."""
        if self.loss not in losses.LOSSES:
            raise ValueError(f"loss={self.loss!r}; expected one of {', '.join(losses.LOSSES)}")
        if self.sampler not in samplers.SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r}; expected one of {', '.join(samplers.SAMPLERS)}")
        if self.num_sampled < 1:
            raise ValueError(f"num_sampled={self.num_sampled}; expected at least 1")
        if self.num_true < 1:
            raise ValueError(f"num_true={self.num_true}; expected at least 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}; expected a value in [0, 1)")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature={self.temperature}; expected a value > 0")
        if self.focal_gamma < 0.0:
            raise ValueError(f"focal_gamma={self.focal_gamma}; expected a value >= 0")
        if not self.nce_positive_weight > 0.0:
            raise ValueError(f"nce_positive_weight={self.nce_positive_weight}; expected a value > 0")
        if self.focal_gamma and self.loss != "nce":
            raise ValueError(f"focal_gamma applies to loss=nce only, got loss={self.loss}")
        sampler = self.effective_sampler()
        if sampler in CORPUS_SAMPLERS and self.unique and self.num_sampled >= num_items:
            raise ValueError(
                f"num_sampled={self.num_sampled} must be below the corpus size {num_items} when sampling unique "
                "negatives; lower num_sampled or use loss=full_softmax"
            )
        if sampler in ("in_batch", "mixed") and self.num_true != 1:
            raise ValueError(f"sampler={sampler} takes num_true=1 (one positive per row), got {self.num_true}")

    def expected_initial_loss(self) -> Optional[float]:
        """ln(candidate count) for a softmax over uncorrected random scores; None where no such figure holds."""
        if self.loss == "sampled_softmax" and self.sampler in ("log_uniform", "uniform", "unigram"):
            return math.log(self.num_true + self.num_sampled)
        return None


class RetrievalLoss(tf.keras.layers.Layer):
    """Per-example retrieval loss: (query [batch, dim], true ids [batch, num_true], item tower) -> [batch].

    The sampler draws each call's negatives (shared by the batch), the item tower embeds positives and
    negatives together, and the configured loss head scores them. `last_diagnostics` holds the sampler
    diagnostics of the latest call (accidental hits removed, mean log Q of negatives, distinct negatives).
    """

    def __init__(self, config: LossConfig, num_items: int, item_counts: Optional[np.ndarray] = None, **kwargs):
        super().__init__(**kwargs)
        config.validate(num_items)
        self.config = config
        self.num_items = num_items
        self.item_counts = None if item_counts is None else np.asarray(item_counts, dtype=np.float64)
        if config.effective_sampler() in ("unigram",) and self.item_counts is None:
            raise ValueError("sampler=unigram needs item_counts")
        self._item_probability = None
        if self.item_counts is not None and self.item_counts.sum() > 0:
            self._item_probability = tf.constant(self.item_counts / self.item_counts.sum(), tf.float32)
        self.last_diagnostics = {}

    def sample(self, true_ids) -> samplers.SampledCandidates:
        config = self.config
        sampler = config.effective_sampler()
        corpus_sampler = "log_uniform" if sampler == "mixed" else sampler
        if sampler == "in_batch":
            return samplers.in_batch(true_ids, self._item_probability)
        if corpus_sampler == "log_uniform":
            corpus = samplers.log_uniform(true_ids, config.num_sampled, self.num_items, config.unique, config.seed)
        elif corpus_sampler == "uniform":
            corpus = samplers.uniform(true_ids, config.num_sampled, self.num_items, config.unique, config.seed)
        else:
            corpus = samplers.unigram(
                true_ids, config.num_sampled, self.item_counts, config.unigram_distortion, config.unique, config.seed
            )
        if sampler == "mixed":
            return samplers.mixed(samplers.in_batch(true_ids, self._item_probability), corpus)
        return corpus

    def call(self, query_embeddings, true_ids, item_tower):
        config = self.config
        true_ids = tf.cast(tf.reshape(true_ids, [-1, config.num_true]), tf.int64)  # static num_true under tf.distribute
        if config.loss == "full_softmax":
            item_embeddings = item_tower(tf.range(self.num_items, dtype=tf.int64))
            return losses.full_softmax(
                query_embeddings, true_ids, item_embeddings, config.label_smoothing, config.temperature
            )
        candidates = self.sample(tf.stop_gradient(true_ids))
        logits = losses.candidate_logits(
            query_embeddings,
            true_ids,
            item_tower,
            candidates,
            subtract_log_q=config.subtract_log_q and config.loss != "pairwise_hinge",
            remove_accidental_hits=config.remove_accidental_hits,
            temperature=config.temperature,
        )
        self.last_diagnostics = _diagnostics(logits, candidates)
        if config.loss == "nce":
            log_partition = config.nce_log_partition
            if log_partition is None:
                log_partition = math.log(self.num_items)
            return losses.sigmoid_cross_entropy(
                logits._replace(logits=logits.logits - log_partition),
                config.focal_gamma,
                config.nce_positive_weight,
                config.label_smoothing,
            )
        if config.loss == "pairwise_hinge":
            return losses.pairwise_hinge(logits, config.hinge_margin)
        return losses.softmax_cross_entropy(logits, config.label_smoothing)


def _diagnostics(logits: losses.CandidateLogits, candidates: samplers.SampledCandidates):
    """Scalars that say whether the sampler behaves: how many hits were masked, how rare the negatives are."""
    distinct, _ = tf.unique(tf.cast(candidates.ids, tf.int64))
    return {
        "accidental_hits_removed": tf.cast(logits.num_accidental_hits, tf.float32),
        "mean_log_q_negatives": tf.reduce_mean(tf.math.log(tf.cast(candidates.sampled_expected_count, tf.float32))),
        "distinct_negatives": tf.cast(tf.size(distinct), tf.float32),
    }
