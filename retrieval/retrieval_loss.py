"""The retrieval loss of a two-tower model: its configuration (`LossConfig`) and the Keras layer that runs it.

    RetrievalLoss(query [batch, dim], true ids [batch, num_true], item tower) -> per-example loss [batch]
      = sampler (samplers.make_sampler, by name) -> losses.sampled_loss (candidate logits -> head)
      or losses.full_softmax over the whole corpus (the baseline the sampled losses approximate).
"""

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from retrieval import cross_batch, frequency, losses, mining, samplers

# Samplers that draw from the corpus (and need num_sampled < num_items when unique).
CORPUS_SAMPLERS = (*samplers.CORPUS_SAMPLERS, "mixed")
FREQUENCY_ESTIMATIONS = ("corpus", "streaming")
MIN_EXPECTED_COUNT = samplers.MIN_EXPECTED_COUNT  # a streaming estimate is 0 for an item not seen yet


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Everything that changes the loss's math. Names are TensorFlow's (num_sampled, num_true, ...) and the
    trainer's flags'."""

    # Each setting's default, bounds or choices and --help text (the metadata the trainer makes its flags from).
    loss: str = dataclasses.field(
        default="sampled_softmax", metadata={"help": "Training loss.", "choices": tuple(losses.LOSSES)}
    )
    sampler: str = dataclasses.field(
        default="log_uniform",
        metadata={"help": "Negative sampler for sampled losses.", "choices": tuple(samplers.SAMPLERS)},
    )
    mixed_corpus_sampler: str = dataclasses.field(
        default="log_uniform",
        metadata={"help": "The corpus sampler whose negatives --sampler=mixed adds to the in-batch ones.",
                  "choices": tuple(samplers.CORPUS_SAMPLERS)},
    )
    num_sampled: int = dataclasses.field(
        default=1000, metadata={"help": "Negatives sampled per step (shared by the batch).", "lower_bound": 1}
    )
    num_true: int = dataclasses.field(default=1, metadata={"help": "Positives per row.", "lower_bound": 1})
    unique: bool = dataclasses.field(default=True, metadata={"help": "Sample negatives without replacement."})
    subtract_log_q: bool = dataclasses.field(
        default=True, metadata={"help": "Subtract log expected count from candidate logits."}
    )
    remove_accidental_hits: bool = dataclasses.field(
        default=True, metadata={"help": "Mask sampled negatives equal to a true item of the row."}
    )
    # [0, 1) and > 0: checked by validate() and by the trainer's flag validators (open bounds absl cannot say).
    label_smoothing: float = dataclasses.field(default=0.0, metadata={"help": "Label smoothing epsilon in [0, 1)."})
    temperature: float = dataclasses.field(
        default=1.0, metadata={"help": "Scores are divided by this before the loss."}
    )
    focal_gamma: float = dataclasses.field(
        default=0.0,
        metadata={"help": "Focal-loss gamma for --loss=nce (0: plain cross entropy).", "lower_bound": 0.0},
    )
    nce_positive_weight: float = dataclasses.field(
        default=1.0, metadata={"help": "Weight of the positive term for --loss=nce."}
    )
    nce_log_partition: Optional[float] = dataclasses.field(
        default=None,  # ln(num_items), see head_options and losses.nce
        metadata={"help": "Constant subtracted from NCE logits (default ln(num_items): untrained items start at the "
                          "uniform log-probability, so full-corpus rankings are not led by items training never "
                          "touched). 0 is tf.nn.nce_loss."},
    )
    hinge_margin: float = dataclasses.field(default=1.0, metadata={"help": "Margin for --loss=pairwise_hinge."})
    unigram_distortion: float = dataclasses.field(
        default=0.75, metadata={"help": "--sampler=unigram draws items in proportion to count ** this."}
    )
    # Q of in-batch negatives: "corpus" (training counts, else counts in the batch) or "streaming" (estimated
    # from the stream of batches, retrieval/frequency.py).
    frequency_estimation: str = dataclasses.field(
        default="corpus",
        metadata={"help": "Q of in-batch (and mixed, cross-batch) negatives: corpus = training counts (counts in the "
                          "batch where the corpus has none); streaming = estimated from the stream of batches (Yi et "
                          "al. 2019; follows drift).",
                  "choices": FREQUENCY_ESTIMATIONS},
    )
    frequency_buckets: int = dataclasses.field(
        default=0,  # 0: one bucket per item, no collisions
        metadata={"help": "--frequency_estimation=streaming: hashed array size (0: one per item).", "lower_bound": 0},
    )
    frequency_learning_rate: float = dataclasses.field(
        default=0.01,
        metadata={"help": "--frequency_estimation=streaming: the moving average's alpha (smaller: steadier, slower "
                          "to follow drift)."},
    )
    cross_batch_batches: int = dataclasses.field(
        default=0,
        metadata={"help": "Cross-batch negatives: the item embeddings of the last N global batches (no gradient); "
                          "0: off.", "lower_bound": 0},
    )
    num_hard_negatives: int = dataclasses.field(
        default=0,
        metadata={"help": "Keep each row's K highest-scoring negatives (TFRS semantics); 0: all.", "lower_bound": 0},
    )
    logged_negative_weight: float = dataclasses.field(
        default=1.0,
        metadata={"help": "Logged negatives (data.prepare --negative_column): each counts this many times in a "
                          "softmax (log w is added to its logit; for NCE that shifts its logit)."},
    )
    # Not a setting of its own: the trainer gives every loss its run's seed (trainers.run_config.RunConfig).
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
        for name, value in (("focal_gamma", self.focal_gamma), ("frequency_buckets", self.frequency_buckets),
                            ("cross_batch_batches", self.cross_batch_batches),
                            ("num_hard_negatives", self.num_hard_negatives)):
            if value < 0:
                raise ValueError(f"{name}={value}; expected a value >= 0")
        if self.frequency_estimation not in FREQUENCY_ESTIMATIONS:
            raise ValueError(
                f"frequency_estimation={self.frequency_estimation!r}; expected one of {', '.join(FREQUENCY_ESTIMATIONS)}"
            )
        if not 0.0 < self.frequency_learning_rate <= 1.0:
            raise ValueError(f"frequency_learning_rate={self.frequency_learning_rate}; expected a value in (0, 1]")
        if self.frequency_estimation == "streaming" and not (
            self.effective_sampler() in ("in_batch", "mixed") or self.cross_batch_batches
        ):
            raise ValueError(
                "frequency_estimation=streaming gives Q to in-batch, mixed and cross-batch negatives; with "
                f"sampler={self.effective_sampler()} and no cross_batch_batches it would change nothing"
            )
        if not 0.0 < self.logged_negative_weight < float("inf"):
            raise ValueError(f"logged_negative_weight={self.logged_negative_weight}; expected a finite value > 0")
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
        if self.loss == "full_softmax" and (self.cross_batch_batches or self.num_hard_negatives):
            raise ValueError("cross_batch_batches and num_hard_negatives apply to sampled losses, not full_softmax")
        if self.cross_batch_batches and self.num_true != 1:
            raise ValueError(f"cross_batch_batches takes num_true=1 (one positive per row), got {self.num_true}")

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

    The pipeline of one call (losses.sampled_loss), on one candidate matrix per batch:
      sample        the configured sampler (samplers.SAMPLERS) draws negatives shared by the batch; in-batch Q
                    from corpus counts or a streaming estimate (frequency_estimation)
      logits        true and sampled items through the item tower -> temperature -> log Q -> accidental hits
      + memory      cross_batch_batches > 0: the last batches' item embeddings (no gradient), corrected and masked
      + logged      the row's logged negatives (shown, not chosen): no log-Q correction, weighted
      mining        num_hard_negatives > 0: each row's K highest-scoring negatives
      head          softmax / sigmoid cross entropy / hinge
    `loss_and_diagnostics` also returns the sampler diagnostics of the call, which the model reports to Keras as
    metrics. State (a streaming estimate, the memory) changes only in training calls.
    """

    def __init__(
        self,
        config: LossConfig,
        num_items: int,
        item_counts: Optional[np.ndarray] = None,
        global_batch_size: Optional[int] = None,
        embedding_dim: Optional[int] = None,
        **kwargs,
    ):
        """global_batch_size, embedding_dim: the cross-batch memory's shape (needed when cross_batch_batches)."""
        super().__init__(**kwargs)
        config.validate(num_items)
        self.config = config
        self.num_items = num_items
        self.item_counts = None if item_counts is None else np.asarray(item_counts, dtype=np.float64)
        self.frequency = self._make_frequency_estimator(config, num_items)
        self.memory = None
        if config.cross_batch_batches:
            if not global_batch_size or not embedding_dim:
                raise ValueError("cross_batch_batches needs the global batch size and the embedding dimension")
            self.memory = cross_batch.CrossBatchMemory(config.cross_batch_batches, global_batch_size, embedding_dim)
        self.global_batch_size = global_batch_size
        settings = dataclasses.replace(
            config.sampler_settings(num_items, self.item_counts), in_batch_expected_count=self._frequency_q()
        )
        sampler = config.effective_sampler()
        self.sample = None if sampler == "none" else samplers.make_sampler(sampler, settings)
        self._head_options = config.head_options(num_items)

    @staticmethod
    def _make_frequency_estimator(config: LossConfig, num_items: int):
        if config.frequency_estimation != "streaming":
            return None
        buckets = config.frequency_buckets or num_items
        return frequency.StreamingFrequencyEstimator(buckets, config.frequency_learning_rate)

    def _frequency_q(self) -> Optional[samplers.ExpectedCount]:
        """Q of in-batch candidates from the streaming estimate (floored: 0 before an item is first seen)."""
        if self.frequency is None:
            return None
        return lambda ids: tf.maximum(self.frequency.expected_count(ids), MIN_EXPECTED_COUNT)

    def positive_expected_count(self, ids):
        """Q of items as positives of a batch (what in-batch and memory negatives are drawn from): the streaming
        estimate, else global_batch_size x corpus frequency, else 1 (no correction). ids: any shape."""
        streaming = self._frequency_q()
        if streaming is not None:
            return streaming(ids)
        if self.item_counts is None or not self.global_batch_size:
            return tf.ones(tf.shape(ids), tf.float32)
        probability = tf.constant(self.item_counts / max(self.item_counts.sum(), 1.0), tf.float32)
        return tf.maximum(tf.gather(probability, ids) * float(self.global_batch_size), MIN_EXPECTED_COUNT)

    def call(self, query_embeddings, true_ids, item_tower):
        return self.loss_and_diagnostics(query_embeddings, true_ids, item_tower)[0]

    def loss_and_diagnostics(
        self, query_embeddings, true_ids, item_tower, training: bool = False, step=None, logged_negatives=None
    ) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """(per-example loss [batch] float32, {diagnostic name: scalar float32}; empty for full_softmax).

        training: update the streaming estimate (at `step`, the global step) and the memory. logged_negatives:
        [batch, n] item ids shown with the row and not chosen, -1 padded (or None).
        """
        config = self.config
        true_ids = tf.cast(tf.reshape(true_ids, [-1, config.num_true]), tf.int64)  # static num_true under tf.distribute
        if config.loss == "full_softmax":
            item_embeddings = item_tower(tf.range(self.num_items, dtype=tf.int64))
            loss = losses.full_softmax(
                query_embeddings, true_ids, item_embeddings, config.label_smoothing, config.temperature
            )
            return loss, {}
        if training and self.frequency is not None:
            self.frequency.update(true_ids[:, 0], step)  # before reading Q, as the paper does
        candidates = self.sample(tf.stop_gradient(true_ids))
        extra_steps = self._extra_steps(query_embeddings, true_ids, item_tower, logged_negatives)
        loss, logits = losses.sampled_loss(
            config.loss,
            query_embeddings,
            true_ids,
            item_tower,
            candidates,
            self._head_options,
            extra_steps,
            subtract_log_q=self._subtract_log_q(),
            remove_accidental_hits=config.remove_accidental_hits,
            temperature=config.temperature,
        )
        if training and self.memory is not None:  # after the memory was read: this batch is next step's
            positives = true_ids[:, 0]
            self.memory.write(item_tower(positives), positives, self.positive_expected_count(positives))
        return loss, diagnostics(logits, candidates)

    def _subtract_log_q(self) -> bool:
        return self.config.subtract_log_q and self.config.loss != "pairwise_hinge"

    def _extra_steps(self, query_embeddings, true_ids, item_tower, logged_negatives) -> List[Callable]:
        """The pipeline's steps between the candidate logits and the head, in order (see the class docstring)."""
        steps = []
        if self.memory is not None:
            steps.append(lambda logits: self._append_memory(logits, query_embeddings, true_ids))
        if logged_negatives is not None:
            steps.append(lambda logits: self._append_logged(logits, query_embeddings, true_ids, item_tower,
                                                            logged_negatives))
        if self.config.num_hard_negatives:
            steps.append(lambda logits: mining.hard_negatives(logits, self.config.num_hard_negatives))
        return steps

    def _append_memory(self, logits, query_embeddings, true_ids):
        """The memory's items as negatives shared by every row: Q read now (fresher than at write time), accidental
        hits and empty slots masked."""
        contents = self.memory.read()
        masked = cross_batch.masked_positions(true_ids, contents.ids, contents.valid)
        expected_count = self.positive_expected_count(tf.maximum(contents.ids, 0))  # [memory_size]
        return losses.append_candidates(
            logits, query_embeddings, contents.embeddings, expected_count, masked,
            subtract_log_q=self._subtract_log_q(), temperature=self.config.temperature,
        )

    def _append_logged(self, logits, query_embeddings, true_ids, item_tower, logged_negatives):
        """Each row's logged negatives as its own extra columns: not sampled, so no log-Q correction; a weight w
        counts each w times in the softmax normaliser (log w added to its logit). Padding (-1) and logged items
        equal to a true item of the row are masked."""
        logged = tf.cast(logged_negatives, tf.int64)  # [batch, n]
        batch_size, num_logged = tf.shape(logged)[0], tf.shape(logged)[1]
        embeddings = tf.reshape(item_tower(tf.reshape(tf.maximum(logged, 0), [-1])), [batch_size, num_logged, -1])
        is_true = tf.reduce_any(logged[:, :, tf.newaxis] == true_ids[:, tf.newaxis, :], axis=-1)  # [batch, n]
        masked = tf.where(tf.logical_or(logged < 0, is_true))  # [k, 2]
        weight = tf.fill(tf.shape(logged), tf.constant(1.0 / self.config.logged_negative_weight, tf.float32))
        return losses.append_candidates(
            logits, query_embeddings, embeddings, weight, masked, subtract_log_q=True,
            temperature=self.config.temperature,
        )


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
