"""Evaluates a run's newest checkpoint over the whole corpus: `python -m trainers.evaluate --model_dir ...`.

Exact recall@K, hit rate@K, NDCG@K and MRR of every held-out user (optionally never ranking the user's training
items, --exclude_seen) of one held-out split (--split: test, the default, or validation; trainers.held_out),
written to TensorBoard at the checkpoint's step (tensorboard/eval when the split is the one the run's per-epoch
curves are of, the validation split when the corpus has one; else tensorboard/<split>) and to
<model_dir>/evaluation/step-<N>.json ({checkpoint, step, split, num_users, exclude_seen, metrics}), and printed.
"""

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app, flags

from trainers import cli, train_flags
from trainers.run_config import ConfigError, EvaluationConfig

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A trainers.train run directory (config.json + checkpoints/).")
# The trainer's defaults (trainers.run_config.EvaluationConfig), so that both evaluate the same way by default.
flags.DEFINE_list("eval_top_k", [str(k) for k in EvaluationConfig.eval_top_k], "Cut-offs K for recall@K / NDCG@K.")
flags.DEFINE_bool("exclude_seen", EvaluationConfig.exclude_seen,
                  "Never rank a user's training items (they cannot be held-out hits).")
flags.DEFINE_enum("split", "test", ["test", "validation"], "The held-out split: test (eval-*.tfrecord) or "
                  "validation (the corpus's validation split, on which trainers.train chooses the model).")
flags.DEFINE_integer("max_users", EvaluationConfig.eval_max_users,
                     "Evaluate only the first N held-out users by id (0: all).", lower_bound=0)


def main(argv):
    cli.check_arguments(argv, "model_dir")
    try:
        ks = train_flags.positive_ints("eval_top_k", FLAGS.eval_top_k)
    except ConfigError as error:
        raise app.UsageError(str(error)) from None
    import tensorflow as tf  # after the checks that need none

    from data import atomic
    from trainers import held_out, restored_run, run_dir, summaries

    try:
        restored = restored_run.restore_model(FLAGS.model_dir)
    except (OSError, ValueError) as error:
        raise app.UsageError(f"--model_dir={FLAGS.model_dir}: {error}") from None
    if max(ks) > restored.corpus.num_items:
        raise app.UsageError(f"--eval_top_k={max(ks)} exceeds the corpus size {restored.corpus.num_items}")
    try:
        queries = held_out.load_held_out(restored.data, FLAGS.max_users, FLAGS.exclude_seen, split=FLAGS.split)
    except ValueError as error:  # --split=validation of a corpus without one
        raise app.UsageError(f"--split={FLAGS.split}: {error}") from None
    results = held_out.evaluate(restored.model, queries, ks)
    run_name = "eval" if FLAGS.split == held_out.selection_split(restored.corpus) else FLAGS.split
    writer = tf.summary.create_file_writer(run_dir.RunDir(FLAGS.model_dir).events(run_name))
    summaries.write_scalars(writer, restored.step, results)
    writer.close()
    atomic.write_json_atomically(run_dir.RunDir(FLAGS.model_dir).evaluation(restored.step), {
        "checkpoint": restored.checkpoint, "step": restored.step, "split": FLAGS.split,
        "num_users": len(queries.user_ids),
        "exclude_seen": FLAGS.exclude_seen, "metrics": results, "warnings": list(restored.warnings),
    })
    print(f"{restored.checkpoint} (step {restored.step}), {len(queries.user_ids)} held-out users of the "
          f"{FLAGS.split} split"
          f"{', training items excluded' if FLAGS.exclude_seen else ''}:")
    for name, value in results.items():
        print(f"{name:<24}{value:.4f}")
    print("recall, hit_rate, ndcg, mrr: the mean per user; top_k_accuracy: the mean per held-out row (TFRS's)")


if __name__ == "__main__":
    cli.run(main)
