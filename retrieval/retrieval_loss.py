"""The retrieval loss of a two-tower model: its configuration (`LossConfig`) and the Keras layer that runs it.

    RetrievalLoss(query [batch, dim], true ids [batch, num_true], item tower) -> per-example loss [batch]
      = sampler (samplers.make_sampler, by name) -> losses.sampled_loss (candidate logits -> head)
      or losses.full_softmax over the whole corpus (the baseline the sampled losses approximate).
"""

import dataclasses
import math
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from retrieval import losses, samplers

# Samplers that draw from the corpus (and need num_sampled < num_items when unique).
CORPUS_SAMPLERS = (*samplers.CORPUS_SAMPLERS, "mixed")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Everything that changes the loss's math. Names are TensorFlow's (num_sampled, num_true, ...) and the
    trainer's flags'."""

    loss: str = "sampled_softmax"
    sampler: str = "log_uniform"
    mixed_corpus_sampler: str = "log_uniform"  # the corpus half of sampler=mixed
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
        if self.mixed_corpus_sampler not in samplers.CORPUS_SAMPLERS:
            raise ValueError(
                f"mixed_corpus_sampler={self.mixed_corpus_sampler!r}; expected one of "
                f"{', '.join(samplers.CORPUS_SAMPLERS)}"
            )
        for name, value, lowest in (("num_sampled", self.num_sampled, 1), ("num_true", self.num_true, 1)):
            if value < lowest:
                raise ValueError(f"{name}={value}; expected at least {lowest}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}; expected a value in [0, 1)")
        for name, value in (("temperature", self.temperature), ("nce_positive_weight", self.nce_positive_weight)):
            if not value > 0.0:
                raise ValueError(f"{name}={value}; expected a value > 0")
        if self.focal_gamma < 0.0:
            raise ValueError(f"focal_gamma={self.focal_gamma}; expected a value >= 0")
        if self.focal_gamma and self.loss != "nce":
            raise ValueError(f"focal_gamma applies to loss=nce only, got loss={self.loss}")
        self._validate_sampler(num_items)

    def _validate_sampler(self, num_items: int) -> None:
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
        if self.loss == "sampled_softmax" and self.sampler in samplers.CORPUS_SAMPLERS:
            return math.log(self.num_true + self.num_sampled)
        return None

    def head_options(self, num_items: int) -> Dict[str, float]:
        """The keyword options of this loss's head in losses.HEADS."""
        if self.loss == "nce":
            log_partition = math.log(num_items) if self.nce_log_partition is None else self.nce_log_partition
            return dict(
                label_smoothing=self.label_smoothing,
                focal_gamma=self.focal_gamma,
                positive_weight=self.nce_positive_weight,
                log_partition=log_partition,
            )
        if self.loss == "pairwise_hinge":
            return dict(margin=self.hinge_margin)
        return dict(label_smoothing=self.label_smoothing)

    def sampler_settings(self, num_items: int, item_counts: Optional[np.ndarray]) -> samplers.SamplerSettings:
        return samplers.SamplerSettings(
            num_items=num_items,
            num_sampled=self.num_sampled,
            unique=self.unique,
            seed=self.seed,
            item_counts=item_counts,
            unigram_distortion=self.unigram_distortion,
            mixed_corpus_sampler=self.mixed_corpus_sampler,
        )


class RetrievalLoss(tf.keras.layers.Layer):
    """Per-example retrieval loss: (query [batch, dim], true ids [batch, num_true], item tower) -> [batch].

    `sample` (the configured sampler from samplers.SAMPLERS) draws each call's negatives, shared by the batch;
    the item tower embeds positives and negatives together; losses.sampled_loss scores them with the configured
    head. `loss_and_diagnostics` also returns the sampler diagnostics of the call, which the model reports to
    Keras as metrics.
    """

    def __init__(self, config: LossConfig, num_items: int, item_counts: Optional[np.ndarray] = None, **kwargs):
        super().__init__(**kwargs)
        config.validate(num_items)
        self.config = config
        self.num_items = num_items
        self.item_counts = None if item_counts is None else np.asarray(item_counts, dtype=np.float64)
        sampler = config.effective_sampler()
        settings = config.sampler_settings(num_items, self.item_counts)
        self.sample = None if sampler == "none" else samplers.make_sampler(sampler, settings)
        self._head_options = config.head_options(num_items)

    def call(self, query_embeddings, true_ids, item_tower):
        return self.loss_and_diagnostics(query_embeddings, true_ids, item_tower)[0]

    def loss_and_diagnostics(self, query_embeddings, true_ids, item_tower) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """(per-example loss [batch] float32, {diagnostic name: scalar float32}; empty for full_softmax)."""
        config = self.config
        true_ids = tf.cast(tf.reshape(true_ids, [-1, config.num_true]), tf.int64)  # static num_true under tf.distribute
        if config.loss == "full_softmax":
            item_embeddings = item_tower(tf.range(self.num_items, dtype=tf.int64))
            loss = losses.full_softmax(
                query_embeddings, true_ids, item_embeddings, config.label_smoothing, config.temperature
            )
            return loss, {}
        candidates = self.sample(tf.stop_gradient(true_ids))
        loss, logits = losses.sampled_loss(
            config.loss,
            query_embeddings,
            true_ids,
            item_tower,
            candidates,
            self._head_options,
            subtract_log_q=config.subtract_log_q and config.loss != "pairwise_hinge",
            remove_accidental_hits=config.remove_accidental_hits,
            temperature=config.temperature,
        )
        return loss, diagnostics(logits, candidates)


DIAGNOSTICS = ("accidental_hits_removed", "mean_log_q_negatives", "distinct_negatives")


def diagnostics(logits: losses.CandidateLogits, candidates: samplers.SampledCandidates) -> Dict[str, tf.Tensor]:
    """Scalars that say whether the sampler behaves: how many hits were masked, how rare the negatives are."""
    distinct, _ = tf.unique(tf.cast(candidates.ids, tf.int64))
    values = (
        tf.cast(logits.num_accidental_hits, tf.float32),
        tf.reduce_mean(tf.math.log(tf.cast(candidates.sampled_expected_count, tf.float32))),
        tf.cast(tf.size(distinct), tf.float32),
    )
    return dict(zip(DIAGNOSTICS, values))
