"""scripts/bench.py end to end on a tiny corpus: every row measured, the figures it writes hold together."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_bench_measures_every_row_against_the_peers(tmp_path):
    output = tmp_path / "benchmarks.md"
    command = [
        sys.executable, "scripts/bench.py", "--sizes=3000", "--num_users=500", "--num_interactions=20000",
        "--num_sampled=100", "--batch_size=256", "--steps=15", "--warmup_steps=5", "--dense_steps=2",
        "--repeats=2", "--trainer_variants=,--loss=in_batch", f"--cache_dir={tmp_path / 'cache'}",
        f"--output={output}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "benchmarks.json").read_text())
    rows = figures["sizes"]["3000"]
    assert set(rows) == {"trainer: defaults (sampled_softmax, lazy_adam)", "trainer: --loss=in_batch",
                         "tf.nn + Adagrad, cached", "TFRS in-batch Retrieval", "matmul limit"}
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        assert row["repeats"] == 2 and len(row["all"]) == 2
        assert 0 < row["low"] <= row["examples_per_second"] <= row["high"], name
        assert row["peak_bytes"] > 100 * 2**20, name  # a TensorFlow process's resident memory, in bytes
    limit = rows["matmul limit"]["examples_per_second"]
    assert all(row["examples_per_second"] < limit for name, row in rows.items() if name != "matmul limit")
    parts = figures["breakdown"]["3000"]
    assert parts["whole trainer step"] > 0 and all(value > 0 for name, value in parts.items()
                                                   if not name.startswith("rest"))
    assert sum(value for name, value in parts.items() if name != "whole trainer step") == pytest.approx(
        parts["whole trainer step"], rel=1e-6)
    assert "| 3,000 | trainer: --loss=in_batch |" in output.read_text()


def test_report_puts_the_history_model_beside_the_user_id_model():
    sys.path.insert(0, f"{REPO_ROOT}/scripts")
    import bench_report

    def row(*speeds):
        return {"examples_per_second": sorted(speeds)[1], "low": min(speeds), "high": max(speeds), "all": list(speeds),
                "peak_bytes": 2**30, "repeats": 3}

    rows = {bench_report.USER_ID_DEFAULTS: row(100.0, 110.0, 90.0),
            "trainer: --query_features=history --history_length=50": row(60.0, 55.0, 54.0)}
    lines = bench_report._history_lines({1_000_000: rows})
    assert lines[1] == ("- 1,000,000 items: the history model trains at 55 examples/s, 0.60x (0.50-0.60) of the "
                        "user-id model's 100")


def test_share_of_the_matmul_limit_is_the_median_of_the_per_repeat_shares():
    sys.path.insert(0, f"{REPO_ROOT}/scripts")
    import bench_report

    trainer, limit = {"all": [300.0, 250.0, 360.0]}, {"all": [1000.0, 1000.0, 900.0]}  # shares 30%, 25%, 40%
    assert bench_report.share_with_spread(trainer, limit) == "30% (25-40%)"
    assert bench_report.share_with_spread(trainer, {}) is None
