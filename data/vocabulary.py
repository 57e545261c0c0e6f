"""Vocabularies by frequency: dense ids ranked by descending count (id 0 = the most frequent key).

The log-uniform sampler assumes this order (LOSSES.md). Ties are broken by key in Unicode code-point order
("10" < "9" < "a"), so the same log always gives the same ids whatever the order of its rows or files.
"""

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

# The key of the bucket that rare items are folded into. It is ranked by its total count like any item, so
# counts stay non-increasing in id order and the sampler draws it as often as its share of the log warrants.
OOV_KEY = "<oov>"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    keys: List[str]  # [size] key of each id
    counts: np.ndarray  # [size] int64, non-increasing
    oov_id: Optional[int] = None  # the id of OOV_KEY when rare keys were folded, else None

    def __len__(self):
        return len(self.keys)


def rank_by_count(keys: Sequence[str], counts: np.ndarray) -> np.ndarray:
    """Order [len(keys)] of positions: descending count, ties by key (code-point order)."""
    if len(keys) == 0:
        return np.zeros([0], np.int64)
    return np.lexsort((np.asarray(keys, dtype=str), -np.asarray(counts, dtype=np.int64)))


def build(keys: Sequence[str], counts: np.ndarray, min_count: int = 1):
    """Ranks keys by count, folding those with count < min_count into one OOV bucket.

    Args:
      keys: [k] distinct keys.
      counts: [k] count of each key.
      min_count: keys counted fewer times share the OOV id (0 or 1: none folded unless counted 0 times).
    Returns:
      (vocabulary, id_of) with id_of [k] int64 the id of each input key (the OOV id for folded keys).
    """
    keys = list(keys)
    counts = np.asarray(counts, dtype=np.int64)
    folded = counts < min_count
    if folded.any() and OOV_KEY in keys:
        raise ValueError(f"the key {OOV_KEY!r} is reserved for the OOV bucket of rare items")
    kept = np.flatnonzero(~folded)
    ranked_keys = [keys[index] for index in kept]
    ranked_counts = counts[kept]
    if folded.any():
        ranked_keys.append(OOV_KEY)
        ranked_counts = np.append(ranked_counts, counts[folded].sum())
    order = rank_by_count(ranked_keys, ranked_counts)
    id_of_ranked = np.empty(len(order), np.int64)
    id_of_ranked[order] = np.arange(len(order))
    id_of = np.empty(len(keys), np.int64)
    id_of[kept] = id_of_ranked[: len(kept)]
    oov_id = None
    if folded.any():
        oov_id = int(id_of_ranked[-1])
        id_of[folded] = oov_id
    vocabulary = Vocabulary([ranked_keys[index] for index in order], ranked_counts[order], oov_id)
    return vocabulary, id_of


def write_tsv(path: str, vocabulary: Vocabulary, with_counts: bool = True) -> None:
    """`key\\tid\\tcount` (or `key\\tid`) with a header line, one row per id in id order."""
    with open(path, "w", encoding="utf-8") as file:
        file.write("key\tid\tcount\n" if with_counts else "key\tid\n")
        for index, (key, count) in enumerate(zip(vocabulary.keys, vocabulary.counts.tolist())):
            file.write(f"{key}\t{index}\t{count}\n" if with_counts else f"{key}\t{index}\n")
