"""A run's model_dir: its layout, its config, its checkpoints and the policy that restores them.

    <model_dir>/config.json         the RunConfig (trainers.run_config), written once by the chief
               flags.txt           the same as an absl flagfile (`--flagfile=` reproduces the run)
               checkpoints/        tf.train.CheckpointManager checkpoints ckpt-<step>
                          damaged/    damaged checkpoints the restore policy set aside (never deleted)
                          best/       --keep_best: the best epoch's checkpoint and best.json
               backup/             BackupAndRestore's state of an interrupted multi_worker job
               tensorboard/        hparams (its own events), the profiler's plugins/, and one run per directory:
                          train/        per-step loss, throughput, sampler diagnostics
                          eval/         held-out metrics per epoch (recall_at_10, cold_users/recall_at_10, ...)
                          most_popular/, item_transitions/  the baselines (trainers.baselines) under eval/'s
                                        tag names, so charts overlay them
                          projector/    item embeddings checkpoint, projector_config.pbtxt, metadata.tsv (key,
                                        item_id, count) and an event file, without which TensorBoard sees no run
               metrics.json        final held-out metrics of the model and the most-popular baseline
               initial_loss.json   the step-0 check (trainers.summaries.check_initial_loss) of a run that started at 0
               run_summary.json    what the chief's run did (steps, restore, placement, fingerprint, metrics)
               task_summaries/     the same from each other task of a distributed job (<task>.json)
               evaluation/         trainers.evaluate's reports, step-<N>.json
               export/<n>/         SavedModel versions (trainers.export)

JSON files are written to a temporary name and renamed, so a killed run never leaves half a file.
"""

import dataclasses
import glob
import json
import logging as python_logging
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging

from trainers import run_config

CONFIG = "config.json"
FLAGFILE = "flags.txt"
METRICS = "metrics.json"
INITIAL_LOSS = "initial_loss.json"
RUN_SUMMARY = "run_summary.json"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths inside one model_dir."""

    path: str

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def checkpoints(self) -> str:
        return self.join("checkpoints")

    @property
    def best_checkpoints(self) -> str:
        """--keep_best: the checkpoint of the best epoch so far, and best.json describing it."""
        return self.join("checkpoints", "best")

    @property
    def backup(self) -> str:
        return self.join("backup")

    @property
    def tensorboard(self) -> str:
        return self.join("tensorboard")

    def events(self, name: str) -> str:
        """tensorboard/<name>, one TensorBoard run: "train", "eval", a baseline's name ("most_popular",
        "item_transitions"), "projector"."""
        return self.join("tensorboard", name)

    def evaluation(self, step: int) -> str:
        """trainers.evaluate's report of the checkpoint at `step`."""
        return self.join("evaluation", f"step-{step}.json")

    def task_summary(self, task_name: str) -> str:
        return self.join("task_summaries", task_name.replace(" ", "-") + ".json")


def write_text(path: str, text: str) -> None:
    """text to path through a temporary file and a rename: readers see the old file or the new one, whole."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def write_json(path: str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2))


def write_config(run_dir: RunDir, config_json: str, flagfile: str) -> None:
    """config.json (run_config.to_json's text) and flags.txt."""
    write_text(run_dir.join(CONFIG), config_json)
    write_text(run_dir.join(FLAGFILE), flagfile)


def load_config(model_dir: str):
    """(RunConfig, config.json document) of a run; FileNotFoundError without config.json, ConfigError."""
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no {CONFIG}; expected the model_dir of a trainers.train run")
    return run_config.load(path)


def check_restart(model_dir: str, config: run_config.RunConfig) -> None:
    """CheckpointError, before any file is touched, when model_dir holds checkpoints of a run whose config.json
    differs from this run's in a model-defining setting (run_config.MODEL_DEFINING): its checkpoints would
    otherwise go on under another model (a dropped encoder's weights lost without a word)."""
    run = RunDir(model_dir)
    saved = sorted(glob.glob(os.path.join(run.checkpoints, "ckpt-*.index")), key=_checkpoint_number)
    if not os.path.isfile(run.join(CONFIG)) or not (saved or os.path.isdir(run.backup)):
        return
    trained, _ = load_config(model_dir)
    differences = run_config.model_defining_differences(trained, config)
    if differences:
        name, old, new = differences[0]
        newest = saved[-1][: -len(".index")] if saved else run.backup
        raise CheckpointError(f"{newest} does not fit this run's model: --{name}={_flag_value(new)}, but the run "
                              f"in --model_dir={model_dir} was trained with --{name}={_flag_value(old)}; a model_dir "
                              "holds one model: train with its config.json settings, or into a new --model_dir")


def _checkpoint_number(path: str) -> int:
    return int(os.path.basename(path)[len("ckpt-"):-len(".index")])


def _flag_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def training_checkpoint(tf, model):
    """The tf.train.Checkpoint of a training run: the model and its optimizer."""
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def checkpoint_manager(tf, checkpoint, directory: str, max_to_keep: int = 3):
    """A CheckpointManager keeping the max_to_keep newest. Made after restore_for_training, which may drop damaged
    checkpoints from the directory's state: a manager reads that state once, when it is made."""
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


class CheckpointError(ValueError):
    """Checkpoints exist but none can be restored (all damaged, or not this run's model); one line."""


DAMAGED = "damaged"  # checkpoints/damaged/: checkpoints set aside, never deleted


@dataclasses.dataclass(frozen=True)
class CheckpointChoice:
    """The newest intact checkpoint of a directory (None: it has none) and what choosing it did: the damaged newer
    ones (set aside by the chief) and the partial saves removed, as {"kind", "message", ...} warnings."""

    path: Optional[str]
    warnings: Tuple[Dict[str, Any], ...] = ()
    removed_partial_saves: Tuple[str, ...] = ()


def checkpoint_damage(tf, path: str) -> Optional[str]:
    """None when every tensor of the checkpoint at path reads back whole with its checksum, else why not (one line).

    Reads all of it once: a truncated data file fails on the first read past its end, a zeroed or bit-flipped one
    on its checksums, which a plain restore does not check for every tensor.
    """
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as error:
        return _one_line(error, os.path.dirname(path) + os.sep)
    return None


def _one_line(error: Exception, directory: str = "", limit: int = 120) -> str:
    """The error's message on one line, cut to limit characters, without the directory the caller names."""
    text = " ".join(str(error).replace(directory, "").split()) or type(error).__name__  # directory "": unchanged
    return text if len(text) <= limit else text[:limit] + "..."


STATE = "checkpoint"  # a checkpoints directory's CheckpointState: what tf.train.CheckpointManager registered


@dataclasses.dataclass(frozen=True)
class Registered:
    """The checkpoints of a directory's state, oldest first (absolute paths), and their timestamps. readable: False
    when the state file exists but does not parse (TensorFlow then ignores it, and a run would silently start
    over); the checkpoints are then the ckpt-<n>.index files on disk, by n."""

    paths: List[str]
    timestamps: List[float]
    last_preserved: float = 0.0
    readable: bool = True


def registered_checkpoints(tf, directory: str) -> Registered:
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
        # get_checkpoint_state has already joined relative entries to `directory` (which may itself be relative).
        paths = [path for path in list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path] if path]
        timestamps = list(state.all_model_checkpoint_timestamps)
        return Registered(paths, timestamps if len(timestamps) == len(paths) else [], state.last_preserved_timestamp)
    if not os.path.exists(os.path.join(directory, STATE)):
        return Registered([], [])
    prefixes = [path[: -len(".index")] for path in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index"))]
    paths = sorted((path for path in prefixes if path.rsplit("-", 1)[1].isdigit()),
                   key=lambda path: int(path.rsplit("-", 1)[1]))
    timestamps = [os.path.getmtime(path + ".index") for path in paths]
    return Registered(paths, timestamps, min(timestamps, default=1.0) - 1.0, readable=False)


def remove_partial_saves(directory: str, registered: Sequence[str]) -> Tuple[str, ...]:
    """Deletes the ckpt-<n>_temp* directories of saves a kill interrupted (TensorFlow writes a checkpoint there,
    then merges it into ckpt-<n>.index/.data and registers it): only those of a ckpt-<n> the state does not list.
    Returns their names."""
    names = {os.path.basename(path) for path in registered}
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "ckpt-*_temp*"))):
        if os.path.isdir(path) and os.path.basename(path).split("_temp", 1)[0] not in names:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(os.path.basename(path))
    return tuple(removed)


def set_aside(path: str, files: Optional[List[str]] = None) -> Optional[str]:
    """Moves files (default: the checkpoint's, path.index and path.data-*) into <path's directory>/damaged/ under
    path's name, or a fresh one when that is taken; returns their new common prefix, None when there are none."""
    files = glob.glob(glob.escape(path) + ".*") if files is None else files
    if not files:
        return None
    directory, name = os.path.split(path)
    target_dir = os.path.join(directory, DAMAGED)
    os.makedirs(target_dir, exist_ok=True)
    target, number = os.path.join(target_dir, name), 1
    while os.path.exists(target) or glob.glob(glob.escape(target) + ".*"):
        number += 1
        target = os.path.join(target_dir, f"{name}.{number}")
    for file in files:
        os.replace(file, target + file[len(path):])
    return target


def newest_intact_checkpoint(tf, directory: str, repair: bool) -> CheckpointChoice:
    """The restore policy's choice: the newest registered checkpoint that reads back whole (checkpoint_damage).

    Each damaged newer one is named in a warning; with repair (the one process that owns the directory: the
    chief, or evaluate / export) it is also set aside into damaged/ and dropped from the state, so that neither
    this run's CheckpointManager nor a later run picks it again, and partial saves are removed first. An
    unreadable state is set aside too and written anew from the checkpoints on disk. Raises CheckpointError,
    leaving every file in place, when checkpoints are registered but none is intact.
    """
    registered = registered_checkpoints(tf, directory)
    removed = remove_partial_saves(directory, registered.paths) if repair else ()
    warnings = [] if registered.readable else [_state_warning(directory, registered.paths, repair)]
    damaged = []
    for path in reversed(registered.paths):
        reason = checkpoint_damage(tf, path)
        if reason is None:
            break
        damaged.append((path, reason))
    else:
        if damaged:
            listed = "; ".join(f"{os.path.basename(path)}: {reason}" for path, reason in damaged)
            raise CheckpointError(f"{directory}: no intact checkpoint to restore ({listed}); every file is left "
                                  "in place (to start over, train into a new --model_dir)")
        return CheckpointChoice(None, tuple(warnings), removed)
    intact = registered.paths[: len(registered.paths) - len(damaged)]
    warnings += [_set_aside_warning(path, reason, intact[-1], repair) for path, reason in damaged]
    if repair and (damaged or not registered.readable):
        tf.__internal__.train.update_checkpoint_state(  # as CheckpointManager writes it; timestamps kept, so it
            directory, intact[-1], intact, save_relative_paths=True,  # still deletes them in turn
            all_model_checkpoint_timestamps=registered.timestamps[: len(intact)] or None,
            last_preserved_timestamp=registered.last_preserved)
    return CheckpointChoice(intact[-1], tuple(warnings), removed)


def _state_warning(directory: str, found: List[str], repair: bool) -> Dict[str, Any]:
    state = os.path.join(directory, STATE)
    target = set_aside(state, [state]) if repair else None
    message = (f"checkpoint state {state} is unreadable{f'; moved to {target}' if target else ''}; the checkpoints "
               f"on disk are {', '.join(os.path.basename(path) for path in found) or 'none'}")
    logging.warning("%s", message)
    return {"kind": "damaged_checkpoint_state", "state": state, "message": message}


def _set_aside_warning(path: str, reason: str, used: str, repair: bool) -> Dict[str, Any]:
    target = set_aside(path) if repair else None
    where = f"moved to {target}.*" if target else "its files are gone" if repair else "left for the chief to set aside"
    message = f"checkpoint {path} is damaged ({reason}); {where}; restoring {os.path.basename(used)} instead"
    logging.warning("%s", message)
    return {"kind": "damaged_checkpoint", "checkpoint": path, "restored": used, "message": message}


def restore_checkpoint(status_of_restore, path: str) -> None:
    """Runs a restore (a function of the path returning its load status) and checks every object of the model
    was matched; CheckpointError when the checkpoint is of another model."""
    try:
        status_of_restore(path).assert_existing_objects_matched()
        return
    except (AssertionError, ValueError) as error:
        message = (f"{path} does not fit this run's model ({_one_line(error)}); a model_dir holds one model: "
                   "train with its config.json settings, or into a new --model_dir")
    # The command stops here. The failed restore's objects, collected at exit, would log every value they did not
    # restore (a page, after the error line): TensorFlow's logger keeps its errors only from now on.
    python_logging.getLogger("tensorflow").setLevel(python_logging.ERROR)
    raise CheckpointError(message)


def backup_step(tf, backup_dir: str) -> int:
    """The optimizer step stored by tf.keras.callbacks.BackupAndRestore in backup_dir (0 when there is none)."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    name = "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"  # Checkpoint(model=...), model.optimizer
    if not reader.has_tensor(name):
        raise ValueError(f"{latest}: a BackupAndRestore checkpoint without {name}")
    return int(reader.get_tensor(name))


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where training continues: step 0 for a new run. from_backup: BackupAndRestore restores the weights inside
    fit (multi_worker), and Keras itself skips the steps it had done. warnings: the restore policy's (damaged
    checkpoints set aside), for the run summary."""

    step: int = 0
    from_backup: bool = False
    checkpoint: Optional[str] = None
    warnings: Tuple[Dict[str, Any], ...] = ()
    removed_partial_saves: Tuple[str, ...] = ()


def restore_for_training(tf, checkpoint, run_dir: RunDir, multi_worker: bool, learning_rate: float,
                         repair: bool) -> Resume:
    """The restore policy of a (re)started run.

    An interrupted multi_worker job: BackupAndRestore restores every worker alike inside fit, and its step tells
    where the data resumes. Otherwise every task restores the newest intact one of the run's (the chief's)
    checkpoints (newest_intact_checkpoint; repair: this task owns them, the chief), and this run's learning rate
    wins over the checkpoint's (lowering it is how a NaN run is resumed). Raises CheckpointError.
    """
    step = backup_step(tf, run_dir.backup) if multi_worker else 0
    if step:
        return Resume(step, from_backup=True)
    choice = newest_intact_checkpoint(tf, run_dir.checkpoints, repair)
    if not choice.path:
        return Resume(removed_partial_saves=choice.removed_partial_saves)
    restore_checkpoint(checkpoint.restore, choice.path)
    model = checkpoint.model
    model.optimizer.learning_rate = learning_rate
    return Resume(int(model.optimizer.iterations.numpy()), False, choice.path, choice.warnings,
                  choice.removed_partial_saves)


@dataclasses.dataclass
class RestoredRun:
    """A run's model rebuilt on one device from config.json, with its newest intact checkpoint restored."""

    model: Any
    corpus: Any
    config: run_config.RunConfig
    checkpoint: str
    step: int
    warnings: Tuple[Dict[str, Any], ...] = ()


def restore_model(model_dir: str, best: bool = False) -> RestoredRun:
    """Rebuilds a run's model from <model_dir>/config.json and restores its newest intact checkpoint (best: the
    --keep_best one), damaged newer ones set aside (newest_intact_checkpoint), whatever strategy trained it: a
    sharded or mirrored model restores into a plain one.

    Raises FileNotFoundError (no config.json or no checkpoint), ConfigError, CheckpointError, and the corpus
    loaders' errors (ValueError subclasses) when the corpus is gone.
    """
    import tensorflow as tf

    from trainers import model_builder

    config, _ = load_config(model_dir)
    directory = RunDir(model_dir).best_checkpoints if best else RunDir(model_dir).checkpoints
    choice = newest_intact_checkpoint(tf, directory, repair=True)
    if choice.path is None:
        raise FileNotFoundError(f"{directory}: no checkpoint to restore; train first")
    corpus = model_builder.load_corpus(config)
    model = model_builder.model_from_config(corpus, config)
    _create_variables_to_restore(tf, model)  # created first, so restore() checks every one
    restore_checkpoint(lambda path: tf.train.Checkpoint(model=model).restore(path).expect_partial(), choice.path)
    step = int(choice.path.rsplit("-", 1)[-1])
    return RestoredRun(model, corpus, config, choice.path, step, choice.warnings)


def _create_variables_to_restore(tf, model) -> None:
    """Creates both towers' variables for a restore that overwrites every one (restore_checkpoint checks it does).

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


def write_summary(run_dir: RunDir, task_name: str, is_chief: bool, summary: Dict[str, Any]) -> None:
    """run_summary.json (the chief) or task_summaries/<task>.json (every other task)."""
    write_json(run_dir.join(RUN_SUMMARY) if is_chief else run_dir.task_summary(task_name), summary)
