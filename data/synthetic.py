"""The built-in synthetic corpus: interaction logs with Zipfian popularity and learnable user tastes.

How a log is drawn (deterministic from `seed`):
- Items have Zipfian base popularity (weight ~ 1 / (rank + 1) ** zipf_exponent) and each belongs to one of
  `num_topics` topics, assigned at random so that popularity and topic are independent.
- Each user likes a few topics (1 to `max_user_topics`, Dirichlet weights) and has a log-normal activity level.
- Tastes drift (`taste_drift` > 0): each user also has a second taste, drawn the same way, that takes over
  linearly along the user's interactions: the interaction at fraction f in [0, 1] of the way from the user's first
  to last is drawn from the second taste with probability taste_drift x f, else from the first. So a user's
  recent items predict the held-out (last) ones better than their all-time mix does, which a history-based
  query tower can learn and a user-id embedding (one fixed vector per user) cannot.
- Each interaction is, with probability `popularity_noise`, a draw from global popularity; otherwise a topic
  from the user's taste at that moment, then an item of that topic in proportion to its popularity.
- Item ids are then re-ranked by observed count (id 0 = most frequent, ties by original rank), as the
  log-uniform sampler assumes and as `data.vocabulary` does for real logs.
- Timestamps (`session_timestamps`): Unix seconds in sessions. A user's interactions come in sessions of about
  8 (each next interaction starts a new one with probability 1/8), some 2 minutes apart within a session;
  sessions are on different days, a geometric number of days apart (mean 2), starting near the user's preferred
  hour of day (users lean to the evening), so hour of day and day of week are real features. The first session
  is within 180 days of 2020-09-13. Without session_timestamps, a user's timestamps are their interactions'
  positions (1_600_000_000 + user_id x 10_000 + position), as before sessions existed.
- Each user's interactions are in strictly increasing time; the last `eval_per_user` are the held-out (test)
  split, and the `validation_per_user` before them the validation split, on which the trainer chooses the model
  (neither is trained on, nor counted in item_counts or the id ranking).

taste_drift=0.0 with session_timestamps=False and validation_per_user=0 reproduces the corpus of the generator before drift and sessions
draw for draw: the drift and the sessions draw from their own random streams, seeded by (seed, 1) and (seed, 2).

Drawing 1,000,000 interactions takes about a second with NumPy (no per-interaction Python).
"""

import dataclasses
from typing import NamedTuple, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_items: int = 100_000
    num_users: int = 20_000
    num_interactions: int = 1_000_000
    num_topics: int = 200
    max_user_topics: int = 3
    zipf_exponent: float = 1.0
    popularity_noise: float = 0.1
    min_interactions_per_user: int = 5
    eval_per_user: int = 1
    # Each user's training interactions before the eval ones held out as the validation split (0: none).
    validation_per_user: int = 1
    # Share of each user's taste replaced by a second one by their last interaction (0: fixed tastes).
    taste_drift: float = 1.0
    # Unix seconds in sessions; False: each user's interaction positions (the corpus before sessions existed).
    session_timestamps: bool = True
    seed: int = 0

    def validate(self):
        if self.num_items < 2 or self.num_users < 1:
            raise ValueError(f"synthetic corpus needs num_items >= 2 and num_users >= 1, got {self}")
        minimum = self.num_users * self.min_interactions_per_user
        if self.num_interactions < minimum:
            raise ValueError(
                f"synthetic corpus: num_interactions={self.num_interactions} is below num_users x "
                f"{self.min_interactions_per_user} = {minimum}; raise num_interactions or lower num_users"
            )
        if self.validation_per_user < 0:
            raise ValueError(f"synthetic corpus: validation_per_user={self.validation_per_user}; expected >= 0")
        if self.eval_per_user + self.validation_per_user >= self.min_interactions_per_user:
            raise ValueError(
                f"synthetic corpus: eval_per_user + validation_per_user = {self.eval_per_user} + "
                f"{self.validation_per_user} must leave training interactions for every user (each has at least "
                f"{self.min_interactions_per_user})")
        if not 0.0 <= self.taste_drift <= 1.0:
            raise ValueError(f"synthetic corpus: taste_drift={self.taste_drift}; expected a share in [0, 1]")


class Interactions(NamedTuple):
    """Parallel arrays, one entry per interaction, sorted by (user_id, timestamp)."""

    user_id: np.ndarray  # [n] int64
    item_id: np.ndarray  # [n] int64, frequency-ranked
    timestamp: np.ndarray  # [n] int64

    def __len__(self):
        return len(self.user_id)

    def take(self, mask):
        return Interactions(self.user_id[mask], self.item_id[mask], self.timestamp[mask])


class SyntheticCorpus(NamedTuple):
    train: Interactions
    eval: Interactions  # the test split
    item_counts: np.ndarray  # [num_items] int64, training counts; non-increasing up to sampling noise
    item_topic: np.ndarray  # [num_items] int64, the topic each (frequency-ranked) item was drawn under
    validation: Optional[Interactions] = None  # the validation split; None with validation_per_user=0


# Sessions of the timestamped corpus (see the module docstring).
FIRST_DAY = 1_599_955_200  # 2020-09-13 00:00:00 UTC, the first day a user may start on
FIRST_SESSION_WINDOW_DAYS = 180
MEAN_SESSION_LENGTH = 8  # interactions
MEAN_SECONDS_BETWEEN_ITEMS = 120  # within a session
MEAN_DAYS_BETWEEN_SESSIONS = 2
PREFERRED_HOUR_MEAN, PREFERRED_HOUR_SPREAD = 20.0, 3.0  # users' preferred hours: normal, wrapped to 0-24
SESSION_HOUR_SPREAD = 2.0  # a session starts this many hours (normal s.d.) around its user's preferred hour


def _interactions_per_user(config, rng):
    activity = rng.lognormal(mean=0.0, sigma=0.8, size=config.num_users)
    extra = config.num_interactions - config.num_users * config.min_interactions_per_user
    return config.min_interactions_per_user + rng.multinomial(extra, activity / activity.sum())


def _user_tastes(config, topics_with_items, rng):
    """Each user's liked topics and their weights: 1 to max_user_topics topics, Dirichlet weights.

    Returns topics [num_users, max_user_topics] int64 and weights [num_users, max_user_topics] float64 (rows sum
    to 1; slots past a user's number of topics weigh 0).
    """
    user_num_topics = rng.integers(1, config.max_user_topics + 1, size=config.num_users)
    user_topics = rng.choice(topics_with_items, size=(config.num_users, config.max_user_topics))
    user_weights = rng.dirichlet(np.ones(config.max_user_topics), size=config.num_users)
    user_weights *= np.arange(config.max_user_topics)[np.newaxis, :] < user_num_topics[:, np.newaxis]
    user_weights /= user_weights.sum(axis=1, keepdims=True)
    return user_topics, user_weights


def _drawn_from_second_taste(config, counts, position_in_user, rng):
    """[n] bool: which interactions the user's second taste draws, with probability taste_drift x (fraction of
    the way through the user's interactions)."""
    fraction = position_in_user / np.maximum(np.repeat(counts, counts) - 1, 1)  # [n] 0 at first, 1 at last
    return rng.random(len(position_in_user)) < config.taste_drift * fraction


def _cumsum_within(values, group_starts):
    """Cumulative sums of `values` [n] restarting at each of `group_starts` (ascending row indices, first 0)."""
    total = np.cumsum(values)
    before_group = total[group_starts] - values[group_starts]
    return total - np.repeat(before_group, np.diff(np.r_[group_starts, len(values)]))


def _session_timestamps(counts, user_id, position_in_user, rng):
    """[n] int64 Unix seconds in sessions (module docstring) for interactions sorted by (user, position)."""
    num_users, num_interactions = len(counts), len(user_id)
    first_of_user = position_in_user == 0
    starts_session = first_of_user | (rng.random(num_interactions) < 1.0 / MEAN_SESSION_LENGTH)  # [n]
    session = np.cumsum(starts_session) - 1  # [n] global session index
    session_user = user_id[starts_session]  # [num_sessions]
    num_sessions = len(session_user)

    # Day of each session: the user's first day, then at least one day on per session.
    days_later = rng.geometric(1.0 / MEAN_DAYS_BETWEEN_SESSIONS, num_sessions)  # [num_sessions] >= 1
    day_step = np.where(first_of_user[starts_session], 0, days_later)
    user_first_session = np.flatnonzero(first_of_user[starts_session])
    first_day = rng.integers(0, FIRST_SESSION_WINDOW_DAYS, num_users)
    session_day = first_day[session_user] + _cumsum_within(day_step, user_first_session)
    preferred_hour = rng.normal(PREFERRED_HOUR_MEAN, PREFERRED_HOUR_SPREAD, num_users)
    session_hour = (preferred_hour[session_user] + rng.normal(0.0, SESSION_HOUR_SPREAD, num_sessions)) % 24
    session_start = FIRST_DAY + session_day * 86_400 + (session_hour * 3600).astype(np.int64)  # [num_sessions]

    # Within a session, at least a second between interactions so that a user's times never tie.
    step = 1 + rng.exponential(MEAN_SECONDS_BETWEEN_ITEMS, num_interactions).astype(np.int64)
    step[starts_session] = 0
    timestamp = session_start[session] + _cumsum_within(step, np.flatnonzero(starts_session))
    return _strictly_increasing_within_user(timestamp, counts)


def _strictly_increasing_within_user(timestamp, counts):
    """Moves a time that does not follow its user's previous one (a session running past midnight into the next
    session's start, which is rare) to one second after it: t'_i = max(t_i, t'_(i-1) + 1) within each user."""
    position = np.arange(len(timestamp))
    # max over j <= i of (t_j - j), plus i, is that recursion. Each user's values are lifted above all earlier
    # users' so that one running maximum over the whole array restarts at every user.
    shifted = timestamp - position
    shifted -= shifted.min()
    user_offset = np.repeat(np.arange(len(counts), dtype=np.int64), counts) * (shifted.max() + 1)
    running = np.maximum.accumulate(shifted + user_offset) - user_offset
    return running + (timestamp - position).min() + position


def _split_masks(config, counts, position_in_user):
    """(is_train, is_validation, is_eval) [n] bool: each user's last eval_per_user interactions are eval (test),
    the validation_per_user before them validation, the rest train."""
    from_end = np.repeat(counts, counts) - position_in_user  # [n] 1 at a user's last interaction
    is_eval = from_end <= config.eval_per_user
    is_validation = ~is_eval & (from_end <= config.eval_per_user + config.validation_per_user)
    return ~is_eval & ~is_validation, is_validation, is_eval


def generate(config: SyntheticConfig = SyntheticConfig()) -> SyntheticCorpus:
    """Draws the corpus described in the module docstring and splits each user's last interactions off."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    popularity = 1.0 / np.arange(1, config.num_items + 1, dtype=np.float64) ** config.zipf_exponent
    item_topic = rng.integers(0, config.num_topics, size=config.num_items)
    runs = _TopicRuns.of(popularity, item_topic, config.num_topics)
    tastes = _user_tastes(config, runs.topics_with_items(), rng)
    counts = _interactions_per_user(config, rng)
    user_id, position_in_user = _interaction_users(config, counts)
    topic = _interaction_topics(config, runs, tastes, counts, user_id, position_in_user, rng)
    item = _popularity_noise(config, popularity, runs.draw_items(topic, rng), rng)
    if config.session_timestamps:
        timestamp = _session_timestamps(counts, user_id, position_in_user, np.random.default_rng([config.seed, 2]))
    else:  # the corpus before sessions: a user's interaction positions
        timestamp = 1_600_000_000 + user_id * 10_000 + position_in_user
    masks = _split_masks(config, counts, position_in_user)
    return _ranked_by_training_count(config, item_topic, Interactions(user_id, item, timestamp.astype(np.int64)),
                                     *masks)


class _TopicRuns(NamedTuple):
    """Items ordered by (topic, rank): each topic's items are one contiguous run of a cumulative sum, so drawing
    "an item of topic t by popularity" is one searchsorted into that run."""

    by_topic: np.ndarray  # [num_items] the item at each position of the order
    cumsum: np.ndarray  # [num_items] float64, the popularity summed along the order
    end: np.ndarray  # [num_topics] one past each topic's last position
    mass_before: np.ndarray  # [num_topics] float64, the popularity of the runs before each topic's
    mass: np.ndarray  # [num_topics] float64, each topic's popularity (0 for a topic without items)

    @classmethod
    def of(cls, popularity, item_topic, num_topics: int) -> "_TopicRuns":
        """The runs of popularity [num_items] under item_topic [num_items]."""
        num_items = len(popularity)
        by_topic = np.lexsort((np.arange(num_items), item_topic))
        cumsum = np.cumsum(popularity[by_topic])
        end = np.searchsorted(item_topic[by_topic], np.arange(num_topics), side="right")
        start = np.concatenate([[0], end[:-1]])
        mass_before = np.where(start > 0, cumsum[np.maximum(start - 1, 0)], 0.0)
        mass = cumsum[end - 1] - mass_before if num_items else np.zeros(num_topics)
        return cls(by_topic, cumsum, end, mass_before, np.where(end > start, mass, 0.0))

    def topics_with_items(self) -> np.ndarray:
        return np.flatnonzero(self.mass > 0)

    def draw_items(self, topic, rng) -> np.ndarray:
        """[n] an item of each topic [n], drawn in proportion to its popularity."""
        target = self.mass_before[topic] + rng.random(len(topic)) * self.mass[topic]
        position = np.minimum(np.searchsorted(self.cumsum, target, side="right"), self.end[topic] - 1)
        return self.by_topic[position]


def _interaction_users(config, counts):
    """(user_id [n] int64, position_in_user [n]: 0 at each user's first interaction) for counts [num_users]."""
    user_id = np.repeat(np.arange(config.num_users, dtype=np.int64), counts)
    first_of_user = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return user_id, np.arange(len(user_id)) - np.repeat(first_of_user, counts)


def _interaction_topics(config, runs: _TopicRuns, tastes, counts, user_id, position_in_user, rng):
    """[n] the topic of each interaction, drawn from its user's taste at that moment: the first one, or with
    drift the second (inverse CDF over at most max_user_topics)."""
    user_topics, user_weights = tastes
    # Drift draws from its own stream so that the main stream's draws, and with taste_drift=0 the corpus, are
    # those of the generator before drift.
    drift_rng = np.random.default_rng([config.seed, 1])
    second_topics, second_weights = _user_tastes(config, runs.topics_with_items(), drift_rng)
    second = _drawn_from_second_taste(config, counts, position_in_user, drift_rng)  # [n] bool
    weights = np.where(second[:, None], second_weights[user_id], user_weights[user_id])  # [n, max_user_topics]
    slot = (rng.random(len(user_id))[:, None] > np.cumsum(weights, axis=1)).sum(axis=1)
    slot = np.minimum(slot, config.max_user_topics - 1)
    return np.where(second, second_topics[user_id, slot], user_topics[user_id, slot])


def _popularity_noise(config, popularity, item, rng):
    """item [n] with each interaction replaced, with probability popularity_noise, by a draw from global
    popularity [num_items]."""
    noise = rng.random(len(item)) < config.popularity_noise
    global_cumsum = np.cumsum(popularity)
    noise_target = rng.random(int(noise.sum())) * global_cumsum[-1]
    item[noise] = np.minimum(np.searchsorted(global_cumsum, noise_target, side="right"), len(popularity) - 1)
    return item


def _ranked_by_training_count(config, item_topic, interactions: Interactions, is_train, is_validation,
                              is_eval) -> SyntheticCorpus:
    """The splits with item ids re-ranked by training count (id 0 = most frequent), ties by popularity rank."""
    num_items = config.num_items
    train_counts = np.bincount(interactions.item_id[is_train], minlength=num_items)
    new_order = np.lexsort((np.arange(num_items), -train_counts))
    new_id = np.empty(num_items, dtype=np.int64)
    new_id[new_order] = np.arange(num_items)
    ranked = Interactions(interactions.user_id, new_id[interactions.item_id], interactions.timestamp)
    return SyntheticCorpus(
        train=ranked.take(is_train),
        eval=ranked.take(is_eval),
        item_counts=train_counts[new_order].astype(np.int64),
        item_topic=item_topic[new_order].astype(np.int64),
        validation=ranked.take(is_validation) if config.validation_per_user else None,
    )
