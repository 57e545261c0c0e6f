"""docs/benchmarks.md from scripts/bench.py's measurements: the table, the ratios to the peers with their spread,
and the step's CPU breakdown."""

import statistics
from typing import Dict, List, Optional

PEER = "tf.nn + Adagrad, cached"
TFRS = "TFRS in-batch Retrieval"
MATMUL = "matmul limit"
SLOTS = {"lazy_adam": 2, "adam": 2, "adagrad": 1, "sgd": 0}  # optimizer slots per embedding row


def _per_repeat_ratios(row: Dict, reference: Dict) -> List[float]:
    """Sorted ratios of repeat i of row to repeat i of reference (repeats were interleaved, so repeat i of both
    rows ran at nearly the same time)."""
    mine, theirs = row.get("all"), reference.get("all")
    return sorted(a / b for a, b in zip(mine or [], theirs or []) if a and b)


def ratio_with_spread(row: Dict, reference: Dict) -> Optional[str]:
    """'1.23x (1.10-1.31)': the median of the per-repeat ratios and their range."""
    ratios = _per_repeat_ratios(row, reference)
    if not ratios:
        return None
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def share_with_spread(row: Dict, limit: Dict) -> Optional[str]:
    """'36% (28-38%)': the row's share of the matmul limit, median of the per-repeat shares and their range."""
    ratios = _per_repeat_ratios(row, limit)
    if not ratios:
        return None
    return f"{100 * statistics.median(ratios):.0f}% ({100 * ratios[0]:.0f}-{100 * ratios[-1]:.0f}%)"


def _optimizer_of(name: str) -> str:
    if name in (PEER, TFRS):
        return "adagrad"
    return "adagrad" if "--optimizer=adagrad" in name else "lazy_adam"


def table_bytes(num_items: int, name: str, dim: int) -> int:
    """The item table plus its optimizer slots, float32."""
    return (1 + SLOTS[_optimizer_of(name)]) * num_items * dim * 4


def _row(num_items: int, name: str, row: Dict, rows: Dict, dim: int) -> str:
    if "error" in row:
        return f"| {num_items:,} | {name} | failed: {row['error']} | | | | | |"
    speed = f"{row['examples_per_second']:,.0f} ({row['low']:,.0f}-{row['high']:,.0f})"
    versus_peer = ratio_with_spread(row, rows.get(PEER, {})) if name != PEER and "trainer" in name else ""
    versus_tfrs = ratio_with_spread(row, rows.get(TFRS, {})) if "in_batch" in name else ""
    share = share_with_spread(row, rows.get(MATMUL, {})) if name != MATMUL else ""
    peak = row["peak_bytes"]
    memory = f"{peak / 2**30:.2f} GiB" if name != MATMUL else ""
    per_table = f"{peak / table_bytes(num_items, name, dim):.2f}" if name != MATMUL else ""
    return (f"| {num_items:,} | {name} | {speed} | {versus_peer or ''} | {versus_tfrs or ''} | {share or ''} | "
            f"{memory} | {per_table} |")


def _breakdown_lines(breakdown: Optional[Dict]) -> List[str]:
    if not breakdown:
        return []
    sizes = sorted(breakdown)
    lines = ["", "## Where a step's time goes", "",
             "CPU milliseconds per trainer step (sampled softmax, lazy Adam), TensorFlow on one thread, each part "
             "timed on its own over the same shapes (scripts/profile_step.py):", "",
             "| part | " + " | ".join(f"{size:,} items" for size in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    parts = [part for part in breakdown[sizes[0]] if part != "error"]
    for part in parts:
        values = [breakdown[size].get(part) for size in sizes]
        lines.append(f"| {part} | " + " | ".join(f"{value:.2f}" if value is not None else "" for value in values)
                     + " |")
    return lines


USER_ID_DEFAULTS = "trainer: defaults (sampled_softmax, lazy_adam)"
HISTORY = "trainer: --query_features=history"  # the start of the history model's row name


def _history_lines(sizes: Dict[int, Dict[str, Dict]]) -> List[str]:
    """One line per size: the history model's throughput as a share of the user-id model's (same run)."""
    lines = []
    for num_items, rows in sizes.items():
        history = next((row for name, row in rows.items() if name.startswith(HISTORY) and "error" not in row), None)
        user_id = rows.get(USER_ID_DEFAULTS, {})
        if history is None or "error" in user_id or not user_id:
            continue
        lines.append(f"- {num_items:,} items: the history model trains at {history['examples_per_second']:,.0f} "
                     f"examples/s, {ratio_with_spread(history, user_id)} of the user-id model's "
                     f"{user_id['examples_per_second']:,.0f}")
    return [""] + lines if lines else []


def markdown(sizes: Dict[int, Dict[str, Dict]], breakdown: Optional[Dict], command: str, flag_values) -> str:
    lines = ["| items | row | examples/s: median (min-max) | vs tf.nn + Adagrad | vs TFRS in-batch | "
             "share of matmul limit | peak memory | peak / (item table + slots) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for num_items, rows in sizes.items():
        lines.extend(_row(num_items, name, row, rows, flag_values.embedding_dim) for name, row in rows.items())
    return "\n".join([
        "# Training throughput against the peers",
        "",
        f"Command: `{command}`",
        "",
        f"dim {flag_values.embedding_dim}, batch {flag_values.batch_size}, num_sampled {flag_values.num_sampled}, "
        f"{flag_values.num_users:,} users, {flag_values.num_interactions:,} interactions; 2 CPU cores, a shared "
        f"machine; {flag_values.repeats} interleaved repeats per row (median, min-max; ratios are the median of "
        "per-repeat ratios and their range). See scripts/bench.py for what each row runs.",
        "",
        *lines,
        *_history_lines(sizes),
        *_breakdown_lines(breakdown),
        "",
    ])
