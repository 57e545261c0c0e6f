"""The checks of a run's settings that no flag can make alone: settings that must agree with each other, with the
strategy the run resolves to, and with the corpus --data names. Each raises an error whose one-line message names
the flag(s), what was wrong and what to do; trainers.train shows it as its usage error, before anything is written.

    check_config(config)                      the RunConfig alone (train_flags.config_from_flags, before TensorFlow
                                              runs anything)
    check_strategy(config, strategy_name)     the resolved --strategy (DistributeError), before any server starts
    check_replicas(config, strategy_name, n)  the strategy built, with its n replicas
    check_with_corpus(config, data)           the corpus of --data (a trainers.run_data.RunData): its size, the
                                              histories its records carry, its context columns; before any split
                                              is read

What one flag's value says by itself stays where the flag is parsed, trainers.train_flags: absl's bounds and
choices, --label_smoothing in [0, 1), --temperature > 0, finite floats, the list flags' integers (--eval_top_k,
--hidden_dims, --profile_steps as START,END). The loss validates its own section (the library's
retrieval.retrieval_loss.LossConfig.validate); check_with_corpus calls it with the corpus's size.
"""

from typing import TYPE_CHECKING

from retrieval import query
from trainers.distribute import DistributeError
from trainers.run_config import ConfigError, ModelConfig, RunConfig

if TYPE_CHECKING:
    from data.corpus import PreparedCorpus
    from trainers.run_data import RunData

# The held-out metrics of every cut-off K (trainers.held_out), and the one without: what --keep_best can name.
METRICS_AT_K = ("recall_at_", "hit_rate_at_", "ndcg_at_", "top_k_accuracy_at_")


def check_config(config: RunConfig) -> None:
    """ConfigError naming the flags for settings of one RunConfig that cannot go together: --query_features and
    --context_features, --keep_best and --early_stopping_patience with the run's evaluation, --context_features
    without context."""
    model = config.model
    try:
        query.check_features(model.query_features, model.context_features)
    except ValueError as error:
        raise ConfigError(f"--{error}") from None
    _check_keep_best(config)
    _check_context_features(model)


def _check_context_features(model: ModelConfig) -> None:
    """ConfigError when --context_features is set but --query_features has no context: the columns would be
    silently unread."""
    if "context" not in model.query_features and model.context_features != ModelConfig().context_features:
        raise ConfigError(f"--context_features={','.join(model.context_features)} is read only with context in "
                          f"--query_features (now {','.join(model.query_features)}): add it, e.g. "
                          f"--query_features={','.join(model.query_features)},context, or drop --context_features")


def _check_keep_best(config: RunConfig) -> None:
    """ConfigError unless --keep_best names a metric the run's evaluation computes (cold_users/...: with
    --cold_users), and --early_stopping_patience comes with it."""
    evaluation = config.evaluation
    if evaluation.early_stopping_patience and not evaluation.keep_best:
        raise ConfigError(f"--early_stopping_patience={evaluation.early_stopping_patience} needs --keep_best=METRIC, "
                          "the held-out metric it watches (e.g. --keep_best=recall_at_10)")
    names = [f"{prefix}{k}" for prefix in METRICS_AT_K for k in evaluation.eval_top_k] + ["mrr"]
    names += [f"cold_users/{name}" for name in names] if config.data.cold_users else []
    if evaluation.keep_best and evaluation.keep_best not in names:
        ks = ",".join(map(str, evaluation.eval_top_k))
        raise ConfigError(f"--keep_best={evaluation.keep_best}: not a held-out metric of this run; expected "
                          f"{', '.join(prefix + 'K' for prefix in METRICS_AT_K)} with K in --eval_top_k={ks}, or mrr"
                          f"{' (cold_users/ before any, with --cold_users)' if config.data.cold_users else ''}")


def check_strategy(config: RunConfig, strategy_name: str) -> None:
    """DistributeError for a setting the resolved strategy cannot honour: --cpu_replicas beyond 1 outside mirrored;
    --keep_best under multi_worker (only the chief evaluates, and its workers could not stop early together)."""
    if config.distribution.cpu_replicas > 1 and strategy_name != "mirrored":
        raise DistributeError(f"--cpu_replicas={config.distribution.cpu_replicas} applies to --strategy=mirrored, "
                              f"not {strategy_name}")
    if config.evaluation.keep_best and strategy_name == "multi_worker":
        raise DistributeError(f"--keep_best={config.evaluation.keep_best} does not run under --strategy=multi_worker "
                              "(only the chief evaluates, and the workers cannot stop early together); use mirrored, "
                              "parameter_server, or trainers.evaluate on the run's checkpoints")


def check_replicas(config: RunConfig, strategy_name: str, num_replicas: int) -> None:
    """ConfigError for a setting the strategy built cannot run: a --batch_size its replicas do not divide; a loss
    with state over the steps (streaming frequencies, a cross-batch memory) under parameter_server."""
    if config.optimization.batch_size % num_replicas:
        raise ConfigError(f"--batch_size={config.optimization.batch_size} must be a multiple of the "
                          f"{num_replicas} replicas of --strategy={strategy_name}")
    stateful = config.loss.frequency_estimation == "streaming" or config.loss.cross_batch_batches
    if strategy_name == "parameter_server" and stateful:
        raise ConfigError("--frequency_estimation=streaming and --cross_batch_batches need synchronous training "
                          "(every replica sees each global batch); --strategy=parameter_server steps workers apart")


def check_with_corpus(config: RunConfig, data: "RunData") -> None:
    """ConfigError naming the flag for a setting the corpus of --data cannot meet, checked before any split is read
    (the training split of --cold_users last, once the settings that would refuse it are checked): the histories
    its records carry, the loss against its number of items, the context it declares, the top-K cut-offs against
    its size, and --batch_size against the rows training sees."""
    corpus = data.corpus
    try:
        check_written_histories(corpus, config)
    except ValueError as error:
        raise ConfigError(f"--data={config.data.data}: {error}") from None
    try:
        config.loss.validate(corpus.num_items)
        check_context_columns(corpus, config.model)
    except ValueError as error:
        raise ConfigError(f"--{error}") from None
    evaluation = config.evaluation
    if max(evaluation.eval_top_k) > corpus.num_items:
        raise ConfigError(f"--eval_top_k={max(evaluation.eval_top_k)} exceeds the corpus size {corpus.num_items}")
    if evaluation.export and evaluation.export_top_k > corpus.num_items:
        raise ConfigError(f"--export_top_k={evaluation.export_top_k} exceeds the corpus size {corpus.num_items}")
    num_train = data.warm_corpus.num_train  # the rows training sees (--cold_users: the warm users')
    if num_train < config.optimization.batch_size * config.loss.num_true:
        raise ConfigError(f"--batch_size={config.optimization.batch_size} exceeds the {num_train} "
                          "training interactions")


def check_written_histories(corpus: "PreparedCorpus", config: RunConfig) -> None:
    """ValueError naming the flag when a corpus whose records carry their histories (prepared to be streamed,
    data.prepare --history_length) meets a setting that reads its training split whole, or a longer history."""
    written = corpus.history_length
    if written is None:
        return
    why = (f"this corpus was prepared with --history_length={written}, its records carry their histories and "
           "the trainer streams them, reading no split whole")
    if "history" in config.model.query_features and config.data.history_length > written:
        raise ValueError(f"--history_length={config.data.history_length}: {why}, so histories are at most {written} "
                         f"items; train with --history_length<={written} or prepare the log again")
    for flag, value in (("cold_users", config.data.cold_users), ("exclude_seen", config.evaluation.exclude_seen)):
        if value:
            raise ValueError(f"--{flag}={value} needs the training split read whole: {why}; drop --{flag}, or "
                             "prepare the log without --history_length")


def check_context_columns(corpus: "PreparedCorpus", model: ModelConfig) -> None:
    """ValueError naming context_features (trainers.model_builder.context_features checks with it too) unless,
    when query_features has context, each of model.context_features is a time feature or one of the corpus's
    context columns, and the time features come from real timestamps."""
    if "context" not in model.query_features:
        return
    query.check_features(model.query_features, model.context_features,
                         [column.name for column in corpus.context_columns])
    time_features = [name for name in model.context_features if name in query.TIME_FEATURES]
    if time_features and not corpus.has_timestamps:
        raise ValueError(f"context_features={','.join(model.context_features)}: {' and '.join(time_features)} "
                         "come from timestamps, and this corpus was prepared without --timestamp_column (its "
                         "timestamps are row numbers); drop them or prepare the log with --timestamp_column")
