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
