"""scripts/compare_tfrs.py on a tiny built-in corpus, checked through the figures it writes (JSON), not the
formatting of its table."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TINY_CORPUS

MODELS = ["most_popular", "tfrs_tutorial", "tfrs_tutorial_sampled", "user_id", "history"]


@pytest.mark.slow
def test_compare_tfrs_ranks_five_models_on_one_protocol(tmp_path):
    output = tmp_path / "compare.json"
    command = [sys.executable, "scripts/compare_tfrs.py", "--data=builtin", f"--work_dir={tmp_path / 'work'}",
               f"--output={output}", "--seed=7", "--tfrs_batch_size=1024", "--",
               *[flag for flag in TINY_CORPUS if not flag.startswith("--seed")], f"--cache_dir={tmp_path / 'cache'}",
               "--epochs=2", "--projector_items=0"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert list(figures["models"]) == MODELS and figures["ks"] == [10, 50, 100] and figures["num_queries"] == 1000
    for name in MODELS:
        values = figures["models"][name]
        recalls = [values[f"recall_at_{k}"] for k in (10, 50, 100)]
        assert recalls == sorted(recalls) and 0.0 <= recalls[0] and recalls[-1] <= 1.0, name
        assert 0.0 < values["mrr"] <= 1.0, name
    models = figures["models"]
    # The project's runs are ranked exactly as the trainer ranked them at the end of training ...
    for name in ("user_id", "history"):
        trainer = json.loads((tmp_path / "work" / name / "metrics.json").read_text())
        if name == "user_id":
            assert models[name]["recall_at_100"] == pytest.approx(trainer["model"]["recall_at_100"], abs=1e-6)
        assert models["most_popular"]["recall_at_50"] == pytest.approx(trainer["most_popular"]["recall_at_50"],
                                                                       abs=1e-6)
    # ... and all four learn something: each beats the most popular items at K=100.
    for name in ("tfrs_tutorial", "tfrs_tutorial_sampled", "user_id", "history"):
        assert models[name]["recall_at_100"] > models["most_popular"]["recall_at_100"], name
