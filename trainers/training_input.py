"""The training split as the trainer feeds it to Keras under any tf.distribute strategy.

Read into memory once when it fits (data.pipeline.read_in_memory), streamed otherwise; either way the batches
of a run are a function of (seed, step), so `dataset_creator(start_step)` resumes at the exact data position.
"""

import functools
from typing import Dict, Optional

import numpy as np

from data import pipeline


class TrainingInput:
    """One run's training batches: the first one (step-0 check, variable creation) and every input pipeline's."""

    def __init__(self, files, batch_size: int, num_true: int, seed: int, parameter_server: bool = False):
        self.files = files
        self.batch_size = batch_size
        self.num_true = num_true
        self.seed = seed
        self.parameter_server = parameter_server
        # Read here, once and eagerly: under parameter_server the dataset function runs inside a tf.function.
        self.columns: Optional[Dict[str, np.ndarray]] = pipeline.read_in_memory(files, num_true)

    def batches(self, start_step: int = 0, num_shards: int = 1, shard_index: int = 0, seed: Optional[int] = None):
        """Endless batches of this pipeline's share of each global batch, from global step start_step on."""
        seed = self.seed if seed is None else seed
        if self.columns is not None:
            return pipeline.in_memory_batches(
                self.columns, self.batch_size, seed, True, start_step, num_shards, shard_index
            )
        return pipeline.streaming_batches(
            self.files, self.batch_size, seed, True, self.num_true, start_step, num_shards, shard_index
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
