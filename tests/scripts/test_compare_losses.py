"""scripts/compare_losses.py on a tiny corpus: a handful of settings and the drift protocol, checked through the
figures it writes (compare_losses.json), not the formatting of its table."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

# A few of each kind, in the script's order (every trainer run is some 10 s of the suite's budget): the baseline
# the others approximate and a mixed one (the stateful ones are tests/trainers/test_negatives.py's); in the drift
# protocol the streaming estimate, the oracle counts and the counts that stop the run.
SETTINGS = ["full_softmax", "mixed_uniform"]
DRIFT = ["in_batch_streaming", "in_batch_phase_counts", "in_batch_old_counts"]
EPOCHS, STEPS_PER_EPOCH = 2, 10


def run_script(tmp_path, *extra):
    command = [
        sys.executable,
        "scripts/compare_losses.py",
        f"--output_dir={tmp_path / 'out'}",
        f"--work_dir={tmp_path / 'work'}",
        f"--cache_dir={tmp_path / 'cache'}",
        "--num_items=2000",
        "--num_users=1000",
        "--num_interactions=40000",
        "--num_sampled=100",
        "--batch_size=256",
        f"--epochs={EPOCHS}",
        f"--steps_per_epoch={STEPS_PER_EPOCH}",
        "--drift_items=2000",
        "--drift_users=500",
        "--drift_interactions=20000",
        *extra,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compare_losses")
    result = run_script(
        tmp_path, "--data=builtin", f"--only={','.join(SETTINGS)}", "--repeat_seeds=43",
        "--repeat_settings=mixed_uniform", f"--drift_only={','.join(DRIFT)}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "out", json.loads((tmp_path / "out" / "compare_losses.json").read_text())


def _finite_share(value):
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_every_setting_has_finite_recall_positive_speed_and_the_whole_budget(outputs):
    _, figures = outputs
    builtin = figures["datasets"]["builtin"]
    assert builtin["available"] and [row["key"] for row in builtin["rows"]] == SETTINGS
    assert [(row["key"], row["seed"]) for row in builtin["repeats"]] == [("mixed_uniform", 43)]
    for row in builtin["rows"] + builtin["repeats"]:
        for name in ("recall_at_10", "recall_at_50", "recall_at_100", "baseline_recall_at_100"):
            assert _finite_share(row[name]), (row["key"], name, row[name])
        assert row["recall_at_10"] <= row["recall_at_50"] <= row["recall_at_100"]
        assert row["examples_per_second"] > 0 and row["speed_source"].startswith("tensorboard"), row["key"]
        assert row["restored_from_step"] == 0 and row["final_step"] == EPOCHS * STEPS_PER_EPOCH, row["key"]
        assert [step for step, _ in row["curve"]] == [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    # Each row trained what its flags say (the trainer recorded them in its own config.json).
    for row in builtin["rows"]:
        config = json.loads(open(f"{row['model_dir']}/config.json").read())
        flat = {name: value for section in config.values() if isinstance(section, dict) for name, value in section.items()}
        for flag in row["flags"].split():
            name, _, value = flag.lstrip("-").partition("=")
            assert str(flat[name]) == value, (row["key"], flag, flat[name])


@pytest.mark.slow
def test_drift_phase_b_continues_phase_a_on_the_same_model_dir(outputs):
    _, figures = outputs
    drift = figures["drift"]
    assert [row["key"] for row in drift["rows"]] == DRIFT
    phase_steps = (EPOCHS // 2) * STEPS_PER_EPOCH
    directories = drift["corpus"]["directories"]
    for row in drift["rows"]:
        a, b = row["phase_a"], row["phase_b"]
        assert a["restored_from_step"] == 0 and a["final_step"] == phase_steps
        if row["failed"]:  # a phase the trainer stopped is a result, with the trainer's own reason
            assert row["key"] == "in_batch_old_counts" and "step" in row["failed"], row["failed"]
            continue
        assert b["restored_from_step"] == a["final_step"] > 0, row["key"]  # B restored A's checkpoint
        assert b["final_step"] == 2 * phase_steps
        phase_b_dir = directories[{"log": "b", "phase": "b_own", "old": "b_old"}[row["item_counts"]]]
        assert row["config_data_after_b"] == phase_b_dir  # config.json rewritten by the second run
        assert all(_finite_share(run[name]) for run in (a, b) for name in ("recall_at_10", "recall_at_100"))
        assert {step for step, _ in b["curve"]} == {phase_steps, 2 * phase_steps}  # one eval event log, both phases
        assert math.isfinite(row["q_error_top100"]) and row["q_error_top100"] >= 0.0
    oracle = next(row for row in drift["rows"] if row["key"] == "in_batch_phase_counts")
    assert oracle["q_error_top100"] == pytest.approx(0.0, abs=1e-9)  # it reads phase B's own counts


@pytest.mark.slow
def test_drift_corpora_share_ids_and_the_whole_log_counts(outputs):
    from data.corpus import PreparedCorpus
    from data.records import read_all

    _, figures = outputs
    directories = figures["drift"]["corpus"]["directories"]
    corpora = {name: PreparedCorpus.load(path) for name, path in directories.items()}
    assert len({(corpus.num_items, corpus.num_users) for corpus in corpora.values()}) == 1
    train = {name: read_all(corpora[name].train_files)["item_id"] for name in ("a", "b")}
    num_items = corpora["a"].num_items
    counts = {name: np.bincount(ids, minlength=num_items) for name, ids in train.items()}
    np.testing.assert_array_equal(corpora["a"].item_counts, counts["a"] + counts["b"])
    np.testing.assert_array_equal(corpora["b"].item_counts, counts["a"] + counts["b"])
    np.testing.assert_array_equal(corpora["a_own"].item_counts, counts["a"])
    np.testing.assert_array_equal(corpora["b_own"].item_counts, counts["b"])
    np.testing.assert_array_equal(corpora["b_old"].item_counts, counts["a"])
    assert np.all(np.diff(corpora["a"].item_counts) <= 0)  # ids ranked by the whole log's counts
    held_out = {name: read_all(corpus.eval_files) for name, corpus in corpora.items()}
    for name in ("b", "a_own", "b_own", "b_old"):  # every phase evaluates on phase B's held-out rows
        for column in ("user_id", "item_id", "timestamp"):
            np.testing.assert_array_equal(held_out[name][column], held_out["a"][column])
    assert len(np.unique(held_out["a"]["user_id"])) == corpora["a"].num_users  # one row per user
    top_a, top_b = (set(np.argsort(-counts[name], kind="stable")[:100]) for name in ("a", "b"))
    assert len(top_a & top_b) < 50  # the popular items changed between phases


@pytest.mark.slow
def test_table_and_plot_are_written(outputs):
    out, figures = outputs
    table = (out / "compare_losses.md").read_text()
    assert "## Drift" in table and figures["command"].split()[1] == "scripts/compare_losses.py"
    png = (out / "compare_losses.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_an_unknown_setting_key_stops_before_any_run(tmp_path):
    result = run_script(tmp_path, "--only=sampled_softmax,no_such_setting")
    assert result.returncode != 0
    assert "--only=no_such_setting: unknown" in result.stderr
    assert not (tmp_path / "work").exists()
