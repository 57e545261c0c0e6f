"""Hard-negative mining: keep each row's true candidates and only its k highest-scoring negatives.

TFRS's `tasks.Retrieval(num_hard_negatives=k)` (layers/loss.py `HardNegativeMining`): after the scores have been
divided by the temperature, corrected by log Q and masked, each row keeps its positive and the k negatives
with the largest logits; the loss then runs over those k + 1 columns only. The softmax gradient of a negative is
its probability, so the dropped (low-scoring) negatives contributed little; mining spends the loss on the
negatives the model confuses with the positive.

For a row i with true columns T = [0, num_true) and negative logits z_i,j (j in the sampled columns):

    kept(i) = T  +  the k columns j with the largest z_i,j, valid ones first     (k capped at num_sampled)
    mined logits [batch, num_true + k] = [z_i,T | z_i,kept, in decreasing order]

Differences from TFRS, for `losses.CandidateLogits`:
- True columns stay first, so `labels()` (1 / num_true on the first num_true columns) holds, and num_true > 1
  works: TFRS adds MAX_FLOAT to the positive's score to keep it in its top-k, which assumes one positive.
- Masked candidates (accidental hits, a row's own positive) are ranked below every valid one whatever their
  value, and if a row has fewer than k valid negatives the masked ones it keeps stay masked: the result's
  `masked_positions` are recomputed for the new column layout.
- Ties are broken by the lower column (tf.math.top_k's order), so the result is deterministic; TFRS leaves it
  to an unsorted top_k.
- k < 1 is refused (TFRS's docstring says a non-positive k keeps every negative, its code keeps none).

Gradients flow through the kept logits (a gather); dropped columns get exactly zero.
"""

import tensorflow as tf

from retrieval.losses import CandidateLogits


def hard_negative_columns(candidate_logits: CandidateLogits, k: int):
    """Each row's kept negative columns: [batch, min(k, num_sampled)] int32, in the sampled block's numbering
    (column j is column num_true + j of the logits), highest logit first, valid before masked, ties by column."""
    return _kept_columns(candidate_logits, k)[0]


def _kept_columns(candidate_logits: CandidateLogits, k: int):
    """(kept columns [batch, k'], the dense valid mask [batch, num_true + num_sampled] or None if nothing is masked)."""
    if k < 1:
        raise ValueError(f"hard_negatives: k must be at least 1, got {k}; to keep every negative, do not mine.")
    num_true = candidate_logits.num_true
    negatives = candidate_logits.logits[:, num_true:]  # [batch, num_sampled]
    num_sampled = negatives.shape[1]
    k = min(k, num_sampled) if num_sampled is not None else tf.minimum(k, tf.shape(negatives)[1])
    valid, ranking = None, negatives
    if candidate_logits.masked_positions is not None:
        valid = candidate_logits.valid()  # [batch, num_true + num_sampled]
        ranking = tf.where(valid[:, num_true:], negatives, float("-inf"))  # [batch, num_sampled]: masked last
    _, columns = tf.math.top_k(tf.stop_gradient(ranking), k=k, sorted=True)  # [batch, k'] ties: lower column
    return columns, valid


def hard_negatives(candidate_logits: CandidateLogits, k: int) -> CandidateLogits:
    """The true columns and the k highest-scoring negatives of each row (module doc).

    Args:
      candidate_logits: logits [batch, num_true + num_sampled] after temperature, log-Q correction and masking
        (`losses.candidate_logits`), masked_positions [num_masked, 2].
      k: negatives kept per row (TFRS's num_hard_negatives); more than num_sampled keeps them all.
    Returns:
      CandidateLogits with logits [batch, num_true + min(k, num_sampled)]: true columns first, then the kept
      negatives from the highest logit down; masked_positions [num_kept_masked, 2] for this layout (None if the
      input had none); num_accidental_hits unchanged (the hits found among all the sampled candidates).
    """
    num_true = candidate_logits.num_true
    logits = candidate_logits.logits  # [batch, num_true + num_sampled]
    columns, valid = _kept_columns(candidate_logits, k)  # [batch, k'], [batch, num_true + num_sampled] or None
    kept = tf.gather(logits[:, num_true:], columns, batch_dims=1)  # [batch, k']: gradient to these entries only
    mined = tf.concat([logits[:, :num_true], kept], axis=1)  # [batch, num_true + k']
    masked_positions = None
    if valid is not None:
        kept_valid = tf.gather(valid[:, num_true:], columns, batch_dims=1)  # [batch, k']
        mined_valid = tf.concat([valid[:, :num_true], kept_valid], axis=1)  # [batch, num_true + k']
        masked_positions = tf.where(tf.logical_not(mined_valid))  # [num_kept_masked, 2] int64 (row, column)
    return CandidateLogits(mined, num_true, masked_positions, candidate_logits.num_accidental_hits)
