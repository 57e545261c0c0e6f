"""Retrieval losses over an item tower: sampled softmax, NCE, full softmax, in-batch softmax, pairwise hinge.

Every sampled loss runs one pipeline on one logit matrix (as TFRS's `Retrieval.call` does):

    candidate_logits: scores of [true items | sampled items] -> temperature -> subtract log Q
                      -> drop accidental hits -> (logits [batch, num_true + num_sampled], labels, valid)
    head:             softmax cross entropy (sampled_softmax, in-batch), sigmoid cross entropy (nce),
                      or hinge (pairwise_hinge)

In-batch and corpus-sampled negatives differ only in where the candidates and their Q come from (see
`samplers.py`). The losses take the item tower itself, a callable from item ids [n] to embeddings [n, dim], so
sampled negatives run through the same tower as the positives (feature-rich towers work) and only the rows
they touch receive gradients (an embedding lookup gives IndexedSlices: sparse updates of the item table).

All losses return a per-example loss [batch] in float32, whatever the towers' compute dtype (mixed
precision), and leave the reduction to the caller (`tf.nn.compute_average_loss` under tf.distribute).

Conventions follow TensorFlow's `tf.nn.sampled_softmax_loss` / `tf.nn.nce_loss` (nn_impl.py,
`_compute_sampled_logits`) so that, given the same sampled candidates, the results are equal:
- each true column's label is 1 / num_true;
- log Q is subtracted from true and sampled logits alike;
- an accidental hit is a sampled id equal to any true id of its row.
Where we deliberately differ: masked logits are set to a large negative value with `tf.where` instead of
adding -FLOAT_MAX, and their labels are zero, so label smoothing never puts mass on a masked candidate (which
would make the loss infinite). TensorFlow has no temperature; ours divides scores before the log-Q correction,
as TFRS does.
"""

from typing import Callable, NamedTuple, Optional

import tensorflow as tf

from retrieval.samplers import SampledCandidates

LOSSES = ("sampled_softmax", "nce", "full_softmax", "in_batch", "pairwise_hinge")

# A logit this low has exp() == 0 in float32 and keeps softmax / sigmoid losses finite.
MASKED_LOGIT = -1e9

ItemTower = Callable[[tf.Tensor], tf.Tensor]


class CandidateLogits(NamedTuple):
    """The pipeline's output, all [batch, num_true + num_sampled] float32 (valid: bool); true items first."""

    logits: tf.Tensor
    labels: tf.Tensor
    valid: tf.Tensor
    num_true: int = 1


def _true_ids_2d(true_ids):
    true_ids = tf.convert_to_tensor(true_ids)
    if true_ids.shape.rank == 1:
        true_ids = true_ids[:, tf.newaxis]
    return tf.cast(true_ids, tf.int64)


def candidate_logits(
    query_embeddings,
    true_ids,
    item_tower: ItemTower,
    candidates: SampledCandidates,
    *,
    subtract_log_q: bool = True,
    remove_accidental_hits: bool = True,
    temperature: float = 1.0,
) -> CandidateLogits:
    """Scores of each row's true items and of the shared sampled items, corrected and masked.

    Args:
      query_embeddings: [batch, dim].
      true_ids: [batch, num_true] (or [batch]) item ids.
      item_tower: item ids [n] -> embeddings [n, dim]; called once on the true and sampled ids together.
      candidates: a sampler's output (`samplers.SampledCandidates`), ids [num_sampled].
    Returns:
      CandidateLogits with logits, labels (1 / num_true on true columns) and valid, each
      [batch, num_true + num_sampled]; invalid (masked) columns have logit MASKED_LOGIT and label 0.
    """
    true_ids = _true_ids_2d(true_ids)
    sampled_ids = tf.cast(candidates.ids, tf.int64)
    batch_size = tf.shape(true_ids)[0]
    num_true = true_ids.shape[1]
    dim = tf.shape(query_embeddings)[-1]

    flat_true = tf.reshape(true_ids, [-1])
    embeddings = item_tower(tf.concat([flat_true, sampled_ids], axis=0))
    embeddings = tf.cast(embeddings, tf.float32)
    query = tf.cast(query_embeddings, tf.float32)
    num_flat_true = tf.shape(flat_true)[0]
    true_embeddings = tf.reshape(embeddings[:num_flat_true], [batch_size, num_true, dim])
    sampled_embeddings = embeddings[num_flat_true:]

    true_logits = tf.einsum("bd,btd->bt", query, true_embeddings)  # [batch, num_true]
    sampled_logits = tf.matmul(query, sampled_embeddings, transpose_b=True)  # [batch, num_sampled]

    if temperature != 1.0:
        true_logits /= temperature
        sampled_logits /= temperature

    if subtract_log_q:
        true_logits -= tf.math.log(tf.cast(candidates.true_expected_count, tf.float32))
        sampled_logits -= tf.math.log(tf.cast(candidates.sampled_expected_count, tf.float32))[tf.newaxis, :]

    invalid_sampled = tf.zeros(tf.shape(sampled_logits), dtype=tf.bool)
    if candidates.own_positive is not None:
        invalid_sampled = candidates.own_positive
    if remove_accidental_hits:
        hits = tf.reduce_any(tf.equal(true_ids[:, :, tf.newaxis], sampled_ids[tf.newaxis, tf.newaxis, :]), axis=1)
        invalid_sampled = tf.logical_or(invalid_sampled, hits)
    sampled_logits = tf.where(invalid_sampled, tf.constant(MASKED_LOGIT, tf.float32), sampled_logits)

    logits = tf.concat([true_logits, sampled_logits], axis=1)
    labels = tf.concat(
        [tf.fill(tf.shape(true_logits), 1.0 / num_true), tf.zeros(tf.shape(sampled_logits), tf.float32)], axis=1
    )
    valid = tf.concat([tf.ones(tf.shape(true_logits), tf.bool), tf.logical_not(invalid_sampled)], axis=1)
    return CandidateLogits(logits, labels, valid, num_true)


def smooth_labels(labels, valid, label_smoothing: float):
    """(1 - epsilon) * labels + epsilon / V on valid columns, V = valid columns per row; 0 on invalid ones.

    labels, valid: [batch, num_candidates]. With epsilon = 0.1 and V = 3: 0.9333 for the label, 0.0333 elsewhere.
    """
    if not label_smoothing:
        return labels
    valid = tf.cast(valid, labels.dtype)
    num_valid = tf.reduce_sum(valid, axis=1, keepdims=True)
    return ((1.0 - label_smoothing) * labels + label_smoothing / num_valid) * valid


def softmax_cross_entropy(candidates: CandidateLogits, label_smoothing: float = 0.0):
    """Per-example softmax cross entropy [batch], from logsumexp (tf.nn's fused op), never log(softmax)."""
    labels = smooth_labels(candidates.labels, candidates.valid, label_smoothing)
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=candidates.logits)


def sigmoid_cross_entropy(
    candidates: CandidateLogits, focal_gamma: float = 0.0, positive_weight: float = 1.0, label_smoothing: float = 0.0
):
    """Per-example NCE loss [batch]: sigmoid cross entropy summed over the candidates of a row.

    focal_gamma > 0 down-weights easy candidates by (1 - p_t) ** gamma (focal loss; 0 gives plain cross
    entropy). positive_weight multiplies the positive term (balanced cross entropy: alpha / (1 - alpha)).
    The powers are taken as exp(gamma * log_sigmoid(.)) so logits of +-1e4 keep finite values and gradients.
    """
    logits = candidates.logits
    labels = smooth_labels(candidates.labels, candidates.valid, label_smoothing)
    log_p = tf.math.log_sigmoid(logits)
    log_not_p = tf.math.log_sigmoid(-logits)
    positive_term = -labels * log_p
    negative_term = -(1.0 - labels) * log_not_p
    if focal_gamma:
        positive_term *= tf.exp(focal_gamma * log_not_p)
        negative_term *= tf.exp(focal_gamma * log_p)
    if positive_weight != 1.0:
        positive_term *= positive_weight
    per_candidate = tf.where(candidates.valid, positive_term + negative_term, 0.0)
    return tf.reduce_sum(per_candidate, axis=1)


def pairwise_hinge(candidates: CandidateLogits, margin: float = 1.0):
    """Per-example mean of max(0, margin + s(negative) - s(positive)) over valid (positive, negative) pairs.

    Pairs each of the num_true positive columns with each valid sampled column: [batch, num_true, num_sampled].
    """
    num_true = candidates.num_true
    positives = candidates.logits[:, :num_true, tf.newaxis]  # [batch, num_true, 1]
    negatives = candidates.logits[:, tf.newaxis, num_true:]  # [batch, 1, num_sampled]
    pair_valid = tf.broadcast_to(candidates.valid[:, tf.newaxis, num_true:], tf.shape(positives - negatives))
    hinge = tf.where(pair_valid, tf.nn.relu(margin + negatives - positives), 0.0)
    num_pairs = tf.reduce_sum(tf.cast(pair_valid, tf.float32), axis=[1, 2])
    return tf.math.divide_no_nan(tf.reduce_sum(hinge, axis=[1, 2]), num_pairs)


def full_softmax(query_embeddings, true_ids, item_embeddings, label_smoothing: float = 0.0, temperature: float = 1.0):
    """Exact softmax cross entropy over the whole corpus: the baseline sampled losses approximate.

    Args:
      query_embeddings: [batch, dim]; true_ids: [batch, num_true]; item_embeddings: [num_items, dim].
    Returns:
      [batch] float32; each true item has label 1 / num_true, V = num_items for label smoothing.
    """
    true_ids = _true_ids_2d(true_ids)
    num_items = tf.shape(item_embeddings)[0]
    logits = tf.matmul(
        tf.cast(query_embeddings, tf.float32), tf.cast(item_embeddings, tf.float32), transpose_b=True
    )
    if temperature != 1.0:
        logits /= temperature
    if true_ids.shape[1] == 1 and not label_smoothing:
        # Sparse labels: no [batch, num_items] label matrix, which at a million items is gigabytes.
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=true_ids[:, 0], logits=logits)
    labels = tf.reduce_sum(tf.one_hot(true_ids, num_items, dtype=tf.float32), axis=1) / true_ids.shape[1]
    if label_smoothing:
        labels = (1.0 - label_smoothing) * labels + label_smoothing / tf.cast(num_items, tf.float32)
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def sampled_softmax(
    query_embeddings,
    true_ids,
    item_tower: ItemTower,
    candidates: SampledCandidates,
    *,
    subtract_log_q: bool = True,
    remove_accidental_hits: bool = True,
    label_smoothing: float = 0.0,
    temperature: float = 1.0,
):
    """Sampled softmax [batch]: softmax cross entropy over the true and sampled candidates of each row.

    With in-batch candidates (`samplers.in_batch`) this is the in-batch softmax; with `samplers.mixed`, the
    mixed one. Defaults follow tf.nn.sampled_softmax_loss (remove_accidental_hits=True).
    """
    logits = candidate_logits(
        query_embeddings,
        true_ids,
        item_tower,
        candidates,
        subtract_log_q=subtract_log_q,
        remove_accidental_hits=remove_accidental_hits,
        temperature=temperature,
    )
    return softmax_cross_entropy(logits, label_smoothing)


def nce(
    query_embeddings,
    true_ids,
    item_tower: ItemTower,
    candidates: SampledCandidates,
    *,
    subtract_log_q: bool = True,
    remove_accidental_hits: bool = False,
    label_smoothing: float = 0.0,
    temperature: float = 1.0,
    focal_gamma: float = 0.0,
    positive_weight: float = 1.0,
    log_partition: float = 0.0,
):
    """NCE [batch]: sigmoid cross entropy, positives -> 1 / num_true, sampled -> 0, summed per row.

    NCE scores are absolute (self-normalised): at the optimum, score - log_partition ~ log p(item | query). A
    softmax only compares scores within a row, but a full-corpus ranking of NCE scores compares items that
    training rarely touched (still at their initial score ~0) with trained ones (pushed to ~log p, far below 0),
    and the untouched items win. Subtracting log_partition = ln(num_items) starts every item at the uniform
    log-probability instead (Mnih & Teh 2012 start the biases there), which the trainer does by default; the
    equivalent in tf.nn.nce_loss is biases of -log_partition. Defaults follow tf.nn.nce_loss
    (remove_accidental_hits=False, log_partition=0).
    """
    logits = candidate_logits(
        query_embeddings,
        true_ids,
        item_tower,
        candidates,
        subtract_log_q=subtract_log_q,
        remove_accidental_hits=remove_accidental_hits,
        temperature=temperature,
    )
    return sigmoid_cross_entropy(
        logits._replace(logits=logits.logits - log_partition), focal_gamma, positive_weight, label_smoothing
    )
