"""Categorical feature tables: one row of value ids per item (or user) id, for lookup inside a tower.

A table is [num_ids, max_values] int32: the ids of an item's values in the feature's own vocabulary (ranked by
how many items have the value, ties by value), padded with -1. Single-valued features have max_values 1; an
item without a value (or the OOV bucket) has a row of -1.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data import vocabulary

PAD = -1
TABLES = {"item": "item_features.npz", "user": "user_features.npz"}


def build(rows: Dict[str, Dict[str, List[str]]], keys: Sequence[str], column: str):
    """The table of one feature column for ids whose keys are `keys` (in id order).

    Args:
      rows: {key: {column: values}}; keys missing from it get no value.
      keys: [num_ids] the key of each id.
    Returns:
      (table [num_ids, max_values] int32, the feature's Vocabulary, number of ids without a value).
    """
    values_of_id = []
    for key in keys:
        values = rows.get(key, {}).get(column, [])
        values_of_id.append(list(dict.fromkeys(values)))  # an item lists a value once
    counts: Dict[str, int] = {}
    for values in values_of_id:
        for value in values:
            counts[value] = counts.get(value, 0) + 1
    value_keys = list(counts)
    feature_vocabulary, id_of = vocabulary.build(value_keys, np.array([counts[key] for key in value_keys]))
    index = {key: int(value_id) for key, value_id in zip(value_keys, id_of)}
    max_values = max([len(values) for values in values_of_id] + [1])
    table = np.full([len(keys), max_values], PAD, np.int32)
    for row, values in enumerate(values_of_id):
        table[row, : len(values)] = [index[value] for value in values]
    return table, feature_vocabulary, sum(1 for values in values_of_id if not values)


def write(directory: str, kind: str, tables: Dict[str, np.ndarray], vocabularies: Dict[str, vocabulary.Vocabulary]):
    """Writes <kind>_features.npz ({column: table}) and one <kind>_feature-<n>.tsv vocabulary per column."""
    np.savez(os.path.join(directory, TABLES[kind]), **tables)
    for number, (column, feature_vocabulary) in enumerate(sorted(vocabularies.items())):
        vocabulary.write_tsv(os.path.join(directory, f"{kind}_feature-{number}.tsv"), feature_vocabulary)


def load(directory: str, kind: str, num_ids: int) -> Tuple[Optional[Dict[str, np.ndarray]], Optional[str]]:
    """({column: table}, None), (None, None) when the corpus has no such features, or (None, error message)."""
    path = os.path.join(directory, TABLES[kind])
    if not os.path.isfile(path):
        return None, None
    with np.load(path) as archive:
        tables = {column: archive[column] for column in archive.files}
    for column, table in tables.items():
        if table.ndim != 2 or table.shape[0] != num_ids:
            return None, f"{path}: feature {column!r} has shape {table.shape}, expected [{num_ids}, max_values]"
    return tables, None
