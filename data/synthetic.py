"""The built-in synthetic corpus: interaction logs with Zipfian popularity and learnable user tastes.

How a log is drawn (deterministic from `seed`):
- Items have Zipfian base popularity (weight ~ 1 / (rank + 1) ** zipf_exponent) and each belongs to one of
  `num_topics` topics, assigned at random so that popularity and topic are independent.
- Each user likes a few topics (1 to `max_user_topics`, Dirichlet weights) and has a log-normal activity level.
- Each interaction is, with probability `popularity_noise`, a draw from global popularity; otherwise a topic
  from the user's tastes, then an item of that topic in proportion to its popularity (taste x popularity).
- Item ids are then re-ranked by observed count (id 0 = most frequent, ties by original rank), as the
  log-uniform sampler assumes and as `data.vocabulary` does for real logs.
- Each user's interactions are in time order; the last `eval_per_user` are the held-out split.

Drawing 1,000,000 interactions takes a few seconds with NumPy (no per-interaction Python).
"""

import dataclasses
from typing import NamedTuple

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
        if self.eval_per_user >= self.min_interactions_per_user:
            raise ValueError("synthetic corpus: eval_per_user must leave training interactions for every user")


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
    eval: Interactions
    item_counts: np.ndarray  # [num_items] int64, training counts; non-increasing up to sampling noise


def _interactions_per_user(config, rng):
    activity = rng.lognormal(mean=0.0, sigma=0.8, size=config.num_users)
    extra = config.num_interactions - config.num_users * config.min_interactions_per_user
    return config.min_interactions_per_user + rng.multinomial(extra, activity / activity.sum())


def generate(config: SyntheticConfig = SyntheticConfig()) -> SyntheticCorpus:
    """Draws the corpus described in the module docstring and splits each user's last interactions off."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    num_items, num_topics = config.num_items, config.num_topics

    popularity = 1.0 / np.arange(1, num_items + 1, dtype=np.float64) ** config.zipf_exponent
    item_topic = rng.integers(0, num_topics, size=num_items)

    # Items ordered by (topic, rank): each topic's items are one contiguous run of a cumulative sum, so drawing
    # "an item of topic t by popularity" is one searchsorted into that run.
    by_topic = np.lexsort((np.arange(num_items), item_topic))
    topic_cumsum = np.cumsum(popularity[by_topic])
    topic_end = np.searchsorted(item_topic[by_topic], np.arange(num_topics), side="right")
    topic_start = np.concatenate([[0], topic_end[:-1]])
    mass_before = np.where(topic_start > 0, topic_cumsum[np.maximum(topic_start - 1, 0)], 0.0)
    topic_mass = topic_cumsum[topic_end - 1] - mass_before if num_items else np.zeros(num_topics)
    topic_mass = np.where(topic_end > topic_start, topic_mass, 0.0)

    user_num_topics = rng.integers(1, config.max_user_topics + 1, size=config.num_users)
    user_topics = rng.choice(np.flatnonzero(topic_mass > 0), size=(config.num_users, config.max_user_topics))
    user_weights = rng.dirichlet(np.ones(config.max_user_topics), size=config.num_users)
    user_weights *= np.arange(config.max_user_topics)[np.newaxis, :] < user_num_topics[:, np.newaxis]
    user_weights /= user_weights.sum(axis=1, keepdims=True)

    counts = _interactions_per_user(config, rng)
    user_id = np.repeat(np.arange(config.num_users, dtype=np.int64), counts)
    num_interactions = len(user_id)

    # Topic of each interaction from its user's taste weights (inverse CDF over at most max_user_topics).
    slot = (rng.random(num_interactions)[:, None] > np.cumsum(user_weights[user_id], axis=1)).sum(axis=1)
    slot = np.minimum(slot, config.max_user_topics - 1)
    topic = user_topics[user_id, slot]
    target = mass_before[topic] + rng.random(num_interactions) * topic_mass[topic]
    position = np.minimum(np.searchsorted(topic_cumsum, target, side="right"), topic_end[topic] - 1)
    item = by_topic[position]

    noise = rng.random(num_interactions) < config.popularity_noise
    global_cumsum = np.cumsum(popularity)
    noise_target = rng.random(int(noise.sum())) * global_cumsum[-1]
    item[noise] = np.minimum(np.searchsorted(global_cumsum, noise_target, side="right"), num_items - 1)

    # Time order within each user: interactions are exchangeable, so position is the timestamp.
    first_of_user = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position_in_user = np.arange(num_interactions) - np.repeat(first_of_user, counts)
    timestamp = 1_600_000_000 + user_id * 10_000 + position_in_user
    is_eval = position_in_user >= np.repeat(counts, counts) - config.eval_per_user

    # Re-rank ids by training frequency (id 0 = most frequent), ties by original popularity rank.
    train_counts = np.bincount(item[~is_eval], minlength=num_items)
    new_order = np.lexsort((np.arange(num_items), -train_counts))
    new_id = np.empty(num_items, dtype=np.int64)
    new_id[new_order] = np.arange(num_items)
    all_interactions = Interactions(user_id, new_id[item], timestamp.astype(np.int64))
    return SyntheticCorpus(
        train=all_interactions.take(~is_eval),
        eval=all_interactions.take(is_eval),
        item_counts=train_counts[new_order].astype(np.int64),
    )
