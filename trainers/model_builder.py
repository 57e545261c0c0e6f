"""Builds the two-tower model for a prepared corpus: the trainer, evaluation and export share it."""

from typing import Sequence

from data.corpus import PreparedCorpus
from retrieval.model import TwoTowerModel
from retrieval.task import LossConfig, RetrievalLoss
from retrieval.towers import Tower


def build_model(
    corpus: PreparedCorpus,
    loss_config: LossConfig,
    embedding_dim: int,
    hidden_dims: Sequence[int] = (),
    normalize: bool = False,
) -> TwoTowerModel:
    # Feature tables of a prepared log (None for the built-in corpus) are looked up by id inside each tower.
    query_tower = Tower(
        corpus.num_users, embedding_dim, hidden_dims, normalize, name="query_tower", feature_tables=corpus.user_features
    )
    item_tower = Tower(
        corpus.num_items, embedding_dim, hidden_dims, normalize, name="item_tower", feature_tables=corpus.item_features
    )
    return TwoTowerModel(query_tower, item_tower, RetrievalLoss(loss_config, corpus.num_items, corpus.item_counts))


def corpus_from_config(config: dict) -> PreparedCorpus:
    """The corpus of a run's --data (config.json or the trainer's flags): the built-in corpus's cache, MovieLens, or
    a prepared directory. Raises ValueError (a bad synthetic config, CorpusError, DataError) or DownloadError."""
    import os

    from data import builtin, synthetic

    if config["data"] == "builtin":
        synthetic_config = synthetic.SyntheticConfig(
            num_items=config["num_items"],
            num_users=config["num_users"],
            num_interactions=config["num_interactions"],
            seed=config["seed"],
        )
        synthetic_config.validate()  # before prepare touches the cache
        return builtin.prepare(synthetic_config, config["cache_dir"])
    if config["data"] == "movielens":
        from data import movielens

        return movielens.prepared(os.path.join(config["cache_dir"], "movielens"))
    return PreparedCorpus.load(config["data"])


def restore_from_model_dir(model_dir: str):
    """Rebuilds a run's model from <model_dir>/config.json and restores its newest checkpoint.

    Returns (model, corpus, config, checkpoint_path, step): the step is the checkpoint's number, which the trainer
    sets to the optimizer step. Raises FileNotFoundError when there is no config.json or no checkpoint, and the
    corpus loaders' errors (ValueError subclasses) when the corpus is gone.
    """
    import dataclasses
    import json
    import os

    import tensorflow as tf

    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{model_dir}: no config.json; expected the model_dir of a trainers.train run")
    with open(config_path) as file:
        config = json.load(file)
    checkpoint_path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if checkpoint_path is None:
        raise FileNotFoundError(f"{model_dir}/checkpoints: no checkpoint to restore; train first")
    corpus = corpus_from_config(config)
    loss_fields = {field.name for field in dataclasses.fields(LossConfig)}
    loss_config = LossConfig(**{name: value for name, value in config.items() if name in loss_fields})
    hidden_dims = [int(units) for units in config.get("hidden_dims") or []]
    model = build_model(corpus, loss_config, config["embedding_dim"], hidden_dims, config["normalize"])
    ids = tf.zeros([1], tf.int64)
    model.query_tower(ids), model.item_tower(ids)  # create the variables, so restore() checks every one
    tf.train.Checkpoint(model=model).restore(checkpoint_path).expect_partial().assert_existing_objects_matched()
    step = int(checkpoint_path.rsplit("-", 1)[-1])
    return model, corpus, config, checkpoint_path, step
