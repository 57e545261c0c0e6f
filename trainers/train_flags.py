"""The flags of `python -m trainers.train` and the one function that turns them into a RunConfig.

Every flag is named as its field in trainers.run_config (and as TensorFlow names it, for the loss). The run
writes them back as an absl flagfile (<model_dir>/flags.txt), so
`python -m trainers.train --flagfile=<model_dir>/flags.txt --model_dir=<new dir>` reproduces it.
"""

import math
import os
from typing import List, Tuple

from absl import flags

from data import sources
from retrieval import losses, query, samplers
from retrieval.retrieval_loss import LossConfig
from trainers import distribute, run_config
from trainers.run_config import (
    ConfigError,
    DataConfig,
    DistributionConfig,
    EvaluationConfig,
    LoggingConfig,
    ModelConfig,
    OptimizationConfig,
    RunConfig,
    section_fields,
)

FLAGS = flags.FLAGS
# A history longer than this is no user's: a [batch, history_length] lookup table of 10,000 items per query
# already holds 40 MB per 1,024 rows; 10^9 would ask TensorFlow for a Range of 8 GB before the first step.
MAX_HISTORY_LENGTH = 10_000


def _define_data_and_model_flags():
    flags.DEFINE_string(
        "data",
        sources.BUILTIN,
        "'builtin' for the synthetic corpus, 'movielens' for MovieLens 100K (fetched and prepared on first use, "
        "see data/movielens.py), or a corpus directory made by `python -m data.prepare`.",
    )
    flags.DEFINE_string(
        "cache_dir", sources.DEFAULT_CACHE_DIR, "Cache root of the built-in corpus and MovieLens (<cache_dir>/movielens)."
    )
    flags.DEFINE_integer("num_items", 100_000, "Built-in corpus: number of items.", lower_bound=2)
    flags.DEFINE_integer("num_users", 20_000, "Built-in corpus: number of users.", lower_bound=1)
    flags.DEFINE_integer("num_interactions", 1_000_000, "Built-in corpus: number of interactions.", lower_bound=1)
    flags.DEFINE_float(
        "taste_drift", 1.0, "Built-in corpus: how far users' tastes drift over their interactions (0: fixed tastes).",
        lower_bound=0.0, upper_bound=1.0,
    )
    flags.DEFINE_bool("session_timestamps", True, "Built-in corpus: Unix-second timestamps in sessions days apart.")
    flags.DEFINE_integer(
        "validation_per_user", 1, "Built-in corpus: each user's training interactions before the held-out (test) one "
        "kept apart as the validation split, on which the per-epoch evaluation, --keep_best and early stopping "
        "choose the model, so that the test split is read once, for the final report (0: none; then they read the "
        "test split). A prepared corpus has its own (data.prepare --validation_per_user).", lower_bound=0,
    )
    flags.DEFINE_string("model_dir", "", "Output directory; default ./runs/<timestamp>.")
    flags.DEFINE_integer("embedding_dim", 64, "Embedding size of both towers.", lower_bound=1)
    flags.DEFINE_list("hidden_dims", [], "Hidden ReLU layer sizes of each tower's MLP (empty: embedding only).")
    flags.DEFINE_bool("normalize", False, "L2-normalise tower outputs (use with --temperature below 1).")
    _define_query_flags()


def _define_query_flags():
    flags.DEFINE_list(
        "query_features", list(RunConfig().model.query_features),
        f"What the query tower reads, some of {', '.join(query.QUERY_FEATURES)}: the user id's embedding, the "
        "user's static features, their previous items (the history), the interaction's context.",
    )
    flags.DEFINE_integer(
        "history_length", 50, f"The most previous items of a user per query (at most {MAX_HISTORY_LENGTH}).",
        lower_bound=1, upper_bound=MAX_HISTORY_LENGTH,
    )
    flags.DEFINE_enum(
        "history_encoder", RunConfig().model.history_encoder, list(query.HISTORY_ENCODERS),
        "How a history is pooled: mean, weighted_mean (a learned weight per position), gru, attention (README).",
    )
    flags.DEFINE_bool(
        "share_item_embeddings", RunConfig().model.share_item_embeddings,
        "The history reads the item tower's id table; off: a table of its own (better on both corpora, README).",
    )
    flags.DEFINE_list(
        "context_features", list(query.TIME_FEATURES),
        "The context --query_features=...,context reads: hour_of_day and day_of_week of the interaction's timestamp "
        "(Unix seconds, UTC), and any of the corpus's own context columns (data.prepare --context_columns, "
        "--numeric_context_columns).",
    )
    flags.DEFINE_float(
        "cold_users", 0.0, "Share of users kept wholly out of training; evaluated apart by their history.",
        lower_bound=0.0, upper_bound=0.99,
    )


def _define_optimization_flags():
    flags.DEFINE_integer("batch_size", 1024, "Global batch size.", lower_bound=1)
    flags.DEFINE_integer("epochs", 3, "Passes over the training interactions.", lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", 0, "Cap on steps per epoch (0: one full pass).", lower_bound=0)
    flags.DEFINE_float("learning_rate", 0.005, "Learning rate.", lower_bound=0.0)
    flags.DEFINE_enum(
        "optimizer",
        "lazy_adam",
        ["lazy_adam", "adam", "adagrad", "sgd"],
        "Optimizer. lazy_adam updates only the embedding rows a step touches (retrieval.optimizers.LazyAdam).",
    )
    flags.DEFINE_integer(
        "steps_per_execution",
        0,
        "Training steps per tf.function call (Keras compile): fewer host round trips; callbacks (logging, "
        "checkpoints, the NaN guard) then act once per call. 0: auto, the largest that keeps logging and "
        "checkpoints on their step (min of --log_every_steps, --checkpoint_every_steps and 100; 1 under "
        "parameter_server, multi_worker or --profile_steps).",
        lower_bound=0,
    )
    flags.DEFINE_bool("mixed_precision", False, "mixed_float16 towers (for GPUs); losses are computed in float32.")
    flags.DEFINE_enum(
        "loss_reduction", "mean", ["mean", "sum"],
        "A step's loss from its per-example losses: their mean over the global batch, or their sum, as TensorFlow "
        "Recommenders' Retrieval task (gradients batch_size times larger: what TFRS's learning rates assume).",
    )


def _define_loss_flags():
    flags.DEFINE_enum("loss", "sampled_softmax", list(losses.LOSSES), "Training loss.")
    flags.DEFINE_enum("sampler", "log_uniform", list(samplers.SAMPLERS), "Negative sampler for sampled losses.")
    flags.DEFINE_enum(
        "mixed_corpus_sampler", "log_uniform", list(samplers.CORPUS_SAMPLERS),
        "The corpus sampler whose negatives --sampler=mixed adds to the in-batch ones.",
    )
    flags.DEFINE_integer("num_sampled", 1000, "Negatives sampled per step (shared by the batch).", lower_bound=1)
    flags.DEFINE_integer("num_true", 1, "Positives per row.", lower_bound=1)
    flags.DEFINE_bool("unique", True, "Sample negatives without replacement.")
    flags.DEFINE_bool("subtract_log_q", True, "Subtract log expected count from candidate logits.")
    flags.DEFINE_bool("remove_accidental_hits", True, "Mask sampled negatives equal to a true item of the row.")
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing epsilon in [0, 1).")
    flags.DEFINE_float("temperature", 1.0, "Scores are divided by this before the loss.")
    flags.DEFINE_float("focal_gamma", 0.0, "Focal-loss gamma for --loss=nce (0: plain cross entropy).", lower_bound=0.0)
    flags.DEFINE_float("nce_positive_weight", 1.0, "Weight of the positive term for --loss=nce.")
    flags.DEFINE_float("hinge_margin", 1.0, "Margin for --loss=pairwise_hinge.")
    flags.DEFINE_float("unigram_distortion", 0.75, "--sampler=unigram draws items in proportion to count ** this.")
    _define_negative_flags()
    flags.DEFINE_float(
        "nce_log_partition",
        None,
        "Constant subtracted from NCE logits (default ln(num_items): untrained items start at the uniform "
        "log-probability, so full-corpus rankings are not led by items training never touched). 0 is "
        "tf.nn.nce_loss.",
    )
    flags.register_validator(
        "label_smoothing", lambda value: 0.0 <= value < 1.0, message="--label_smoothing must be in [0, 1)."
    )
    flags.register_validator("temperature", lambda value: value > 0.0, message="--temperature must be > 0.")


def _define_negative_flags():
    flags.DEFINE_enum(
        "frequency_estimation", "corpus", ["corpus", "streaming"],
        "Q of in-batch (and mixed, cross-batch) negatives: corpus = training counts (counts in the batch where the "
        "corpus has none); streaming = estimated from the stream of batches (Yi et al. 2019; follows drift).",
    )
    flags.DEFINE_integer(
        "frequency_buckets", 0, "--frequency_estimation=streaming: hashed array size (0: one per item).", lower_bound=0
    )
    flags.DEFINE_float(
        "frequency_learning_rate", 0.01,
        "--frequency_estimation=streaming: the moving average's alpha (smaller: steadier, slower to follow drift).",
    )
    flags.DEFINE_integer(
        "cross_batch_batches", 0,
        "Cross-batch negatives: the item embeddings of the last N global batches (no gradient); 0: off.",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "num_hard_negatives", 0, "Keep each row's K highest-scoring negatives (TFRS semantics); 0: all.", lower_bound=0
    )
    flags.DEFINE_float(
        "logged_negative_weight", 1.0,
        "Logged negatives (data.prepare --negative_column): each counts this many times in a softmax (log w is "
        "added to its logit; for NCE that shifts its logit).",
    )


def _define_run_flags():
    flags.DEFINE_integer("seed", 42, "Seed for the corpus, initialisation, shuffling and sampling.")
    flags.DEFINE_list("eval_top_k", ["10", "50", "100"], "Cut-offs K for held-out recall@K / NDCG@K.")
    flags.DEFINE_bool("exclude_seen", False, "Held-out evaluation never ranks a user's training items.")
    flags.DEFINE_integer(
        "eval_max_users", 0, "Held-out evaluation of the first N users by id only (0: all; trainers.evaluate's "
        "--max_users).", lower_bound=0,
    )
    flags.DEFINE_bool("export", True, "At the end, export the newest checkpoint (--keep_best: the best) to "
                      "<model_dir>/export/<n>/.")
    flags.DEFINE_string(
        "keep_best", "", "A held-out metric (recall_at_10, ndcg_at_50, top_k_accuracy_at_100, mrr, ...): after each "
        "epoch's evaluation (on the validation split when the corpus has one, else on the test split, with a "
        "warning), keep the checkpoint that maximises it (<model_dir>/checkpoints/best/) and export that one. "
        "Empty: the last.",
    )
    flags.DEFINE_integer(
        "early_stopping_patience", 0, "With --keep_best: stop training after this many epochs without a better "
        "value (0: never).", lower_bound=0,
    )
    flags.DEFINE_integer("export_top_k", 100, "Items the exported serving signature returns per query.", lower_bound=1)
    flags.DEFINE_integer("log_every_steps", 50, "TensorBoard train scalars every N steps.", lower_bound=1)
    flags.DEFINE_integer(
        "checkpoint_every_steps", 500, "Checkpoint every N steps (0: only at epoch ends).", lower_bound=0
    )
    flags.DEFINE_list("profile_steps", [], "START,END steps to trace with the TensorBoard profiler (empty: off).")
    flags.DEFINE_integer(
        "projector_items", 10_000, "Most frequent items shown in the embedding projector.", lower_bound=0
    )


def _define_distribution_flags():
    flags.DEFINE_enum(
        "strategy",
        "auto",
        list(distribute.STRATEGIES),
        "tf.distribute strategy; auto: parameter_server when TF_CONFIG has ps tasks, multi_worker when it has "
        "several workers, mirrored with several GPUs, default otherwise.",
    )
    flags.DEFINE_integer(
        "cpu_replicas",
        1,
        "Split the CPU into this many logical devices for --strategy=mirrored (testing the multi-replica path "
        "without GPUs).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "num_ps_shards", 0, "parameter_server: shards of the item table (0: one per ps task).", lower_bound=0
    )
    flags.register_validator(
        "model_dir",
        lambda value: not (value and os.path.exists(value) and not os.path.isdir(value)),
        message="--model_dir names an existing file; expected a directory (existing or new).",
    )


def define_flags() -> None:
    _define_data_and_model_flags()
    _define_optimization_flags()
    _define_loss_flags()
    _define_run_flags()
    _define_distribution_flags()


def positive_ints(name: str, values: List[str]) -> Tuple[int, ...]:
    """A list flag's values as positive integers; ConfigError naming the flag otherwise."""
    try:
        parsed = tuple(int(value) for value in values)
    except ValueError:
        parsed = ()
    if not parsed or min(parsed) < 1:
        raise ConfigError(f"--{name}={','.join(values)}: expected comma-separated positive integers")
    return parsed


def _section_from_flags(section_class, **parsed):
    values = {name: FLAGS[name].value for name in section_fields(section_class) if name not in parsed}
    return section_class(**values, **parsed)


def config_from_flags() -> RunConfig:
    """The run's RunConfig from the parsed flags; ConfigError (naming the flag) for values flags cannot check."""
    _check_finite_floats()
    profile_steps = positive_ints("profile_steps", FLAGS.profile_steps) if FLAGS.profile_steps else ()
    if profile_steps and (len(profile_steps) != 2 or profile_steps[0] > profile_steps[1]):
        raise ConfigError(f"--profile_steps={','.join(FLAGS.profile_steps)}: expected START,END with START <= END")
    hidden_dims = positive_ints("hidden_dims", FLAGS.hidden_dims) if FLAGS.hidden_dims else ()
    model = _section_from_flags(ModelConfig, hidden_dims=hidden_dims, query_features=tuple(FLAGS.query_features),
                                context_features=tuple(FLAGS.context_features))
    try:
        query.check_features(model.query_features, model.context_features)
    except ValueError as error:
        raise ConfigError(f"--{error}") from None
    config = RunConfig(
        seed=FLAGS.seed,
        data=_section_from_flags(DataConfig),
        model=model,
        loss=_section_from_flags(LossConfig, seed=FLAGS.seed),
        optimization=_section_from_flags(OptimizationConfig),
        evaluation=_section_from_flags(EvaluationConfig, eval_top_k=positive_ints("eval_top_k", FLAGS.eval_top_k)),
        logging=_section_from_flags(LoggingConfig, profile_steps=profile_steps),
        distribution=_section_from_flags(DistributionConfig),
    )
    _check_keep_best(config)
    _check_context_features(config)
    return config


def _check_finite_floats() -> None:
    """ConfigError naming the first float flag given inf or nan (absl's float flags parse both): no setting of a
    run means either (--logged_negative_weight=inf made every loss NaN from the first step)."""
    for name in FLAGS:
        value = FLAGS[name].value
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name}={value}: expected a finite number")


def _check_context_features(config: RunConfig) -> None:
    """ConfigError when --context_features is set but --query_features has no context: the columns would be
    silently unread."""
    model = config.model
    if "context" not in model.query_features and model.context_features != ModelConfig().context_features:
        raise ConfigError(f"--context_features={','.join(model.context_features)} is read only with context in "
                          f"--query_features (now {','.join(model.query_features)}): add it, e.g. "
                          f"--query_features={','.join(model.query_features)},context, or drop --context_features")


# The held-out metrics of every cut-off K (trainers.held_out), and the one without: what --keep_best can name.
METRICS_AT_K = ("recall_at_", "hit_rate_at_", "ndcg_at_", "top_k_accuracy_at_")


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


def flagfile_text(config: RunConfig, model_dir: str) -> str:
    """The run's settings as absl flagfile lines (--name=value), model_dir included: a later --model_dir on the
    command line overrides it."""
    lines = []
    for name, value in {**config.flat(), "model_dir": model_dir}.items():
        if value is None:
            continue  # a flag whose default is None (nce_log_partition) is left at it
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, (tuple, list)):
            lines.append(f"--{name}={','.join(str(item) for item in value)}")
        else:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"


def hparams(config: RunConfig, model_dir: str) -> dict:
    """{flag name: value} for TensorBoard's HParams tab (lists as text, as the flags were); the built-in corpus's
    settings only when it is the run's --data, so runs on other corpora do not compare by them."""
    values = {**config.flat(), "model_dir": model_dir}
    if config.data.data != sources.BUILTIN:
        values = {name: value for name, value in values.items() if name not in run_config.BUILTIN_CORPUS_SETTINGS}
    return {name: ",".join(map(str, value)) if isinstance(value, tuple) else value for name, value in values.items()}

