"""Trains a two-tower retrieval model: `python -m trainers.train --flags` (flags: trainers/train_flags.py).

The data path, one call each (main -> run_task -> train -> _train -> _report_and_export):
    config = train_flags.config_from_flags()                      flags -> RunConfig (checks.check_config)
    checks.check_strategy(config, strategy_name)                  the settings the resolved --strategy can honour
    checks.check_replicas(config, strategy_name, num_replicas)    ... and the strategy built
    corpus = model_builder.load_corpus(config)                    -> PreparedCorpus (built-in, MovieLens, prepared)
    data = RunData.of(corpus, config)                             -> cold users, warm_corpus, the training split
                                                                     (read once, when first asked for)
    checks.check_with_corpus(config, data)                        the settings the corpus can meet (its size,
                                                                     written histories, context columns)
    training_input = TrainingInput.of_run(data, ...)              -> the training batches under the strategy
    model = model_builder.build_for_training(..., data.warm_corpus, ...)  -> TwoTowerModel, in the strategy's scope
    resume = checkpoints.restore_for_training(...)                -> the step (and data position) to continue at
    fit_loop.start_chief_logs(..., fit_loop.held_out_queries(data, split), ...)  -> TensorBoard, the per-epoch
                                                                     evaluation (validation)
    fit_loop.fit(model, training_input, ..., callbacks.make_callbacks(...))
    fit_loop.chief_evaluation(model, data, ...)                   -> test metrics of the chosen model, baselines
    held_out.metrics_document / report -> metrics.json and the report; export.export_after_training(..., data)
What goes to --model_dir is laid out in trainers/run_dir.py; which checkpoint a run restores, trainers/checkpoints.py;
the checks of the settings (each refusal one line naming the flag), trainers/checks.py.
"""

import dataclasses
import datetime
import os
import shutil
import sys
import tempfile

from absl import app, flags, logging

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from trainers import checkpoints, checks, cli, distribute, run_config, run_dir, task_status, train_flags

train_flags.define_flags()
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's part of the job: the job's model_dir (read: checkpoints, backup) and where it writes (the
    model_dir on the chief, a scratch directory on other multi_worker tasks)."""

    cluster: distribute.ClusterSpec
    strategy_name: str
    job_dir: run_dir.RunDir
    write_dir: run_dir.RunDir


def train(config: run_config.RunConfig, model_dir: str, cluster, strategy_name: str, status=None):
    """Runs the whole job; returns (the run's summary with the held-out metrics of the model and the baselines,
    the run's trainers.run_data.RunData, which the export reuses) on the chief, None on other tasks (which train,
    but write their checkpoints to a scratch directory they delete). status: the task's task_status.TaskStatus
    (None: none), told when it waits for its peers and when it trains."""
    import tensorflow as tf

    cpu_replicas = config.distribution.cpu_replicas
    distribute.configure_local_devices(tf, cpu_replicas if strategy_name == "mirrored" else 1)
    strategy = distribute.make_strategy(tf, strategy_name, cluster, cpu_replicas, config.distribution.num_ps_shards,
                                        status)
    if status is not None:
        status(task_status.TRAINING)
    logging.info("%s: --strategy=%s, %d replica(s) on %s", cluster.task_name, strategy_name,
                 strategy.num_replicas_in_sync, ", ".join(distribute.replica_devices(strategy)) or "the default device")
    try:
        checks.check_replicas(config, strategy_name, strategy.num_replicas_in_sync)
    except run_config.ConfigError as error:
        raise app.UsageError(str(error)) from None
    data = _load_and_check_data(config)
    if cluster.is_chief:
        summary = _train(tf, strategy, data, Task(cluster, strategy_name, *[run_dir.RunDir(model_dir)] * 2))
        return summary, data
    # As in TensorFlow's multi-worker guide: other workers save too (saving may need their collectives), to a
    # directory of their own that is deleted afterwards.
    scratch_dir = tempfile.mkdtemp(prefix=f"{cluster.task_type}-{cluster.task_id}-")
    try:
        task = Task(cluster, strategy_name, run_dir.RunDir(model_dir), run_dir.RunDir(scratch_dir))
        return _train(tf, strategy, data, task)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _load_and_check_data(config):
    """The RunData of --data (the corpus, and what the run derives from it), with every setting that depends on
    the corpus checked (checks.check_with_corpus; UsageError naming the flag)."""
    from data import movielens
    from trainers import model_builder
    from trainers.run_data import RunData

    try:
        data = RunData.of(model_builder.load_corpus(config), config)
    except (movielens.DownloadError, ValueError) as error:  # DataError / CorpusError / a bad synthetic config
        raise app.UsageError(f"--data={config.data.data}: {error}") from None
    try:
        checks.check_with_corpus(config, data)
    except run_config.ConfigError as error:
        raise app.UsageError(str(error)) from None
    return data


def _train(tf, strategy, data, task: Task):
    """train() in this task: build, restore, fit, then (on the chief) evaluate. Returns the chief's metrics."""
    from trainers import callbacks, fit_loop, held_out, model_builder
    from trainers.training_input import TrainingInput

    config, corpus = data.config, data.warm_corpus  # the corpus as training sees it
    is_chief, task_name = task.cluster.is_chief, task.cluster.task_name
    tf.keras.utils.set_random_seed(config.seed)
    if config.optimization.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")  # compile() wraps a LossScaleOptimizer
    training_input = TrainingInput.of_run(data, parameter_server=task.strategy_name == "parameter_server")
    first_batch = training_input.first_batch()
    model = model_builder.build_for_training(
        tf, strategy, corpus, config, first_batch,
        fit_loop.steps_per_execution(config, task.strategy_name),
    )
    placement = fit_loop.item_table_placement(model, task_name)
    checkpoint = checkpoints.training_checkpoint(tf, model)
    resume = checkpoints.restore_for_training(tf, checkpoint, task.job_dir, task.strategy_name == "multi_worker",
                                              config.optimization.learning_rate, repair=is_chief)
    if is_chief:  # after the restore: a restart it refuses leaves the run's config.json and flags.txt as they were
        run_dir.write_config(task.write_dir, run_config.to_json(config, task.write_dir.path, corpus.description),
                             train_flags.flagfile_text(config, task.write_dir.path))
    manager = checkpoints.checkpoint_manager(tf, checkpoint, task.write_dir.checkpoints)
    schedule = fit_loop.Schedule.of(config, corpus)
    schedule.log_resume(task_name, resume.step)
    train_writer, evaluation = None, None
    if is_chief:
        hparams = train_flags.hparams(config, task.write_dir.path)
        split = held_out.selection_split(data.corpus)
        train_writer, evaluation = fit_loop.start_chief_logs(model, config, fit_loop.held_out_queries(data, split),
                                                             split, task.write_dir, hparams,
                                                             first_batch if not resume.step else None)
    settings = fit_loop.callback_settings(config, task, schedule)
    fit_callbacks = callbacks.make_callbacks(settings, manager, train_writer, evaluation, first_batch)
    clear, draw = _progress_line(tf, schedule.epochs) if is_chief and sys.stdout.isatty() else ([], [])
    # Keras prints nothing (verbose=0): the chief's line of each epoch is the evaluation callback's (loss,
    # held-out recall, time), the steps within it _progress_line's on a terminal and ProgressLogger's on the tasks
    # of a distributed job. We differ from Keras' defaults (a bar, or a line, of every metric): its 18 metrics here
    # make a line wider than a terminal, and each redraw of its bar left a wrapped line behind.
    fit_loop.fit(tf, model, training_input, resume, schedule, [*clear, *fit_callbacks, *draw], verbose=0)
    replicas = {"num_replicas": strategy.num_replicas_in_sync, "devices": distribute.replica_devices(strategy)}
    summary = fit_loop.task_summary(model, task, resume, placement, replicas, fit_callbacks)
    if not is_chief:
        run_dir.write_summary(task.job_dir, task_name, False, summary)
        return None
    return {**summary, **fit_loop.chief_evaluation(model, data, evaluation, task.write_dir)}


def _progress_line(tf, epochs: int):
    """([a callback that erases the line at each epoch's end], [one that draws it after each execution]): first
    and last in fit's list, so the line is drawn after the execution's log lines and gone before the epoch's."""
    from trainers.callbacks import _logged_float  # None for a parameter_server step still in flight

    line = cli.ProgressLine(sys.stdout)
    draw = tf.keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: line.start_epoch(epoch + 1, epochs, draw.params["steps"]),
        on_train_batch_end=lambda batch, logs: line.draw(batch + 1, _logged_float(logs, "loss")),
    )
    draw._supports_tf_logs = True  # Keras refuses batch hooks without it under parameter_server
    return [tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: line.clear())], [draw]


def _resolve_strategy(tf, config):
    """(ClusterSpec, strategy name) from TF_CONFIG and --strategy; UsageError when they do not fit."""
    try:
        cluster = distribute.tf_config_from_environment()
        # --cpu_replicas asks for that many local devices, so auto takes mirrored for it as for GPUs.
        num_local_devices = max(len(tf.config.list_physical_devices("GPU")), config.distribution.cpu_replicas)
        strategy_name = distribute.resolve_strategy_name(config.distribution.strategy, cluster, num_local_devices)
        checks.check_strategy(config, strategy_name)
    except distribute.DistributeError as error:
        raise app.UsageError(str(error)) from None
    return cluster, strategy_name


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = train_flags.config_from_flags()
    except run_config.ConfigError as error:
        raise app.UsageError(str(error)) from None
    import tensorflow as tf

    cluster, strategy_name = _resolve_strategy(tf, config)
    # Each task of a TF_CONFIG job keeps <model_dir>/task_status/<task>.json up to date, its end included.
    with task_status.TaskStatus.of_task(FLAGS.model_dir, cluster).recording() as status:
        run_task(tf, config, FLAGS.model_dir, cluster, strategy_name, status)


def run_task(tf, config, model_dir: str, cluster, strategy_name: str, status=None) -> None:
    """This process's part of the job: a parameter_server job's ps and worker tasks serve, the others train (and
    the chief reports and exports). model_dir: --model_dir ("": a new ./runs/<timestamp>, without TF_CONFIG)."""
    from trainers.callbacks import NonFiniteLossError

    if strategy_name == "parameter_server" and cluster.task_type in ("ps", "worker"):
        distribute.run_server(tf, cluster, status)
        return
    if cluster.task_type is not None and not model_dir:
        raise app.UsageError("--model_dir is required with TF_CONFIG: every task of the job must name the same one")
    model_dir = model_dir or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if cluster.is_chief:
        print(f"model_dir: {model_dir}  (tensorboard --logdir {os.path.join(model_dir, 'tensorboard')})", flush=True)
    try:
        run_dir.check_restart(model_dir, config)
        outcome = train(config, model_dir, cluster, strategy_name, status)
    except (NonFiniteLossError, checkpoints.CheckpointError, distribute.DistributeError) as error:
        sys.exit(f"{cluster.task_name}: stopped: {error}")
    if outcome is not None:  # the chief: other tasks leave the run's files to it
        _report_and_export(config, run_dir.RunDir(model_dir), *outcome)


def _report_and_export(config, model_dir: run_dir.RunDir, summary, data) -> None:
    """metrics.json, the report, the export (from the run's data: nothing read again), and last run_summary.json
    (which names the export)."""
    from data import atomic
    from trainers import baselines, export, held_out

    selection = {"split": summary["split"], "validation_metrics": summary["validation_metrics"],
                 "keep_best": summary["keep_best"]}
    atomic.write_json_atomically(model_dir.join(run_dir.METRICS),
                                 held_out.metrics_document(summary["metrics"], summary["baselines"], **selection))
    print(held_out.report(summary["metrics"], summary["baselines"], config.evaluation.eval_top_k, baselines.LABELS,
                          **selection), flush=True)
    if config.evaluation.export:
        path, step = export.export_after_training(model_dir.path, config.evaluation.export_top_k,
                                                  best=bool(config.evaluation.keep_best), data=data)
        summary = {**summary, "export": {"path": path, "step": step}}
    run_dir.write_summary(model_dir, summary["task"], True, summary)


if __name__ == "__main__":
    cli.run(main)
