"""Train / eval splits of an interaction log: no interaction is in both.

Per user (`held_out`): each user with more than `eval_per_user` interactions holds out `eval_per_user` of them:
the last ones by timestamp (ties by file order), or a seeded random choice. Users with fewer stay wholly in
train, so every held-out user has a training history.

Validation (`validation`): among each user's training rows (the rows `held_out` left in train), the last
`validation_per_user` by timestamp (ties by file order) become validation rows, which model selection reads
(the best epoch, early stopping, tuned defaults) so that the test rows are read once, for the final report.
Users with too few training rows keep them all in train.

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


def validation(user: np.ndarray, timestamp: np.ndarray, is_eval: np.ndarray, validation_per_user: int):
    """Which training rows (not is_eval) are validation rows: each user's last validation_per_user of them.

    Args:
      user: [n] int user code of each interaction.
      timestamp: [n] int64 order key.
      is_eval: [n] bool, the test rows (held out before the validation rows are chosen).
      validation_per_user: validation rows per user (>= 0; 0: none). A user needs more training rows than that,
        so that every validation user keeps a training history.
    Returns:
      is_validation [n] bool, never where is_eval.
    """
    if validation_per_user < 0:
        raise ValueError(f"validation_per_user={validation_per_user}; expected 0 (no validation split) or more")
    is_validation = np.zeros(len(user), bool)
    if validation_per_user == 0:
        return is_validation
    training_rows = np.flatnonzero(~is_eval)  # in file order, so held_out's ties by file order stay those of the log
    is_validation[training_rows] = held_out(user[training_rows], timestamp[training_rows], "last",
                                            validation_per_user)
    return is_validation


def given(num_train: int, num_eval: int) -> np.ndarray:
    """is_eval [num_train + num_eval] bool of a log's rows followed by a held-out file's rows."""
    return np.repeat([False, True], [num_train, num_eval])
