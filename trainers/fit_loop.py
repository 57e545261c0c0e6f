"""The trainer's steps around Keras fit: the schedule, fit split at a mid-epoch resume, and what a finished
task reports (its summary; on the chief, the held-out evaluation, the baseline and the projector)."""

import dataclasses
from typing import Any, Dict, List

import tensorflow as tf
from absl import logging

from data import atomic
from trainers import baselines, callbacks, checkpoints, held_out, run_dir, summaries, variables
from trainers.run_data import RunData


@dataclasses.dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    epochs: int

    @classmethod
    def of(cls, config, corpus) -> "Schedule":
        """One pass over the training split per epoch (rows of num_true interactions; corpus: as training sees it,
        RunData.warm_corpus), capped by --steps_per_epoch."""
        steps = corpus.num_train // (config.optimization.batch_size * config.loss.num_true)
        if config.optimization.steps_per_epoch:
            steps = min(steps, config.optimization.steps_per_epoch)
        return cls(steps, config.optimization.epochs)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def log_resume(self, task_name: str, step: int) -> None:
        if step:
            logging.info("%s: restored step %d (epoch %d, batch %d of %d); training resumes there", task_name, step,
                         step // self.steps_per_epoch + 1, step % self.steps_per_epoch, self.steps_per_epoch)


def start_chief_logs(model, config, queries: held_out.HeldOut, split: str, write_dir, hparams, first_batch=None):
    """The chief's TensorBoard set-up before fit: the train writer, the step-0 check on first_batch (None for a
    resumed run, which does not start over; its result also in initial_loss.json), the hparams, and the held-out
    evaluation callback on the queries of the split model selection reads (held_out.selection_split), keeping the
    best checkpoint with --keep_best."""
    train_writer = tf.summary.create_file_writer(write_dir.events("train"))
    if first_batch is not None:
        initial_loss = summaries.check_initial_loss(model, first_batch, config.loss.expected_initial_loss(),
                                                    train_writer)
        atomic.write_json_atomically(write_dir.join(run_dir.INITIAL_LOSS), initial_loss)
    summaries.write_hparams(write_dir.tensorboard, hparams)
    keep_best, patience = config.evaluation.keep_best, config.evaluation.early_stopping_patience
    if keep_best and split == held_out.TEST:
        logging.warning("--keep_best=%s: the corpus has no validation split, so the epoch is chosen on the test "
                        "split, whose figures that flatters (prepare it with --validation_per_user)", keep_best)
    keeper = callbacks.BestKeeper(keep_best, patience, write_dir.best_checkpoints) if keep_best else None
    evaluation = callbacks.EvaluationCallback(queries, config.evaluation.eval_top_k, write_dir.events("eval"), keeper,
                                              split=split)
    return train_writer, evaluation


def held_out_queries(data: RunData, split: str) -> held_out.HeldOut:
    """The run's held-out queries of the split (--eval_max_users, --exclude_seen), from the run's data."""
    evaluation = data.config.evaluation
    return held_out.load_held_out(data, evaluation.eval_max_users, evaluation.exclude_seen, split=split)


# Cap on the automatic steps_per_execution: beyond ~100 steps per call the host round trip is long amortised.
MAX_AUTO_STEPS_PER_EXECUTION = 100


def steps_per_execution(config, strategy_name: str) -> int:
    """--steps_per_execution, with 0 (auto) resolved: the largest that keeps every callback on its step (TensorBoard
    logs inside the compiled steps; the other callbacks act on crossing a multiple of their cadence), so
    min(log_every_steps, checkpoint_every_steps, 100). 1 under parameter_server (whose Keras batch hooks see
    asynchronous steps), under multi_worker (the all-gather of sparse gradients whose size differs by worker, as
    the history model's do, fails inside a call of several steps: "Shape mismatch in the collective instance"),
    and with --profile_steps (the profiler's range is in steps)."""
    if config.optimization.steps_per_execution:
        return config.optimization.steps_per_execution
    if strategy_name in ("parameter_server", "multi_worker") or config.logging.profile_steps:
        return 1
    cadences = [config.logging.log_every_steps, config.logging.checkpoint_every_steps, MAX_AUTO_STEPS_PER_EXECUTION]
    return min(cadence for cadence in cadences if cadence)


def callback_settings(config, task, schedule: Schedule) -> callbacks.CallbackSettings:
    is_chief = task.cluster.is_chief
    return callbacks.CallbackSettings(
        task_name=task.cluster.task_name,
        total_steps=schedule.total_steps,
        log_every_steps=config.logging.log_every_steps,
        checkpoint_every_steps=config.logging.checkpoint_every_steps,
        examples_per_step=config.optimization.batch_size * config.loss.num_true,
        tensorboard_dir=task.write_dir.tensorboard if is_chief else None,
        profile_steps=config.logging.profile_steps,
        backup_dir=task.job_dir.backup if task.strategy_name == "multi_worker" else None,
        parameter_server=task.strategy_name == "parameter_server",
        loss=config.loss,
        optimization=config.optimization,
        steps_per_execution=steps_per_execution(config, task.strategy_name),
    )


def fit(tf_module, model, training_input, resume: checkpoints.Resume, schedule: Schedule, fit_callbacks, verbose: int):
    """Keras fit from the resumed step to the last one. A run stopped mid-epoch finishes that epoch first, so
    every epoch ends on a multiple of steps_per_epoch. Under a BackupAndRestore resume Keras itself skips the
    steps the backup had done, and the data starts at the backup's step. Early stopping (--keep_best with a
    patience) ends it after the epoch that set model.stop_training."""

    def fit_epochs(end_epoch, initial_epoch, steps):
        start_step = resume.step if resume.from_backup else int(model.optimizer.iterations.numpy())
        model.fit(training_input.dataset_creator(tf_module, start_step), epochs=end_epoch,
                  initial_epoch=initial_epoch, steps_per_epoch=steps, verbose=verbose, callbacks=fit_callbacks)

    step = 0 if resume.from_backup else resume.step
    steps_per_epoch = schedule.steps_per_epoch
    if step % steps_per_epoch and step < schedule.total_steps:
        epoch = step // steps_per_epoch
        fit_epochs(epoch + 1, epoch, steps_per_epoch - step % steps_per_epoch)
        step = (epoch + 1) * steps_per_epoch
    if step < schedule.total_steps and not model.stop_training:  # stop_training: stopped early in that epoch
        fit_epochs(schedule.epochs, step // steps_per_epoch, steps_per_epoch)


def item_table_placement(model, task_name: str) -> Dict[str, Any]:
    """Where the item table lives (its shards' rows and devices under parameter_server), logged and returned."""
    table = model.item_tower.embedding.embeddings
    shards = [{"rows": int(shard.shape[0]), "device": shard.device} for shard in getattr(table, "variables", [table])]
    logging.info("%s: item table %s in %d shard(s): %s", task_name, table.shape, len(shards),
                 "; ".join(f"{shard['rows']} rows on {shard['device']}" for shard in shards))
    return {"shape": [int(size) for size in table.shape], "shards": shards}


def weights_fingerprint(model) -> float:
    """The sum of every trainable weight (float64): workers of one synchronous job must end on the same one.
    Summed variables.CHUNK_ROWS rows at a time, read in place (variables.row_chunks: a dense read of a table the
    sparse updates touched would copy all of it, 2.56 GB at 10M x 64), so it never holds a copy of an item table,
    float32 or float64 (5 GB at 10M x 64). A ShardedVariable is summed shard by shard."""
    total = 0.0
    for variable in model.trainable_variables:
        for chunk in variables.row_chunks(variable):
            total += float(tf.reduce_sum(tf.cast(chunk, tf.float64)))
    return total


def task_summary(model, task, resume: checkpoints.Resume, placement, replicas, fit_callbacks=()) -> Dict[str, Any]:
    """What this task did, for run_summary.json / task_summaries/ (and logged for people). replicas:
    {"num_replicas", "devices"} of the strategy. The callbacks' reports join it (--keep_best: "best",
    "stopped_early"), and "warnings" holds the restore's and the callbacks' (trainers.health)."""
    final_step, fingerprint = int(model.optimizer.iterations.numpy()), weights_fingerprint(model)
    reports = callbacks.reports(fit_callbacks)
    logging.info("%s: finished at step %d; weights fingerprint %.10e", task.cluster.task_name, final_step, fingerprint)
    return {
        "task": task.cluster.task_name,
        "strategy": task.strategy_name,
        "num_replicas": replicas["num_replicas"],
        "replica_devices": replicas["devices"],
        "final_step": final_step,
        "restored_from_step": resume.step,
        "restored_from": "backup" if resume.from_backup else resume.checkpoint,
        "removed_partial_saves": list(resume.removed_partial_saves),
        **reports,
        "warnings": [*resume.warnings, *reports["warnings"]],
        "item_table": placement,
        "weights_fingerprint": fingerprint,
    }


def chief_evaluation(model, data: RunData, evaluation: callbacks.EvaluationCallback, write_dir) -> Dict[str, Any]:
    """The final test metrics of the model chosen (the best epoch's with --keep_best, else the last), the classic
    baselines on the same queries (trainers.baselines; also in TensorBoard, each a run of its own,
    tensorboard/<name>), and the embedding projector of the most frequent items. With a validation split the
    test split is read here once, for the chosen model; without one the per-epoch metrics are the test ones."""
    config = data.config
    ks: List[int] = list(config.evaluation.eval_top_k)
    selection_metrics = evaluation.final_metrics() or held_out.evaluate(model, evaluation.held_out, ks)
    validation_metrics, test_queries = None, evaluation.held_out
    if evaluation.split == held_out.VALIDATION:
        validation_metrics = selection_metrics
        restore_best(model, evaluation.keeper)
        test_queries = held_out_queries(data, held_out.TEST)
        model_metrics = held_out.evaluate(model, test_queries, ks)
        write_test_events(write_dir.events(held_out.TEST), model_metrics, int(model.optimizer.iterations.numpy()))
    else:
        model_metrics = selection_metrics
    step = int(model.optimizer.iterations.numpy())
    if config.logging.projector_items:
        corpus = data.warm_corpus  # the counts training saw
        num_shown = min(config.logging.projector_items, corpus.num_items)
        top_items = model.item_tower(tf.range(num_shown, dtype=tf.int64)).numpy().astype("float32")
        summaries.write_projector(write_dir.events("projector"), top_items, corpus.item_counts, corpus.item_keys,
                                  step)
    results = baselines.evaluate(data, test_queries, ks)
    for name, values in results.items():  # tensorboard/<name>, named as in metrics.json
        write_baseline_events(write_dir.events(name), values, step)
    return {"metrics": model_metrics, "baselines": results, "split": held_out.TEST,
            "validation_metrics": validation_metrics, "keep_best": keep_best_choice(evaluation)}


def restore_best(model, keeper) -> None:
    """Loads the best epoch's weights (--keep_best) into the model, so the test split measures the model chosen
    (and exported); without a best checkpoint the model stays the last epoch's."""
    if keeper is None or keeper.best is None:
        return
    tf.train.Checkpoint(model=model).restore(keeper.best["checkpoint"]).expect_partial()
    logging.info("test split: the best epoch's weights (epoch %d, %s)", keeper.best["epoch"], keeper.best["checkpoint"])


def keep_best_choice(evaluation: callbacks.EvaluationCallback):
    """metrics.json's "keep_best": {"metric", "epoch", "split"} of the epoch --keep_best chose (None without)."""
    keeper = evaluation.keeper
    if keeper is None or keeper.best is None:
        return None
    return {"metric": keeper.metric, "epoch": keeper.best["epoch"], "split": evaluation.split}


def write_test_events(log_dir: str, model_metrics: Dict[str, float], step: int) -> None:
    """The chosen model's test metrics as one point of a run of their own (tensorboard/test) under the eval tags:
    the eval run's curves are the validation split's, the baselines' lines the test split's."""
    write_points(log_dir, model_metrics, [step])


def write_baseline_events(log_dir: str, baseline: Dict[str, float], step: int) -> None:
    """The baseline as a run of its own under the eval run's tag names (recall_at_10, cold_users/recall_at_10),
    so TensorBoard draws it on the model's charts; a flat line from step 0 to the final step."""
    write_points(log_dir, baseline, sorted({0, step}))


def write_points(log_dir: str, values: Dict[str, float], steps: List[int]) -> None:
    """The same scalars {tag: value} at each of steps, in a run of their own (log_dir)."""
    writer = tf.summary.create_file_writer(log_dir)
    for step in steps:
        summaries.write_scalars(writer, step, values)
    writer.close()
