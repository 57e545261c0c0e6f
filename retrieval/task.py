"""A retrieval task for one's own Keras or TFRS model: `tfrs.tasks.Retrieval`'s call, every loss of the trainer.

    task = Retrieval(candidate_model, candidates=item_keys, candidate_counts=counts, num_sampled=100)
    loss = task(query_embeddings [batch, dim], candidate_embeddings [batch, dim], candidate_ids=keys [batch])
         = task(query_embeddings, keys)                   (the positives' keys alone; the task embeds them)

One call, in order:
  ids       the positives' keys -> the task's ids in [0, num_items), ranked by candidate_counts (id 0 the most
            frequent) so that log-uniform negatives are Zipfian over popularity, as the trainer's are
  loss      retrieval_loss.RetrievalLoss on those ids, with candidate_model as the item tower (sampled items'
            keys gathered and embedded: sparse updates of the candidate table) -> per-example loss [batch]
  weight    times sample_weight [batch]
  reduce    "sum" over the batch (TFRS's CategoricalCrossentropy(reduction=SUM), so a tutorial's learning rate
            carries over) or "mean" (tf.nn.compute_average_loss: the global batch's mean under tf.distribute)
  metrics   TFRS's factorized metrics (FactorizedTopK) and loss metrics, as tfrs.tasks.Retrieval updates them

Deliberately differs from tfrs.tasks.Retrieval: the candidates of the loss are the ones the configured sampler
draws (log-uniform by default, not the batch), so the positives' ids are required (candidate_ids, TFRS's own
argument); the positives' logits come from candidate_model(ids) rather than the given candidate_embeddings (equal
for a deterministic tower; those embeddings feed the metrics, as in TFRS); a loss over candidate_sampling_probability
is not taken (the sampler knows its Q).
"""

from typing import List, Optional, Sequence

import dataclasses

import numpy as np
import tensorflow as tf

from retrieval import frequency
from retrieval.model import LOSS_REDUCTIONS, reduce_loss
from retrieval.retrieval_loss import LossConfig, RetrievalLoss


def candidates_by_count(keys: np.ndarray, counts: np.ndarray):
    """(keys [n], counts [n]) in the task's id order: count descending, ties by the given order (stable)."""
    order = np.argsort(-np.asarray(counts, np.float64), kind="stable")
    return np.asarray(keys)[order], np.asarray(counts, np.float64)[order]


class Retrieval(tf.keras.layers.Layer):
    """Scalar loss of a batch from query embeddings and the positives' candidate ids (see the module docstring).

    Args:
      candidate_model: candidate keys [n] (or ids [n] without `candidates`) -> embeddings [n, dim].
      candidates: [num_items] every candidate's key (strings or integers) as candidate_model takes them; None when
        candidate_model takes ids in [0, num_items) already ranked by popularity (then give num_items).
      candidate_counts: [num_items] training counts of `candidates` (or of ids): ranks the ids for log-uniform
        negatives and gives Q to in-batch and unigram negatives. Without them the given order is the ranking and
        in-batch negatives go uncorrected (as TFRS's in-batch softmax without sampling probabilities).
      loss_config: retrieval_loss.LossConfig (loss, sampler, num_sampled, subtract_log_q, remove_accidental_hits,
        label_smoothing, ...); keyword settings override its fields, e.g. Retrieval(model, keys, num_sampled=100).
      metrics, loss_metrics: as tfrs.tasks.Retrieval's (FactorizedTopK; Keras metrics of the loss).
      loss_reduction: "sum" (TFRS's) or "mean".
      global_batch_size, embedding_dim: the cross-batch memory's shape (cross_batch_batches > 0 only).
    """

    def __init__(
        self,
        candidate_model,
        candidates: Optional[Sequence] = None,
        candidate_counts: Optional[Sequence[float]] = None,
        num_items: Optional[int] = None,
        loss_config: LossConfig = LossConfig(),
        metrics=None,
        loss_metrics: Optional[List[tf.keras.metrics.Metric]] = None,
        loss_reduction: str = "sum",
        global_batch_size: Optional[int] = None,
        embedding_dim: Optional[int] = None,
        name: Optional[str] = None,
        **loss_settings,
    ):
        super().__init__(name=name)
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={loss_reduction!r}; expected one of {', '.join(LOSS_REDUCTIONS)}")
        self.candidate_model = candidate_model
        keys, counts = self._ranked_candidates(candidates, candidate_counts, num_items)
        self.num_items = int(len(keys)) if keys is not None else int(num_items)
        self.keys = None if keys is None else tf.constant(keys)  # [num_items] string or int64, in id order
        self.key_to_id = None if keys is None else _key_table(self.keys)
        self.loss_config = _with_settings(loss_config, loss_settings)
        self.retrieval_loss = RetrievalLoss(self.loss_config, self.num_items, counts, global_batch_size,
                                            embedding_dim)
        self.loss_reduction = loss_reduction
        self.factorized_metrics = list(metrics) if isinstance(metrics, (list, tuple)) else (
            [] if metrics is None else [metrics])
        self.loss_metrics = list(loss_metrics or [])
        self.training_calls = frequency.replicated_state(tf.constant(0, tf.int64), "training_calls")

    @staticmethod
    def _ranked_candidates(candidates, candidate_counts, num_items):
        """(keys in id order or None, counts in id order or None)."""
        if candidates is None:
            if not num_items:
                raise ValueError("give the candidates' keys (candidates=) or, for a model of ids, num_items=")
            counts = None if candidate_counts is None else np.asarray(candidate_counts, np.float64)
            if counts is not None and len(counts) != num_items:
                raise ValueError(f"candidate_counts has {len(counts)} entries; expected num_items={num_items}")
            return None, counts
        keys = np.asarray(candidates)
        keys = keys.astype(np.int64) if keys.dtype.kind in "iu" else keys  # strings: tf.string (UTF-8)
        if keys.ndim != 1 or len(keys) == 0 or len(np.unique(keys)) != len(keys):
            raise ValueError(f"candidates must be a non-empty list of distinct keys, got shape {keys.shape}")
        if candidate_counts is None:
            return keys, None
        if len(candidate_counts) != len(keys):
            raise ValueError(f"candidate_counts has {len(candidate_counts)} entries; expected one per candidate "
                             f"({len(keys)})")
        return candidates_by_count(keys, candidate_counts)

    def item_tower(self, ids):
        """ids [n] int64 in the task's order -> embeddings [n, dim]: the candidate model on their keys."""
        if self.keys is None:
            return self.candidate_model(ids)
        return self.candidate_model(tf.gather(self.keys, ids))

    def candidate_ids(self, keys):
        """The task's ids of candidate keys [batch] or [batch, num_true] (the same shape), int64; an error for a
        key that is not one of the candidates."""
        if self.key_to_id is None:
            return tf.cast(keys, tf.int64)
        ids = self.key_to_id.lookup(tf.convert_to_tensor(keys, dtype=self.keys.dtype))
        check = tf.debugging.assert_non_negative(ids, message="candidate_ids holds a key that is not in candidates")
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def call(
        self,
        query_embeddings,
        candidate_embeddings,
        sample_weight=None,
        candidate_ids=None,
        compute_metrics: bool = True,
        training=None,
        negative_ids=None,
    ):
        """The batch's loss [] float32.

        query_embeddings: [batch, dim]. candidate_embeddings: the positives' embeddings [batch, dim] with
        candidate_ids [batch] (or [batch, num_true]) their keys; or the keys themselves in its place.
        sample_weight: [batch]. training: pass the model's `training` for the stateful settings (a streaming
        frequency estimate, the cross-batch memory), which change only in training calls. negative_ids:
        [batch, n] keys shown with the row and not chosen (logged negatives), padded with keys outside
        candidates (or -1 ids).
        """
        if candidate_ids is None and not _is_embedding(candidate_embeddings):
            candidate_embeddings, candidate_ids = None, candidate_embeddings
        if candidate_ids is None:
            raise ValueError("Retrieval needs the positives' candidate_ids: its negatives are sampled by id")
        self._check_training_flag(training)
        ids = self.candidate_ids(candidate_ids)
        per_example = self._per_example_loss(query_embeddings, ids, training, negative_ids)
        if sample_weight is not None:
            per_example *= tf.cast(tf.reshape(sample_weight, [-1]), per_example.dtype)
        loss = reduce_loss(per_example, self.loss_reduction)
        updates = [metric.update_state(loss) for metric in self.loss_metrics]
        if compute_metrics and self.factorized_metrics:
            first_ids = ids if ids.shape.rank == 1 else ids[:, 0]  # [batch]: the metrics take one positive a row
            positives = candidate_embeddings if candidate_embeddings is not None else self.item_tower(first_ids)
            updates += [metric.update_state(query_embeddings, positives, true_candidate_ids=candidate_ids,
                                            sample_weight=sample_weight) for metric in self.factorized_metrics]
        with tf.control_dependencies([op for op in updates if op is not None]):
            return tf.identity(loss)

    def _per_example_loss(self, query_embeddings, ids, training, negative_ids):
        """[batch] float32; a training call advances the task's clock (the streaming estimate reads it)."""
        logged = None if negative_ids is None else self._logged_ids(negative_ids)
        if not training:
            return self.retrieval_loss.loss_and_diagnostics(query_embeddings, ids, self.item_tower,
                                                            logged_negatives=logged)[0]
        step = self.training_calls.assign_add(1) - 1
        return self.retrieval_loss.loss_and_diagnostics(query_embeddings, ids, self.item_tower, training=True,
                                                        step=step, logged_negatives=logged)[0]

    def _logged_ids(self, negative_ids):
        """[batch, n] ids of logged negatives, -1 where the key is padding (not a candidate)."""
        if self.key_to_id is None:
            return tf.cast(negative_ids, tf.int64)
        return self.key_to_id.lookup(tf.convert_to_tensor(negative_ids, dtype=self.keys.dtype))

    def _check_training_flag(self, training):
        config = self.loss_config
        stateful = config.frequency_estimation == "streaming" or config.cross_batch_batches
        if stateful and training is None:
            raise ValueError("frequency_estimation='streaming' and cross_batch_batches change state in training "
                             "calls only: call the task with training=training")


def _is_embedding(values) -> bool:
    """Whether a call's second argument holds embeddings (floating point) rather than candidate keys or ids."""
    return tf.convert_to_tensor(values).dtype.is_floating


def _with_settings(config: LossConfig, settings) -> LossConfig:
    """config with the keyword settings in place of its fields; ValueError naming an unknown setting."""
    fields = {field.name for field in dataclasses.fields(LossConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"unknown loss setting(s) {', '.join(unknown)}; expected LossConfig fields: "
                         f"{', '.join(sorted(fields))}")
    return dataclasses.replace(config, **settings)


def _key_table(keys: tf.Tensor) -> tf.lookup.StaticHashTable:
    """key -> id (its position in keys [n]), -1 for any other key."""
    initializer = tf.lookup.KeyValueTensorInitializer(keys, tf.range(tf.size(keys, out_type=tf.int64)))
    return tf.lookup.StaticHashTable(initializer, default_value=-1)
