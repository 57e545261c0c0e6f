"""scripts/bench_eval.py on a small corpus, checked through the figures it writes (--output_json), not the
formatting of its printed table; the markdown document of --output is checked for the command and the table."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_bench_eval_measures_every_method_on_a_tiny_corpus(tmp_path):
    output, figures_path = tmp_path / "bench_eval.md", tmp_path / "bench_eval.json"
    command = [sys.executable, "scripts/bench_eval.py", "--num_items=20000", "--dim=16", "--k=20", "--num_queries=256",
               "--tfrs_queries=128", "--batch_size=128", "--item_chunk_size=6000", "--repeats=1", f"--output={output}",
               f"--output_json={figures_path}"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    rows = {row["method"]: row for row in figures["rows"]}
    assert list(rows) == ["matmul_chunks", "matmul_whole", "ours", "tfrs", "scann"]
    assert [row["label"] for row in figures["rows"]] == [
        "tf.matmul alone, chunks of 6,000", "tf.matmul alone, whole corpus", "exact top-20 (ours)",
        "TFRS BruteForce top-20", "ScaNN top-20"]
    assert figures["setup"]["num_items"] == 20000 and figures["setup"]["k"] == 20
    assert [rows[name]["queries"] for name in rows] == [256, 256, 256, 128, 256]
    for name, row in rows.items():
        assert row["queries_per_second"] > 0 and row["best_pass_seconds"] > 0, name
        assert row["queries_per_second"] == pytest.approx(row["queries"] / row["best_pass_seconds"])
    assert rows["tfrs"]["same_ids_as_ours"] == 1.0  # both exact
    # The roofline is the better of the two matmul layouts: it is at 100% of itself.
    assert max(rows[name]["percent_of_roofline"] for name in ("matmul_chunks", "matmul_whole")) == pytest.approx(100)
    assert figures["roofline"]["gflops"] == pytest.approx(max(rows[name]["gflops"]
                                                              for name in ("matmul_chunks", "matmul_whole")))
    assert 0.5 <= rows["scann"]["recall_at_10"] <= 1.0 and 0.0 < rows["scann"]["recall_at_k"] <= 1.0
    assert rows["scann"]["build_seconds"] > 0
    assert figures["command"].startswith("python scripts/bench_eval.py --num_items=20000")
    document = output.read_text()
    assert figures["command"] in document and "| exact top-20 (ours) |" in document
