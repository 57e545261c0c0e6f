"""One run configuration: flags -> RunConfig -> config.json / flags.txt -> back, and config.json files written
before the format existed."""

import dataclasses
import json
import os

import pytest

from tests.conftest import TINY_CORPUS, run_module
from trainers import callbacks, run_config

BEFORE_FORMAT = os.path.join(os.path.dirname(__file__), "data", "config_before_format.json")


def _legacy_document(model_dir="runs/x", cache_dir="cache"):
    """A config.json as the trainer wrote it before run_config.FORMAT (captured from that version)."""
    text = open(BEFORE_FORMAT).read().replace("MODEL_DIR", str(model_dir)).replace("CACHE_DIR", str(cache_dir))
    return json.loads(text)


def test_json_round_trip_keeps_every_setting():
    config = run_config.RunConfig(
        seed=3,
        model=run_config.ModelConfig(embedding_dim=8, hidden_dims=(32, 16), normalize=True),
        loss=dataclasses.replace(run_config.RunConfig().loss, loss="nce", num_sampled=7, nce_log_partition=2.5),
        evaluation=run_config.EvaluationConfig(eval_top_k=(5, 20)),
        logging=run_config.LoggingConfig(profile_steps=(2, 4)),
    )
    document = json.loads(run_config.to_json(config, "runs/a", "a corpus"))
    assert document["format"] == run_config.FORMAT and document["loss"]["num_sampled"] == 7
    assert "seed" not in document["loss"] and config.loss.seed == 3, "one seed per run, at the top"
    assert run_config.from_dict(document) == config


def test_model_defining_differences_name_each_flag_and_let_a_later_log_go_on():
    base = run_config.RunConfig()
    data = lambda path: dataclasses.replace(base, data=dataclasses.replace(base.data, data=path))  # noqa: E731
    encoder = dataclasses.replace(base, model=dataclasses.replace(base.model, history_encoder="mean"))
    assert run_config.model_defining_differences(base, encoder) == (("history_encoder", "weighted_mean", "mean"),)
    assert run_config.model_defining_differences(base, dataclasses.replace(base, seed=base.seed + 1)) == (
        ("seed", base.seed, base.seed + 1),)
    assert run_config.model_defining_differences(base, data("movielens")) == (("data", "builtin", "movielens"),)
    assert run_config.model_defining_differences(data("/logs/june"), data("movielens")) == (
        ("data", "/logs/june", "movielens"),)
    # A later log of the same catalogue is incremental training (the restore refuses tables of other sizes).
    assert run_config.model_defining_differences(data("/logs/june"), data("/logs/july")) == ()


def test_config_written_before_the_format_still_loads():
    config = run_config.from_dict(_legacy_document())
    assert config.seed == 7 and config.loss.seed == 7
    assert config.loss.num_sampled == 200 and config.loss.loss == "sampled_softmax"
    assert config.evaluation.eval_top_k == (10, 50, 100), "list flags were saved as strings"
    assert config.optimization.batch_size == 256 and config.data.num_items == 2000
    # Settings it predates: the loss's take their defaults, the built-in corpus the values of its time.
    assert config.loss.mixed_corpus_sampler == "log_uniform" and config.loss.unigram_distortion == 0.75
    assert config.data.taste_drift == 0.0 and config.data.session_timestamps is False
    assert config.model.query_features == ("user_id", "user_features") and config.data.cold_users == 0.0


def test_config_written_before_the_query_features_loads_as_the_user_id_model():
    document = json.loads(run_config.to_json(run_config.RunConfig(), "runs/a", ""))
    for section, names in run_config.PREDATED_SETTINGS.items():
        for name in names:
            del document[section][name]
    config = run_config.from_dict(document)
    assert config.model.query_features == ("user_id", "user_features")
    assert config.data.history_length == 50 and config.model.share_item_embeddings is True


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda doc: doc["loss"].update(num_sampeld=3), "unknown key loss.num_sampeld"),
        (lambda doc: doc["loss"].pop("num_sampled"), "missing key loss.num_sampled"),
        (lambda doc: doc.update(optimisation={}), "unknown key optimisation"),
        (lambda doc: doc.pop("model"), "missing key model"),
        (lambda doc: doc.update(format="retrieval-run/9"), "format 'retrieval-run/9'"),
    ],
)
def test_unknown_or_missing_keys_are_named(edit, message):
    document = json.loads(run_config.to_json(run_config.RunConfig(), "runs/a", ""))
    edit(document)
    with pytest.raises(run_config.ConfigError, match=message):
        run_config.from_dict(document, "config.json")


def test_callbacks_come_in_the_fixed_order(tmp_path):
    import tensorflow as tf

    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path), max_to_keep=1)
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    ordered = ["TensorBoard", "ThroughputCallback", "NanGuard", "BackupAndRestore", "CheckpointCallback"]
    # A task of a distributed job logs its steps (ProgressLogger) first; a local run has its epoch lines instead.
    for task_name, expected in (("worker 1", ["ProgressLogger", *ordered]), ("local", ordered)):
        settings = callbacks.CallbackSettings(task_name, 10, 5, 5, 32, tensorboard_dir=str(tmp_path),
                                              backup_dir=str(tmp_path / "backup"))
        names = [type(callback).__name__ for callback in callbacks.make_callbacks(settings, manager, writer)]
        assert names == expected, task_name


TINY = [*TINY_CORPUS, "--epochs=1", "--steps_per_epoch=20", "--projector_items=0"]


@pytest.mark.slow
def test_flagfile_reproduces_the_run(tmp_path):
    first = run_module("trainers.train", f"--model_dir={tmp_path / 'a'}", f"--cache_dir={tmp_path / 'cache'}",
                       *TINY, "--noexport", "--loss=nce", "--hidden_dims=32", "--eval_top_k=5,20")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_module("trainers.train", f"--flagfile={tmp_path / 'a' / 'flags.txt'}", f"--model_dir={tmp_path / 'b'}")
    assert again.returncode == 0, again.stderr[-3000:]
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in "ab"]
    for config in configs:
        config.pop("model_dir")
    assert configs[0] == configs[1] and configs[0]["loss"]["loss"] == "nce"
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text())["model"] for name in "ab"]
    assert metrics[0]["recall_at_20"] == pytest.approx(metrics[1]["recall_at_20"], abs=1e-6), "same seed, same run"


@pytest.mark.slow
def test_model_dir_from_before_the_format_evaluates_and_exports(tmp_path):
    """A run whose config.json is in the old flat form (and whose corpus is the built-in corpus of that time)."""
    model_dir = tmp_path / "model"
    trained = run_module("trainers.train", f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}",
                         *TINY_CORPUS, "--epochs=1", "--projector_items=0", "--noexport", "--taste_drift=0",
                         "--nosession_timestamps", "--query_features=user_id,user_features",
                         "--validation_per_user=0", "--nonormalize", "--temperature=1")  # the model and corpus of that time
    assert trained.returncode == 0, trained.stderr[-3000:]
    legacy = _legacy_document(model_dir, tmp_path / "cache")
    (model_dir / "config.json").write_text(json.dumps(legacy))
    evaluated = run_module("trainers.evaluate", f"--model_dir={model_dir}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    step = json.loads((model_dir / "run_summary.json").read_text())["final_step"]
    report = json.loads((model_dir / "evaluation" / f"step-{step}.json").read_text())
    trainer = json.loads((model_dir / "metrics.json").read_text())["model"]
    assert report["metrics"]["recall_at_100"] == pytest.approx(trainer["recall_at_100"], abs=1e-6)
    exported = run_module("trainers.export", f"--model_dir={model_dir}", "--k=10")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (model_dir / "export" / "1" / "saved_model.pb").exists()
