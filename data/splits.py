"""Train / eval splits of an interaction log: no interaction is in both.

Per user (`held_out`): each user with more than `eval_per_user` interactions holds out `eval_per_user` of them:
the last ones by timestamp (ties by file order), or a seeded random choice. Users with fewer stay wholly in
train, so every held-out user has a training history.

Given (`given`): the held-out rows come from a file of their own and are used as they are; data.prepare drops
(and counts) those whose user or item has no training row.
"""

import numpy as np

METHODS = ("last", "random")


def held_out(user: np.ndarray, timestamp: np.ndarray, method: str = "last", eval_per_user: int = 1, seed: int = 0):
    """Which interactions are held out.

    Args:
      user: [n] int user code of each interaction.
      timestamp: [n] int64 order key (used by method="last").
      method: "last" (each user's latest) or "random" (seeded).
      eval_per_user: interactions held out per user (>= 1).
      seed: for method="random".
    Returns:
      is_eval [n] bool.
    """
    if method not in METHODS:
        raise ValueError(f"split={method!r}; expected one of {', '.join(METHODS)}")
    if eval_per_user < 1:
        raise ValueError(f"eval_per_user={eval_per_user}; expected at least 1")
    num_rows = len(user)
    row = np.arange(num_rows)
    if method == "last":
        order = np.lexsort((row, timestamp, user))  # by user, then time, then file order
    else:
        order = np.lexsort((np.random.default_rng(seed).random(num_rows), user))
    sorted_user = user[order]
    starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
    sizes = np.diff(np.r_[starts, num_rows])
    position = row - np.repeat(starts, sizes)  # place of each sorted row within its user
    size = np.repeat(sizes, sizes)
    is_eval = np.zeros(num_rows, bool)
    is_eval[order] = (size > eval_per_user) & (position >= size - eval_per_user)
    return is_eval


def given(num_train: int, num_eval: int) -> np.ndarray:
    """is_eval [num_train + num_eval] bool of a log's rows followed by a held-out file's rows."""
    return np.repeat([False, True], [num_train, num_eval])
