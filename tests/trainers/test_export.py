"""Export and serving as a user runs them: a keyed log prepared, trained, exported, loaded in fresh processes."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tests.conftest import prepare_csv, run_module, train_on

NUM_USERS, NUM_ITEMS, NUM_TOPICS = 300, 400, 8
TRAIN = ["--batch_size=128", "--num_sampled=100", "--epochs=5", "--learning_rate=0.02", "--embedding_dim=16", "--log_every_steps=20",
         "--projector_items=0", "--seed=3"]
USER_ID_MODEL = ["--query_features=user_id"]  # the user-id signatures of a model whose query is the user's id


def _write_keyed_log(path):
    """Users and items with their own string keys; each user reads items of one topic (learnable)."""
    rng = np.random.default_rng(0)
    lines = ["user,item,ts"]
    for user in range(NUM_USERS):
        topic = user % NUM_TOPICS
        topic_items = np.arange(topic, NUM_ITEMS, NUM_TOPICS)
        for ts, item in enumerate(rng.choice(topic_items, size=12)):
            lines.append(f"user-{user:04d},song:{item:04d},{ts}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    _write_keyed_log(root / "log.csv")
    corpus = prepare_csv(root / "log.csv", root / "corpus", "ts")
    model_dir = root / "model"
    # The trainer exports at the end (--export defaults to true).
    train_on(corpus, model_dir, "--export_top_k=20", *TRAIN, *USER_ID_MODEL)
    export = json.loads((model_dir / "run_summary.json").read_text())["export"]
    return model_dir, export["path"]


LOADER = """
import json, sys
import tensorflow as tf
if sys.argv[2] == "scann":
    import scann  # ScaNN's custom ops, before loading
loaded = tf.saved_model.load(sys.argv[1])
users = json.loads(sys.argv[3])
out = {"signatures": sorted(loaded.signatures.keys())}
serving = loaded.signatures["serving_default"](user_id=tf.constant(users["ids"], tf.int64))
out["item_ids"] = serving["item_ids"].numpy().tolist()
out["scores"] = serving["scores"].numpy().tolist()
if users["keys"]:
    keyed = loaded.signatures["serving_keys"](user_key=tf.constant(users["keys"]))
    out["keyed_item_ids"] = keyed["item_ids"].numpy().tolist()
    out["item_keys"] = [[key.decode() for key in row] for row in keyed["item_keys"].numpy()]
query = loaded.signatures["query_embedding"](user_id=tf.constant(users["ids"], tf.int64))["embedding"]
item = loaded.signatures["item_embedding"](item_id=tf.constant([0, 1], tf.int64))["embedding"]
out["query_embedding"], out["item_embedding"] = query.numpy().tolist(), item.numpy().tolist()
print(json.dumps(out))
"""


def _load_in_fresh_process(version_dir, index, user_ids, user_keys):
    """Plain TensorFlow in a new interpreter: no project import, no TF_USE_LEGACY_KERAS."""
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    users = json.dumps({"ids": user_ids, "keys": user_keys})
    result = subprocess.run([sys.executable, "-c", LOADER, str(version_dir), index, users], cwd="/",
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_savedmodel_in_fresh_process_serves_the_in_memory_top_k(exported):
    import tensorflow as tf

    from retrieval import index, metrics
    from trainers import restored_run

    model_dir, version_dir = exported
    assert version_dir == str(model_dir / "export" / "1")
    assert sorted(os.listdir(model_dir / "export")) == ["1"], "no staging directory left behind"
    assert sorted(os.listdir(os.path.join(version_dir, "assets"))) == ["item_keys.txt", "user_keys.txt"]
    restored = restored_run.restore_model(str(model_dir))
    model, corpus = restored.model, restored.corpus
    user_ids = [0, 5, 17, 123, NUM_USERS - 1]
    queries = model.query_tower(tf.constant(user_ids, tf.int64)).numpy()
    items = model.item_tower.embed_all().numpy()
    scores, ids = metrics.exact_top_k(queries, items, 20)

    served = _load_in_fresh_process(version_dir, "brute_force", user_ids, [corpus.user_keys[u] for u in user_ids])
    assert served["signatures"] == ["item_embedding", "query_embedding", "serving_default", "serving_keys"]
    np.testing.assert_array_equal(served["item_ids"], ids)
    np.testing.assert_allclose(served["scores"], scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(served["keyed_item_ids"], ids)
    assert served["item_keys"] == [[corpus.item_keys[i] for i in row] for row in ids]
    np.testing.assert_allclose(served["query_embedding"], queries, rtol=1e-6)
    np.testing.assert_allclose(served["item_embedding"], items[:2], rtol=1e-6)
    # The model learned the topics: most of a user's top items are of its topic (1 in 8 by chance).
    topics = np.array([[int(corpus.item_keys[i][5:]) % NUM_TOPICS for i in row[:10]] for row in ids])
    assert np.mean(topics == (np.array(user_ids) % NUM_TOPICS)[:, None]) > 0.5

    # A ScaNN version is the next number and serves nearly the same items once `import scann` ran.
    result = run_module("trainers.export", f"--model_dir={model_dir}", "--k=20", "--index=scann")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(model_dir / "export")) == ["1", "2"]
    approximate = _load_in_fresh_process(model_dir / "export" / "2", "scann", user_ids, [])
    assert index.recall_against_exact(np.array(approximate["item_ids"])[:, :10], ids[:, :10]) >= 0.9


@pytest.mark.slow
def test_retrieve_prints_the_top_k_with_the_users_own_keys(exported):
    model_dir, version_dir = exported
    answer_path = model_dir / "retrieve-user-0005.json"
    result = run_module("trainers.retrieve", f"--export_dir={model_dir / 'export'}", "--user_id=user-0005", "--k=3",
                        f"--output_json={answer_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "item", "id", "item", "key", "score"]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert all(row[2] == f"song:{int(row[2][5:]):04d}" for row in rows)
    scores = [float(row[3]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    # --output_json holds the same answer, unrounded, with the version it read (the newest) and the query.
    answer = json.loads(answer_path.read_text())
    newest = max(int(name) for name in os.listdir(model_dir / "export"))
    assert answer["export_dir"] == str(model_dir / "export" / str(newest))
    assert answer["k"] == 3 and answer["query"] == {"user_id": "user-0005"}
    assert [[str(item["rank"]), str(item["item_id"]), item["item_key"], f"{item['score']:.4f}"]
            for item in answer["items"]] == rows


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--user_id=user-9999"], "--user_id=user-9999: not in the user vocabulary (300 users)"),
        (["--user_id=user-0001", "--k=21"], "--k=21 exceeds the 20 items per query this version was exported with"),
        (["--user_id=user-0001", "--k=401"], "--k=401 exceeds the corpus size 400"),
        (["--user_id=user-0001", "--export_dir=MISSING"], "no such directory"),
        (["--user_id=user-0001", "--export_dir=CORRUPT"], "cannot load the SavedModel"),
    ],
)
def test_retrieve_errors_are_one_clear_line(exported, tmp_path, args, expected):
    model_dir, version_dir = exported
    corrupt = tmp_path / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"not a protobuf")
    (corrupt / "assets.extra").mkdir()
    (corrupt / "assets.extra" / "export.json").write_text(open(os.path.join(version_dir, "assets.extra", "export.json")).read())
    paths = {"MISSING": str(tmp_path / "missing"), "CORRUPT": str(tmp_path / "corrupt")}
    args = [f"--export_dir={paths[arg.split('=')[1]]}" if arg.startswith("--export_dir") else arg for arg in args]
    if not any(arg.startswith("--export_dir") for arg in args):
        args.append(f"--export_dir={version_dir}")
    result = run_module("trainers.retrieve", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_failed_exports_are_one_clear_line_and_leave_no_version(exported, tmp_path):
    model_dir, _ = exported
    before = sorted(os.listdir(model_dir / "export"))
    result = run_module("trainers.export", f"--model_dir={model_dir}", "--k=401")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "export top-K k=401 must be between 1 and the corpus size 400" in result.stderr
    assert sorted(os.listdir(model_dir / "export")) == before
    result = run_module("trainers.export", f"--model_dir={tmp_path / 'nothing'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no config.json" in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "nothing" / "export")


# A history model: users the model never trained are served from their recent items.

HISTORY_TRAIN = [*TRAIN, "--query_features=history", "--cold_users=0.2", "--export_top_k=20"]


@pytest.fixture(scope="module")
def history_export(tmp_path_factory):
    """The keyed log with rare items folded into `<oov>` (--min_item_count=6), a history model, 20% cold users."""
    root = tmp_path_factory.mktemp("history_export")
    _write_keyed_log(root / "log.csv")
    corpus = prepare_csv(root / "log.csv", root / "corpus", "ts", "--min_item_count=6")
    model_dir = root / "model"
    train_on(corpus, model_dir, *HISTORY_TRAIN)
    return model_dir


def _retrieve_rows(*args):
    """[[rank, item id, item key, score]] of a trainers.retrieve run, from its --output_json; scores to 4 decimals
    (as it prints them), so that two answers compare equal by their ranking, with scores to 1e-4."""
    with tempfile.TemporaryDirectory() as directory:
        answer_path = os.path.join(directory, "answer.json")
        result = run_module("trainers.retrieve", *args, f"--output_json={answer_path}")
        assert result.returncode == 0, result.stderr[-3000:]
        with open(answer_path) as file:
            answer = json.load(file)
    return [[item["rank"], item["item_id"], item["item_key"], round(item["score"], 4)] for item in answer["items"]]


@pytest.mark.slow
def test_a_user_not_in_training_gets_the_in_memory_top_k_from_the_export_by_history(history_export):
    import tensorflow as tf

    from retrieval import metrics
    from trainers import held_out, restored_run

    model_dir = history_export
    restored = restored_run.restore_model(str(model_dir))
    corpus, oov = restored.corpus, restored.corpus.oov_item_id
    assert oov is not None, "the corpus has an <oov> bucket to leave out"
    cold = held_out.load_held_out(restored.data).cold
    assert len(cold.user_ids) >= 50
    items = restored.model.item_tower.embed_all().numpy()
    for row in range(3):
        history = cold.history[row][cold.history[row] >= 0]
        queries = restored.model.query_embeddings({"history": tf.constant([history], tf.int64)}).numpy()
        _, expected = metrics.exact_top_k(queries, items, 20, exclude_ids=np.array([[oov]]))
        keys = [corpus.item_keys[item] for item in history]
        rows = _retrieve_rows(f"--export_dir={model_dir / 'export'}", f"--history={','.join(keys)}", "--k=20")
        assert [int(fields[1]) for fields in rows] == expected[0].tolist()
        assert [fields[2] for fields in rows] == [corpus.item_keys[item] for item in expected[0]]
    # Unknown keys are ignored; an empty history is an answer too; the <oov> bucket is never returned.
    keys = [corpus.item_keys[item] for item in cold.history[0][cold.history[0] >= 0]]
    unknown = ["nope", keys[0], "song:9999", *keys[1:]]
    with_unknown = _retrieve_rows(f"--export_dir={model_dir / 'export'}", f"--history={','.join(unknown)}", "--k=20")
    plain = _retrieve_rows(f"--export_dir={model_dir / 'export'}", f"--history={','.join(keys)}", "--k=20")
    assert with_unknown == plain
    empty = _retrieve_rows(f"--export_dir={model_dir / 'export'}", "--history=", "--k=20")
    assert len(empty) == 20
    for rows in (plain, empty):
        assert "<oov>" not in [fields[2] for fields in rows]


@pytest.mark.slow
def test_history_exports_answer_known_users_from_their_latest_history(history_export):
    import tensorflow as tf

    from retrieval import metrics
    from trainers import restored_run, training_input

    model_dir = history_export
    restored = restored_run.restore_model(str(model_dir))
    latest = training_input.latest_histories(restored.data)
    warm_user = int(np.flatnonzero((latest >= 0).any(axis=1))[0])
    queries = restored.model.query_embeddings({"history": tf.constant(latest[[warm_user]])}).numpy()
    oov = restored.corpus.item_keys.index("<oov>")
    _, expected = metrics.exact_top_k(queries, restored.model.item_tower.embed_all().numpy(), 5,
                                      exclude_ids=np.array([[oov]]))
    rows = _retrieve_rows(f"--export_dir={model_dir / 'export'}", f"--user_id={restored.corpus.user_keys[warm_user]}",
                          "--k=5")
    assert [int(fields[1]) for fields in rows] == expected[0].tolist()
    export_json = json.loads((model_dir / "export" / "1" / "assets.extra" / "export.json").read_text())
    assert export_json["has_history"] and export_json["query_features"] == ["history"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--history=song:0001", "--user_id=user-0001"], "give --user_id or --history (one of them)"),
        (["--history=song:0001", "--context=hour=3"], "--context hour=3: expected name=value with name one of (none)"),
    ],
)
def test_history_retrieval_errors_are_one_line(history_export, args, expected):
    result = run_module("trainers.retrieve", f"--export_dir={history_export / 'export'}", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_history_needs_a_history_model(exported):
    model_dir, version_dir = exported
    result = run_module("trainers.retrieve", f"--export_dir={version_dir}", "--history=song:0001")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not read a history" in result.stderr.strip().splitlines()[-1]
