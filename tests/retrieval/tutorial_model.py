"""The TFRS basic-retrieval tutorial model (string lookups, embeddings of dim 32, a tfrs.Model whose compute_loss
calls a task) on a small clustered log, with tfrs.tasks.Retrieval swapped for retrieval.task.Retrieval.

Imported by tests/retrieval/test_task.py; run as a process to train under tf.distribute on logical CPU devices:
    python -m tests.retrieval.tutorial_model --cpu_replicas=2 --output=result.json
"""

import json
import sys
from typing import Dict

import numpy as np

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from retrieval.task import Retrieval

NUM_USERS, NUM_ITEMS, NUM_TOPICS, PER_USER = 300, 120, 12, 24


def clustered_log(seed: int = 0) -> Dict[str, np.ndarray]:
    """Each user draws items of one topic (10 items each), Zipfian within it; the last row of each user is held
    out. {"train_users", "train_items", "test_users", "test_items", "items", "counts"}: string keys."""
    rng = np.random.default_rng(seed)
    topic_of_user = rng.integers(NUM_TOPICS, size=NUM_USERS)
    within = 1.0 / np.arange(1, NUM_ITEMS // NUM_TOPICS + 1)
    rows = []
    for user, topic in enumerate(topic_of_user):
        picks = rng.choice(len(within), size=PER_USER, p=within / within.sum())
        rows += [(f"user_{user}", f"movie_{topic * len(within) + pick}") for pick in picks]
    users, items = np.array([row[0] for row in rows]), np.array([row[1] for row in rows])
    last = np.arange(PER_USER - 1, len(rows), PER_USER)
    train = np.setdiff1d(np.arange(len(rows)), last)
    vocabulary = np.array([f"movie_{i}" for i in range(NUM_ITEMS)])
    counts = np.array([np.sum(items[train] == key) for key in vocabulary], np.float64)
    return {"train_users": users[train], "train_items": items[train], "test_users": users[last],
            "test_items": items[last], "items": vocabulary, "counts": counts}


def lookup_embedding(vocabulary, dim: int = 32, seed: int = 0):
    """The tutorial's tower: StringLookup (OOV index 0) then an Embedding."""
    return tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token=None),
        tf.keras.layers.Embedding(len(vocabulary) + 1, dim,
                                  embeddings_initializer=tf.keras.initializers.RandomUniform(-0.05, 0.05, seed)),
    ])


class MovielensModel(tfrs.Model):
    """The tutorial's model, as it writes it; the task is given."""

    def __init__(self, user_model, movie_model, task):
        super().__init__()
        self.movie_model = movie_model
        self.user_model = user_model
        self.task = task

    def compute_loss(self, features, training=False):
        user_embeddings = self.user_model(features["user_id"])
        positive_movie_embeddings = self.movie_model(features["movie_title"])
        return self.task(user_embeddings, positive_movie_embeddings, candidate_ids=features["movie_title"],
                         compute_metrics=not training, training=training)


def build(log, with_metrics: bool = False, **task_settings) -> MovielensModel:
    """The tutorial model over the log's keys with the sampled task (task_settings: Retrieval's keywords) and,
    with_metrics, the tutorial's FactorizedTopK over every movie (identified by title)."""
    users = np.unique(log["train_users"])
    movie_model = lookup_embedding(log["items"], seed=1)
    metrics = None
    if with_metrics:
        movies = tf.data.Dataset.from_tensor_slices(log["items"]).batch(128)
        metrics = tfrs.metrics.FactorizedTopK(candidates=movies.map(lambda title: (title, movie_model(title))))
    task = Retrieval(movie_model, candidates=log["items"], candidate_counts=log["counts"], metrics=metrics,
                     **task_settings)
    return MovielensModel(lookup_embedding(users, seed=2), movie_model, task)


def training_data(log, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    rows = {"user_id": log["train_users"], "movie_title": log["train_items"]}
    return tf.data.Dataset.from_tensor_slices(rows).shuffle(len(log["train_users"]), seed=seed).batch(
        batch_size, drop_remainder=True)


def recall_at(model: MovielensModel, log, k: int = 10) -> float:
    """Exact recall@k of each user's held-out item over all items (seen items ranked too)."""
    scores = model.user_model(log["test_users"]).numpy() @ model.movie_model(log["items"]).numpy().T
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean(np.any(log["items"][top] == log["test_items"][:, None], axis=1)))


def mirrored_matches_one_device(log, mirrored: tf.distribute.MirroredStrategy) -> float:
    """Largest |difference| of the movie table after one Adagrad step under MirroredStrategy (the logical CPUs) and on
    one device, full softmax (no sampling noise), loss summed: the replicas' gradients add up to the batch's."""
    batch = next(iter(training_data(log, 64)))
    tables = []
    for strategy in (tf.distribute.get_strategy(), mirrored):
        with strategy.scope():
            model = build(log, loss="full_softmax")
            model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
        model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
        tables.append(model.movie_model.layers[1].embeddings.numpy())
    return float(np.max(np.abs(tables[0] - tables[1])))


def train_and_measure(strategy, epochs: int = 6, **task_settings) -> Dict[str, float]:
    """Recall@10 before and after model.fit (exact, and TFRS's FactorizedTopK through model.evaluate), and the last
    epoch's loss."""
    log = clustered_log()
    with strategy.scope():
        model = build(log, with_metrics=True, num_sampled=30, **task_settings)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
        before = recall_at(model, log)  # the towers' first call builds their variables: in the scope
    history = model.fit(training_data(log, 128), epochs=epochs, verbose=0)
    test = tf.data.Dataset.from_tensor_slices({"user_id": log["test_users"], "movie_title": log["test_items"]})
    evaluated = model.evaluate(test.batch(100), return_dict=True, verbose=0)
    return {"recall_before": before, "recall_after": recall_at(model, log), "loss": history.history["loss"][-1],
            "factorized_top_10": evaluated["factorized_top_k/top_10_categorical_accuracy"],
            "num_replicas": strategy.num_replicas_in_sync}


def main(argv) -> None:
    replicas = int(next(arg for arg in argv if arg.startswith("--cpu_replicas=")).split("=")[1])
    output = next(arg for arg in argv if arg.startswith("--output=")).split("=", 1)[1]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    tf.keras.utils.set_random_seed(0)
    # One strategy object for both: two MirroredStrategy objects in a process reuse collective instance keys.
    mirrored = tf.distribute.MirroredStrategy()
    result = train_and_measure(mirrored, epochs=4)
    result["mirrored_step_max_difference"] = mirrored_matches_one_device(clustered_log(), mirrored)
    with open(output, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main(sys.argv[1:])
