"""The training split as the trainer feeds it to Keras under any tf.distribute strategy.

Read into memory once when it fits (data.pipeline.fits_in_memory: the run's RunData.in_memory_columns), streamed
otherwise; either way the batches of a run are a function of (seed, step), so `dataset_creator(start_step)`
resumes at the exact data position.
Each batch also carries what the query tower reads (data.pipeline.QueryInputs): the history of every row, looked
up in the training split sorted once (trainers.run_data.RunData, whose in-memory split the batches share; or read
from the records, for a corpus prepared with --history_length: then nothing here reads a split whole), and the
time features; cold users' rows never reach it.
"""

import functools
from typing import Dict, Optional

import numpy as np

from data import history, pipeline, records
from trainers.run_data import RunData

_READ = object()  # TrainingInput's default columns: read from the files there


def query_inputs(data: RunData) -> pipeline.QueryInputs:
    """The data.pipeline.QueryInputs of a run: the warm users' training rows sorted for history lookups
    (RunData.warm_history_log) when the query tower reads a history, time features for its context, and the cold
    users left out."""
    config = data.config
    features, excluded = config.model.query_features, data.cold_user_ids
    if data.corpus.history_length is not None:  # the records carry it (data.prepare --history_length)
        return pipeline.QueryInputs(None, config.data.history_length, "context" in features, excluded,
                                    written_history="history" in features)
    log = data.warm_history_log if "history" in features else None
    return pipeline.QueryInputs(log, config.data.history_length, "context" in features, excluded)


def latest_histories(data: RunData) -> np.ndarray:
    """[num_users, history_length] int64: every user's last training items, most recent first (PAD-padded; empty
    for cold users): the history a history model's export queries for a known user (the corpus's
    latest_history-*.tfrecord when its records carry their histories)."""
    corpus, history_length = data.corpus, data.config.data.history_length
    if corpus.history_length is not None:
        return records.read_latest_histories(corpus.directory, corpus.num_users, history_length)
    users = np.arange(corpus.num_users, dtype=np.int64)
    latest = np.full(corpus.num_users, np.iinfo(np.int64).max)
    return history.histories_from_log(data.warm_history_log, users, latest, history_length)


class TrainingInput:
    """One run's training batches: the first one (step-0 check, variable creation) and every input pipeline's."""

    def __init__(self, files, batch_size: int, num_true: int, seed: int, parameter_server: bool = False,
                 query_inputs: Optional[pipeline.QueryInputs] = None, columns=_READ):
        """columns: the split in memory, in data.pipeline.canonical_order (None: it streams); by default read
        here (data.pipeline.read_in_memory)."""
        self.files = files
        self.batch_size = batch_size
        self.num_true = num_true
        self.seed = seed
        self.parameter_server = parameter_server
        self.query_inputs = query_inputs
        # Read once and eagerly: under parameter_server the dataset function runs inside a tf.function.
        if columns is _READ:
            columns = pipeline.read_in_memory(files, num_true)
        self.columns: Optional[Dict[str, np.ndarray]] = columns

    @classmethod
    def of_run(cls, data: RunData, parameter_server: bool = False) -> "TrainingInput":
        """The training input of a run: its config's batch size, num_true, seed and query inputs, the split in
        memory the run's (RunData.in_memory_columns: read once for the whole run) when it fits."""
        config = data.config
        return cls(data.corpus.train_files, config.optimization.batch_size, config.loss.num_true, config.seed,
                   parameter_server, query_inputs(data), data.in_memory_columns(config.loss.num_true))

    def batches(self, start_step: int = 0, num_shards: int = 1, shard_index: int = 0, seed: Optional[int] = None):
        """Endless batches of this pipeline's share of each global batch, from global step start_step on."""
        seed = self.seed if seed is None else seed
        if self.columns is not None:
            return pipeline.in_memory_batches(
                self.columns, self.batch_size, seed, True, start_step, num_shards, shard_index, self.query_inputs
            )
        return pipeline.streaming_batches(
            self.files, self.batch_size, seed, True, self.num_true, start_step, num_shards, shard_index,
            query_inputs=self.query_inputs,
        )

    def first_batch(self):
        """The run's first global batch (from the in-memory columns when the split is in memory)."""
        return next(iter(self.batches().take(1)))

    def dataset_creator(self, tf, start_step: int):
        """A Keras DatasetCreator whose input pipelines start at global step start_step."""
        return tf.keras.utils.experimental.DatasetCreator(functools.partial(self._dataset, start_step))

    def _dataset(self, start_step, input_context):
        """One pipeline per worker; several local replicas each take a contiguous slice of the pipeline's batch,
        so the replicas together see the global batch a single device would."""
        if self.parameter_server:
            # Workers step asynchronously, each on a global batch of its own stream.
            pipelines = input_context.num_input_pipelines
            return self.batches(start_step // pipelines, seed=self.seed + input_context.input_pipeline_id)
        dataset = self.batches(start_step, input_context.num_input_pipelines, input_context.input_pipeline_id)
        replicas_per_pipeline = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        if replicas_per_pipeline > 1:
            dataset = dataset.rebatch(input_context.get_per_replica_batch_size(self.batch_size))
        return dataset
