"""Synthetic planted-interest data set, the embedded default data.

Items are grouped into topics, and inside a topic an item's draw probability
follows a Zipf law over a random popularity rank. Each user has a few topics
(interests) with unequal weights drawn from a Dirichlet distribution. A
sequence is a Markov chain over the user's topics: at each step the user
keeps the current topic, or with probability ``switch_prob`` redraws it from
the interest weights, and then consumes an item of the current topic. The
generator keeps the ground truth (item topics, user interest weights), so
interest balance and interest recovery can be checked against it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from harness.data.types import Ragged, Sequences
from harness.errors import ConfigError

logger = logging.getLogger(__name__)

# Upper bound on the Gumbel key tensor built per chunk of users.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic data set.

    The defaults keep a full grid of 4 backbones x 4 strategies with short
    step budgets within a few CPU minutes: 2,000 users, 1,000 items, 20 topics
    of 50 items, sequences of 20 to 60 items.

    Attributes:
        n_users: Number of users.
        n_items: Number of items, spread over the topics as evenly as possible.
        n_topics: Number of topics.
        min_interests: Minimum number of topics per user.
        max_interests: Maximum number of topics per user.
        dirichlet_alpha: Concentration of the symmetric Dirichlet distribution of a
            user's interest weights; below 1 favours one dominant interest, large
            values make the weights nearly equal.
        zipf_exponent: Exponent s of the within-topic popularity: the item of
            rank r is drawn with probability proportional to ``r ** -s``.
        switch_prob: Probability per step of redrawing the current topic from the
            user's interest weights; the redraw may return the same topic.
        min_len: Minimum sequence length.
        max_len: Maximum sequence length.
        seed: Seed the data set was generated with; :func:`generate` sets it
            from its ``seed`` argument, so the ground truth records it.
    """

    n_users: int = 2000
    n_items: int = 1000
    n_topics: int = 20
    min_interests: int = 2
    max_interests: int = 4
    dirichlet_alpha: float = 1.0
    zipf_exponent: float = 1.0
    switch_prob: float = 0.2
    min_len: int = 20
    max_len: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_topics", "min_interests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"invalid {name}={getattr(self, name)}: must be >= 1")
        if self.n_topics > self.n_items:
            raise ConfigError(
                f"invalid n_topics={self.n_topics}: must not exceed n_items={self.n_items}, "
                "because every topic needs at least one item"
            )
        if not self.min_interests <= self.max_interests <= self.n_topics:
            raise ConfigError(
                f"invalid interests per user {self.min_interests}..{self.max_interests}: "
                f"need 1 <= min_interests <= max_interests <= n_topics={self.n_topics}"
            )
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"invalid dirichlet_alpha={self.dirichlet_alpha}: must be > 0")
        if self.zipf_exponent < 0:
            raise ConfigError(f"invalid zipf_exponent={self.zipf_exponent}: must be >= 0")
        if not 0.0 <= self.switch_prob <= 1.0:
            raise ConfigError(f"invalid switch_prob={self.switch_prob}: must be in [0, 1]")
        if not 3 <= self.min_len <= self.max_len:
            raise ConfigError(
                f"invalid sequence lengths {self.min_len}..{self.max_len}: need "
                "3 <= min_len <= max_len, because leave-one-out needs 3 items per user"
            )
        smallest_topic = self.n_items // self.n_topics
        if self.min_interests * smallest_topic < self.max_len:
            raise ConfigError(
                f"invalid sizes: a user with {self.min_interests} interests of "
                f"{smallest_topic} items each cannot fill a sequence of max_len={self.max_len} "
                "without repeating an item; raise n_items or min_interests, or lower max_len"
            )


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """Ground truth of a generated data set.

    Attributes:
        item_topic: ``(n_items + 1,)`` int64 topic ``0..n_topics - 1`` of each item;
            entry 0 is padding (stored as 0, ignore it).
        item_prob: ``(n_items + 1,)`` float64 draw probability of each item inside
            its topic (Zipf over the popularity rank); 0 for padding.
        user_topics: ``(n_users, n_topics)`` float64 interest weights; each row
            sums to 1 and is non-zero exactly on the user's topics.
        config: The configuration, with ``seed`` set to the seed used.
    """

    item_topic: np.ndarray
    item_prob: np.ndarray
    user_topics: np.ndarray
    config: SyntheticConfig


def generate(seed: int = 0, config: SyntheticConfig | None = None) -> Sequences:
    """Generate the synthetic planted-interest data set.

    Topics are assigned to items by a random permutation, so item ids carry no
    topic or popularity order. A user's first topic is drawn from the interest
    weights, which makes the expected topic share at every position equal to
    the weight (until a topic runs out, see below). Users never repeat an item: the k-th item a user takes from a
    topic is the k-th of a popularity-weighted draw without replacement
    (Gumbel top-k) over that topic.

    Two choices depart from a plain "switch to another topic" chain, and both
    keep the ground truth meaningful:

    - A switch redraws from all of the user's topics, the current one included,
      so the long-run share of each topic equals its weight. Switching only to
      other topics would flatten the shares towards uniform. The probability of
      an actual topic change at a step is ``switch_prob * (1 - w_current)``.
    - Items do not repeat within a user, as in real data after duplicate
      removal, because a repeated item could be a test target that evaluation
      excludes as a history item. When a user has taken every item of the current
      topic, the topic is redrawn among the user's topics with items left,
      which shifts that user's shares slightly away from the weights.

    Args:
        seed: Seed of every random draw; the same seed gives identical arrays.
        config: Sizes and shape (default: :class:`SyntheticConfig`); its
            ``seed`` field is replaced by ``seed``.

    Returns:
        Sequences named ``"synthetic"`` with ``item_topics`` set and ``truth``
        a :class:`SyntheticTruth`. Original ids are the internal ids as strings.
    """
    config = dataclasses.replace(config or SyntheticConfig(), seed=seed)
    rng = np.random.default_rng(seed)

    item_topic, item_prob, topic_items = _make_items(config, rng)
    slot_topics, slot_weights = _make_interests(config, rng)
    lengths = rng.integers(config.min_len, config.max_len + 1, size=config.n_users)
    orders = _draw_item_orders(topic_items, item_prob, slot_topics, config, rng)
    items = _walk_topics(slot_topics, slot_weights, topic_items, orders, config, rng)

    # Keep the first lengths[u] steps of every user, in row-major (time) order.
    keep = np.arange(config.max_len)[None, :] < lengths[:, None]
    offsets = np.zeros(config.n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    seqs = Ragged(offsets, items[keep])

    user_topics = np.zeros((config.n_users, config.n_topics), dtype=np.float64)
    rows = np.repeat(np.arange(config.n_users), slot_topics.shape[1])
    used = slot_topics.ravel() >= 0
    user_topics[rows[used], slot_topics.ravel()[used]] = slot_weights.ravel()[used]

    truth = SyntheticTruth(
        item_topic=item_topic, item_prob=item_prob, user_topics=user_topics, config=config
    )
    logger.info(
        "generated synthetic data: %d users, %d items, %d topics, %d interactions (seed %d)",
        config.n_users,
        config.n_items,
        config.n_topics,
        seqs.offsets[-1],
        seed,
    )
    return Sequences(
        name="synthetic",
        seqs=seqs,
        user_ids=np.arange(config.n_users).astype(str),
        item_ids=np.concatenate([["<pad>"], np.arange(1, config.n_items + 1).astype(str)]),
        item_topics=item_topic.copy(),
        truth=truth,
    )


def _make_items(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign topics and Zipf probabilities to items.

    Returns ``item_topic (N + 1,)``, ``item_prob (N + 1,)`` and ``topic_items
    (T, S)``: each topic's item ids by popularity rank, padded with 0 where a
    topic has fewer than S items.
    """
    n_items, n_topics = config.n_items, config.n_topics
    item_topic = np.zeros(n_items + 1, dtype=np.int64)
    item_topic[1:] = rng.permutation(np.arange(n_items) % n_topics)

    # Rank the items of each topic by an independent random priority.
    priority = rng.permutation(n_items)
    order = np.lexsort((priority, item_topic[1:])) + 1  # item ids grouped by topic
    sizes = np.bincount(item_topic[1:], minlength=n_topics)
    group_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(n_items) - np.repeat(group_starts, sizes)  # 0-based rank inside topic

    weight = (rank + 1.0) ** -config.zipf_exponent
    totals = np.bincount(item_topic[order], weights=weight, minlength=n_topics)
    item_prob = np.zeros(n_items + 1, dtype=np.float64)
    item_prob[order] = weight / totals[item_topic[order]]

    topic_items = np.zeros((n_topics, sizes.max()), dtype=np.int64)
    topic_items[item_topic[order], rank] = order
    return item_topic, item_prob, topic_items


def _make_interests(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw each user's topics and weights.

    Returns ``slot_topics (U, M)`` (topic of each interest slot, -1 on unused
    slots) and ``slot_weights (U, M)`` (0 on unused slots), M = ``max_interests``.
    """
    n_users, width = config.n_users, config.max_interests
    counts = rng.integers(config.min_interests, config.max_interests + 1, size=n_users)

    # The first columns of a random permutation per row are distinct topics.
    permutations = np.argsort(rng.random((n_users, config.n_topics)), axis=1)
    used = np.arange(width)[None, :] < counts[:, None]  # (U, M)
    slot_topics = np.where(used, permutations[:, :width], -1)

    # Normalised Gamma draws are Dirichlet draws over the used slots. A small
    # alpha can underflow a draw to 0, so a floor keeps every chosen topic drawable.
    gamma = rng.gamma(config.dirichlet_alpha, size=(n_users, width))
    gamma = np.maximum(gamma, np.finfo(np.float64).tiny) * used
    slot_weights = gamma / gamma.sum(axis=1, keepdims=True)
    return slot_topics, slot_weights


def _draw_item_orders(
    topic_items: np.ndarray,
    item_prob: np.ndarray,
    slot_topics: np.ndarray,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Order each slot's topic items by a popularity-weighted draw without replacement.

    Sorting ``log p + Gumbel noise`` in decreasing order gives the order in which
    successive draws without replacement, each proportional to ``p``, pick the
    items (the Gumbel top-k trick). Only the first ``max_len`` positions can be
    used, so only those are kept.

    Returns ``(U, M, K)`` item ids, K = ``min(S, max_len)``; 0 past a topic's end.
    """
    n_users, width = slot_topics.shape
    size = topic_items.shape[1]
    keep = min(size, config.max_len)
    log_p = np.full(topic_items.shape, -np.inf)
    real = topic_items > 0
    log_p[real] = np.log(item_prob[topic_items[real]])

    orders = np.zeros((n_users, width, keep), dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // (width * size))
    for first in range(0, n_users, chunk):
        topics = np.maximum(slot_topics[first : first + chunk], 0)  # (C, M)
        keys = log_p[topics] + rng.gumbel(size=(*topics.shape, size))  # (C, M, S)
        top = np.argsort(-keys, axis=2, kind="stable")[:, :, :keep]  # (C, M, K)
        orders[first : first + chunk] = topic_items[topics[:, :, None], top]
    return orders


def _walk_topics(
    slot_topics: np.ndarray,
    slot_weights: np.ndarray,
    topic_items: np.ndarray,
    orders: np.ndarray,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Run the topic chain of every user for ``max_len`` steps, vectorised across users.

    Returns ``(U, max_len)`` item ids; callers cut each row to its length.
    """
    n_users, width = slot_topics.shape
    rows = np.arange(n_users)
    topic_sizes = np.count_nonzero(topic_items, axis=1)
    capacity = np.where(slot_topics >= 0, topic_sizes[np.maximum(slot_topics, 0)], 0)  # (U, M)
    n_taken = np.zeros((n_users, width), dtype=np.int64)
    items = np.zeros((n_users, config.max_len), dtype=np.int64)

    slot = _draw_slots(slot_weights, rng)
    for step in range(config.max_len):
        if step > 0:
            exhausted = n_taken[rows, slot] >= capacity[rows, slot]
            redraw = np.flatnonzero((rng.random(n_users) < config.switch_prob) | exhausted)
            open_weights = slot_weights[redraw] * (n_taken[redraw] < capacity[redraw])
            slot[redraw] = _draw_slots(open_weights, rng)
        items[:, step] = orders[rows, slot, n_taken[rows, slot]]
        n_taken[rows, slot] += 1
    return items


def _draw_slots(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one column per row with probability proportional to ``weights (R, M)``."""
    cumulative = np.cumsum(weights, axis=1)
    threshold = rng.random(len(weights)) * cumulative[:, -1]
    slot = np.count_nonzero(cumulative <= threshold[:, None], axis=1)
    # Rounding can put the threshold on the total; fall back to the last positive column.
    last_positive = weights.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)
    return np.minimum(slot, last_positive)
