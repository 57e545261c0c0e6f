"""One typed configuration of a training run: built from flags once, written to config.json, read back by
evaluate, export and retrieve.

Each section is a frozen dataclass whose field names are the trainer's flag names (one name for one thing:
`--num_sampled` is `config.loss.num_sampled` is "num_sampled" in config.json and in the TensorBoard hparams).

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
from typing import Any, Dict, Tuple

from data import sources
from retrieval.retrieval_loss import LossConfig

FORMAT = "retrieval-run/2"


class ConfigError(ValueError):
    """A configuration that cannot describe a run; the message names the setting (as its flag) and the fix."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data: str = sources.BUILTIN
    cache_dir: str = sources.DEFAULT_CACHE_DIR
    num_items: int = 100_000  # the built-in corpus (num_items ... session_timestamps: data.synthetic)
    num_users: int = 20_000
    num_interactions: int = 1_000_000
    taste_drift: float = 1.0
    session_timestamps: bool = True
    validation_per_user: int = 1  # the built-in corpus's validation split (data.synthetic; 0: none)
    history_length: int = 50  # the most earlier items of a user per interaction (data.history)
    cold_users: float = 0.0  # the share of users kept wholly out of training, evaluated apart


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 64
    hidden_dims: Tuple[int, ...] = ()
    normalize: bool = False
    # The history model is the main model: on the built-in corpus and MovieLens it beats the user-id model and
    # serves users it never trained (README, "The query tower"); retrieval.query.QUERY_FEATURES.
    query_features: Tuple[str, ...] = ("history",)
    context_features: Tuple[str, ...] = ("hour_of_day", "day_of_week")  # read when query_features has context
    history_encoder: str = "weighted_mean"  # retrieval.query.HISTORY_ENCODERS; measured in the README
    share_item_embeddings: bool = False  # True: the history reads the item tower's id table (measured: worse)


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    optimizer: str = "lazy_adam"
    learning_rate: float = 0.005
    batch_size: int = 1024
    epochs: int = 3
    steps_per_epoch: int = 0  # a cap; 0: one full pass
    steps_per_execution: int = 0  # 0: auto (fit_loop.steps_per_execution)
    mixed_precision: bool = False
    loss_reduction: str = "mean"  # of a step's per-example losses: "mean" or "sum" (TFRS's)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    eval_top_k: Tuple[int, ...] = (10, 50, 100)
    exclude_seen: bool = False
    eval_max_users: int = 0  # evaluate only the first N held-out users by id (0: all)
    export: bool = True
    export_top_k: int = 100
    keep_best: str = ""  # a held-out metric: keep (and export) the checkpoint of the epoch that maximises it
    early_stopping_patience: int = 0  # with keep_best: stop after this many epochs without a better one (0: never)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    log_every_steps: int = 50
    checkpoint_every_steps: int = 500
    profile_steps: Tuple[int, ...] = ()  # (start, end) or empty
    projector_items: int = 10_000


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    strategy: str = "auto"
    cpu_replicas: int = 1
    num_ps_shards: int = 0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int = 42  # the corpus, initialisation, shuffling and sampling (loss.seed is the same number)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig(seed=42)
    optimization: OptimizationConfig = OptimizationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    logging: LoggingConfig = LoggingConfig()
    distribution: DistributionConfig = DistributionConfig()

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
    whose tables do not fit the checkpoint (run_dir.restore_checkpoint)."""
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
        if section_class is LossConfig:
            values = {**values, "seed": seed}
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

