"""Candidate samplers: which negatives a sampled loss scores, and how often each was expected to be drawn.

Every sampler returns `SampledCandidates(ids, true_expected_count, sampled_expected_count)`, the triple that
TensorFlow's `tf.random.*_candidate_sampler` ops return, so the losses treat all of them alike:

- `ids`                    [num_sampled] int64: the sampled item ids, shared by every row of the batch.
- `true_expected_count`    [batch, num_true] float32: Q of each true item (how often the sampler would draw it).
- `sampled_expected_count` [num_sampled] float32: Q of each sampled item.
- `own_positive`           optional [batch, num_sampled] bool: sampled columns that are the row's own positive
                           by construction (the diagonal of in-batch sampling). Losses always drop them: they
                           are the positive, not a negative that happens to equal it.

Corpus samplers wrap TensorFlow's ops (log-uniform, uniform, fixed unigram) so `unique` and `seed` mean
exactly what they mean there. Ids must be ranked by frequency for `log_uniform` (id 0 = most frequent).

`make_sampler(name, settings)` builds a sampler by name from the registry `SAMPLERS`: a callable from true ids
[batch, num_true] to `SampledCandidates`. A new sampler is one constructor added to the registry.
"""

import dataclasses
from typing import Callable, Dict, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf


# A floor on estimated expected counts (from counts or a stream): an item never counted has Q = 0, and log Q must
# stay finite.
MIN_EXPECTED_COUNT = 1e-6

# item ids (any shape) -> their expected count Q per global batch (same shape, float32)
ExpectedCount = Callable[[tf.Tensor], tf.Tensor]


class SampledCandidates(NamedTuple):
    ids: tf.Tensor
    true_expected_count: tf.Tensor
    sampled_expected_count: tf.Tensor
    own_positive: Optional[tf.Tensor] = None
    # True when ids are exactly the batch's first true ids (in-batch sampling on one replica): the losses then
    # embed them once, for the true and the sampled block alike (half the gathers and gradient rows).
    ids_are_true_ids: bool = False


def log_uniform_probability(class_ids, range_max: int):
    """P(class) = (log(class + 2) - log(class + 1)) / log(range_max + 1), elementwise (NumPy, float64)."""
    class_ids = np.asarray(class_ids, dtype=np.float64)
    return (np.log(class_ids + 2.0) - np.log(class_ids + 1.0)) / np.log(range_max + 1.0)


def expected_count(probability, num_sampled: int, num_tries: int, unique: bool):
    """Expected number of times a class of the given probability appears in one sample (NumPy).

    With unique=False it is num_sampled * P. With unique=True, the sampler draws num_tries times (with
    rejection) until it holds num_sampled distinct ids, and the count is -expm1(num_tries * log1p(-P)).
    Like TensorFlow's range sampler, when no draw was rejected (num_tries == num_sampled) it uses the
    num_sampled * P form: the LOSSES.md reference values are computed that way.
    """
    probability = np.asarray(probability, dtype=np.float64)
    if not unique or num_tries == num_sampled:
        return num_sampled * probability
    return -np.expm1(num_tries * np.log1p(-probability))


def _as_true_classes(true_ids):
    """[batch] or [batch, num_true] ids -> [batch, num_true] int64, as TensorFlow's samplers take them."""
    true_ids = tf.convert_to_tensor(true_ids)
    if true_ids.shape.rank == 1:
        true_ids = true_ids[:, tf.newaxis]
    return tf.cast(true_ids, tf.int64)


def _range_sampler(tf_sampler, true_ids, num_sampled, range_max, unique, seed):
    true_classes = _as_true_classes(true_ids)
    return SampledCandidates(
        *tf_sampler(
            true_classes=true_classes,
            num_true=true_classes.shape[1],
            num_sampled=num_sampled,
            unique=unique,
            range_max=range_max,
            seed=seed,
        )
    )


def log_uniform(true_ids, num_sampled: int, range_max: int, unique: bool = True, seed: Optional[int] = None):
    """Zipfian negatives over frequency-ranked ids [0, range_max). true_ids: [batch, num_true]."""
    return _range_sampler(tf.random.log_uniform_candidate_sampler, true_ids, num_sampled, range_max, unique, seed)


def uniform(true_ids, num_sampled: int, range_max: int, unique: bool = True, seed: Optional[int] = None):
    """Uniform negatives over [0, range_max). true_ids: [batch, num_true]."""
    return _range_sampler(tf.random.uniform_candidate_sampler, true_ids, num_sampled, range_max, unique, seed)


def unigram(
    true_ids,
    num_sampled: int,
    item_counts: Sequence[float],
    distortion: float = 0.75,
    unique: bool = True,
    seed: Optional[int] = None,
):
    """Negatives drawn in proportion to count ** distortion (word2vec's 0.75). item_counts: [num_items].

    TensorFlow keeps the counts as an op attribute, so this suits corpora up to a few million items.
    """
    true_classes = _as_true_classes(true_ids)
    counts = [float(count) for count in np.asarray(item_counts, dtype=np.float64)]
    return SampledCandidates(
        *tf.random.fixed_unigram_candidate_sampler(
            true_classes=true_classes,
            num_true=true_classes.shape[1],
            num_sampled=num_sampled,
            unique=unique,
            range_max=len(counts),
            distortion=distortion,
            unigrams=counts,
            seed=seed,
        )
    )


def in_batch(true_ids, item_probability: Optional[tf.Tensor] = None, expected_count: Optional[ExpectedCount] = None):
    """The batch's own positives as negatives for every row (first true id of each row).

    Q of an item is its expected count among the batch's positives: expected_count(ids) when given (a streaming
    estimate, `frequency.StreamingFrequencyEstimator.expected_count`), else batch_size * item_probability[id]
    when the corpus frequency is given ([num_items] float), otherwise its count in this batch. Row i's own column
    (the diagonal) is marked `own_positive`.

    Under a tf.distribute strategy with several replicas in sync, the batch is the global one: every replica's
    positives are gathered (as TFRS's `_cross_replica_concat` does with their embeddings), so each replica's rows
    score the same candidates a single device would, and its own rows' columns are offset by its position.
    """
    true_classes = _as_true_classes(true_ids)
    ids = true_classes[:, 0]
    own_rows = tf.range(tf.shape(ids)[0])
    replica = tf.distribute.get_replica_context()
    gathered = replica is not None and replica.num_replicas_in_sync > 1
    if gathered:
        own_rows += tf.cast(replica.replica_id_in_sync_group, tf.int32) * tf.shape(ids)[0]
        ids = replica.all_gather(ids, axis=0)  # [global batch]: replicas in order, like the global batch
    batch_size = tf.shape(ids)[0]
    if expected_count is not None:
        sampled_expected = tf.cast(expected_count(ids), tf.float32)
        true_expected = tf.cast(expected_count(true_classes), tf.float32)
    elif item_probability is not None:
        probability = tf.cast(item_probability, tf.float32)
        scale = tf.cast(batch_size, tf.float32)
        # Floored: an item with no training count (counts made before it appeared) would get log Q = -inf.
        sampled_expected = tf.maximum(tf.gather(probability, ids) * scale, MIN_EXPECTED_COUNT)
        true_expected = tf.maximum(tf.gather(probability, true_classes) * scale, MIN_EXPECTED_COUNT)
    else:
        same = tf.cast(tf.equal(ids[:, tf.newaxis], ids[tf.newaxis, :]), tf.float32)  # [batch, batch]
        sampled_expected = tf.reduce_sum(same, axis=0)
        true_same = tf.equal(true_classes[:, :, tf.newaxis], ids[tf.newaxis, tf.newaxis, :])
        true_expected = tf.maximum(tf.reduce_sum(tf.cast(true_same, tf.float32), axis=-1), 1.0)
    own_positive = tf.one_hot(own_rows, batch_size, on_value=True, off_value=False)  # [rows, batch]
    return SampledCandidates(ids, true_expected, sampled_expected, own_positive, ids_are_true_ids=not gathered)


def mixed(in_batch_candidates: SampledCandidates, corpus_candidates: SampledCandidates):
    """In-batch negatives followed by corpus-sampled ones; each keeps the Q of the sampler that drew it.

    The two sources are treated as independent samples: a true item's Q is the sum of its Q under each.
    """
    num_rows = tf.shape(in_batch_candidates.own_positive)[0]  # this replica's rows (the global batch's columns)
    num_corpus = tf.shape(corpus_candidates.ids)[0]
    own_positive = tf.concat(
        [in_batch_candidates.own_positive, tf.zeros([num_rows, num_corpus], dtype=tf.bool)], axis=1
    )
    return SampledCandidates(
        ids=tf.concat([in_batch_candidates.ids, corpus_candidates.ids], axis=0),
        true_expected_count=in_batch_candidates.true_expected_count + corpus_candidates.true_expected_count,
        sampled_expected_count=tf.concat(
            [in_batch_candidates.sampled_expected_count, corpus_candidates.sampled_expected_count], axis=0
        ),
        own_positive=own_positive,
    )


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """What the registered samplers are built from. item_counts: [num_items] training counts (or None)."""

    num_items: int
    num_sampled: int = 1000
    unique: bool = True
    seed: Optional[int] = None
    item_counts: Optional[np.ndarray] = None
    unigram_distortion: float = 0.75
    mixed_corpus_sampler: str = "log_uniform"
    in_batch_expected_count: Optional[ExpectedCount] = None  # Q of in-batch negatives (else from item_counts)

    def item_probability(self) -> Optional[tf.Tensor]:
        """[num_items] float32 corpus frequency of each item, or None without (non-zero) counts."""
        if self.item_counts is None or np.sum(self.item_counts) <= 0:
            return None
        counts = np.asarray(self.item_counts, np.float64)
        return tf.constant(counts / counts.sum(), tf.float32)


Sampler = Callable[[tf.Tensor], SampledCandidates]  # true ids [batch, num_true] -> candidates


def _log_uniform_sampler(settings: SamplerSettings) -> Sampler:
    return lambda true_ids: log_uniform(
        true_ids, settings.num_sampled, settings.num_items, settings.unique, settings.seed
    )


def _uniform_sampler(settings: SamplerSettings) -> Sampler:
    return lambda true_ids: uniform(true_ids, settings.num_sampled, settings.num_items, settings.unique, settings.seed)


def _unigram_sampler(settings: SamplerSettings) -> Sampler:
    if settings.item_counts is None:
        raise ValueError("sampler=unigram needs item_counts")
    return lambda true_ids: unigram(
        true_ids, settings.num_sampled, settings.item_counts, settings.unigram_distortion, settings.unique,
        settings.seed,
    )


def _in_batch_sampler(settings: SamplerSettings) -> Sampler:
    item_probability = settings.item_probability()
    return lambda true_ids: in_batch(true_ids, item_probability, settings.in_batch_expected_count)


def _mixed_sampler(settings: SamplerSettings) -> Sampler:
    if settings.mixed_corpus_sampler not in CORPUS_SAMPLERS:
        raise ValueError(
            f"mixed_corpus_sampler={settings.mixed_corpus_sampler!r}; expected one of {', '.join(CORPUS_SAMPLERS)}"
        )
    in_batch_sampler = _in_batch_sampler(settings)
    corpus_sampler = make_sampler(settings.mixed_corpus_sampler, settings)
    return lambda true_ids: mixed(in_batch_sampler(true_ids), corpus_sampler(true_ids))


# name -> constructor(settings) -> sampler. Corpus samplers draw num_sampled ids from [0, num_items).
SAMPLERS: Dict[str, Callable[[SamplerSettings], Sampler]] = {
    "log_uniform": _log_uniform_sampler,
    "uniform": _uniform_sampler,
    "unigram": _unigram_sampler,
    "in_batch": _in_batch_sampler,
    "mixed": _mixed_sampler,
}
CORPUS_SAMPLERS = ("log_uniform", "uniform", "unigram")


def make_sampler(name: str, settings: SamplerSettings) -> Sampler:
    """The registered sampler `name`, built from settings; ValueError naming the choices for an unknown name."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](settings)
