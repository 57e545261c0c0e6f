"""One typed configuration of a training run: built from flags once, written to config.json, read back by
evaluate, export and retrieve.

Each section is a frozen dataclass whose field names are the trainer's flag names (one name for one thing:
`--num_sampled` is `config.loss.num_sampled` is "num_sampled" in config.json and in the TensorBoard hparams).
Each setting is defined once, as its field (`setting(default, help, lower_bound=, upper_bound=, choices=)`; the
loss's in retrieval.retrieval_loss.LossConfig, with the same metadata): its name, type, default, bounds, choices
and help text. trainers.train_flags makes the flags from these fields; only --model_dir is a flag of its own.
The built-in corpus's defaults are data.synthetic's and the history length's data.history's.

config.json (format FORMAT):
    {"format": "retrieval-run/2", "seed": 42, "data": {...}, "model": {...}, "loss": {...},
     "optimization": {...}, "evaluation": {...}, "logging": {...}, "distribution": {...},
     "model_dir": "...", "corpus": "<description of the corpus>"}
A config.json written before the format existed (one flat object of flag values) still loads: each value goes
to the section that holds its name, and settings it predates take their defaults. A setting added since
(PREDATED_SETTINGS: the query tower's features, the history, cold users, the built-in validation split, the loss
reduction, the best-checkpoint settings) takes, in any document written before it, the value that reproduces the
run of that time (query_features=user_id,user_features, loss_reduction=mean, no keep_best, validation_per_user=0).
"""

import dataclasses
import json
from typing import Any, Dict, Optional, Sequence, Tuple

from data import history, sources, synthetic
from retrieval import model as two_tower, optimizers, query
from retrieval.retrieval_loss import LossConfig
from trainers import distribute

FORMAT = "retrieval-run/2"
# A history longer than this is no user's: a [batch, history_length] lookup table of 10,000 items per query
# already holds 40 MB per 1,024 rows; 10^9 would ask TensorFlow for a Range of 8 GB before the first step.
MAX_HISTORY_LENGTH = 10_000
# The built-in corpus's own defaults (data.synthetic): its settings here default to them.
_BUILTIN = synthetic.SyntheticConfig()


class ConfigError(ValueError):
    """A configuration that cannot describe a run; the message names the setting (as its flag) and the fix."""


def setting(default: Any, help: str, *, lower_bound: Optional[float] = None, upper_bound: Optional[float] = None,
            choices: Optional[Sequence[str]] = None):
    """The one definition of a setting: a dataclass field holding its default and, in its metadata, its --help
    text and the bounds or choices its flag checks (trainers.train_flags makes the flag from them). The metadata
    keys are those of retrieval.retrieval_loss.LossConfig's fields, which define the loss's flags the same way."""
    choices = None if choices is None else tuple(choices)
    limits = {"lower_bound": lower_bound, "upper_bound": upper_bound, "choices": choices}
    metadata = {"help": help, **{name: value for name, value in limits.items() if value is not None}}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data: str = setting(
        sources.BUILTIN,
        "'builtin' for the synthetic corpus, 'movielens' for MovieLens 100K (fetched and prepared on first use, "
        "see data/movielens.py), or a corpus directory made by `python -m data.prepare`.",
    )
    cache_dir: str = setting(
        sources.DEFAULT_CACHE_DIR, "Cache root of the built-in corpus and MovieLens (<cache_dir>/movielens)."
    )
    num_items: int = setting(_BUILTIN.num_items, "Built-in corpus: number of items.", lower_bound=2)
    num_users: int = setting(_BUILTIN.num_users, "Built-in corpus: number of users.", lower_bound=1)
    num_interactions: int = setting(
        _BUILTIN.num_interactions, "Built-in corpus: number of interactions.", lower_bound=1
    )
    taste_drift: float = setting(
        _BUILTIN.taste_drift,
        "Built-in corpus: how far users' tastes drift over their interactions (0: fixed tastes).",
        lower_bound=0.0, upper_bound=1.0,
    )
    session_timestamps: bool = setting(
        _BUILTIN.session_timestamps, "Built-in corpus: Unix-second timestamps in sessions days apart."
    )
    validation_per_user: int = setting(
        _BUILTIN.validation_per_user,
        "Built-in corpus: each user's training interactions before the held-out (test) one kept apart as the "
        "validation split, on which the per-epoch evaluation, --keep_best and early stopping choose the model, so "
        "that the test split is read once, for the final report (0: none; then they read the test split). A "
        "prepared corpus has its own (data.prepare --validation_per_user).",
        lower_bound=0,
    )
    history_length: int = setting(
        history.DEFAULT_HISTORY_LENGTH,
        f"The most previous items of a user per query (at most {MAX_HISTORY_LENGTH}).",
        lower_bound=1, upper_bound=MAX_HISTORY_LENGTH,
    )
    cold_users: float = setting(
        0.0, "Share of users kept wholly out of training; evaluated apart by their history.",
        lower_bound=0.0, upper_bound=0.99,
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = setting(64, "Embedding size of both towers.", lower_bound=1)
    hidden_dims: Tuple[int, ...] = setting(
        (), "Hidden ReLU layer sizes of each tower's MLP (empty: embedding only)."
    )
    # Cosine scores at --temperature=0.1: chosen on the validation splits (README, "Choosing the defaults").
    normalize: bool = setting(True, "L2-normalise tower outputs (with --temperature below 1; --nonormalize "
                                    "--temperature=1 scores raw dot products).")
    # The history model is the main model: on the built-in corpus and MovieLens it beats the user-id model and
    # serves users it never trained (README, "The query tower").
    query_features: Tuple[str, ...] = setting(
        ("history",),
        f"What the query tower reads, some of {', '.join(query.QUERY_FEATURES)}: the user id's embedding, the "
        "user's static features, their previous items (the history), the interaction's context.",
    )
    context_features: Tuple[str, ...] = setting(
        tuple(query.TIME_FEATURES),
        "The context --query_features=...,context reads: hour_of_day and day_of_week of the interaction's timestamp "
        "(Unix seconds, UTC), and any of the corpus's own context columns (data.prepare --context_columns, "
        "--numeric_context_columns).",
    )
    history_encoder: str = setting(
        "weighted_mean",
        "How a history is pooled: mean, weighted_mean (a learned weight per position), gru, attention (README).",
        choices=query.HISTORY_ENCODERS,
    )
    share_item_embeddings: bool = setting(
        False,
        "The history reads the item tower's id table; off: a table of its own (better on both corpora, README).",
    )


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    optimizer: str = setting(
        "lazy_adam",
        "Optimizer. lazy_adam updates only the embedding rows a step touches (retrieval.optimizers.LazyAdam).",
        choices=tuple(optimizers.OPTIMIZERS),
    )
    learning_rate: float = setting(0.005, "Learning rate.", lower_bound=0.0)
    batch_size: int = setting(1024, "Global batch size.", lower_bound=1)
    epochs: int = setting(3, "Passes over the training interactions.", lower_bound=1)
    steps_per_epoch: int = setting(0, "Cap on steps per epoch (0: one full pass).", lower_bound=0)
    steps_per_execution: int = setting(
        0,
        "Training steps per tf.function call (Keras compile): fewer host round trips; callbacks (logging, "
        "checkpoints, the NaN guard) then act once per call. 0: auto, the largest that keeps logging and "
        "checkpoints on their step (min of --log_every_steps, --checkpoint_every_steps and 100; 1 under "
        "parameter_server, multi_worker or --profile_steps).",
        lower_bound=0,
    )
    mixed_precision: bool = setting(
        False, "mixed_float16 towers (for GPUs); losses are computed in float32."
    )
    loss_reduction: str = setting(
        "mean",
        "A step's loss from its per-example losses: their mean over the global batch, or their sum, as TensorFlow "
        "Recommenders' Retrieval task (gradients batch_size times larger: what TFRS's learning rates assume).",
        choices=two_tower.LOSS_REDUCTIONS,
    )


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    eval_top_k: Tuple[int, ...] = setting((10, 50, 100), "Cut-offs K for held-out recall@K / NDCG@K.")
    exclude_seen: bool = setting(False, "Held-out evaluation never ranks a user's training items.")
    eval_max_users: int = setting(
        0,
        "Held-out evaluation of the first N users by id only (0: all; trainers.evaluate's --max_users).",
        lower_bound=0,
    )
    export: bool = setting(
        True, "At the end, export the newest checkpoint (--keep_best: the best) to <model_dir>/export/<n>/."
    )
    export_top_k: int = setting(100, "Items the exported serving signature returns per query.", lower_bound=1)
    keep_best: str = setting(
        "",
        "A held-out metric (recall_at_10, ndcg_at_50, top_k_accuracy_at_100, mrr, ...): after each epoch's "
        "evaluation (on the validation split when the corpus has one, else on the test split, with a warning), "
        "keep the checkpoint that maximises it (<model_dir>/checkpoints/best/) and export that one. Empty: the "
        "last.",
    )
    early_stopping_patience: int = setting(
        0, "With --keep_best: stop training after this many epochs without a better value (0: never).",
        lower_bound=0,
    )


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    log_every_steps: int = setting(50, "TensorBoard train scalars every N steps.", lower_bound=1)
    checkpoint_every_steps: int = setting(
        500, "Checkpoint every N steps (0: only at epoch ends).", lower_bound=0
    )
    profile_steps: Tuple[int, ...] = setting(
        (), "START,END steps to trace with the TensorBoard profiler (empty: off)."
    )
    projector_items: int = setting(
        10_000, "Most frequent items shown in the embedding projector.", lower_bound=0
    )


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    strategy: str = setting(
        "auto",
        "tf.distribute strategy; auto: parameter_server when TF_CONFIG has ps tasks, multi_worker when it has "
        "several workers, mirrored with several GPUs, default otherwise.",
        choices=distribute.STRATEGIES,
    )
    cpu_replicas: int = setting(
        1,
        "Split the CPU into this many logical devices for --strategy=mirrored (testing the multi-replica path "
        "without GPUs).",
        lower_bound=1,
    )
    num_ps_shards: int = setting(
        0, "parameter_server: shards of the item table (0: one per ps task).", lower_bound=0
    )


# The trainer's loss: the library's LossConfig() (TensorFlow's raw logits) but for the temperature its
# L2-normalised towers need (ModelConfig.normalize): cosine scores in [-1, 1] reach a sharp softmax only when
# divided by about 0.1. Chosen on the validation splits of MovieLens and the built-in corpus (README, "Choosing the
# defaults"). The only trainer default that is not its field's; the flags read it from RunConfig().
TRAINER_LOSS = LossConfig(temperature=0.1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int = setting(42, "Seed for the corpus, initialisation, shuffling and sampling.")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = TRAINER_LOSS  # its seed is always this run's (__post_init__)
    optimization: OptimizationConfig = OptimizationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    logging: LoggingConfig = LoggingConfig()
    distribution: DistributionConfig = DistributionConfig()

    def __post_init__(self):
        # One seed per run: the loss samples with it too, so LossConfig.seed is not a setting of its own.
        if self.loss.seed != self.seed:
            object.__setattr__(self, "loss", dataclasses.replace(self.loss, seed=self.seed))

    def flat(self) -> Dict[str, Any]:
        """{flag name: value} of every setting: the TensorBoard hparams and the flagfile."""
        values = {}
        for section in SECTIONS:
            values.update(dataclasses.asdict(getattr(self, section)))
        values["seed"] = self.seed
        return values


# Section name in RunConfig and config.json -> its dataclass.
SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optimization": OptimizationConfig,
    "evaluation": EvaluationConfig,
    "logging": LoggingConfig,
    "distribution": DistributionConfig,
}
# The built-in corpus before it had drifting tastes and session timestamps (data.synthetic).
LEGACY_BUILTIN_CORPUS = {"taste_drift": 0.0, "session_timestamps": False}
# Settings added after config.json files were first written, and the values that reproduce the runs of before
# (a query tower of the user id and the corpus's user features): a document without them takes these.
PREDATED_SETTINGS = {
    "data": {"history_length": 50, "cold_users": 0.0, "validation_per_user": 0},
    "model": {
        "query_features": ("user_id", "user_features"),
        "context_features": ("hour_of_day", "day_of_week"),
        "history_encoder": "mean",
        "share_item_embeddings": True,
    },
    "optimization": {"loss_reduction": "mean"},
    "evaluation": {"keep_best": "", "early_stopping_patience": 0},
}
# The settings that define a run's model and its trained state: a restart into a model_dir whose checkpoints
# were trained with other values is refused (trainers.run_dir.check_restart). Every other setting (the learning
# rate, epochs, the loss's corrections and smoothing, evaluation, logging, the strategy) may change on a
# restart; README, "Restarts".
# The settings that draw the built-in corpus (data.synthetic): they mean nothing for another --data.
BUILTIN_CORPUS_SETTINGS = ("num_items", "num_users", "num_interactions", "taste_drift", "session_timestamps",
                           "validation_per_user")
MODEL_DEFINING = {
    "data": ("data", *BUILTIN_CORPUS_SETTINGS, "history_length", "cold_users"),
    "model": tuple(field.name for field in dataclasses.fields(ModelConfig)),
    # The loss parts that own variables: the streaming frequency estimate and the cross-batch memory.
    "loss": ("frequency_estimation", "frequency_buckets", "cross_batch_batches"),
    "optimization": ("optimizer", "mixed_precision"),  # the optimizer's slots, the towers' dtypes
}


def model_defining_differences(trained: "RunConfig", new: "RunConfig") -> Tuple[Tuple[str, Any, Any], ...]:
    """(flag name, trained value, new value) of each MODEL_DEFINING setting that differs, and the seed when the
    corpus is the built-in one (which the seed draws). --data may go from one prepared directory to another."""
    differences = [
        (name, getattr(getattr(trained, section), name), getattr(getattr(new, section), name))
        for section, names in MODEL_DEFINING.items() for name in names
        if not (name == "data" and _later_log(trained.data.data, new.data.data))
    ]
    if new.data.data == sources.BUILTIN:
        differences.append(("seed", trained.seed, new.seed))
    return tuple(difference for difference in differences if difference[1] != difference[2])


def _later_log(trained_data: str, new_data: str) -> bool:
    """True when both --data are prepared directories: going on with a later log of the same catalogue is
    incremental training (scripts/compare_losses.py's drift); the restore itself refuses a corpus of other sizes,
    whose tables do not fit the checkpoint (checkpoints.restore_checkpoint)."""
    named = (sources.BUILTIN, sources.MOVIELENS)
    return trained_data not in named and new_data not in named


# Keys config.json holds beside the sections: written for people and tools, not settings of the run.
RECORD_KEYS = ("format", "model_dir", "corpus")


def section_fields(section_class) -> Tuple[str, ...]:
    """The setting names of a section (LossConfig's seed is RunConfig.seed, not a setting of its own)."""
    names = tuple(field.name for field in dataclasses.fields(section_class))
    return tuple(name for name in names if name != "seed") if section_class is LossConfig else names


def to_json(config: RunConfig, model_dir: str, corpus_description: str) -> str:
    document = {"format": FORMAT, "seed": config.seed}
    for name, section_class in SECTIONS.items():
        section = dataclasses.asdict(getattr(config, name))
        document[name] = {field: section[field] for field in section_fields(section_class)}
    document.update(model_dir=model_dir, corpus=corpus_description)
    return json.dumps(document, indent=2)


def from_dict(document: Dict[str, Any], source: str = "config.json") -> RunConfig:
    """The RunConfig of a config.json document; ConfigError naming an unknown or missing key."""
    if "format" not in document:
        document = _from_legacy(document)
    elif document["format"] != FORMAT:
        raise ConfigError(f"{source}: format {document['format']!r}; this version reads {FORMAT!r}")
    _check_keys(document, ("seed", *SECTIONS, *RECORD_KEYS), source, "")
    seed = document["seed"]
    sections = {}
    for name, section_class in SECTIONS.items():
        values = {**PREDATED_SETTINGS.get(name, {}), **document[name]}
        _check_keys(values, section_fields(section_class), source, f"{name}.")
        sections[name] = section_class(**_tuples_for_lists(values))
    return RunConfig(seed=seed, **sections)


def load(path: str) -> Tuple[RunConfig, Dict[str, Any]]:
    """(RunConfig, the whole document) of a config.json; FileNotFoundError or ConfigError."""
    with open(path) as file:
        try:
            document = json.load(file)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
    return from_dict(document, path), document


def _check_keys(values: Dict[str, Any], expected, source: str, prefix: str) -> None:
    unknown = sorted(set(values) - set(expected))
    missing = sorted(set(expected) - set(values) - set(RECORD_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix}{unknown[0]}; expected one of {', '.join(expected)}")
    if missing:
        raise ConfigError(f"{source}: missing key {prefix}{missing[0]}")


def _tuples_for_lists(values: Dict[str, Any]) -> Dict[str, Any]:
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}


def _from_legacy(flat: Dict[str, Any]) -> Dict[str, Any]:
    """A flat config.json of flag values (before FORMAT) as a sectioned document: each known flag into its
    section; settings it predates take their defaults, except the built-in corpus's, which take the values that
    reproduce the corpus of that time. Its keys are the trainer's flags of that time, all known."""
    flat = {**LEGACY_BUILTIN_CORPUS, **flat}
    document: Dict[str, Any] = {"format": FORMAT, "seed": flat.get("seed", RunConfig.seed)}
    for name, section_class in SECTIONS.items():
        defaults = {**dataclasses.asdict(getattr(RunConfig(), name)), **PREDATED_SETTINGS.get(name, {})}
        document[name] = {
            field: _legacy_value(field, flat[field]) if field in flat else defaults[field]
            for field in section_fields(section_class)
        }
    for key in RECORD_KEYS[1:]:
        if key in flat:
            document[key] = flat[key]
    return document


def _legacy_value(name: str, value: Any) -> Any:
    """Old list flags were saved as lists of strings (["10", "50"])."""
    if name in ("hidden_dims", "eval_top_k", "profile_steps") and value is not None:
        return [int(item) for item in value]
    return value

