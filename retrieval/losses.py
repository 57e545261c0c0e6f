"""Retrieval losses over an item tower: sampled softmax, NCE, full softmax, in-batch softmax, pairwise hinge.

Every sampled loss runs one pipeline on one logit matrix (as TFRS's `Retrieval.call` does):

    candidate_logits: scores of [true items | sampled items] -> temperature -> subtract log Q
                      -> drop accidental hits -> logits [batch, num_true + num_sampled] (+ masked positions)
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
Where we deliberately differ: masked logits are overwritten with a large negative value (a sparse scatter at the
hit positions) instead of adding -FLOAT_MAX; hits are found for every duplicate sampled id; masked labels are
zero, so label smoothing never puts mass on a masked candidate (which would make the loss infinite).
TensorFlow has no temperature; ours divides scores before the log-Q correction, as TFRS does.
"""

import dataclasses
from typing import Callable, Optional, Sequence, Tuple, Union

import tensorflow as tf

from retrieval.samplers import SampledCandidates

LOSSES = ("sampled_softmax", "nce", "full_softmax", "in_batch", "pairwise_hinge")

# A logit this low has exp() == 0 in float32 and keeps softmax / sigmoid losses finite.
MASKED_LOGIT = -1e9

ItemTower = Callable[[tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class CandidateLogits:
    """The pipeline's output: logits [batch, num_true + num_sampled] float32, true items first.

    The logits are held as column blocks, left to right (`candidate_logits` makes [true | sampled], each extra
    step may append one): the default softmax head reads the blocks as they are, and the [batch, candidates]
    concatenation, with the copy of its gradient back into each block, is made only for a head that needs one
    matrix (`logits`). A single tensor given as `blocks` is one block.

    Masked candidates (accidental hits, a row's own positive among in-batch negatives) hold MASKED_LOGIT and are
    listed in masked_positions [num_masked, 2] int64 (row, column of `logits`), each once. Labels (1 / num_true on
    the true columns) and the dense valid mask are derived on demand: the default softmax head needs neither, and
    each [batch, num_candidates] tensor not built is a pass over memory saved in the forward and the backward step.
    """

    blocks: Union[tf.Tensor, Tuple[tf.Tensor, ...]]
    num_true: int = 1
    masked_positions: Optional[tf.Tensor] = None
    num_accidental_hits: Optional[tf.Tensor] = None  # scalar int: masked positions that are accidental hits

    def __post_init__(self):
        if not isinstance(self.blocks, tuple):
            object.__setattr__(self, "blocks", (self.blocks,))

    @property
    def logits(self):
        """[batch, num_candidates]: the blocks side by side."""
        return self.blocks[0] if len(self.blocks) == 1 else tf.concat(self.blocks, axis=1)

    def labels(self):
        """[batch, num_candidates] float32: 1 / num_true on the true columns, 0 elsewhere."""
        batch_size, num_candidates = tf.shape(self.logits)[0], tf.shape(self.logits)[1]
        true_columns = tf.fill([batch_size, self.num_true], 1.0 / self.num_true)
        return tf.concat([true_columns, tf.zeros([batch_size, num_candidates - self.num_true])], axis=1)

    def valid(self):
        """[batch, num_candidates] bool: False at the masked positions."""
        valid = tf.ones(tf.shape(self.logits), tf.bool)
        if self.masked_positions is None:
            return valid
        return tf.tensor_scatter_nd_update(
            valid, self.masked_positions, tf.zeros(tf.shape(self.masked_positions)[:1], tf.bool)
        )


def _true_ids_2d(true_ids):
    true_ids = tf.convert_to_tensor(true_ids)
    if true_ids.shape.rank == 1:
        true_ids = true_ids[:, tf.newaxis]
    return tf.cast(true_ids, tf.int64)


def accidental_hits(true_ids, sampled_ids):
    """(row, sampled column) of every sampled id equal to a true id of its row: [num_hits, 2] int64, each once.

    true_ids: [batch, num_true]; sampled_ids: [num_sampled]. Sort + binary search, O((batch x num_true +
    num_sampled) log num_sampled), instead of comparing [batch, num_true, num_sampled]. Deliberately differs from
    tf.nn.compute_accidental_hits, which keeps one position per sampled id and so misses the duplicates that
    unique=False sampling draws.
    """
    num_true = tf.shape(true_ids)[1]
    num_sampled = tf.shape(sampled_ids, out_type=tf.int64)[0]
    order = tf.argsort(sampled_ids, stable=True)
    sorted_ids = tf.gather(sampled_ids, order)
    flat_true = tf.reshape(true_ids, [-1])
    matches = tf.ragged.range(
        tf.searchsorted(sorted_ids, flat_true, side="left"), tf.searchsorted(sorted_ids, flat_true, side="right")
    )  # [batch * num_true, (positions in sorted_ids)]
    rows = matches.value_rowids() // tf.cast(num_true, tf.int64)
    columns = tf.cast(tf.gather(order, matches.flat_values), tf.int64)
    keys, _ = tf.unique(rows * num_sampled + columns)  # a row holding one id twice would list its hit twice
    return tf.stack([keys // num_sampled, keys % num_sampled], axis=1)


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
      CandidateLogits, logits [batch, num_true + num_sampled]; masked columns hold MASKED_LOGIT.
    """
    true_ids = _true_ids_2d(true_ids)
    sampled_ids = tf.cast(candidates.ids, tf.int64)
    batch_size = tf.shape(true_ids)[0]
    num_true = true_ids.shape[1]
    dim = tf.shape(query_embeddings)[-1]

    flat_true = tf.reshape(true_ids, [-1])
    query = tf.cast(query_embeddings, tf.float32)
    if candidates.ids_are_true_ids:  # in-batch on one replica: the sampled block is the true column, embedded once
        sampled_embeddings = tf.cast(item_tower(flat_true), tf.float32)  # [batch, dim] (num_true is 1)
        true_embeddings = sampled_embeddings[:, tf.newaxis, :]  # [batch, 1, dim]
    else:
        embeddings = tf.cast(item_tower(tf.concat([flat_true, sampled_ids], axis=0)), tf.float32)
        # One split, whose gradient is one concatenation, where two slices would each scatter into zeros.
        flat_true_embeddings, sampled_embeddings = tf.split(
            embeddings, [tf.shape(flat_true)[0], tf.shape(sampled_ids)[0]]
        )  # [batch * num_true, dim], [num_sampled, dim]
        true_embeddings = tf.reshape(flat_true_embeddings, [batch_size, num_true, dim])

    true_logits = _true_logits(query, true_embeddings)  # [batch, num_true]
    sampled_logits = tf.matmul(query, sampled_embeddings, transpose_b=True)  # [batch, num_sampled]

    if temperature != 1.0:
        true_logits /= temperature
        sampled_logits /= temperature

    if subtract_log_q:
        true_logits -= tf.math.log(tf.cast(candidates.true_expected_count, tf.float32))
        # A bias add, which TensorFlow's CPU remapper fuses into the matmul when no temperature sits between.
        sampled_logits = tf.nn.bias_add(
            sampled_logits, -tf.math.log(tf.cast(candidates.sampled_expected_count, tf.float32))
        )

    # Positions in [batch, num_sampled] to mask: the row's own positive (in-batch) and accidental hits.
    masked = tf.zeros([0, 2], tf.int64)
    if candidates.own_positive is not None:
        masked = tf.where(candidates.own_positive)
    num_hits = tf.constant(0, tf.int64)
    if remove_accidental_hits:
        hits = accidental_hits(true_ids, sampled_ids)
        if candidates.own_positive is not None:  # the diagonal is the positive itself, not an accidental hit
            hits = tf.boolean_mask(hits, tf.logical_not(tf.gather_nd(candidates.own_positive, hits)))
        masked = tf.concat([masked, hits], axis=0)
        num_hits = tf.shape(hits, out_type=tf.int64)[0]
    if candidates.own_positive is not None or remove_accidental_hits:
        sampled_logits = _mask(sampled_logits, masked)
    masked_positions = masked + tf.constant([[0, num_true]], tf.int64)  # columns of the full candidate matrix
    return CandidateLogits((true_logits, sampled_logits), num_true, masked_positions, num_hits)


def _true_logits(query, true_embeddings):
    """[batch, num_true] scores of query [batch, dim] with its true items' embeddings [batch, num_true, dim]."""
    if true_embeddings.shape[1] == 1:  # a row-wise product: cheaper than the batched matmul einsum makes
        return tf.reduce_sum(query * true_embeddings[:, 0], axis=1, keepdims=True)
    return tf.einsum("bd,btd->bt", query, true_embeddings)


@tf.custom_gradient
def _mask(logits, positions):
    """One copy of logits [batch, n] with MASKED_LOGIT at positions [k, 2].

    The gradient passes through unchanged, where tf.tensor_scatter_nd_update's own writes zeros at the positions
    into a second copy: every head already gives a MASKED_LOGIT zero gradient (its exp() and sigmoid are exactly 0,
    or a tf.where on `valid` drops it), so both are the same (tests/retrieval/test_losses.py checks each head).
    """
    masked = tf.tensor_scatter_nd_update(
        logits, positions, tf.fill(tf.shape(positions)[:1], tf.constant(MASKED_LOGIT, tf.float32))
    )

    def gradient(upstream):  # upstream [batch, n], zero at the positions
        return upstream, None

    return masked, gradient


def append_candidates(
    candidates: CandidateLogits,
    query_embeddings,
    embeddings,
    expected_count,
    masked,
    *,
    subtract_log_q: bool = True,
    temperature: float = 1.0,
) -> CandidateLogits:
    """Extra negative columns after the existing ones, scored, corrected and masked as `candidate_logits` does.

    Args:
      candidates: the logits so far [batch, c].
      query_embeddings: [batch, dim].
      embeddings: [n, dim] extra candidates shared by every row (a cross-batch memory), or [batch, n, dim] a
        row's own (logged negatives). Used as given: wrap them in tf.stop_gradient for constants.
      expected_count: [n] or [batch, n] their Q (subtracted as log Q when subtract_log_q).
      masked: [k, 2] int64 (row, column within the n new columns) to mask.
    Returns:
      CandidateLogits [batch, c + n]; the new masked positions are listed after the old ones.
    """
    query = tf.cast(query_embeddings, tf.float32)  # [batch, dim]
    embeddings = tf.cast(embeddings, tf.float32)
    if embeddings.shape.rank == 3:
        extra = tf.einsum("bd,bnd->bn", query, embeddings)  # [batch, n]
    else:
        extra = tf.matmul(query, embeddings, transpose_b=True)  # [batch, n]
    if temperature != 1.0:
        extra /= temperature
    if subtract_log_q:
        extra -= tf.math.log(tf.cast(expected_count, tf.float32))  # [n] broadcasts over rows
    extra = _mask(extra, masked)  # [batch, n]
    offset = tf.add_n([tf.shape(block, out_type=tf.int64)[1] for block in candidates.blocks])  # c
    old_masked = candidates.masked_positions if candidates.masked_positions is not None else tf.zeros([0, 2], tf.int64)
    return dataclasses.replace(
        candidates,
        blocks=candidates.blocks + (extra,),  # [batch, c + n] side by side
        masked_positions=tf.concat([old_masked, masked + tf.stack([tf.constant(0, tf.int64), offset])], axis=0),
    )


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
    """Per-example softmax cross entropy [batch], as logsumexp(logits) - sum(labels * logits), never log(softmax).

    Equal to tf.nn.softmax_cross_entropy_with_logits (-sum(labels * log_softmax) = logsumexp - sum(labels * z)
    whenever each row's labels sum to 1, as ours do, smoothed or not), but cheaper: without smoothing the label
    term is the mean of the num_true true columns, so no [batch, num_candidates] label matrix is built, and
    TensorFlow's fused op also writes its backward matrix in the forward pass. The logsumexp is taken per block
    and the blocks' results combined, so the blocks are never concatenated (see docs/benchmarks.md for both).
    Masked columns (MASKED_LOGIT, label 0) add exp() == 0 to the sum.
    """
    if label_smoothing:
        logits = candidates.logits  # [batch, num_candidates]
        labels = smooth_labels(candidates.labels(), candidates.valid(), label_smoothing)
        return tf.reduce_logsumexp(logits, axis=1) - tf.reduce_sum(labels * logits, axis=1)
    first = candidates.blocks[0]
    true_logits = first if first.shape[1] == candidates.num_true else first[:, : candidates.num_true]
    block_logsumexps = tf.stack([logsumexp_rows(block) for block in candidates.blocks], axis=1)  # [batch, blocks]
    return tf.reduce_logsumexp(block_logsumexps, axis=1) - tf.reduce_mean(true_logits, axis=1)


@tf.custom_gradient
def logsumexp_rows(logits):
    """[batch, n] -> [batch] log(sum(exp(logits))) along rows, from the rows' softmax.

    tf.reduce_logsumexp's gradient, taken through its graph, tiles the upstream gradient over [batch, n] before
    it multiplies; here the gradient is softmax x upstream in one broadcast product, from the softmax the forward
    pass kept. The softmax is one fused kernel (oneDNN's on CPU, where max, subtract, exp and sum as four ops take
    twice its time: TensorFlow's own exp is not built for AVX2), and the log-sum-exp is read from it: the row
    maximum's probability is exp(max - logsumexp), never below 1 / n, so logsumexp = max - log(its probability).
    A row of MASKED_LOGIT gives a finite value (-1e9 + log n), as tf.reduce_logsumexp does.
    """
    probabilities = tf.nn.softmax(logits)  # [batch, n]
    row_max = tf.reduce_max(logits, axis=1)  # [batch]
    logsumexp = row_max - tf.math.log(tf.reduce_max(probabilities, axis=1))  # [batch]

    def gradient(upstream):  # upstream [batch]
        return probabilities * upstream[:, tf.newaxis]  # softmax x upstream, [batch, n]

    return logsumexp, gradient


def sigmoid_cross_entropy(
    candidates: CandidateLogits,
    focal_gamma: float = 0.0,
    positive_weight: float = 1.0,
    label_smoothing: float = 0.0,
    log_partition: float = 0.0,
):
    """Per-example NCE loss [batch]: sigmoid cross entropy summed over the candidates of a row.

    log_partition is subtracted from every logit first (see `nce`: the one place it is applied). focal_gamma > 0
    down-weights easy candidates by (1 - p_t) ** gamma (focal loss; 0 gives plain cross entropy).
    positive_weight multiplies the positive term (balanced cross entropy: alpha / (1 - alpha)). The powers are
    taken as exp(gamma * log_sigmoid(.)) so logits of +-1e4 keep finite values and gradients.
    """
    logits = candidates.logits - log_partition if log_partition else candidates.logits
    valid = candidates.valid()
    labels = smooth_labels(candidates.labels(), valid, label_smoothing)
    log_p = tf.math.log_sigmoid(logits)
    log_not_p = tf.math.log_sigmoid(-logits)
    positive_term = -labels * log_p
    negative_term = -(1.0 - labels) * log_not_p
    if focal_gamma:
        positive_term *= tf.exp(focal_gamma * log_not_p)
        negative_term *= tf.exp(focal_gamma * log_p)
    if positive_weight != 1.0:
        positive_term *= positive_weight
    per_candidate = tf.where(valid, positive_term + negative_term, 0.0)
    return tf.reduce_sum(per_candidate, axis=1)


def pairwise_hinge(candidates: CandidateLogits, margin: float = 1.0):
    """Per-example mean of max(0, margin + s(negative) - s(positive)) over valid (positive, negative) pairs.

    Pairs each of the num_true positive columns with each valid sampled column: [batch, num_true, num_sampled].
    """
    num_true = candidates.num_true
    positives = candidates.logits[:, :num_true, tf.newaxis]  # [batch, num_true, 1]
    negatives = candidates.logits[:, tf.newaxis, num_true:]  # [batch, 1, num_sampled]
    pair_valid = tf.broadcast_to(candidates.valid()[:, tf.newaxis, num_true:], tf.shape(positives - negatives))
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


# Head name -> per-example loss [batch] of a CandidateLogits. A head takes only the options it uses.
HEADS = {
    "sampled_softmax": softmax_cross_entropy,
    "in_batch": softmax_cross_entropy,
    "nce": sigmoid_cross_entropy,
    "pairwise_hinge": pairwise_hinge,
}


def sampled_loss(
    head: str,
    query_embeddings,
    true_ids,
    item_tower: ItemTower,
    candidates: SampledCandidates,
    head_options: Optional[dict] = None,
    extra_steps: Sequence[Callable[[CandidateLogits], CandidateLogits]] = (),
    **logit_options,
):
    """The one composition every sampled loss runs: `candidate_logits` (logit_options: subtract_log_q,
    remove_accidental_hits, temperature), then each of extra_steps in order (more candidates: a cross-batch memory,
    logged negatives; hard-negative mining), then the head named `head` (HEADS) with head_options
    (label_smoothing; focal_gamma, positive_weight, log_partition for nce; margin for pairwise_hinge).

    Returns (per-example loss [batch] float32, the CandidateLogits the head scored).
    """
    logits = candidate_logits(query_embeddings, true_ids, item_tower, candidates, **logit_options)
    for step in extra_steps:
        logits = step(logits)
    return HEADS[head](logits, **(head_options or {})), logits


def sampled_softmax(
    query_embeddings, true_ids, item_tower: ItemTower, candidates: SampledCandidates, *, label_smoothing=0.0,
    **logit_options,
):
    """Sampled softmax [batch]: softmax cross entropy over the true and sampled candidates of each row.

    logit_options (keyword): subtract_log_q=True, remove_accidental_hits=True, temperature=1.0; the defaults
    follow tf.nn.sampled_softmax_loss. With in-batch candidates (`samplers.in_batch`) this is the in-batch
    softmax; with `samplers.mixed`, the mixed one.
    """
    head_options = dict(label_smoothing=label_smoothing)
    return sampled_loss("sampled_softmax", query_embeddings, true_ids, item_tower, candidates, head_options,
                        **logit_options)[0]


def nce(
    query_embeddings,
    true_ids,
    item_tower: ItemTower,
    candidates: SampledCandidates,
    *,
    remove_accidental_hits: bool = False,
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    positive_weight: float = 1.0,
    log_partition: float = 0.0,
    **logit_options,
):
    """NCE [batch]: sigmoid cross entropy, positives -> 1 / num_true, sampled -> 0, summed per row.

    logit_options (keyword): subtract_log_q=True, temperature=1.0. The defaults follow tf.nn.nce_loss
    (remove_accidental_hits=False, log_partition=0).

    NCE scores are absolute (self-normalised): at the optimum, score - log_partition ~ log p(item | query). A
    softmax only compares scores within a row, but a full-corpus ranking of NCE scores compares items that
    training rarely touched (still at their initial score ~0) with trained ones (pushed to ~log p, far below 0),
    and the untouched items win. Subtracting log_partition = ln(num_items) starts every item at the uniform
    log-probability instead (Mnih & Teh 2012 start the biases there), which the trainer does by default; the
    equivalent in tf.nn.nce_loss is biases of -log_partition.
    """
    head_options = dict(
        label_smoothing=label_smoothing, focal_gamma=focal_gamma, positive_weight=positive_weight,
        log_partition=log_partition,
    )
    return sampled_loss("nce", query_embeddings, true_ids, item_tower, candidates, head_options,
                        remove_accidental_hits=remove_accidental_hits, **logit_options)[0]
