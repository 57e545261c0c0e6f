"""This project's id model and history model beside the TensorFlow Recommenders basic-retrieval tutorial model, the
most-popular baseline and the classic recommenders, on one prepared split, under both evaluation protocols.

    .venv/bin/python scripts/compare_tfrs.py --data=movielens --seeds=42,43,44 [--output=compare.json] \\
        [-- trainer flags]

What runs:
- TFRS tutorial (https://www.tensorflow.org/recommenders/examples/basic_retrieval), as the tutorial writes it: a
  user-id and an item-id embedding of dim 32, `tfrs.tasks.Retrieval()` (in-batch softmax; TFRS sums the loss over
  the batch), Adagrad at 0.1, batches of 8,192 from a 100,000-row shuffle buffer, 3 epochs, trained on the
  prepared split's training rows (the ids stand for the tutorial's string lookups).
- The same tutorial model with its task swapped for `retrieval.task.Retrieval` (sampled softmax over
  log-uniform negatives, num_sampled=1000, log-Q correction and accidental hits removed: the trainer's defaults),
  everything else as the tutorial writes it (README: "Your own TFRS model").
- This project: `python -m trainers.train` twice per seed, with --query_features=user_id and
  --query_features=history (everything else at its defaults, plus the flags after `--`), in
  <work_dir>/<query_features>-seed<seed>.
- Classic baselines (retrieval.baselines), fitted on the training split, deterministic (one run): most popular,
  item-to-item transitions from the query's last item (ties and the rest by popularity), and, when the catalogue
  has at most retrieval.baselines.MAX_DENSE_ITEMS items, EASE^R and item-kNN on the user's whole history. EASE's
  l2 and item-kNN's num_neighbours and shrink are chosen by NDCG at the largest K on the corpus's validation split
  (the one the trainer chooses its model on; without one, each user's last training interaction held out and the
  rest fitted), under each protocol, and the chosen ones are ranked on the test queries once.
- Every model is trained once per seed and ranked by trainers.held_out on the same test queries under both
  protocols: "seen" (every item but the `<oov>` bucket ranked) and "exclude_seen" (each user's training items left
  out of every ranking); one query per held-out user (her training history strictly before the held-out row for
  the history model and the baselines), recall@K averaged over users, NDCG@K and MRR.
Prints one table per protocol (recall@K: mean and range over the seeds; the history model over the best
baseline) and writes every figure as JSON (--output): {"data", "ks", "seeds", "protocols": {"seen" |
"exclude_seen": {"num_queries", "models": {"most_popular", "tfrs_tutorial", "tfrs_tutorial_sampled", "user_id",
"history", "item_transitions", "ease", "item_knn": {"mean", "low", "high": {metric: value}, "runs": [{metric:
value} per seed]}}, "baselines": {"selected_by", "validation_queries", "validation_split", "history_length",
"ease": {"l2", "grid"}, "item_knn": {"num_neighbours", "shrink", "grid"}}, "best_baseline": {"recall_at_<K>":
the baseline row (most popular or a classic one) of the highest mean}, "history_over_best_baseline":
{"recall_at_<K>": the history model's mean over that row's}}}} (ease and item_knn absent, and
"dense_baselines_skipped" set, above the dense size bound). On --data=builtin the seed also draws the corpus, so
it takes one seed.
"""

import functools
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import retrieval  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from retrieval import baselines  # noqa: E402
from trainers.run_config import EvaluationConfig  # noqa: E402

flags.DEFINE_string("data", "movielens", "The corpus, as trainers.train's --data (builtin, movielens, a directory).")
flags.DEFINE_integer("tfrs_epochs", 3, "TFRS tutorial: epochs.")
flags.DEFINE_string("work_dir", "runs/compare_tfrs", "Where this project's two runs go (<work_dir>/<model>).")
flags.DEFINE_integer("tfrs_batch_size", 8192, "TFRS tutorial: batch size.")
flags.DEFINE_string("output", "", "Write the figures here as JSON ('' : <work_dir>/compare.json).")
flags.DEFINE_float("tfrs_learning_rate", 0.1, "TFRS tutorial: Adagrad's learning rate.")
flags.DEFINE_list("eval_top_k", [str(k) for k in EvaluationConfig.eval_top_k], "Cut-offs K (the trainer's).")
flags.DEFINE_integer("tfrs_embedding_dim", 32, "TFRS tutorial: embedding size.")
flags.DEFINE_list("seeds", ["42"], "The seeds: every trained model is trained once per seed (the built-in corpus is "
                  "drawn with the first); the table gives the mean and range.")
flags.DEFINE_list("ease_l2", ["10", "50", "100", "200", "500", "1000", "2000", "5000"],
                  "EASE^R: the l2 values tried on the validation split.")
flags.DEFINE_list("knn_neighbours", ["20", "50", "100", "200"], "item-kNN: the num_neighbours values tried.")
flags.DEFINE_list("knn_shrink", ["0", "10", "100"], "item-kNN: the shrink values tried (with every num_neighbours).")
FLAGS = flags.FLAGS

PROJECT_MODELS = ("user_id", "history")
# Protocol name in the JSON -> exclude_seen: each user's training items ranked, or left out of every ranking.
PROTOCOLS = {"seen": False, "exclude_seen": True}
BASELINE_ROWS = ("item_transitions", "ease", "item_knn")
ROWS = ("most_popular", "tfrs_tutorial", "tfrs_tutorial_sampled", "user_id", "history", *BASELINE_ROWS)
LABELS = {"most_popular": "most popular", "tfrs_tutorial": "TFRS tutorial", "tfrs_tutorial_sampled": "TFRS tutorial, our task",
          "user_id": "this project: user id", "history": "this project: history",
          "item_transitions": "item transitions", "ease": "EASE^R", "item_knn": "item-kNN"}
TUTORIAL_TASKS = {"tfrs_tutorial": "tfrs", "tfrs_tutorial_sampled": "retrieval.task"}


def train_project_model(query_features: str, seed: int, trainer_args):
    """Runs trainers.train for one --query_features and seed into <work_dir>/<query_features>-seed<seed>; returns
    the model_dir."""
    model_dir = os.path.join(FLAGS.work_dir, f"{query_features.replace(',', '+')}-seed{seed}")
    command = [sys.executable, "-m", "trainers.train", f"--data={FLAGS.data}", f"--model_dir={model_dir}",
               f"--query_features={query_features}", f"--seed={seed}", "--noexport", *trainer_args]
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


@functools.lru_cache(maxsize=1)
def corpus_data(directory: str):
    """The corpus's trainers.run_data.RunData without a run's config (a user-id model's queries, no cold users):
    its training split read from disk once for every tutorial model, every baseline and their queries (with_config
    for a history model's)."""
    from data.corpus import PreparedCorpus
    from trainers.run_data import RunData

    return RunData.of(PreparedCorpus.load(directory))


@functools.lru_cache(maxsize=1)
def training_columns(directory: str):
    """{user_id, item_id, timestamp: [n]} of the corpus's training split, rows in its files' order (the tutorial's
    shuffle and the transitions' ties follow it), from corpus_data's one read (read-only)."""
    return corpus_data(directory).train_columns_in_file_order()


def train_tutorial_model(corpus, task: str, seed: int):
    """The TFRS tutorial model with `task` (TutorialModel) trained on the corpus's training rows."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    columns = training_columns(corpus.directory)
    train = tf.data.Dataset.from_tensor_slices({"user_id": columns["user_id"], "item_id": columns["item_id"]})
    cached_train = train.shuffle(100_000, seed=seed).batch(FLAGS.tfrs_batch_size).cache()
    model = TutorialModel(corpus.num_users, corpus.num_items, FLAGS.tfrs_embedding_dim, task, corpus.item_counts)
    model.keras_model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=FLAGS.tfrs_learning_rate))
    model.keras_model.fit(cached_train, epochs=FLAGS.tfrs_epochs, verbose=0)
    return model


def baseline_queries(corpus, history_length: int, exclude_seen: bool, split: str = "test"):
    """trainers.held_out's queries of `split` with the history a history model of history_length would read (the
    user's training items strictly before her first held-out row, newest first), the same users as the other rows."""
    from trainers import held_out, run_config

    config = run_config.RunConfig(data=run_config.DataConfig(history_length=history_length),
                                  model=run_config.ModelConfig(query_features=("history",)))
    return held_out.load_held_out(corpus_data(corpus.directory).with_config(config), exclude_seen=exclude_seen,
                                  split=split)


def rank_baseline(model, queries, ks):
    """held_out's metrics of a fitted baseline's top-max(ks) for queries (a HeldOut with history): the transitions
    read the newest history item, EASE and item-kNN the whole history; exclusions as every other row's."""
    from trainers import held_out

    inputs = queries.history[:, 0] if isinstance(model, baselines.ItemTransitions) else queries.history
    top_ids = model.top_k(inputs, max(ks), queries.exclude_ids())
    return held_out.both_protocols(top_ids, queries.relevant_ids, ks)


def _items_by_user(columns, user_ids):
    """[len(user_ids), s] int64: each user's distinct items in the columns, -1 padded."""
    from retrieval import metrics

    order = np.argsort(columns["user_id"], kind="stable")
    users, starts = np.unique(columns["user_id"][order], return_index=True)
    groups = dict(zip(users.tolist(), np.split(columns["item_id"][order], starts[1:])))
    empty = np.zeros([0], np.int64)
    return metrics.pad_ragged([np.unique(groups.get(user, empty)) for user in user_ids.tolist()])


def own_validation_split(train, oov_item_id, history_length: int, exclude_seen: bool):
    """For a corpus without a validation split: (fit rows {user_id, item_id, timestamp}, a HeldOut of validation
    queries) from the training rows: each user's last training interaction (data.splits' rule) is held out, as the
    test split holds out her last one; its query reads her other training items strictly before it; its seen items
    (with exclude_seen) are her fitted items. Rows of the `<oov>` bucket are never a query, as in held_out."""
    from data import history, splits
    from trainers import held_out

    is_validation = splits.held_out(train["user_id"], train["timestamp"], "last", 1)
    fit = {name: train[name][~is_validation] for name in ("user_id", "item_id", "timestamp")}
    rows = np.flatnonzero(is_validation & (train["item_id"] != (-1 if oov_item_id is None else oov_item_id)))
    users, times = train["user_id"][rows], train["timestamp"][rows]
    query_history = history.histories_before(fit["user_id"], fit["item_id"], fit["timestamp"], users, times,
                                             history_length)
    seen_ids = _items_by_user(fit, users) if exclude_seen else None
    return fit, held_out.HeldOut(users, train["item_id"][rows][:, np.newaxis], seen_ids, query_history,
                                 oov_item_id=oov_item_id)


def select_dense_settings(fit, validation, num_items: int, ks, metric: str):
    """{"ease": {"l2", "grid"}, "item_knn": {"num_neighbours", "shrink", "grid"}}: each grid's validation values
    of metric (--ease_l2; --knn_neighbours x --knn_shrink), and the best setting (the first in grid order on a
    tie). One X^T X serves every fit."""
    gram = baselines.item_cooccurrence(fit["user_id"], fit["item_id"], num_items)
    ease_grid = {str(l2): rank_baseline(baselines.Ease(l2).fit_cooccurrence(gram), validation, ks)[metric]
                 for l2 in map(float, FLAGS.ease_l2)}
    knn_grid = {f"{neighbours}/{shrink}": rank_baseline(
        baselines.ItemKnn(neighbours, shrink).fit_cooccurrence(gram), validation, ks)[metric]
        for neighbours in map(int, FLAGS.knn_neighbours) for shrink in map(float, FLAGS.knn_shrink)}
    neighbours, shrink = max(knn_grid, key=knn_grid.get).split("/")
    return {"ease": {"l2": float(max(ease_grid, key=ease_grid.get)), "grid": ease_grid},
            "item_knn": {"num_neighbours": int(neighbours), "shrink": float(shrink), "grid": knn_grid}}


def baseline_figures(corpus, train, ks, exclude_seen: bool):
    """({row: metrics} of the baselines on the test queries, their settings for the JSON).

    Every baseline is fitted on the corpus's training split; the queries read the user's whole training
    history before the held-out row (history_length: the longest user's training count). EASE^R's and item-kNN's
    settings are chosen on the corpus's validation split (the one the trainer chooses its model on), or on one of
    the training rows when the corpus has none.
    """
    history_length = int(np.bincount(train["user_id"]).max())
    queries = baseline_queries(corpus, history_length, exclude_seen)
    transitions = baselines.ItemTransitions().fit(train["user_id"], train["item_id"], train["timestamp"],
                                                  corpus.num_items)
    figures = {"item_transitions": rank_baseline(transitions, queries, ks)}
    settings = {"history_length": history_length}
    if corpus.num_items > baselines.MAX_DENSE_ITEMS:
        settings["dense_baselines_skipped"] = (f"{corpus.num_items} items: above the dense item x item bound of "
                                               f"{baselines.MAX_DENSE_ITEMS}")
        print(f"compare_tfrs: EASE^R and item-kNN left out ({settings['dense_baselines_skipped']})", flush=True)
        return figures, queries, settings
    metric = f"ndcg_at_{max(ks)}"
    if corpus.has_validation:
        fit, validation = train, baseline_queries(corpus, history_length, exclude_seen, split="validation")
    else:
        fit, validation = own_validation_split(train, queries.oov_item_id, history_length, exclude_seen)
    settings.update(selected_by=metric, validation_queries=len(validation.user_ids),
                    validation_split="the corpus's" if corpus.has_validation else "each user's last training row",
                    **select_dense_settings(fit, validation, corpus.num_items, ks, metric))
    gram = baselines.item_cooccurrence(train["user_id"], train["item_id"], corpus.num_items)
    ease = baselines.Ease(settings["ease"]["l2"]).fit_cooccurrence(gram)
    knn = baselines.ItemKnn(settings["item_knn"]["num_neighbours"], settings["item_knn"]["shrink"])
    figures["ease"] = rank_baseline(ease, queries, ks)
    figures["item_knn"] = rank_baseline(knn.fit_cooccurrence(gram), queries, ks)
    return figures, queries, settings


def rank_trained_models(seed: int, trainer_args, ks):
    """(corpus, {protocol: {row: metrics}}) of the seed's trained rows: this project's two models and the two
    tutorial models, each trained once and ranked under both protocols."""
    from trainers import held_out, restored_run

    figures = {protocol: {} for protocol in PROTOCOLS}
    for name in PROJECT_MODELS:
        restored = restored_run.restore_model(train_project_model(name, seed, trainer_args))
        for protocol, exclude_seen in PROTOCOLS.items():
            queries = held_out.load_held_out(restored.data, exclude_seen=exclude_seen)
            figures[protocol][name] = held_out.evaluate(restored.model, queries, ks)
    corpus = restored.data.warm_corpus  # the corpus as the trainer's runs saw it (its counts)
    for name, task in TUTORIAL_TASKS.items():
        model = train_tutorial_model(corpus, task, seed)
        for protocol, exclude_seen in PROTOCOLS.items():
            queries = held_out.load_held_out(corpus_data(corpus.directory), exclude_seen=exclude_seen)
            figures[protocol][name] = held_out.evaluate(model, queries, ks)
    return corpus, figures


def summarise(runs):
    """[{metric: value}] of the seeds -> {"mean", "low", "high"}: {metric: value}."""
    names = runs[0]
    return {"mean": {name: float(np.mean([run[name] for run in runs])) for name in names},
            "low": {name: float(min(run[name] for run in runs)) for name in names},
            "high": {name: float(max(run[name] for run in runs)) for name in names}}


def compare(trainer_args):
    """{"protocols": {protocol: {"models": {row: {"mean", "low", "high", "runs"}}, "baselines": settings}}, ...}:
    the trained rows over every seed, the deterministic baselines once, all ranked on one set of test queries per
    protocol."""
    from trainers import held_out, train_flags

    ks = train_flags.positive_ints("eval_top_k", FLAGS.eval_top_k)
    seeds = train_flags.positive_ints("seeds", FLAGS.seeds)
    if FLAGS.data == "builtin" and len(seeds) > 1:
        sys.exit(f"compare_tfrs: --data=builtin takes one of --seeds={','.join(FLAGS.seeds)}: the seed draws the "
                 "built-in corpus, and every row must rank one corpus")
    runs = {protocol: {} for protocol in PROTOCOLS}
    for seed in seeds:
        corpus, figures = rank_trained_models(seed, trainer_args, ks)
        for protocol, rows in figures.items():
            for name, metrics in rows.items():
                runs[protocol].setdefault(name, []).append(metrics)
    train = training_columns(corpus.directory)
    result = {"data": FLAGS.data, "ks": list(ks), "seeds": list(seeds), "protocols": {}}
    for protocol, exclude_seen in PROTOCOLS.items():
        queries = held_out.load_held_out(corpus_data(corpus.directory), exclude_seen=exclude_seen)
        runs[protocol]["most_popular"] = [held_out.popularity_baseline(corpus.item_counts, queries, ks)]
        baseline_metrics, baseline_held_out, settings = baseline_figures(corpus, train, ks, exclude_seen)
        if not np.array_equal(baseline_held_out.user_ids, queries.user_ids):
            raise AssertionError("the baselines' held-out users differ from the other rows'")
        runs[protocol].update({name: [metrics] for name, metrics in baseline_metrics.items()})
        models = {name: {**summarise(runs[protocol][name]), "runs": runs[protocol][name]}
                  for name in ROWS if name in runs[protocol]}  # ease, item_knn: dense size bound
        result["protocols"][protocol] = {"num_queries": len(queries.user_ids), "models": models,
                                         "baselines": settings, **history_over_best_baseline(models, ks)}
    return result


def history_over_best_baseline(models, ks):
    """{"best_baseline": {recall_at_K: the baseline row with the highest mean}, "history_over_best_baseline":
    {recall_at_K: the history model's mean over that row's}}: the table's last line. The baselines: most popular
    and the classic ones (BASELINE_ROWS) present."""
    names = [f"recall_at_{k}" for k in ks]
    rows = [row for row in ("most_popular", *BASELINE_ROWS) if row in models]
    best = {name: max(rows, key=lambda row: models[row]["mean"][name]) for name in names}
    return {"best_baseline": best,
            "history_over_best_baseline": {name: models["history"]["mean"][name] / models[best[name]]["mean"][name]
                                           for name in names}}


def _cell(row, name: str) -> str:
    if len(row["runs"]) == 1:
        return f"{row['mean'][name]:.4f}"
    return f"{row['mean'][name]:.4f} ({row['low'][name]:.4f}-{row['high'][name]:.4f})"


def table(result, protocol: str) -> str:
    """A markdown table of one protocol: recall@K of every row (mean and range over the seeds), then the history
    model's mean over the best baseline's at each K."""
    figures = result["protocols"][protocol]
    names = [f"recall_at_{k}" for k in result["ks"]]
    lines = ["| model | " + " | ".join(name.replace("_at_", "@") for name in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for row, values in figures["models"].items():
        lines.append(f"| {LABELS[row]} | " + " | ".join(_cell(values, name) for name in names) + " |")
    lines.append("| history model / best baseline | " + " | ".join(
        f"{figures['history_over_best_baseline'][name]:.2f}x" for name in names) + " |")
    title = "each user's training items excluded" if PROTOCOLS[protocol] else "seen items ranked"
    settings = figures["baselines"]
    header = (f"--data={result['data']}, {title}: {figures['num_queries']} test users, seeds "
              f"{','.join(map(str, result['seeds']))} (the baselines are deterministic: one run)")
    if "ease" in settings:
        knn = settings["item_knn"]
        header += (f"; chosen on {settings['validation_queries']} validation queries ({settings['validation_split']}"
                   f" validation split) by {settings['selected_by']}: EASE^R l2={settings['ease']['l2']:g}, "
                   f"item-kNN num_neighbours={knn['num_neighbours']} shrink={knn['shrink']:g}")
    return "\n".join([header, "", *lines])


def main(argv):
    result = compare(argv[1:])
    for protocol in PROTOCOLS:
        print(table(result, protocol) + "\n", flush=True)
    output = FLAGS.output or os.path.join(FLAGS.work_dir, "compare.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as file:
        json.dump(result, file, indent=2)
    print(f"figures written to {output}")


if __name__ == "__main__":
    app.run(main)
