"""The flags of `python -m trainers.train` and the one function that turns them into a RunConfig.

Every flag but --model_dir is made from its setting's one definition: the field of that name in
trainers.run_config's sections and RunConfig.seed (the loss's in retrieval.retrieval_loss.LossConfig). Its type
comes from the field's annotation; its default, bounds, choices and help text from the field (define_flags).
--model_dir is where a run is written, not a setting of it, and is defined here. What a flag's bounds cannot say
of its own value is checked here too, where the flags are parsed: label_smoothing in [0, 1), temperature > 0, finite
floats, the list flags' integers; the settings that must agree (--keep_best, --context_features, ...) are
trainers.checks.check_config's, which config_from_flags calls. The run writes its settings back as an absl flagfile
(<model_dir>/flags.txt), so `python -m trainers.train --flagfile=<model_dir>/flags.txt --model_dir=<new dir>`
reproduces it.
"""

import dataclasses
import math
import os
import typing
from typing import Any, Dict, List, Optional, Tuple

from absl import flags

from data import sources
from retrieval.retrieval_loss import LossConfig
from trainers import checks, run_config
from trainers.run_config import (
    SECTIONS,
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
# The flag kind of each setting type; a Tuple setting is a list flag and one with choices an enum (_define_setting).
_DEFINE_BY_TYPE = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    Optional[float]: flags.DEFINE_float,  # nce_log_partition: None until given
    str: flags.DEFINE_string,
}
_BOUNDS = ("lower_bound", "upper_bound")


def settings() -> Tuple[Tuple[dataclasses.Field, Any], ...]:
    """(field, its type) of every setting of a run: RunConfig.seed, then each section's fields in order
    (LossConfig's seed is RunConfig.seed, no setting of its own)."""
    seed = next(field for field in dataclasses.fields(RunConfig) if field.name == "seed")
    found = [(seed, typing.get_type_hints(RunConfig)["seed"])]
    for section_class in SECTIONS.values():
        types = typing.get_type_hints(section_class)
        fields = {field.name: field for field in dataclasses.fields(section_class)}
        found += [(fields[name], types[name]) for name in section_fields(section_class)]
    return tuple(found)


def trainer_defaults() -> Dict[str, Any]:
    """{setting name: its default in the trainer}: RunConfig()'s values, each its field's default but for the
    loss's temperature (run_config.TRAINER_LOSS)."""
    return RunConfig().flat()


def _define_setting(field: dataclasses.Field, setting_type: Any, default: Any, flag_values: flags.FlagValues) -> None:
    """The flag of one setting, named, typed, bounded and explained as its field, with the trainer's default."""
    metadata = field.metadata
    if "choices" in metadata:
        flags.DEFINE_enum(field.name, default, list(metadata["choices"]), metadata["help"],
                          flag_values=flag_values)
    elif typing.get_origin(setting_type) is tuple:
        # absl list flags hold strings: ("10", "50", "100"), parsed back by config_from_flags.
        flags.DEFINE_list(field.name, [str(item) for item in default], metadata["help"],
                          flag_values=flag_values)
    elif setting_type in _DEFINE_BY_TYPE:
        bounds = {name: metadata[name] for name in _BOUNDS if name in metadata}
        _DEFINE_BY_TYPE[setting_type](field.name, default, metadata["help"], flag_values=flag_values,
                                      **bounds)
    else:
        raise TypeError(f"setting {field.name}: no flag kind for its type {setting_type}")


def _register_checks(flag_values: flags.FlagValues) -> None:
    """The checks bounds cannot say: open intervals, and a --model_dir that is a file."""
    flags.register_validator("label_smoothing", lambda value: 0.0 <= value < 1.0,
                             message="--label_smoothing must be in [0, 1).", flag_values=flag_values)
    flags.register_validator("temperature", lambda value: value > 0.0, message="--temperature must be > 0.",
                             flag_values=flag_values)
    flags.register_validator(
        "model_dir",
        lambda value: not (value and os.path.exists(value) and not os.path.isdir(value)),
        message="--model_dir names an existing file; expected a directory (existing or new).",
        flag_values=flag_values,
    )


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Every setting's flag and --model_dir, in flag_values (default: absl's global FLAGS)."""
    defaults = trainer_defaults()
    for field, setting_type in settings():
        _define_setting(field, setting_type, defaults[field.name], flag_values)
    flags.DEFINE_string("model_dir", "", "Output directory; default ./runs/<timestamp>.", flag_values=flag_values)
    _register_checks(flag_values)


def positive_ints(name: str, values: List[str]) -> Tuple[int, ...]:
    """A list flag's values as positive integers; ConfigError naming the flag otherwise."""
    try:
        parsed = tuple(int(value) for value in values)
    except ValueError:
        parsed = ()
    if not parsed or min(parsed) < 1:
        raise ConfigError(f"--{name}={','.join(values)}: expected comma-separated positive integers")
    return parsed


def _section_from_flags(flag_values: flags.FlagValues, section_class, **parsed):
    """A section of its flags' values (list flags as tuples), with the values given in parsed."""
    values = {name: flag_values[name].value for name in section_fields(section_class) if name not in parsed}
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    return section_class(**values, **parsed)


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> RunConfig:
    """The run's RunConfig from the parsed flags (default: absl's global FLAGS); ConfigError (naming the flag) for
    values flags cannot check and for settings that cannot go together (trainers.checks.check_config)."""
    _check_finite_floats(flag_values)
    given = flag_values.profile_steps
    profile_steps = positive_ints("profile_steps", given) if given else ()
    if profile_steps and (len(profile_steps) != 2 or profile_steps[0] > profile_steps[1]):
        raise ConfigError(f"--profile_steps={','.join(given)}: expected START,END with START <= END")
    hidden_dims = positive_ints("hidden_dims", flag_values.hidden_dims) if flag_values.hidden_dims else ()
    model = _section_from_flags(flag_values, ModelConfig, hidden_dims=hidden_dims)
    eval_top_k = positive_ints("eval_top_k", flag_values.eval_top_k)
    config = RunConfig(
        seed=flag_values.seed,  # the loss's too (RunConfig.__post_init__)
        data=_section_from_flags(flag_values, DataConfig),
        model=model,
        loss=_section_from_flags(flag_values, LossConfig),
        optimization=_section_from_flags(flag_values, OptimizationConfig),
        evaluation=_section_from_flags(flag_values, EvaluationConfig, eval_top_k=eval_top_k),
        logging=_section_from_flags(flag_values, LoggingConfig, profile_steps=profile_steps),
        distribution=_section_from_flags(flag_values, DistributionConfig),
    )
    checks.check_config(config)
    return config


def _check_finite_floats(flag_values: flags.FlagValues) -> None:
    """ConfigError naming the first float flag given inf or nan (absl's float flags parse both): no setting of a
    run means either (--logged_negative_weight=inf made every loss NaN from the first step)."""
    for name in flag_values:
        value = flag_values[name].value
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name}={value}: expected a finite number")


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

