import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_bench_eval_prints_its_table_on_a_tiny_corpus(tmp_path):
    output = tmp_path / "bench_eval.md"
    command = [sys.executable, "scripts/bench_eval.py", "--num_items=20000", "--dim=16", "--k=20", "--num_queries=256",
               "--tfrs_queries=128", "--batch_size=128", "--item_chunk_size=6000", "--repeats=1", f"--output={output}"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines() if line.startswith("| ")}
    for name in ("tf.matmul alone, chunks of 6,000", "tf.matmul alone, whole corpus", "exact top-20 (ours)",
                 "TFRS BruteForce top-20", "ScaNN top-20"):
        assert name in rows, result.stdout
        assert float(rows[name][2].replace(",", "")) > 0  # queries/s
    assert rows["TFRS BruteForce top-20"][4].strip() == "same ids as ours: 1.0000"  # both exact
    assert max(float(rows[name][3].strip(" %")) for name in rows if name.startswith("tf.matmul")) == 100
    recall_10 = float(rows["ScaNN top-20"][4].split("recall@10 ")[1].split(",")[0])
    assert 0.5 <= recall_10 <= 1.0
    document = output.read_text()
    assert "python scripts/bench_eval.py --num_items=20000" in document and "| exact top-20 (ours) |" in document
