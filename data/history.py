"""Query-side features of an interaction: the user's earlier items (history) and the time of day and week.

Histories. The history of an interaction at time t of user u is u's items logged strictly before t, most recent
first, at most `history_length` of them, padded with PAD (-1):
- Equal timestamps never see each other: an item logged at the same second as the interaction is not in its
  history, whatever the file order. So a row's history never holds its own target, nor an item of the same
  moment (a basket, a batch upload), and a log shuffled row by row gives the same histories.
- Among history items with equal timestamps the larger item id comes first; like the rule above this depends
  on the rows' contents only, never on their order in the file, so truncation to `history_length` is
  deterministic too.
- Held-out rows see the log they are given, never each other: `histories_before(train..., eval...)` gives an
  eval row the user's training items before it, and `cold_user_queries` does the same for users kept wholly out
  of training, whose earlier interactions become the query history at evaluation.

Everything is vectorised NumPy: one sort of the log and the queries together, then one row copy per query from
a sliding window over the sorted items (a million interactions x 50 in well under a second).

Where histories are computed. Prepared corpora do not store them: every interaction's history is a window of
the training log sorted by (user, time, item), so `history_log` sorts the training split once when it is loaded
(16 bytes per interaction) and data.pipeline looks each batch's histories up in it by (user, timestamp) with
two binary searches and one gather, inside the tf.data pipeline. Measured on the built-in corpus (980,000
training interactions): the sorted log takes 0.16 s and 16 MB; the histories themselves as an [n, 50] array
would take 392 MB of memory (1.3 s), and written into every TFRecord (as variable-length int64 lists) they make
the training files 1.9x larger (150 MB instead of 79 MB) and fix history_length when the corpus is prepared.
That is the price a log beyond one machine's memory pays: `data.prepare --history_length=N` (either runner)
writes them with these functions' rules, and the trainer then streams the records (data.records, "history").

Cold users. `cold_user_ids` picks, from a seed, the users a run keeps wholly out of training; their
interactions are queried at evaluation with `cold_user_queries`.

Time features. Unix seconds (UTC) to hour of day (0-23) and day of week (Monday = 0, as datetime.weekday()).
"""

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from data import splits

PAD = -1  # fills the history slots a user has no earlier item for
DEFAULT_HISTORY_LENGTH = 50
# The longest history data.prepare writes into records (the trainer's --history_length bound, 10,000, is for
# histories looked up at load; written ones cost 8 bytes per item per record on disk).
MAX_WRITTEN_HISTORY_LENGTH = 1000


def histories_before(
    log_user: np.ndarray,
    log_item: np.ndarray,
    log_time: np.ndarray,
    query_user: np.ndarray,
    query_time: np.ndarray,
    history_length: int = DEFAULT_HISTORY_LENGTH,
) -> np.ndarray:
    """Each query's user's log items strictly before the query's time, most recent first.

    Args:
      log_user, log_item, log_time: [n] ints, the log the histories are read from (any row order; items >= 0).
      query_user, query_time: [m] ints, the interactions (or moments) to build a history for.
      history_length: L, the most items per history.
    Returns:
      [m, L] int64 item ids, row i for query i: the user's latest item before query_time[i] first, PAD after the
      user's earliest one.
    """
    _check_columns(log_user=log_user, log_item=log_item, log_time=log_time)
    _check_columns(query_user=query_user, query_time=query_time)
    if history_length < 0:
        raise ValueError(f"history_length={history_length}; expected 0 or more")
    if len(log_item) and np.min(log_item) < 0:
        raise ValueError(f"item ids must be >= 0 ({PAD} pads histories); the log holds {np.min(log_item)}")
    sorted_items, end, available = _history_spans(log_user, log_item, log_time, query_user, query_time)
    return _gather_histories(sorted_items, end, np.minimum(available, history_length), history_length)


def training_histories(
    user_id: np.ndarray, item_id: np.ndarray, timestamp: np.ndarray, history_length: int = DEFAULT_HISTORY_LENGTH
) -> np.ndarray:
    """Every interaction's history within the same log: [n] columns -> [n, history_length] int64 (see
    histories_before; a row never sees itself or any row of its user at the same time)."""
    return histories_before(user_id, item_id, timestamp, user_id, timestamp, history_length)


class ColdUserQueries(NamedTuple):
    """Evaluation rows of users kept out of training, with the history their other interactions give."""

    rows: np.ndarray  # [m] int64 positions of the held-out interactions in the input columns, ascending
    history: np.ndarray  # [m, history_length] int64, row i the history of interaction rows[i]


def cold_user_queries(
    user_id: np.ndarray,
    item_id: np.ndarray,
    timestamp: np.ndarray,
    eval_per_user: int = 1,
    history_length: int = DEFAULT_HISTORY_LENGTH,
) -> ColdUserQueries:
    """Holds out each user's last `eval_per_user` interactions and gives each the user's other items before it.

    Args:
      user_id, item_id, timestamp: [n] ints, every interaction of the cold users (any row order).
      eval_per_user: held out per user, the latest by timestamp (ties by file order, as data.splits.held_out);
        users with no more interactions than this give no rows, as in data.splits.
      history_length: L.
    Returns:
      ColdUserQueries(rows [m], history [m, L]): the eval rows are `column[rows]` of any input column (weights
      too), and a held-out row's history holds only the user's non-held-out items strictly before it.
    """
    user_id, item_id, timestamp = np.asarray(user_id), np.asarray(item_id), np.asarray(timestamp)
    _check_columns(user_id=user_id, item_id=item_id, timestamp=timestamp)
    is_eval = splits.held_out(user_id, timestamp, "last", eval_per_user)
    rows = np.flatnonzero(is_eval).astype(np.int64)
    is_history = ~is_eval
    history = histories_before(
        user_id[is_history], item_id[is_history], timestamp[is_history], user_id[rows], timestamp[rows], history_length
    )
    return ColdUserQueries(rows, history)


class HistoryLog(NamedTuple):
    """A log sorted for history lookups: the user's rows strictly before time t of user u are the rows with
    keys in [u * time_slots, u * time_slots + rank(t)), rank(t) = how many distinct log times are below t."""

    keys: np.ndarray  # [n] int64 ascending: user * time_slots + rank of the row's time among `times`
    items: np.ndarray  # [n] int64 item of each row, in key order; equal keys by item ascending
    times: np.ndarray  # [T] int64 the log's distinct timestamps, ascending
    time_slots: int  # T + 1: a query's time rank lies in [0, T]


def history_log(user_id: np.ndarray, item_id: np.ndarray, timestamp: np.ndarray) -> HistoryLog:
    """The log [n] columns (any row order; users and items >= 0) sorted for `history_positions` and for
    data.pipeline's TensorFlow lookup; their histories equal `histories_before` over the same log."""
    user_id, item_id, timestamp = (np.asarray(column, np.int64) for column in (user_id, item_id, timestamp))
    _check_columns(user_id=user_id, item_id=item_id, timestamp=timestamp)
    if len(user_id) and min(np.min(user_id), np.min(item_id)) < 0:
        raise ValueError("user and item ids of a history log must be >= 0")
    times, rank = np.unique(timestamp, return_inverse=True)
    time_slots = len(times) + 1
    if len(user_id) and int(np.max(user_id)) >= np.iinfo(np.int64).max // time_slots:
        raise ValueError(f"{np.max(user_id) + 1} users x {time_slots} distinct times overflow int64 history keys")
    keys = user_id * time_slots + rank.reshape(-1)
    order = np.lexsort((item_id, keys))
    return HistoryLog(keys[order], item_id[order], times, time_slots)


def history_positions(log: HistoryLog, query_user: np.ndarray, query_time: np.ndarray):
    """(end [m], available [m]) int64: query i's history is log.items[end - 1], log.items[end - 2], ... for
    `available` items (all of the user's rows strictly before query_time[i]). NumPy twin of the TF lookup."""
    query_user, query_time = np.asarray(query_user, np.int64), np.asarray(query_time, np.int64)
    first_key = query_user * log.time_slots
    end = np.searchsorted(log.keys, first_key + np.searchsorted(log.times, query_time, side="left"), side="left")
    return end.astype(np.int64), (end - np.searchsorted(log.keys, first_key, side="left")).astype(np.int64)


def histories_from_log(
    log: HistoryLog, query_user: np.ndarray, query_time: np.ndarray, history_length: int = DEFAULT_HISTORY_LENGTH
) -> np.ndarray:
    """[m, history_length] histories of the queries read from a sorted log (= histories_before)."""
    end, available = history_positions(log, query_user, query_time)
    return _gather_histories(log.items, end, np.minimum(available, history_length), history_length)


def cold_user_ids(num_users: int, fraction: float, seed: int) -> np.ndarray:
    """The round(fraction x num_users) users of ids [0, num_users) a run keeps out of training: a seeded choice,
    sorted ascending. fraction in [0, 1)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold_users={fraction}; expected a share of users in [0, 1)")
    count = int(round(fraction * num_users))
    chosen = np.random.default_rng([seed, 12]).choice(num_users, size=count, replace=False)
    return np.sort(chosen).astype(np.int64)


def _check_columns(**columns):
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"parallel columns must have one length, got {lengths}")


def _history_spans(log_user, log_item, log_time, query_user, query_time):
    """Where each query's history lies in the log sorted by (user, time, item).

    Returns:
      sorted_items [n] int64: the log's items in (user, time, item) order.
      end [m] int64: per query, one past the user's last log row strictly before the query's time.
      available [m] int64: how many of the user's log rows precede `end` (the full history length).
    """
    num_log, num_queries = len(log_user), len(query_user)
    user = np.concatenate([log_user, query_user]).astype(np.int64)
    time = np.concatenate([log_time, query_time]).astype(np.int64)
    # Third key: a query sorts before every log row of its user and second (items are >= 0), so the log rows
    # counted before it are exactly those strictly earlier; log ties order by item id, not by file order.
    tie = np.concatenate([log_item, np.full(num_queries, -1)]).astype(np.int64)
    order = np.lexsort((tie, time, user))  # [n + m] merged positions -> input rows

    is_log = order < num_log  # [n + m] in merged order
    logs_before = np.cumsum(is_log) - is_log  # [n + m] log rows strictly before each merged position
    sorted_user = user[order]
    user_starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
    user_start = np.repeat(user_starts, np.diff(np.r_[user_starts, len(order)]))  # [n + m] merged start of the user

    is_query = ~is_log
    end = np.empty(num_queries, np.int64)
    available = np.empty(num_queries, np.int64)
    query_index = order[is_query] - num_log  # queries in merged order -> their input position
    end[query_index] = logs_before[is_query]
    available[query_index] = logs_before[is_query] - logs_before[user_start[is_query]]
    sorted_items = np.asarray(log_item, np.int64)[order[is_log]]
    return sorted_items, end, available


def _gather_histories(sorted_items, end, length, history_length):
    """[m, L] histories: row i is sorted_items[end[i] - 1], sorted_items[end[i] - 2], ... for length[i] slots,
    then PAD."""
    num_log, num_queries = len(sorted_items), len(end)
    if not num_log or not history_length:
        return np.full((num_queries, history_length), PAD, np.int64)
    # Reversed, each history is one contiguous run: a row of a sliding-window view, copied by one fancy index
    # (some 30 ms for a million rows of 50, where gathering element by element costs over a second).
    newest_first = np.concatenate([sorted_items[::-1], np.full(history_length, PAD, np.int64)])
    windows = sliding_window_view(newest_first, history_length)  # [num_log + 1, L] view, row r = [r, r + L)
    histories = windows[num_log - end]  # [m, L] copy; slots past `length` hold earlier users' items
    np.copyto(histories, PAD, where=np.arange(history_length) >= length[:, np.newaxis])
    return histories


# Time of day and week, from integer Unix seconds (UTC).

SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86_400
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday = 0


def hour_of_day(timestamp: np.ndarray) -> np.ndarray:
    """[n] Unix seconds (UTC) -> [n] int64 hour of day, 0-23 (floor division: correct before 1970 too)."""
    return np.asarray(timestamp, np.int64) // SECONDS_PER_HOUR % 24


def day_of_week(timestamp: np.ndarray) -> np.ndarray:
    """[n] Unix seconds (UTC) -> [n] int64 day of week, Monday = 0 ... Sunday = 6 (as datetime.weekday())."""
    return (np.asarray(timestamp, np.int64) // SECONDS_PER_DAY + EPOCH_WEEKDAY) % 7
