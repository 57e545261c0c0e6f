"""A trained run rebuilt from its model_dir, for trainers.evaluate and trainers.export: the model config.json
describes, on one device, with its newest intact checkpoint (trainers.checkpoints) restored, whatever strategy
trained it."""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from trainers import checkpoints, checks, model_builder, run_config, run_dir
from trainers.run_data import RunData


@dataclasses.dataclass
class RestoredRun:
    """A run's model rebuilt on one device from config.json, with its newest intact checkpoint restored."""

    model: Any
    data: RunData  # the run's corpus and what it derives from it (cold users, the training split once read)
    config: run_config.RunConfig  # config.json's
    checkpoint: str
    step: int
    warnings: Tuple[Dict[str, Any], ...] = ()

    @property
    def corpus(self):
        """The corpus as its files hold it (data.warm_corpus: as training saw it)."""
        return self.data.corpus


def restore_model(model_dir: str, best: bool = False, data: Optional[RunData] = None) -> RestoredRun:
    """Rebuilds a run's model from <model_dir>/config.json and restores its newest intact checkpoint (best: the
    --keep_best one), damaged newer ones set aside (checkpoints.newest_intact_checkpoint), whatever strategy trained
    it: a sharded or mirrored model restores into a plain one. data: the run's RunData when the caller holds it
    (the trainer's, whose config is this config.json's; ValueError when its corpus settings differ); None: loaded
    from config.json's corpus.

    Raises FileNotFoundError (no config.json or no checkpoint), ConfigError, checkpoints.CheckpointError, and the
    corpus loaders' errors (ValueError subclasses) when the corpus is gone.
    """
    config, _ = run_dir.load_config(model_dir)
    layout = run_dir.RunDir(model_dir)
    directory = layout.best_checkpoints if best else layout.checkpoints
    choice = checkpoints.newest_intact_checkpoint(tf, directory, repair=True)
    if choice.path is None:
        raise FileNotFoundError(f"{directory}: no checkpoint to restore; train first")
    if data is None:
        corpus = model_builder.load_corpus(config)
        checks.check_written_histories(corpus, config)  # as the trainer did (checks.check_with_corpus)
        data = RunData.of(corpus, config)
    elif (data.config.data, data.config.seed) != (config.data, config.seed):
        raise ValueError(f"{model_dir}: the data handed to the restore are of another corpus or seed than its "
                         f"{run_dir.CONFIG}'s")
    model = model_builder.model_from_config(data.warm_corpus, config)  # built as it was trained
    _create_variables_to_restore(model)  # created first, so restore() checks every one
    checkpoints.restore_checkpoint(lambda path: tf.train.Checkpoint(model=model).restore(path).expect_partial(),
                                   choice.path)
    step = int(choice.path.rsplit("-", 1)[-1])
    return RestoredRun(model, data, config, choice.path, step, choice.warnings)


def _create_variables_to_restore(model) -> None:
    """Creates both towers' variables for a restore that overwrites every one (checkpoints.restore_checkpoint checks
    it does).

    Why not by calling the towers on an id with their own initializers: at 10M x 64 the item table's random
    initializer holds about three table-sized temporaries (8.5 GB peak for a 2.56 GB table, which the oneDNN
    allocator then keeps), all of it overwritten by the restore; and an eager call's embedding lookup puts the
    table in copy-on-read mode, so the restore assigns into a fresh copy instead of adopting the restored tensor
    (2.56 GB more). So the embedding tables start as zeros, and the towers are only traced, which creates their
    variables without running a lookup."""
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.Embedding) and not layer.built:
            layer.embeddings_initializer = tf.keras.initializers.Zeros()
    towers = tf.function(lambda ids: (model.query_tower(ids), model.item_tower(ids)))
    towers.get_concrete_function(tf.TensorSpec([None], tf.int64))
