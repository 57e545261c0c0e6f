"""Per-interaction context from declared columns of a log (`data.prepare --context_columns`,
`--numeric_context_columns`): what the interaction's row says about its moment, beyond the time features.

Three kinds of column:
  categorical  one value per row (e.g. device); ids by descending training count, ties by value
               (data.vocabulary), NONE (-1) for an empty field and for a value never seen in a training row
  multi        several values per row (a context column also in --multi_valued_columns, joined by
               --value_separator); the same ids, a row's unknown values left out, NONE-padded to max_values
  numeric      a float per row within float32's range (MAX_NUMBER), standardised with the training rows' mean
               and standard deviation, so the query tower's head sees values of unit scale whatever the unit; a
               column with one value in every training row is refused (it would be a column of zeros)

The vocabulary comes from training rows only: a held-out row's value that no training row has is NONE, as it
would be when serving, and such values are counted (ContextColumn.unseen_eval_values). A corpus lists its columns
in metadata.json's "context_columns" (ContextColumn.metadata) with one `context-<name>.tsv` vocabulary each
(categorical and multi); records carry them under the column's name (data.records).
"""

import dataclasses
import os
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from data import vocabulary

CATEGORICAL, MULTI, NUMERIC = "categorical", "multi", "numeric"
KINDS = (CATEGORICAL, MULTI, NUMERIC)
NONE = -1  # the id of no value: an empty field, a value no training row has, padding
# The largest magnitude of a numeric value: records and the serving signature hold float32, and within it the
# float64 squares of the standardisation cannot overflow.
MAX_NUMBER = float(np.finfo(np.float32).max)
# A context column's name becomes a batch key, a Keras layer name and a serving signature's input name.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
# Batch keys the pipeline and the query tower already use for something else.
RESERVED_NAMES = ("user_id", "item_id", "timestamp", "weight", "negative_ids", "history", "hour_of_day", "day_of_week")


@dataclasses.dataclass(frozen=True)
class ContextColumn:
    """One declared context column of a prepared corpus."""

    name: str
    kind: str  # one of KINDS
    keys: Tuple[str, ...] = ()  # categorical / multi: the value of each id (empty where only the layout is needed)
    vocabulary_size: int = 0  # categorical / multi: len(keys)
    max_values: int = 1  # multi: the parsed width of a row
    mean: float = 0.0  # numeric: of the training rows' raw values
    std: float = 1.0  # numeric: of the training rows' raw values (> 0: a constant column is refused)
    unseen_eval_values: int = 0  # held-out values no training row has (mapped to NONE)
    overflowing_eval_values: int = 0  # numeric: held-out values beyond float32 once standardised (written as 0)

    @property
    def vocabulary_file(self) -> str:
        return f"context-{self.name}.tsv"

    def metadata(self) -> Dict:
        """metadata.json's entry of the column."""
        entry = {"name": self.name, "kind": self.kind}
        if self.kind == NUMERIC:
            return {**entry, "mean": self.mean, "std": self.std, "overflowing_eval_values": self.overflowing_eval_values}
        entry.update(vocabulary=self.vocabulary_file, vocabulary_size=self.vocabulary_size,
                     unseen_eval_values=self.unseen_eval_values)
        return {**entry, "max_values": self.max_values} if self.kind == MULTI else entry

    @classmethod
    def from_metadata(cls, entry: Dict, keys: Sequence[str] = ()) -> "ContextColumn":
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {name: value for name, value in entry.items() if name in fields}
        return cls(**{**values, "keys": tuple(keys)})


class Built(NamedTuple):
    """A context column built from a log: its description, its values per row, its vocabulary (None: numeric)."""

    column: ContextColumn
    values: np.ndarray  # [n] int64 (categorical), [n, max_values] int64 NONE-padded (multi), [n] float32 (numeric)
    vocabulary: Optional[vocabulary.Vocabulary]


def check_names(categorical: Sequence[str], numeric: Sequence[str]) -> Optional[str]:
    """Why the declared context column names cannot be used, or None."""
    for name in tuple(categorical) + tuple(numeric):
        if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
            return (f"context column {name!r}: a context column's name becomes a feature and serving input name: "
                    f"expected a letter then letters, digits or '_', none of {', '.join(RESERVED_NAMES)}; rename it")
    return None


def build_categorical(name: str, values: List[str], is_train: np.ndarray, is_eval: np.ndarray) -> Built:
    """values: [n] each row's value ("" for none). is_train / is_eval: [n] bool, the training / written eval rows."""
    lengths = np.array([1 if value else 0 for value in values], np.int64)
    ids, _, built = _ids(name, [value for value in values if value], lengths, is_train, is_eval)
    return built._replace(column=dataclasses.replace(built.column, kind=CATEGORICAL), values=ids[:, 0])


def build_multi(name: str, flat_values: List[str], lengths: np.ndarray, is_train, is_eval) -> Built:
    """flat_values: every row's values one row after the other, lengths [n] how many each row has."""
    ids, width, built = _ids(name, flat_values, lengths, is_train, is_eval)
    return built._replace(column=dataclasses.replace(built.column, max_values=max(width, 1)))


def build_numeric(name: str, values: np.ndarray, is_train: np.ndarray) -> Built:
    """values: [n] float64 raw values, each finite and within +-MAX_NUMBER (the reader checked them).

    The mean is a pairwise sum in float64 and the standard deviation NumPy's two-pass one (of the values less their
    mean), so neither overflows nor cancels for values within float32. A training row's standardised value is at
    most sqrt(n) in size; a held-out one beyond float32 is written as 0, the mean, as serving answers it, and
    counted. Raises ValueError naming the column if every training row has one value.
    """
    values = np.asarray(values, np.float64)
    train = values[is_train]
    mean = float(np.mean(train)) if len(train) else 0.0
    std = float(np.std(train)) if len(train) else 0.0
    if not std > 0:
        raise ValueError(f"numeric context column {name!r}: every training row has the value {mean:.6g}, so its "
                         "standardised value is 0 for every row and tells the model nothing; drop it from "
                         "--numeric_context_columns")
    standardised = (values - mean) / std  # [n] float64
    overflowing = np.abs(standardised) > MAX_NUMBER
    standardised[overflowing] = 0.0
    column = ContextColumn(name, NUMERIC, mean=mean, std=std, overflowing_eval_values=int(overflowing.sum()))
    return Built(column, standardised.astype(np.float32), None)


def _ids(name: str, flat_values: List[str], lengths: np.ndarray, is_train: np.ndarray, is_eval: np.ndarray):
    """(ids [n, width] int64 of each row's values known from training rows, NONE-padded; width, the longest row of
    is_train | is_eval; a Built of kind MULTI whose column has the vocabulary and the unseen count)."""
    row_of_value = np.repeat(np.arange(len(lengths)), lengths)
    distinct, code = np.unique(np.asarray(flat_values, dtype=str), return_inverse=True) if flat_values else ([], [])
    code = np.asarray(code, np.int64).reshape(-1)
    train_counts = np.bincount(code[is_train[row_of_value]], minlength=len(distinct))
    trained = np.flatnonzero(train_counts > 0)
    vocab, id_of_trained = vocabulary.build([str(distinct[index]) for index in trained], train_counts[trained], 0)
    id_of_code = np.full(len(distinct), NONE, np.int64)
    id_of_code[trained] = id_of_trained
    value_ids = id_of_code[code]
    known = value_ids >= 0
    written = (is_train | is_eval)[row_of_value]
    unseen = int((~known & is_eval[row_of_value]).sum())
    known_per_row = np.bincount(row_of_value[known], minlength=len(lengths))
    width = int(known_per_row[is_train | is_eval].max(initial=0))
    ids = np.full([len(lengths), max(width, 1)], NONE, np.int64)
    slot = np.arange(int(known.sum())) - np.repeat(np.cumsum(known_per_row) - known_per_row, known_per_row)
    keep = known & written
    ids[row_of_value[keep], slot[keep[known]]] = value_ids[keep]
    column = ContextColumn(name, MULTI, tuple(vocab.keys), len(vocab), unseen_eval_values=unseen)
    return ids, width, Built(column, ids, vocab)


def write_vocabularies(directory: str, built: Sequence[Built]) -> None:
    """`context-<name>.tsv` (key, id, training count) of each categorical and multi-valued column."""
    for part in built:
        if part.vocabulary is not None:
            vocabulary.write_tsv(os.path.join(directory, part.column.vocabulary_file), part.vocabulary)


def report(columns: Sequence[ContextColumn]) -> List[str]:
    """One line per context column for data.prepare's report."""
    lines = []
    for column in columns:
        if column.kind == NUMERIC:
            overflowing = (f"; {column.overflowing_eval_values} held-out values beyond float32 once standardised "
                           "are written as the mean" if column.overflowing_eval_values else "")
            lines.append(f"context {column.name!r} (numeric): standardised with the training mean {column.mean:.6g} "
                         f"and standard deviation {column.std:.6g}{overflowing}")
        else:
            lines.append(f"context {column.name!r} ({column.kind}): {column.vocabulary_size} values in training; "
                         f"{column.unseen_eval_values} held-out values seen only in held-out rows map to none")
    return lines
