"""What one run derives from its corpus, derived once: the cold users it keeps out of training, the training split
read into memory (at most once per run), the corpus as training sees it, and the warm users' history log.

RunData.of(corpus, config) is built once per process and handed to everyone who needs these: the training input
(trainers.training_input), the held-out evaluation's histories and seen items (trainers.held_out), the baselines
(trainers.baselines) and the export's latest histories. Nothing is read until it is asked for, and a corpus whose
records carry their histories (data.prepare --history_length: the trainer streams them) is never asked for its
training split whole by the trainer (trainers.checks.check_written_histories refuses the settings that would).
"""

import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence

import numpy as np

from data import history, pipeline, records
from data.corpus import PreparedCorpus
from trainers.run_config import RunConfig


@dataclasses.dataclass(frozen=True)
class RunData:
    """One run's view of its corpus.

    corpus: the corpus as its files hold it (num_train, item_counts of every training row).
    config: the run's RunConfig (--cold_users, --seed); None: a user-id model's queries without cold users
      (trainers.held_out).
    """

    corpus: PreparedCorpus
    config: Optional[RunConfig] = None
    # {"train": (columns, file rows)} once the training split is read; with_config's share it.
    _read: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, corpus: PreparedCorpus, config: Optional[RunConfig] = None) -> "RunData":
        return cls(corpus, config)

    def with_config(self, config: Optional[RunConfig]) -> "RunData":
        """The same corpus under another config (a script ranking several models on one corpus), sharing the
        training split: read once for both, whichever reads it first."""
        return RunData(self.corpus, config, self._read)

    @functools.cached_property
    def cold_user_ids(self) -> np.ndarray:
        """[k] int64 the user ids --cold_users keeps wholly out of training, ascending (a choice seeded by --seed;
        empty without it, or without a config)."""
        if self.config is None:
            return np.zeros([0], np.int64)
        return history.cold_user_ids(self.corpus.num_users, self.config.data.cold_users, self.config.seed)

    @property
    def train_columns(self) -> Dict[str, np.ndarray]:
        """The training split {name: [n, ...]} (records.read_all), in data.pipeline.canonical_order: the same
        columns the in-memory training input batches. Read on first use, once; read-only."""
        return self._train_split[0]

    @property
    def train_file_rows(self) -> np.ndarray:
        """[n] int64: the position in the training files (records.read_all's row) of each row of train_columns.
        What depends on the files' row order (ties broken by it) sorts by it."""
        return self._train_split[1]

    def train_columns_in_file_order(self, names: Sequence[str] = ("user_id", "item_id", "timestamp")):
        """{name: [n]} of the columns `names`, rows as records.read_all returns them (a copy of each)."""
        order = np.empty_like(self.train_file_rows)
        order[self.train_file_rows] = np.arange(len(order))
        return {name: self.train_columns[name][order] for name in names}

    @property
    def _train_split(self):
        """(train_columns, train_file_rows), the split read on first use."""
        if "train" not in self._read:
            columns = records.read_all(self.corpus.train_files)
            rows = pipeline.canonical_rows(columns)
            self._read["train"] = {name: values[rows] for name, values in columns.items()}, rows
        return self._read["train"]

    @functools.cached_property
    def warm_corpus(self) -> PreparedCorpus:
        """The corpus as training sees it: under --cold_users, num_train and item_counts (the unigram sampler's,
        the most-popular baseline's, the projector's) of the other (warm) users' training rows only, item ids
        keeping their ranking; the corpus itself otherwise (nothing read). Its files are still every user's."""
        if not len(self.cold_user_ids):
            return self.corpus
        warm = self.warm_rows
        counts = np.bincount(self.train_columns["item_id"][warm], minlength=self.corpus.num_items).astype(np.int64)
        return dataclasses.replace(self.corpus, num_train=int(warm.sum()), item_counts=counts)

    @property
    def warm_rows(self) -> np.ndarray:
        """[n] bool: the rows of train_columns whose user is not a cold one."""
        return ~np.isin(self.train_columns["user_id"], self.cold_user_ids)

    @functools.cached_property
    def warm_history_log(self) -> history.HistoryLog:
        """The warm users' training rows sorted for history lookups (data.history.history_log): the training
        input's histories and the export's latest ones."""
        columns, warm = self.train_columns, self.warm_rows
        return history.history_log(columns["user_id"][warm], columns["item_id"][warm], columns["timestamp"][warm])

    def in_memory_columns(self, num_true: int = 1) -> Optional[Dict[str, np.ndarray]]:
        """train_columns when the training input batches the split in memory (data.pipeline.fits_in_memory), else
        None: it streams, and nothing is read here."""
        if pipeline.fits_in_memory(self.corpus.train_files, num_true):
            return self.train_columns
        return None
