"""A log's own context columns through training, evaluation, export and serving (issue 12): a log where the
row's device decides which items it picks, and its history does not, prepared, trained with and without the
context, and served by a fresh `trainers.retrieve` process with --context."""

import json

import numpy as np
import pytest

from tests.conftest import run_module
from tests.trainers.test_export import _retrieve_rows  # a trainers.retrieve run's rows (its --output_json)

NUM_USERS, PER_USER, PER_CLUSTER = 300, 20, 100
DEVICES = ("mobile", "desktop", "tv", "car")
PREPARE = ["--user_column=user", "--item_column=item", "--timestamp_column=time", "--context_columns=device,tags",
           "--multi_valued_columns=tags", "--numeric_context_columns=price"]
TRAIN = ["--batch_size=128", "--num_sampled=100", "--epochs=5", "--learning_rate=0.02", "--embedding_dim=16",
         "--log_every_steps=20", "--projector_items=0", "--seed=3"]
WITH_DEVICE = ["--query_features=history,context", "--context_features=device"]
WITHOUT_CONTEXT = ["--query_features=history"]
# A model of every kind of context: categorical, multi-valued, numeric and a time feature; and cold users.
EVERY_KIND = ["--query_features=history,context", "--context_features=device,tags,price,hour_of_day",
              "--cold_users=0.1"]


def write_log(path):
    """Each row's device picks one of 4 clusters of 100 items (by popularity within it); the device is drawn
    afresh for every row, so a history holds items of every cluster and says nothing of the next one. tags and
    price are noise."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, PER_CLUSTER + 1)
    popularity /= popularity.sum()
    lines = ["user,item,time,device,tags,price"]
    for user in range(NUM_USERS):
        for time in range(PER_USER):
            cluster = rng.integers(len(DEVICES))
            item = cluster * PER_CLUSTER + rng.choice(PER_CLUSTER, p=popularity)
            tags = "|".join(sorted(set(rng.choice(["a", "b", "c", "d"], size=rng.integers(0, 3)))))
            lines.append(f"user{user},item{item},{1_700_000_000 + time * 3600},{DEVICES[cluster]},{tags},"
                         f"{rng.normal(10, 3):.2f}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{name: model_dir} of the three models on one prepared log."""
    root = tmp_path_factory.mktemp("context_columns")
    write_log(root / "log.csv")
    prepared = run_module("data.prepare", f"--input={root / 'log.csv'}", f"--output_dir={root / 'corpus'}", *PREPARE)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    model_dirs = {}
    for name, flags in (("with_device", WITH_DEVICE), ("without", WITHOUT_CONTEXT), ("every_kind", EVERY_KIND)):
        model_dirs[name] = root / name
        result = run_module("trainers.train", f"--data={root / 'corpus'}", f"--model_dir={root / name}", *TRAIN,
                            *flags)
        assert result.returncode == 0, result.stderr[-3000:]
    return model_dirs


def _metrics(model_dir):
    return json.loads((model_dir / "metrics.json").read_text())["model"]


@pytest.mark.slow
def test_the_context_column_that_decides_the_items_raises_held_out_recall(trained):
    with_device, without = _metrics(trained["with_device"]), _metrics(trained["without"])
    for k in (10, 50):
        assert with_device[f"recall_at_{k}"] > 1.3 * without[f"recall_at_{k}"], (with_device, without)
    assert with_device["recall_at_100"] > 0.95  # the device's cluster holds 100 items


@pytest.mark.slow
def test_held_out_queries_read_their_own_rows_context(trained):
    from data import records
    from trainers import held_out, restored_run

    restored = restored_run.restore_model(str(trained["every_kind"]))
    queries = held_out.load_held_out(restored.data)
    rows = records.read_all(restored.corpus.eval_files)  # one held-out row per user
    warm = np.flatnonzero(np.isin(rows["user_id"], queries.user_ids))
    by_user = warm[np.argsort(rows["user_id"][warm])]
    np.testing.assert_array_equal(queries.user_ids, rows["user_id"][by_user])
    for name in ("device", "tags", "price"):
        np.testing.assert_array_equal(queries.context[name], rows[name][by_user])
    assert len(queries.cold.user_ids) > 10
    for name in ("device", "tags", "price", "hour_of_day"):
        assert len(queries.cold.context[name]) == len(queries.cold.user_ids)


@pytest.mark.slow
def test_a_fresh_retrieve_with_context_returns_the_in_memory_top_k(trained):
    import tensorflow as tf

    from retrieval import metrics
    from trainers import restored_run

    model_dir = trained["every_kind"]
    restored = restored_run.restore_model(str(model_dir))
    corpus = restored.corpus
    device, tags, price = corpus.context_columns
    history_keys = ["item205", "item17", "item342"]
    features = {
        "history": tf.constant([[corpus.item_keys.index(key) for key in history_keys]], tf.int64),
        "device": tf.constant([device.keys.index("tv")], tf.int64),
        "tags": tf.constant([[tags.keys.index("a"), tags.keys.index("c")]], tf.int64),
        "price": tf.constant([(3.5 - price.mean) / price.std], tf.float32),
        "hour_of_day": tf.constant([20], tf.int64),
    }
    queries = restored.model.query_embeddings(features).numpy()
    oov = corpus.oov_item_id
    exclude = None if oov is None else np.array([[oov]])
    _, expected = metrics.exact_top_k(queries, restored.model.item_tower.embed_all().numpy(), 10, exclude_ids=exclude)
    export = f"--export_dir={model_dir / 'export'}"
    history = f"--history={','.join(history_keys)}"
    rows = _retrieve_rows(export, history, "--context=device=tv,tags=a|c,price=3.5,hour_of_day=20", "--k=10")
    assert [int(fields[1]) for fields in rows] == expected[0].tolist()
    # Values the model does not know are none, like omitted ones: not an error.
    unknown = _retrieve_rows(export, history, "--context=device=phone,tags=zz|a,hour_of_day=20", "--k=10")
    omitted = _retrieve_rows(export, history, "--context=tags=a,hour_of_day=20", "--k=10")
    assert unknown == omitted
    export_json = json.loads((model_dir / "export" / "1" / "assets.extra" / "export.json").read_text())
    assert export_json["context_columns"] == [{"name": "device", "kind": "categorical"},
                                              {"name": "tags", "kind": "multi"}, {"name": "price", "kind": "numeric"}]


@pytest.mark.slow
@pytest.mark.parametrize(
    "context, expected",
    [
        ("price=cheap", "--context price=cheap: expected a finite number"),
        ("colour=red", "--context colour=red: expected name=value with name one of device, hour_of_day, tags, price"),
        ("hour_of_day=noon", "--context hour_of_day=noon: expected name=integer"),
    ],
)
def test_bad_context_values_are_one_line(trained, context, expected):
    result = run_module("trainers.retrieve", f"--export_dir={trained['every_kind'] / 'export'}", "--history=item1",
                        f"--context={context}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_an_unknown_context_feature_names_the_flag_and_the_corpus_columns(trained):
    corpus = trained["without"].parent / "corpus"
    result = run_module("trainers.train", f"--data={corpus}", f"--model_dir={corpus.parent / 'bad'}", *TRAIN,
                        "--query_features=history,context", "--context_features=device,colour")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("--context_features=device,colour; expected some of hour_of_day, day_of_week, device, tags, price"
            in result.stderr.strip().splitlines()[-1])
