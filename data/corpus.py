"""A prepared corpus on disk: what training and evaluation read, whatever the source of the logs.

Layout of a prepared directory (written by the built-in generator and by `data.prepare`):
  metadata.json           {"format": "retrieval-corpus/1", "num_items", "num_users", "num_train", "num_eval", ...}
  item_counts.npy         [num_items] int64 training count per item id (non-increasing: ids ranked by frequency)
  train-*-of-*.tfrecord   training interactions (see data.records)
  eval-*-of-*.tfrecord    held-out interactions: the test split, read once for the final report
  validation-*-of-*.tfrecord  optional: held-out interactions of the validation split (each user's last training
                          rows, data.splits.validation), on which the trainer chooses the model; a corpus
                          without them (older ones, data.prepare without --validation_per_user) has none
  latest_history-*.tfrecord  every user's latest history, when the records carry theirs (data.records)
Optional, written by `data.prepare` for logs with their own keys (the built-in corpus has none):
  item_vocabulary.tsv     header `key\tid\tcount`, one row per item id in id order (id 0 = most frequent)
  user_vocabulary.tsv     header `key\tid`, one row per user id in id order
  item_features.npz       {column: [num_items, max_values] int32} feature value ids, -1 padded (data.features)
  user_features.npz       {column: [num_users, max_values] int32}
  item_feature-<n>.tsv    the value vocabulary of each feature column (metadata.json names which)
  context-<name>.tsv      the value vocabulary of each categorical context column (data.context;
                          metadata.json's "context_columns" lists every context column)
"""

import dataclasses
import glob
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from data import features, vocabulary
from data.context import ContextColumn

FORMAT = "retrieval-corpus/1"
ITEM_VOCABULARY = "item_vocabulary.tsv"
USER_VOCABULARY = "user_vocabulary.tsv"


class CorpusError(ValueError):
    """A prepared corpus directory is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class PreparedCorpus:
    directory: str
    num_items: int
    num_users: int
    num_train: int
    num_eval: int
    item_counts: np.ndarray
    train_files: List[str]
    eval_files: List[str]
    description: str = ""
    item_keys: Optional[List[str]] = None  # [num_items] the log's own item key of each id; None for built-in
    user_keys: Optional[List[str]] = None  # [num_users] the log's own user key of each id; None for built-in
    item_features: Optional[Dict[str, np.ndarray]] = None  # {column: [num_items, max_values] int32, -1 padded}
    user_features: Optional[Dict[str, np.ndarray]] = None  # {column: [num_users, max_values] int32, -1 padded}
    context_columns: Tuple[ContextColumn, ...] = ()  # the log's declared context columns, with their value keys
    # False for a log prepared without --timestamp_column: its timestamps are row numbers, so no time of day.
    has_timestamps: bool = True
    # N when the records carry their history (data.prepare --history_length=N; data.records): the trainer streams
    # them and reads no split whole. None: histories are looked up in the training split, any length.
    history_length: Optional[int] = None
    # The validation split's files (empty: none) and rows (metadata.json's "num_validation").
    validation_files: List[str] = dataclasses.field(default_factory=list)
    num_validation: int = 0
    # The id of the `<oov>` bucket of rare items (metadata.json's "oov_item_id"; for a corpus whose metadata.json
    # predates it, the id of vocabulary.OOV_KEY in item_vocabulary.tsv); None when no item was folded into one.
    oov_item_id: Optional[int] = None
    # Held-out interactions per user of the test split (metadata.json's "eval_per_user"; None when the split did
    # not choose them: the built-in corpus, a given held-out file) and of the validation split (0: none).
    eval_per_user: Optional[int] = None
    validation_per_user: int = 0

    @classmethod
    def load(cls, directory: str) -> "PreparedCorpus":
        metadata_path = os.path.join(directory, "metadata.json")
        if not os.path.isfile(metadata_path):
            raise CorpusError(f"{directory}: not a prepared corpus (no metadata.json); run `python -m data.prepare`")
        try:
            with open(metadata_path) as file:
                metadata = json.load(file)
        except json.JSONDecodeError as error:
            raise CorpusError(f"{metadata_path}: not valid JSON ({error})") from error
        if metadata.get("format") != FORMAT:
            raise CorpusError(f"{metadata_path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
        item_counts = np.load(os.path.join(directory, "item_counts.npy"))
        train_files = sorted(glob.glob(os.path.join(directory, "train-*.tfrecord")))
        eval_files = sorted(glob.glob(os.path.join(directory, "eval-*.tfrecord")))
        validation_files = sorted(glob.glob(os.path.join(directory, "validation-*.tfrecord")))
        if bool(validation_files) != bool(metadata.get("num_validation")):
            raise CorpusError(f"{directory}: {len(validation_files)} validation-*.tfrecord files but metadata.json "
                              f"says num_validation={metadata.get('num_validation', 0)}; prepare the corpus again")
        if not train_files or not eval_files:
            raise CorpusError(f"{directory}: expected train-*.tfrecord and eval-*.tfrecord files")
        if len(item_counts) != metadata["num_items"]:
            raise CorpusError(
                f"{directory}: item_counts.npy has {len(item_counts)} entries, metadata says "
                f"num_items={metadata['num_items']}"
            )
        item_keys = _read_keys(os.path.join(directory, ITEM_VOCABULARY), metadata["num_items"])
        user_keys = _read_keys(os.path.join(directory, USER_VOCABULARY), metadata["num_users"])
        item_features, error = features.load(directory, "item", metadata["num_items"])
        if error:
            raise CorpusError(error)
        user_features, error = features.load(directory, "user", metadata["num_users"])
        if error:
            raise CorpusError(error)
        return cls(
            directory=directory,
            num_items=int(metadata["num_items"]),
            num_users=int(metadata["num_users"]),
            num_train=int(metadata["num_train"]),
            num_eval=int(metadata["num_eval"]),
            item_counts=item_counts,
            train_files=train_files,
            eval_files=eval_files,
            description=metadata.get("description", ""),
            item_keys=item_keys,
            user_keys=user_keys,
            item_features=item_features,
            user_features=user_features,
            context_columns=_context_columns(directory, metadata),
            has_timestamps=metadata.get("schema", {}).get("timestamp_column", "") is not None,
            history_length=metadata.get("history_length"),
            validation_files=validation_files,
            num_validation=int(metadata.get("num_validation", 0)),
            oov_item_id=metadata["oov_item_id"] if "oov_item_id" in metadata else _oov_item_id(item_keys),
            eval_per_user=metadata.get("eval_per_user"),
            validation_per_user=int(metadata.get("validation_per_user") or 0),
        )

    @property
    def has_validation(self) -> bool:
        """True when the corpus holds a validation split apart from the test split (eval_files)."""
        return bool(self.validation_files)


def write_metadata(directory: str, **metadata) -> None:
    with open(os.path.join(directory, "metadata.json"), "w") as file:
        json.dump({"format": FORMAT, **metadata}, file, indent=2, sort_keys=True)


def _oov_item_id(item_keys: Optional[List[str]]) -> Optional[int]:
    """The id of the OOV bucket in a vocabulary (None without a vocabulary, or when it has no such key)."""
    if item_keys is None or vocabulary.OOV_KEY not in item_keys:
        return None
    return item_keys.index(vocabulary.OOV_KEY)


def _context_columns(directory: str, metadata) -> Tuple[ContextColumn, ...]:
    """The corpus's context columns (metadata.json's "context_columns"), with the keys of their vocabularies."""
    columns = []
    for entry in metadata.get("context_columns", ()):
        keys = ()
        if entry.get("vocabulary"):
            keys = _read_keys(os.path.join(directory, entry["vocabulary"]), entry["vocabulary_size"])
            if keys is None:
                raise CorpusError(f"{directory}: context column {entry['name']!r} has no {entry['vocabulary']}")
        columns.append(ContextColumn.from_metadata(entry, keys))
    return tuple(columns)


def _read_keys(path: str, expected_rows: int) -> Optional[List[str]]:
    """The key column of a vocabulary TSV (header first, rows in id order), or None when the file is absent."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        header = file.readline().rstrip("\n").split("\t")
        if header[:2] != ["key", "id"]:
            raise CorpusError(f"{path}: header {header}, expected it to start with key, id")
        keys = []
        for line_number, line in enumerate(file, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or fields[1] != str(len(keys)):
                raise CorpusError(f"{path}:{line_number}: expected id {len(keys)} in the second column, got {fields}")
            keys.append(fields[0])
    if len(keys) != expected_rows:
        raise CorpusError(f"{path}: {len(keys)} rows, metadata.json says {expected_rows}")
    return keys
