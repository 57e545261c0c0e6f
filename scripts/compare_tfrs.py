"""This project's id model and history model beside the TensorFlow Recommenders basic-retrieval tutorial model and
the most-popular baseline, on one prepared split, under one evaluation protocol.

    .venv/bin/python scripts/compare_tfrs.py --data=movielens [--exclude_seen] [--output=compare.json] [-- trainer flags]

What runs:
- TFRS tutorial (https://www.tensorflow.org/recommenders/examples/basic_retrieval), as the tutorial writes it: a
  user-id and an item-id embedding of dim 32, `tfrs.tasks.Retrieval()` (in-batch softmax; TFRS sums the loss over
  the batch), Adagrad at 0.1, batches of 8,192 from a 100,000-row shuffle buffer, 3 epochs, trained on the
  prepared split's training rows (the ids stand for the tutorial's string lookups).
- The same tutorial model with its task swapped for `retrieval.task.Retrieval` (sampled softmax over
  log-uniform negatives, num_sampled=1000, log-Q correction and accidental hits removed: the trainer's defaults),
  everything else as the tutorial writes it (README: "Your own TFRS model").
- This project: `python -m trainers.train` twice, with --query_features=user_id and --query_features=history
  (everything else at its defaults, plus the flags after `--`), in <work_dir>/user_id and <work_dir>/history.
- Every model is then ranked by trainers.held_out on the same held-out queries: exact top-K over every item but
  the `<oov>` bucket, one query per held-out user (her training history for the history model), recall@K averaged
  over users, NDCG@K and MRR; --exclude_seen leaves each user's training items out of every ranking.
Prints one table and writes the figures as JSON (--output): {"data", "exclude_seen", "ks", "models": {"most_popular",
"tfrs_tutorial", "tfrs_tutorial_sampled", "user_id", "history": {metric: value}}, "model_dirs": {...}}.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import retrieval  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

flags.DEFINE_string("data", "movielens", "The corpus, as trainers.train's --data (builtin, movielens, a directory).")
flags.DEFINE_bool("exclude_seen", False, "Leave each user's training items out of every ranking.")
flags.DEFINE_integer("tfrs_epochs", 3, "TFRS tutorial: epochs.")
flags.DEFINE_string("work_dir", "runs/compare_tfrs", "Where this project's two runs go (<work_dir>/<model>).")
flags.DEFINE_integer("tfrs_batch_size", 8192, "TFRS tutorial: batch size.")
flags.DEFINE_string("output", "", "Write the figures here as JSON ('' : <work_dir>/compare.json).")
flags.DEFINE_float("tfrs_learning_rate", 0.1, "TFRS tutorial: Adagrad's learning rate.")
flags.DEFINE_list("eval_top_k", ["10", "50", "100"], "Cut-offs K.")
flags.DEFINE_integer("tfrs_embedding_dim", 32, "TFRS tutorial: embedding size.")
flags.DEFINE_integer("seed", 42, "Seed of every model (and of the built-in corpus).")
FLAGS = flags.FLAGS

PROJECT_MODELS = ("user_id", "history")
ROWS = ("most_popular", "tfrs_tutorial", "tfrs_tutorial_sampled", "user_id", "history")
LABELS = {"most_popular": "most popular", "tfrs_tutorial": "TFRS tutorial", "tfrs_tutorial_sampled": "TFRS tutorial, our task",
          "user_id": "this project: user id", "history": "this project: history"}
TUTORIAL_TASKS = {"tfrs_tutorial": "tfrs", "tfrs_tutorial_sampled": "retrieval.task"}


def train_project_model(query_features: str, trainer_args):
    """Runs trainers.train for one --query_features into <work_dir>/<query_features>; returns the model_dir."""
    model_dir = os.path.join(FLAGS.work_dir, query_features.replace(",", "+"))
    command = [sys.executable, "-m", "trainers.train", f"--data={FLAGS.data}", f"--model_dir={model_dir}",
               f"--query_features={query_features}", f"--seed={FLAGS.seed}", "--noexport", *trainer_args]
    print("$", " ".join(command[1:]), flush=True)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"compare_tfrs: {' '.join(command[1:])} failed:\n{result.stderr[-3000:]}")
    return model_dir


class TutorialModel:
    """The TFRS basic-retrieval model, with the two calls trainers.held_out.evaluate makes of a model."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, task: str, item_counts):
        """task: "tfrs" (the tutorial's tfrs.tasks.Retrieval) or "retrieval.task" (this project's, swapped in)."""
        import tensorflow as tf
        import tensorflow_recommenders as tfrs

        from retrieval.task import Retrieval

        self.num_items = num_items
        user_model = tf.keras.layers.Embedding(num_users, embedding_dim)
        item_model = tf.keras.layers.Embedding(num_items, embedding_dim)

        class Model(tfrs.Model):
            def __init__(self):
                super().__init__()
                self.user_model, self.item_model = user_model, item_model
                # The tutorial's task, without its (slow) top-K metrics; or ours, on the corpus's popularity-ranked ids.
                self.task = tfrs.tasks.Retrieval() if task == "tfrs" else Retrieval(
                    item_model, num_items=num_items, candidate_counts=item_counts)

            def compute_loss(self, features, training=False):
                return self.task(self.user_model(features["user_id"]), self.item_model(features["item_id"]),
                                 candidate_ids=features["item_id"])

        self.keras_model = Model()
        self.item_tower = self  # held_out.evaluate reads model.item_tower.embed_all()

    def embed_all(self):
        import tensorflow as tf

        return self.keras_model.item_model(tf.range(self.num_items))

    def query_embeddings(self, features):
        return self.keras_model.user_model(features["user_id"])


def train_tutorial_model(corpus, task: str):
    """The TFRS tutorial model with `task` (TutorialModel) trained on the corpus's training rows."""
    import tensorflow as tf

    from data import records

    tf.keras.utils.set_random_seed(FLAGS.seed)
    columns = records.read_all(corpus.train_files)
    train = tf.data.Dataset.from_tensor_slices({"user_id": columns["user_id"], "item_id": columns["item_id"]})
    cached_train = train.shuffle(100_000, seed=FLAGS.seed).batch(FLAGS.tfrs_batch_size).cache()
    model = TutorialModel(corpus.num_users, corpus.num_items, FLAGS.tfrs_embedding_dim, task, corpus.item_counts)
    model.keras_model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=FLAGS.tfrs_learning_rate))
    model.keras_model.fit(cached_train, epochs=FLAGS.tfrs_epochs, verbose=0)
    return model


def compare(trainer_args):
    """{"models": {row: metrics}, ...}: trains the four and ranks them on one set of held-out queries."""
    from trainers import held_out, run_dir, train_flags

    ks = train_flags.positive_ints("eval_top_k", FLAGS.eval_top_k)
    model_dirs = {name: train_project_model(name, trainer_args) for name in PROJECT_MODELS}
    figures = {}
    corpus = None
    for name, model_dir in model_dirs.items():
        restored = run_dir.restore_model(model_dir)
        corpus = restored.corpus
        queries = held_out.load_held_out(corpus, exclude_seen=FLAGS.exclude_seen, config=restored.config)
        figures[name] = held_out.evaluate(restored.model, queries, ks)
    queries = held_out.load_held_out(corpus, exclude_seen=FLAGS.exclude_seen)  # user ids: the same users
    figures["most_popular"] = held_out.popularity_baseline(corpus.item_counts, queries, ks)
    for name, task in TUTORIAL_TASKS.items():
        figures[name] = held_out.evaluate(train_tutorial_model(corpus, task), queries, ks)
    return {"data": FLAGS.data, "exclude_seen": FLAGS.exclude_seen, "ks": list(ks), "num_queries": len(queries.user_ids),
            "models": {name: figures[name] for name in ROWS}, "model_dirs": model_dirs}


def table(result) -> str:
    names = [f"recall_at_{k}" for k in result["ks"]] + [f"ndcg_at_{k}" for k in result["ks"]] + ["mrr"]
    lines = [f"{'model':<28}" + "".join(f"{name.replace('_at_', '@'):>12}" for name in names)]
    for row in ROWS:
        lines.append(f"{LABELS[row]:<28}" + "".join(f"{result['models'][row][name]:>12.4f}" for name in names))
    protocol = "each user's training items excluded" if result["exclude_seen"] else "seen items not excluded"
    return "\n".join([f"--data={result['data']}: {result['num_queries']} held-out users, {protocol}", *lines])


def main(argv):
    result = compare(argv[1:])
    print(table(result), flush=True)
    output = FLAGS.output or os.path.join(FLAGS.work_dir, "compare.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as file:
        json.dump(result, file, indent=2)
    print(f"figures written to {output}")


if __name__ == "__main__":
    app.run(main)
