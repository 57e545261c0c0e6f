"""A run's checkpoints: the restore policy that picks the newest intact one, and the repairs it makes.

A checkpoints directory (trainers.run_dir lays out where it is) holds tf.train.CheckpointManager's ckpt-<step>
checkpoints, the state file that registers them (`checkpoint`), at most the ckpt-<step>_temp*/ directories of saves
a kill interrupted, and damaged/, where the policy sets aside what it cannot use (never deleted).
newest_intact_checkpoint reads each registered checkpoint back whole, newest first, and (repair: the one process
that owns the directory) sets aside the damaged ones and removes partial saves; restore_for_training is the restore
of a (re)started training run (or the step of a multi_worker job's BackupAndRestore backup); restore_checkpoint
checks that a checkpoint fits the model it is restored into. Rebuilding a trained model from its model_dir is
trainers.restored_run's. Functions take the TensorFlow module as `tf`, so this module imports without it.
"""

import dataclasses
import glob
import logging as python_logging
import os
import shutil
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from absl import logging

if TYPE_CHECKING:
    from trainers.run_dir import RunDir


class CheckpointError(ValueError):
    """Checkpoints exist but none can be restored (all damaged, or not this run's model); one line."""


DAMAGED = "damaged"  # checkpoints/damaged/: checkpoints set aside, never deleted


def training_checkpoint(tf, model):
    """The tf.train.Checkpoint of a training run: the model and its optimizer."""
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def checkpoint_manager(tf, checkpoint, directory: str, max_to_keep: int = 3):
    """A CheckpointManager keeping the max_to_keep newest. Made after restore_for_training, which may drop damaged
    checkpoints from the directory's state: a manager reads that state once, when it is made."""
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


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


def restore_for_training(tf, checkpoint, run_dir: "RunDir", multi_worker: bool, learning_rate: float,
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
