"""A prepared corpus on disk: what training and evaluation read, whatever the source of the logs.

Layout of a prepared directory (written by the built-in generator and by `data.prepare`):
  metadata.json           {"format": "retrieval-corpus/1", "num_items", "num_users", "num_train", "num_eval", ...}
  item_counts.npy         [num_items] int64 training count per item id (non-increasing: ids ranked by frequency)
  train-*-of-*.tfrecord   training interactions (see data.records)
  eval-*-of-*.tfrecord    held-out interactions
"""

import dataclasses
import glob
import json
import os
from typing import List

import numpy as np

FORMAT = "retrieval-corpus/1"


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
        if not train_files or not eval_files:
            raise CorpusError(f"{directory}: expected train-*.tfrecord and eval-*.tfrecord files")
        if len(item_counts) != metadata["num_items"]:
            raise CorpusError(
                f"{directory}: item_counts.npy has {len(item_counts)} entries, metadata says "
                f"num_items={metadata['num_items']}"
            )
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
        )


def write_metadata(directory: str, **metadata) -> None:
    with open(os.path.join(directory, "metadata.json"), "w") as file:
        json.dump({"format": FORMAT, **metadata}, file, indent=2, sort_keys=True)
