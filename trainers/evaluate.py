"""Evaluates a run's newest checkpoint over the whole corpus: `python -m trainers.evaluate --model_dir ...`.

Exact recall@K, hit rate@K, NDCG@K and MRR of every held-out user (optionally never ranking the user's training
items, --exclude_seen), written to <model_dir>/tensorboard/eval at the checkpoint's step, printed, and returned.
"""

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A trainers.train run directory (config.json + checkpoints/).")
flags.DEFINE_list("eval_top_k", ["10", "50", "100"], "Cut-offs K for recall@K / NDCG@K.")
flags.DEFINE_bool("exclude_seen", False, "Never rank a user's training items (they cannot be held-out hits).")
flags.DEFINE_integer("max_users", 0, "Evaluate only the first N held-out users by id (0: all).", lower_bound=0)


def write_summaries(summary_dir: str, step: int, values) -> None:
    """Scalars {name: value} at `step` in a TensorBoard event file under summary_dir."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default(step=step), tf.summary.record_if(True):
        for name, value in values.items():
            tf.summary.scalar(name, value)
    writer.close()


def main(argv):
    import os

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required")
    try:
        ks = [int(value) for value in FLAGS.eval_top_k]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise app.UsageError(f"--eval_top_k={','.join(FLAGS.eval_top_k)}: expected comma-separated positive integers")
    from trainers import evaluation, model_builder  # TensorFlow: after the checks that need none

    try:
        model, corpus, _, checkpoint, step = model_builder.restore_from_model_dir(FLAGS.model_dir)
    except (OSError, ValueError) as error:
        raise app.UsageError(f"--model_dir={FLAGS.model_dir}: {error}") from None
    if max(ks) > corpus.num_items:
        raise app.UsageError(f"--eval_top_k={max(ks)} exceeds the corpus size {corpus.num_items}")
    held_out = evaluation.load_held_out(corpus, FLAGS.max_users, FLAGS.exclude_seen)
    results = evaluation.evaluate(model, held_out, ks)
    write_summaries(os.path.join(FLAGS.model_dir, "tensorboard", "eval"), step, results)
    print(f"{checkpoint} (step {step}), {len(held_out.user_ids)} held-out users"
          f"{', training items excluded' if FLAGS.exclude_seen else ''}:")
    for name, value in results.items():
        print(f"{name:<16}{value:.4f}")


if __name__ == "__main__":
    app.run(main)
