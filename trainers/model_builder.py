"""The corpus and the two-tower model a RunConfig describes: the trainer, evaluation and export share them (the
model is built from the corpus as training sees it, trainers.run_data.RunData.warm_corpus)."""

from typing import Optional, Sequence

from data import context, sources, synthetic
from data.corpus import PreparedCorpus
from retrieval import query
from retrieval.model import TwoTowerModel
from retrieval.retrieval_loss import LossConfig, RetrievalLoss
from retrieval.towers import Tower
from trainers import checks
from trainers.run_config import DataConfig, ModelConfig, OptimizationConfig, RunConfig


def load_corpus(config: RunConfig) -> PreparedCorpus:
    """The corpus of config.data (data.sources) as its files hold it; raises ValueError subclasses or
    movielens.DownloadError. The settings it cannot meet are trainers.checks.check_with_corpus's; what the run
    derives from it (cold users, the corpus as training sees it) is trainers.run_data.RunData's."""
    data = config.data
    synthetic_config = synthetic.SyntheticConfig(
        num_items=data.num_items,
        num_users=data.num_users,
        num_interactions=data.num_interactions,
        taste_drift=data.taste_drift,
        session_timestamps=data.session_timestamps,
        validation_per_user=data.validation_per_user,
        seed=config.seed,
    )
    return sources.load_corpus(data.data, data.cache_dir, synthetic_config)


def build_model(
    corpus: PreparedCorpus,
    loss_config: LossConfig,
    embedding_dim: int,
    hidden_dims: Sequence[int] = ModelConfig.hidden_dims,
    normalize: bool = ModelConfig.normalize,
    global_batch_size: Optional[int] = None,
    query_config: Optional[ModelConfig] = None,
    history_length: int = DataConfig.history_length,
    loss_reduction: str = OptimizationConfig.loss_reduction,
) -> TwoTowerModel:
    """The two-tower model; global_batch_size sizes a cross-batch memory (and in-batch Q from corpus counts);
    query_config: what the query tower reads (default: the user id and the corpus's user features)."""
    # Feature tables of a prepared log (None for the built-in corpus) are looked up by id inside each tower.
    item_tower = Tower(
        corpus.num_items, embedding_dim, hidden_dims, normalize, name="item_tower", feature_tables=corpus.item_features
    )
    query_config = query_config or ModelConfig(embedding_dim, tuple(hidden_dims), normalize, ("user_id", "user_features"))
    query_tower = build_query_tower(corpus, query_config, item_tower, history_length)
    retrieval_loss = RetrievalLoss(
        loss_config, corpus.num_items, corpus.item_counts, global_batch_size=global_batch_size,
        embedding_dim=embedding_dim,
    )
    return TwoTowerModel(query_tower, item_tower, retrieval_loss, loss_reduction)


def build_query_tower(corpus: PreparedCorpus, model: ModelConfig, item_tower: Tower, history_length: int):
    """The QueryTower of model.query_features; the history reads item_tower's id table when shared."""
    history = None
    if "history" in model.query_features:
        shared_table = item_tower.embedding if model.share_item_embeddings else None
        history = query.HistoryEncoder(shared_table, model.embedding_dim, model.history_encoder, history_length,
                                       num_items=corpus.num_items)
    vocabularies, numeric = context_features(corpus, model)
    return query.QueryTower(corpus.num_users, model.embedding_dim, model.hidden_dims, model.normalize,
                            model.query_features, corpus.user_features, history, vocabularies, numeric)


def context_features(corpus: PreparedCorpus, model: ModelConfig):
    """({name: number of values} of the categorical context the query tower reads, [names of numeric ones]):
    model.context_features when query_features has context, each a time feature or one of the corpus's context
    columns (ValueError naming context_features and the names available otherwise: checks.check_context_columns)."""
    if "context" not in model.query_features:
        return {}, []
    checks.check_context_columns(corpus, model)
    declared = {column.name: column for column in corpus.context_columns}
    vocabularies = {name: query.TIME_FEATURES[name] for name in model.context_features if name in query.TIME_FEATURES}
    numeric = []
    for column in (declared[name] for name in model.context_features if name in declared):
        if column.kind == context.NUMERIC:
            numeric.append(column.name)
        else:
            vocabularies[column.name] = max(column.vocabulary_size, 1)  # an embedding table needs a row
    return vocabularies, numeric


def model_from_config(corpus: PreparedCorpus, config: RunConfig) -> TwoTowerModel:
    model = config.model
    return build_model(corpus, config.loss, model.embedding_dim, model.hidden_dims, model.normalize,
                       config.optimization.batch_size, model, config.data.history_length,
                       config.optimization.loss_reduction)


def make_optimizer(optimization: OptimizationConfig):
    """The optimizer --optimizer names, at --learning_rate."""
    from retrieval import optimizers

    return optimizers.OPTIMIZERS[optimization.optimizer](optimization.learning_rate)


def build_for_training(
    tf, strategy, corpus: PreparedCorpus, config: RunConfig, first_batch, steps_per_execution: int = 1
) -> TwoTowerModel:
    """The compiled model in the strategy's scope (steps_per_execution: the resolved one, see
    fit_loop.steps_per_execution), both towers' variables created (mirrored, or sharded over the ps tasks) from
    the first batch, ready for a restore."""
    with strategy.scope():
        model = model_from_config(corpus, config)
        model.compile(optimizer=make_optimizer(config.optimization),
                      steps_per_execution=steps_per_execution)
        model.item_tower(tf.reshape(first_batch["item_id"], [-1]))
        model.query_embeddings(first_batch)
    return model
