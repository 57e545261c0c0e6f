"""Trains a two-tower retrieval model: `python -m trainers.train --flags`.

Reads flags, prepares (or loads) the corpus, builds the towers and the loss, trains with Keras fit, evaluates
exact full-corpus recall@K on held-out interactions after every epoch, and writes to --model_dir:
  config.json           every flag of the run (the math-changing ones included), to reproduce and compare
  checkpoints/          tf.train.CheckpointManager checkpoints (the newest is restored when the run restarts)
  tensorboard/train     per-step loss (Keras TensorBoard callback)
  tensorboard/eval      held-out recall@K / NDCG@K / MRR per epoch
  metrics.json          final held-out metrics of the model and of the most-popular baseline
"""

import datetime
import json
import math
import os
import shutil
import sys
import tempfile

from absl import app, flags, logging

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from retrieval import losses, samplers
from retrieval.task import LossConfig
from trainers import distribute

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string(
    "data",
    "builtin",
    "'builtin' for the synthetic corpus, 'movielens' for MovieLens 100K (fetched and prepared on first use, "
    "see data/movielens.py), or a corpus directory made by `python -m data.prepare`.",
)
flags.DEFINE_string(
    "cache_dir",
    os.path.join(os.path.expanduser("~"), ".cache", "retrieval-trainer"),
    "Where the built-in corpus is cached.",
)
flags.DEFINE_integer("num_items", 100_000, "Built-in corpus: number of items.", lower_bound=2)
flags.DEFINE_integer("num_users", 20_000, "Built-in corpus: number of users.", lower_bound=1)
flags.DEFINE_integer("num_interactions", 1_000_000, "Built-in corpus: number of interactions.", lower_bound=1)
# Model.
flags.DEFINE_string("model_dir", "", "Output directory; default ./runs/<timestamp>.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size of both towers.", lower_bound=1)
flags.DEFINE_list("hidden_dims", [], "Hidden ReLU layer sizes of each tower's MLP (empty: embedding only).")
flags.DEFINE_bool("normalize", False, "L2-normalise tower outputs (use with --temperature below 1).")
# Optimisation.
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
# Loss.
flags.DEFINE_enum("loss", "sampled_softmax", list(losses.LOSSES), "Training loss.")
flags.DEFINE_enum("sampler", "log_uniform", list(samplers.SAMPLERS), "Negative sampler for sampled losses.")
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
flags.DEFINE_float(
    "nce_log_partition",
    None,
    "Constant subtracted from NCE logits (default ln(num_items): untrained items start at the uniform "
    "log-probability, so full-corpus rankings are not led by items training never touched). 0 is tf.nn.nce_loss.",
)
# Run.
flags.DEFINE_integer("seed", 42, "Seed for the corpus, initialisation, shuffling and sampling.")
flags.DEFINE_list("eval_top_k", ["10", "50", "100"], "Cut-offs K for held-out recall@K / NDCG@K.")
flags.DEFINE_bool("exclude_seen", False, "Held-out evaluation never ranks a user's training items.")
flags.DEFINE_bool("export", True, "At the end, export the newest checkpoint to <model_dir>/export/<n>/ (trainers.export).")
flags.DEFINE_integer("export_top_k", 100, "Items the exported serving signature returns per query.", lower_bound=1)
flags.DEFINE_integer("log_every_steps", 50, "TensorBoard train scalars every N steps.", lower_bound=1)
flags.DEFINE_integer("checkpoint_every_steps", 500, "Checkpoint every N steps (0: only at epoch ends).", lower_bound=0)
flags.DEFINE_integer(
    "steps_per_execution",
    1,
    "Training steps per tf.function call (Keras compile): fewer host round trips; callbacks (logging, "
    "checkpoints, the NaN guard) then act every this many steps.",
    lower_bound=1,
)
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 towers (for GPUs); losses are computed in float32.")
flags.DEFINE_list("profile_steps", [], "START,END steps to trace with the TensorBoard profiler (empty: off).")
# Distribution.
flags.DEFINE_enum(
    "strategy",
    "auto",
    list(distribute.STRATEGIES),
    "tf.distribute strategy; auto: parameter_server when TF_CONFIG has ps tasks, multi_worker when it has several "
    "workers, mirrored with several GPUs, default otherwise.",
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
flags.DEFINE_integer("projector_items", 10_000, "Most frequent items shown in the embedding projector.", lower_bound=0)

flags.register_validator(
    "model_dir",
    lambda value: not (value and os.path.exists(value) and not os.path.isdir(value)),
    message="--model_dir names an existing file; expected a directory (existing or new).",
)
flags.register_validator(
    "label_smoothing", lambda value: 0.0 <= value < 1.0, message="--label_smoothing must be in [0, 1)."
)
flags.register_validator("temperature", lambda value: value > 0.0, message="--temperature must be > 0.")


def _positive_ints(name, values):
    try:
        parsed = [int(value) for value in values]
    except ValueError:
        raise app.UsageError(f"--{name}={','.join(values)}: expected comma-separated positive integers") from None
    if not parsed or min(parsed) < 1:
        raise app.UsageError(f"--{name}={','.join(values)}: expected comma-separated positive integers")
    return parsed


def loss_config_from_flags() -> LossConfig:
    return LossConfig(
        loss=FLAGS.loss,
        sampler=FLAGS.sampler,
        num_sampled=FLAGS.num_sampled,
        num_true=FLAGS.num_true,
        unique=FLAGS.unique,
        subtract_log_q=FLAGS.subtract_log_q,
        remove_accidental_hits=FLAGS.remove_accidental_hits,
        label_smoothing=FLAGS.label_smoothing,
        temperature=FLAGS.temperature,
        focal_gamma=FLAGS.focal_gamma,
        nce_positive_weight=FLAGS.nce_positive_weight,
        nce_log_partition=FLAGS.nce_log_partition,
        hinge_margin=FLAGS.hinge_margin,
        seed=FLAGS.seed,
    )


def _load_corpus():
    """The corpus --data names (model_builder.corpus_from_config, which evaluation and export use too)."""
    from data import movielens
    from trainers import model_builder

    names = ("data", "cache_dir", "num_items", "num_users", "num_interactions", "seed")
    try:
        return model_builder.corpus_from_config({name: FLAGS[name].value for name in names})
    except (movielens.DownloadError, ValueError) as error:  # DataError / CorpusError / a bad synthetic config
        raise app.UsageError(f"--data={FLAGS.data}: {error}") from None


def _make_optimizer(tf):
    from retrieval.optimizers import LazyAdam

    if FLAGS.optimizer == "lazy_adam":
        return LazyAdam(FLAGS.learning_rate)
    if FLAGS.optimizer == "adam":
        return tf.keras.optimizers.Adam(FLAGS.learning_rate)
    if FLAGS.optimizer == "sgd":
        return tf.keras.optimizers.SGD(FLAGS.learning_rate)
    return tf.keras.optimizers.Adagrad(FLAGS.learning_rate)


def _flag_values():
    """The trainer's flags (not absl's own) as a JSON-ready dict."""
    module_flags = FLAGS.get_flags_for_module(sys.modules[__name__]) or FLAGS.get_flags_for_module("__main__")
    return {flag.name: flag.value for flag in module_flags}


def _initial_loss_check(tf, model, first_batch, loss_config, writer):
    """Step-zero check (LOSSES.md): a fresh model scores all candidates nearly alike.

    Its first loss should then be close to the loss of all-zero scores on the same batch, which is
    ln(num_true + num_sampled) for an uncorrected sampled softmax (log-Q correction and the other losses shift it,
    so the zero-score loss is the reference that holds for every setting). Logs initial_loss,
    initial_loss_zero_scores and, where it applies, initial_loss_expected = ln(candidate count) to TensorBoard;
    warns when the first loss is more than 25% away from the reference.
    """
    initial_loss = float(model.compute_loss(first_batch))
    query_embeddings = model.query_tower(first_batch["user_id"])
    zero_scores = model.retrieval_loss(tf.zeros_like(query_embeddings), first_batch["item_id"], model.item_tower)
    reference = float(tf.reduce_mean(zero_scores))
    expected = loss_config.expected_initial_loss()
    with writer.as_default(step=0), tf.summary.record_if(True):
        tf.summary.scalar("initial_loss", initial_loss)
        tf.summary.scalar("initial_loss_zero_scores", reference)
        if expected is not None:
            tf.summary.scalar("initial_loss_expected", expected)
    expected_text = f", ln(candidate count) = {expected:.4f}" if expected is not None else ""
    logging.info("step-0 loss %.4f; with all-zero scores %.4f%s", initial_loss, reference, expected_text)
    if abs(initial_loss - reference) > 0.25 * max(abs(reference), 1e-6):
        logging.warning(
            "step-0 loss %.4f is far from %.4f, the loss of all-zero scores: a freshly initialised model should "
            "score candidates nearly alike. Likely causes: embeddings initialised too large, a --temperature far "
            "below 1, or labels that do not match the candidates.",
            initial_loss,
            reference,
        )


def _backup_step(tf, backup_dir: str) -> int:
    """The optimizer step stored by tf.keras.callbacks.BackupAndRestore in backup_dir (0 when there is none)."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    name = "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"  # Checkpoint(model=...), model.optimizer
    if not reader.has_tensor(name):
        raise ValueError(f"{latest}: a BackupAndRestore checkpoint without {name}")
    return int(reader.get_tensor(name))


def train(model_dir: str, cluster: distribute.ClusterSpec, strategy_name: str):
    """Runs the whole job and returns (model metrics, popularity metrics) on held-out data (None on non-chief
    multi_worker tasks, which train but write their checkpoints to a temporary directory they delete)."""
    import tensorflow as tf

    distribute.configure_local_devices(tf, FLAGS.cpu_replicas if strategy_name == "mirrored" else 1)
    strategy = distribute.make_strategy(tf, strategy_name, cluster, FLAGS.cpu_replicas, FLAGS.num_ps_shards)
    logging.info(
        "%s: --strategy=%s, %d replica(s) on %s", cluster.task_name, strategy_name, strategy.num_replicas_in_sync,
        distribute.replica_devices(strategy),
    )
    if FLAGS.batch_size % strategy.num_replicas_in_sync:
        raise app.UsageError(
            f"--batch_size={FLAGS.batch_size} must be a multiple of the {strategy.num_replicas_in_sync} replicas "
            f"of --strategy={strategy_name}"
        )
    if cluster.is_chief:
        return _train(tf, strategy, strategy_name, cluster, model_dir, model_dir)
    # As in TensorFlow's multi-worker guide: other workers save too (saving may need their collectives), to a
    # directory of their own that is deleted afterwards.
    scratch_dir = tempfile.mkdtemp(prefix=f"{cluster.task_type}-{cluster.task_id}-")
    try:
        return _train(tf, strategy, strategy_name, cluster, model_dir, scratch_dir)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _train(tf, strategy, strategy_name, cluster, model_dir, write_dir):
    """train() in this task: it reads the job's model_dir (checkpoints, backup) and writes to write_dir (the
    model_dir on the chief, a scratch directory on other workers)."""
    from data import pipeline
    from trainers import callbacks, evaluation, model_builder, summaries

    is_chief = cluster.is_chief
    backup_dir = os.path.join(model_dir, "backup")
    eval_ks = _positive_ints("eval_top_k", FLAGS.eval_top_k)
    hidden_dims = _positive_ints("hidden_dims", FLAGS.hidden_dims) if FLAGS.hidden_dims else []
    profile_batch = 0
    if FLAGS.profile_steps:
        profile_range = _positive_ints("profile_steps", FLAGS.profile_steps)
        if len(profile_range) != 2 or profile_range[0] > profile_range[1]:
            raise app.UsageError(f"--profile_steps={','.join(FLAGS.profile_steps)}: expected START,END with START <= END")
        profile_batch = tuple(profile_range)
    loss_config = loss_config_from_flags()
    corpus = _load_corpus()
    try:
        loss_config.validate(corpus.num_items)
    except ValueError as error:
        raise app.UsageError(f"--{error}") from None
    if max(eval_ks) > corpus.num_items:
        raise app.UsageError(f"--eval_top_k={max(eval_ks)} exceeds the corpus size {corpus.num_items}")
    if FLAGS.export and FLAGS.export_top_k > corpus.num_items:
        raise app.UsageError(f"--export_top_k={FLAGS.export_top_k} exceeds the corpus size {corpus.num_items}")
    steps_per_epoch = corpus.num_train // (FLAGS.batch_size * FLAGS.num_true)
    if steps_per_epoch == 0:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size} exceeds the {corpus.num_train} training interactions")
    if FLAGS.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, FLAGS.steps_per_epoch)
    total_steps = FLAGS.epochs * steps_per_epoch

    os.makedirs(write_dir, exist_ok=True)
    if is_chief:
        with open(os.path.join(write_dir, "config.json"), "w") as file:
            json.dump({**_flag_values(), "model_dir": write_dir, "corpus": corpus.description}, file, indent=2)

    tf.keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")  # compile() wraps a LossScaleOptimizer
    # Read once here, eagerly: under parameter_server dataset_fn runs inside a tf.function.
    train_columns = pipeline.read_in_memory(corpus.train_files, FLAGS.num_true)
    first_batch = next(iter(pipeline.training_dataset(
        corpus.train_files, FLAGS.batch_size, seed=FLAGS.seed, num_true=FLAGS.num_true, columns=train_columns
    )))
    with strategy.scope():
        model = model_builder.build_model(corpus, loss_config, FLAGS.embedding_dim, hidden_dims, FLAGS.normalize)
        model.compile(optimizer=_make_optimizer(tf), steps_per_execution=FLAGS.steps_per_execution)
        # Create both towers' variables (mirrored, or sharded over the ps tasks) before any restore.
        model.query_tower(first_batch["user_id"])
        model.item_tower(tf.reshape(first_batch["item_id"], [-1]))

    item_table = model.item_tower.embedding.embeddings
    placement = [f"{shard.shape[0]} rows on {shard.device}" for shard in getattr(item_table, "variables", [item_table])]
    logging.info("%s: item table %s in %d shard(s): %s", cluster.task_name, item_table.shape, len(placement),
                 "; ".join(placement))
    tensorboard_dir = os.path.join(write_dir, "tensorboard")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "checkpoints"), max_to_keep=3)
    multi_worker = strategy_name == "multi_worker"
    # An interrupted multi_worker job: BackupAndRestore restores every worker alike inside fit, and its step tells
    # where the data resumes. Otherwise every task restores the newest of the run's (the chief's) checkpoints.
    backup_step = _backup_step(tf, backup_dir) if multi_worker else 0
    run_checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if backup_step:
        resumed_step = backup_step
    elif run_checkpoint:
        checkpoint.restore(run_checkpoint).assert_existing_objects_matched()
        resumed_step = int(model.optimizer.iterations.numpy())
        # This run's --learning_rate wins over the checkpoint's: lowering it is how a NaN run is resumed.
        model.optimizer.learning_rate = FLAGS.learning_rate
    else:
        resumed_step = 0
    if resumed_step:
        logging.info(
            "%s: restored step %d (epoch %d, batch %d of %d); training resumes there",
            cluster.task_name, resumed_step, resumed_step // steps_per_epoch + 1, resumed_step % steps_per_epoch,
            steps_per_epoch,
        )
    train_writer = tf.summary.create_file_writer(os.path.join(tensorboard_dir, "train")) if is_chief else None
    if is_chief:
        if not resumed_step:
            _initial_loss_check(tf, model, first_batch, loss_config, train_writer)
        summaries.write_hparams(tensorboard_dir, {**_flag_values(), "model_dir": write_dir})
        train_writer.flush()

    def dataset_fn(input_context):
        """This input pipeline's batches, from the step training resumes at. One pipeline per worker; several
        local replicas each take a contiguous slice of the pipeline's batch, so the replicas together see the
        global batch a single device would."""
        start_step = data_start_step[0]
        if strategy_name == "parameter_server":
            # Workers step asynchronously, each on a global batch of its own stream.
            return pipeline.training_dataset(
                corpus.train_files, FLAGS.batch_size, seed=FLAGS.seed + input_context.input_pipeline_id,
                repeat=True, num_true=FLAGS.num_true, start_step=start_step // input_context.num_input_pipelines,
                columns=train_columns,
            )
        dataset = pipeline.training_dataset(
            corpus.train_files, FLAGS.batch_size, seed=FLAGS.seed, repeat=True, num_true=FLAGS.num_true,
            start_step=start_step, num_shards=input_context.num_input_pipelines,
            shard_index=input_context.input_pipeline_id, columns=train_columns,
        )
        replicas_per_pipeline = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        if replicas_per_pipeline > 1:
            dataset = dataset.rebatch(input_context.get_per_replica_batch_size(FLAGS.batch_size))
        return dataset

    fit_callbacks = [callbacks.ProgressLogger(cluster.task_name, FLAGS.log_every_steps, total_steps)]
    evaluation_callback = None
    if is_chief:
        held_out = evaluation.load_held_out(corpus, exclude_seen=FLAGS.exclude_seen)
        evaluation_callback = callbacks.EvaluationCallback(held_out, eval_ks, os.path.join(tensorboard_dir, "eval"))
        fit_callbacks.append(
            tf.keras.callbacks.TensorBoard(tensorboard_dir, update_freq=FLAGS.log_every_steps, profile_batch=profile_batch)
        )
        if strategy_name != "parameter_server":  # Keras allows no batch hooks on plain logs there
            fit_callbacks.append(
                summaries.ThroughputCallback(train_writer, FLAGS.batch_size * FLAGS.num_true, FLAGS.log_every_steps)
            )
    fit_callbacks.append(callbacks.NanGuard())
    if multi_worker:
        fit_callbacks.append(
            tf.keras.callbacks.BackupAndRestore(backup_dir, save_freq=FLAGS.checkpoint_every_steps or "epoch")
        )
    fit_callbacks.append(callbacks.CheckpointCallback(manager, FLAGS.checkpoint_every_steps))
    if evaluation_callback is not None:
        fit_callbacks.append(evaluation_callback)

    data_start_step = [resumed_step]  # where the next fit's input pipelines start (dataset_fn may be traced)

    def fit(epochs, initial_epoch, steps):
        if not backup_step:
            data_start_step[0] = int(model.optimizer.iterations.numpy())
        model.fit(
            tf.keras.utils.experimental.DatasetCreator(dataset_fn),
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            verbose=1 if sys.stdout.isatty() and is_chief else 2 if is_chief else 0,
            callbacks=fit_callbacks,
        )

    step = 0 if backup_step else resumed_step  # Keras skips what the backup had done
    if step % steps_per_epoch and step < total_steps:
        # A run stopped mid-epoch finishes that epoch first, so every epoch ends on a multiple of steps_per_epoch.
        epoch = step // steps_per_epoch
        fit(epoch + 1, epoch, steps_per_epoch - step % steps_per_epoch)
        step = (epoch + 1) * steps_per_epoch
    if step < total_steps:
        fit(FLAGS.epochs, step // steps_per_epoch, steps_per_epoch)
    # Workers of one synchronous job must end with the same weights; this line lets them (and tests) compare.
    fingerprint = sum(float(tf.reduce_sum(tf.cast(variable, tf.float64))) for variable in model.trainable_variables)
    logging.info("%s: finished at step %d; weights fingerprint %.10e", cluster.task_name,
                 int(model.optimizer.iterations.numpy()), fingerprint)
    if not is_chief:
        return None
    held_out = evaluation_callback.held_out
    model_metrics = evaluation_callback.last_metrics or evaluation.evaluate(model, held_out, eval_ks)
    if FLAGS.projector_items:
        num_shown = min(FLAGS.projector_items, corpus.num_items)
        top_items = model.item_tower(tf.range(num_shown, dtype=tf.int64)).numpy().astype("float32")
        summaries.write_projector(os.path.join(tensorboard_dir, "projector"), top_items, corpus.item_counts)
    baseline_metrics = evaluation.popularity_baseline(corpus.item_counts, held_out, eval_ks)
    return model_metrics, baseline_metrics, eval_ks


def report(model_metrics, baseline_metrics, eval_ks) -> str:
    lines = [f"{'held-out metric':<16}{'model':>10}{'most-popular':>14}{'ratio':>8}"]
    for k in eval_ks:
        name = f"recall_at_{k}"
        model_value, baseline_value = model_metrics[name], baseline_metrics[name]
        ratio = model_value / baseline_value if baseline_value else math.inf
        lines.append(f"{f'recall@{k}':<16}{model_value:>10.4f}{baseline_value:>14.4f}{ratio:>7.2f}x")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    try:
        cluster = distribute.tf_config_from_environment()
        # --cpu_replicas asks for that many local devices, so auto takes mirrored for it as for GPUs.
        num_local_devices = max(len(tf.config.list_physical_devices("GPU")), FLAGS.cpu_replicas)
        strategy_name = distribute.resolve_strategy_name(FLAGS.strategy, cluster, num_local_devices)
    except distribute.DistributeError as error:
        raise app.UsageError(str(error)) from None
    if FLAGS.cpu_replicas > 1 and strategy_name != "mirrored":
        raise app.UsageError(f"--cpu_replicas={FLAGS.cpu_replicas} applies to --strategy=mirrored, not {strategy_name}")
    if strategy_name == "parameter_server" and cluster.task_type in ("ps", "worker"):
        logging.info("%s: serving the parameter_server job (the chief drives training)", cluster.task_name)
        distribute.run_server(tf, cluster)
        return
    if cluster.task_type is not None and not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required with TF_CONFIG: every task of the job must name the same one")
    model_dir = FLAGS.model_dir or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if cluster.is_chief:
        print(f"model_dir: {model_dir}  (tensorboard --logdir {os.path.join(model_dir, 'tensorboard')})", flush=True)
    from trainers.callbacks import NonFiniteLossError

    try:
        trained = train(model_dir, cluster, strategy_name)
    except NonFiniteLossError as error:
        sys.exit(f"{cluster.task_name}: stopped: {error}")
    if trained is None:  # a non-chief worker: the chief writes the run's files
        return
    model_metrics, baseline_metrics, eval_ks = trained
    with open(os.path.join(model_dir, "metrics.json"), "w") as file:
        json.dump({"model": model_metrics, "most_popular": baseline_metrics}, file, indent=2)
    print(report(model_metrics, baseline_metrics, eval_ks), flush=True)
    if FLAGS.export:
        from trainers import export

        try:
            export_path, export_step = export.export_from_model_dir(model_dir, k=FLAGS.export_top_k)
        except (OSError, ValueError, tf.errors.OpError) as error:
            sys.exit(f"training finished and its checkpoints are kept, but the export failed: {error}. Retry with "
                     f"`python -m trainers.export --model_dir={model_dir} --k={FLAGS.export_top_k}`.")
        print(f"exported step {export_step} to {export_path}  (python -m trainers.retrieve --export_dir "
              f"{export_path} --user_id ...)", flush=True)


if __name__ == "__main__":
    app.run(main)
