"""--keep_best=METRIC keeps and exports the checkpoint of the epoch with the best validation metric, not the last;
--early_stopping_patience stops training after that many epochs without a better one; the test split is read
once, for the chosen model (without a validation split, the epoch is chosen on the test split, and metrics.json
says so). Read from run_summary.json, metrics.json, best.json, the eval TensorBoard and the export's metadata."""

import json
import os

import pytest

from tests.conftest import TINY_CORPUS, run_module
from trainers.event_reader import read_scalars

# At this learning rate the user-id model's recall@10 on the tiny corpus peaks after the first epoch (152 steps)
# and then falls (the history model, the default, keeps improving: it would not overfit here).
OVERFITS = [*TINY_CORPUS, "--projector_items=0", "--learning_rate=0.03", "--epochs=6", "--export_top_k=10",
            "--query_features=user_id"]
KEEP_BEST = ["--keep_best=recall_at_10", "--early_stopping_patience=2"]


@pytest.mark.slow
def test_keep_best_exports_the_best_epoch_and_early_stopping_ends_the_run(tmp_path):
    model_dir = tmp_path / "model"
    where = [f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}"]
    trained = run_module("trainers.train", *where, *OVERFITS, *KEEP_BEST)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr
    summary = json.loads((model_dir / "run_summary.json").read_text())
    recall = dict(read_scalars(str(model_dir / "tensorboard" / "eval"))["recall_at_10"])  # {step: value}
    best = summary["best"]
    assert best["metric"] == "recall_at_10" and best["value"] == pytest.approx(max(recall.values()), abs=1e-6)
    assert best["step"] == max(recall, key=recall.get) < max(recall), "the best epoch is not the last one"
    assert summary["stopped_early"] is True
    assert summary["stopped_early_at"]["epoch"] == best["epoch"] + 2 == len(recall), "2 epochs without a better one"
    assert summary["final_step"] == summary["stopped_early_at"]["step"] < 6 * 152
    assert summary["export"]["step"] == best["step"]
    assert os.path.samefile(summary["export"]["path"], model_dir / "export" / "1")
    exported = json.loads((model_dir / "export" / "1" / "assets.extra" / "export.json").read_text())
    assert exported["checkpoint"].endswith(f"best/ckpt-{best['step']}"), "the best checkpoint, not the last"
    # The epoch is chosen on the validation split (the built-in corpus's, one row per user): the eval curves and
    # best.json are its figures; metrics.json's "model" is the test split's, read once for the chosen model.
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["keep_best"] == {"metric": "recall_at_10", "epoch": best["epoch"], "split": "validation"}
    assert metrics["validation"]["model"] == pytest.approx(best["metrics"], abs=1e-9), "the chosen epoch's"
    kept = json.loads((model_dir / "checkpoints" / "best" / "best.json").read_text())
    assert kept["metrics"] == best["metrics"] and kept["value"] == best["metrics"]["recall_at_10"]
    assert metrics["model"]["recall_at_10"] != pytest.approx(best["value"], abs=1e-6), "test is not validation"
    assert set(metrics["model"]) == set(metrics["validation"]["model"])

    # Run again: it resumes after the early stop, and the best so far (checkpoints/best/best.json) still counts.
    again = run_module("trainers.train", *where, *OVERFITS, *KEEP_BEST)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((model_dir / "run_summary.json").read_text())
    assert resumed["restored_from_step"] == summary["final_step"]
    assert resumed["best"]["step"] == best["step"] and resumed["export"]["step"] == best["step"]


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        (["--early_stopping_patience=2"], {}, "--early_stopping_patience=2 needs --keep_best"),
        (["--keep_best=recall_at_7"], {}, "--keep_best=recall_at_7: not a held-out metric of this run"),
        (["--keep_best=recall_at_10", "--strategy=multi_worker"],
         {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:2000", "127.0.0.1:2001"]},
                                   "task": {"type": "worker", "index": 0}})},
         "--keep_best=recall_at_10 does not run under --strategy=multi_worker"),
    ],
)
def test_keep_best_settings_that_cannot_work_stop_with_one_line(tmp_path, flags, env, expected):
    result = run_module("trainers.train", f"--model_dir={tmp_path / 'model'}", f"--cache_dir={tmp_path / 'cache'}",
                        *OVERFITS, *flags, env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "model" / "checkpoints").exists()


def test_without_a_validation_split_the_epoch_is_chosen_on_the_test_split_and_metrics_json_says_so(tmp_path):
    model_dir = tmp_path / "model"
    trained = run_module("trainers.train", f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}",
                         *TINY_CORPUS, "--validation_per_user=0", "--keep_best=recall_at_10", "--epochs=2",
                         "--steps_per_epoch=5", "--noexport", "--projector_items=0")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stderr.count("the epoch is chosen on the test split") == 1  # one warning line
    metrics = json.loads((model_dir / "metrics.json").read_text())
    best = json.loads((model_dir / "checkpoints" / "best" / "best.json").read_text())
    assert metrics["split"] == "test" and "validation" not in metrics
    assert metrics["keep_best"] == {"metric": "recall_at_10", "epoch": best["epoch"], "split": "test"}
    assert metrics["model"] == pytest.approx(best["metrics"], abs=1e-9)  # chosen on these very figures
