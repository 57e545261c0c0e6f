"""scripts/compare_tfrs.py on a tiny built-in corpus, checked through the figures it writes (JSON), not the
formatting of its table."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TINY_CORPUS

MODELS = ["most_popular", "tfrs_tutorial", "tfrs_tutorial_sampled", "user_id", "history", "item_transitions", "ease",
          "item_knn"]


@pytest.mark.slow
def test_compare_tfrs_ranks_five_models_and_three_baselines_under_both_protocols(tmp_path):
    output = tmp_path / "compare.json"
    command = [sys.executable, "scripts/compare_tfrs.py", "--data=builtin", f"--work_dir={tmp_path / 'work'}",
               f"--output={output}", "--seeds=7", "--tfrs_batch_size=1024", "--ease_l2=10,1000",
               "--knn_neighbours=20,200", "--knn_shrink=0,10", "--",
               *[flag for flag in TINY_CORPUS if not flag.startswith("--seed")], f"--cache_dir={tmp_path / 'cache'}",
               "--epochs=2", "--projector_items=0"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert figures["ks"] == [10, 50, 100] and figures["seeds"] == [7] and list(figures["protocols"]) == [
        "seen", "exclude_seen"]
    for protocol, by_protocol in figures["protocols"].items():
        assert list(by_protocol["models"]) == MODELS and by_protocol["num_queries"] == 1000
        for name in MODELS:
            row = by_protocol["models"][name]
            assert len(row["runs"]) == 1 and row["mean"] == row["low"] == row["high"] == row["runs"][0], name
            recalls = [row["mean"][f"recall_at_{k}"] for k in (10, 50, 100)]
            assert recalls == sorted(recalls) and 0.0 <= recalls[0] and recalls[-1] <= 1.0, (protocol, name)
            assert 0.0 < row["mean"]["mrr"] <= 1.0, (protocol, name)
    models = {name: row["mean"] for name, row in figures["protocols"]["seen"]["models"].items()}
    # The project's runs are ranked exactly as the trainer ranked them at the end of training ...
    for name in ("user_id", "history"):
        trainer = json.loads((tmp_path / "work" / f"{name}-seed7" / "metrics.json").read_text())
        if name == "user_id":
            assert models[name]["recall_at_100"] == pytest.approx(trainer["model"]["recall_at_100"], abs=1e-6)
        assert models["most_popular"]["recall_at_50"] == pytest.approx(trainer["most_popular"]["recall_at_50"],
                                                                       abs=1e-6)
    # ... and all four learn something: each beats the most popular items at K=100.
    for name in ("tfrs_tutorial", "tfrs_tutorial_sampled", "user_id", "history"):
        assert models[name]["recall_at_100"] > models["most_popular"]["recall_at_100"], name
    # The second protocol is another ranking: the built-in corpus's users come back to items they met, so leaving
    # them out costs popularity most of its hits.
    excluded = figures["protocols"]["exclude_seen"]["models"]
    assert excluded["most_popular"]["mean"]["recall_at_100"] < models["most_popular"]["recall_at_100"] - 0.1
    # The dense baselines' settings: the best of their grids (trimmed by the flags, to stay cheap) on the corpus's
    # validation split (a query per user), the queries reading each user's whole training history.
    settings = figures["protocols"]["seen"]["baselines"]
    assert settings["selected_by"] == "ndcg_at_100" and settings["validation_queries"] == 1000
    assert settings["validation_split"] == "the corpus's"
    assert settings["history_length"] >= 38  # 38,000 training rows over 1,000 users: the longest has the mean
    ease, knn = settings["ease"], settings["item_knn"]
    assert list(ease["grid"]) == ["10.0", "1000.0"] and ease["grid"][str(ease["l2"])] == max(ease["grid"].values())
    assert list(knn["grid"]) == ["20/0.0", "20/10.0", "200/0.0", "200/10.0"]
    assert knn["grid"][f"{knn['num_neighbours']}/{knn['shrink']}"] == max(knn["grid"].values())
    # The built-in corpus's users follow tastes that item co-occurrence reads: every baseline beats popularity.
    for name in ("item_transitions", "ease", "item_knn"):
        assert models[name]["recall_at_100"] > models["most_popular"]["recall_at_100"] + 0.1, name
    # The table's last line, the history model over the best baseline at each K, is in the figures too.
    for protocol, by_protocol in figures["protocols"].items():
        means = {name: row["mean"] for name, row in by_protocol["models"].items()}
        for name in ("recall_at_10", "recall_at_50", "recall_at_100"):
            best = by_protocol["best_baseline"][name]
            assert best in ("most_popular", "item_transitions", "ease", "item_knn"), (protocol, name)
            assert means[best][name] == max(means[row][name] for row in ("most_popular", "item_transitions", "ease",
                                                                         "item_knn"))
            assert by_protocol["history_over_best_baseline"][name] == pytest.approx(
                means["history"][name] / means[best][name]), (protocol, name)


def test_compare_tfrs_refuses_several_seeds_of_the_built_in_corpus(tmp_path):
    result = subprocess.run([sys.executable, "scripts/compare_tfrs.py", "--data=builtin", "--seeds=1,2",
                             f"--work_dir={tmp_path}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "--data=builtin takes one of --seeds=1,2" in result.stderr
