"""Tests of the synthetic planted-interest generator."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from harness.data.split import make_split
from harness.data.synthetic import SyntheticConfig, SyntheticTruth, generate
from harness.data.types import Sequences
from harness.errors import ConfigError


@pytest.fixture(scope="module")
def default() -> Sequences:
    return generate(0)


def topic_counts(seqs: Sequences) -> np.ndarray:
    """Return ``(n_users, n_topics)`` how many items of each topic every user has."""
    truth = seqs.truth
    users = np.repeat(np.arange(seqs.n_users), seqs.seqs.lengths)
    counts = np.zeros_like(truth.user_topics)
    np.add.at(counts, (users, truth.item_topic[seqs.seqs.values]), 1)
    return counts


def test_shapes_and_ids(default: Sequences) -> None:
    config = SyntheticConfig()
    truth = default.truth
    assert isinstance(truth, SyntheticTruth)
    assert default.name == "synthetic"
    assert default.n_users == config.n_users
    assert default.n_items == config.n_items
    assert default.item_ids[0] == "<pad>"
    assert default.item_ids[1:].tolist() == [str(i) for i in range(1, config.n_items + 1)]
    assert default.user_ids.tolist() == [str(u) for u in range(config.n_users)]
    assert default.item_topics.shape == (config.n_items + 1,)
    assert np.array_equal(default.item_topics, truth.item_topic)
    assert truth.user_topics.shape == (config.n_users, config.n_topics)
    assert truth.config == config
    assert default.seqs.values.min() >= 1
    assert default.seqs.values.max() <= config.n_items


def test_topics_are_balanced(default: Sequences) -> None:
    sizes = np.bincount(default.truth.item_topic[1:], minlength=20)
    assert sizes.tolist() == [50] * 20


def test_user_weights(default: Sequences) -> None:
    weights = default.truth.user_topics
    n_interests = np.count_nonzero(weights, axis=1)
    assert np.allclose(weights.sum(axis=1), 1.0)
    assert n_interests.min() == 2
    assert n_interests.max() == 4
    # Every interest count in 2..4 occurs, at close to a third of the users each.
    shares = np.bincount(n_interests, minlength=5)[2:] / len(weights)
    assert np.all(np.abs(shares - 1 / 3) < 0.05)


def test_items_come_from_user_topics(default: Sequences) -> None:
    counts = topic_counts(default)
    assert counts[default.truth.user_topics == 0].sum() == 0


def test_topic_shares_track_weights(default: Sequences) -> None:
    counts = topic_counts(default)
    shares = counts / counts.sum(axis=1, keepdims=True)
    weights = default.truth.user_topics
    chosen = weights > 0

    assert stats.pearsonr(weights[chosen], shares[chosen]).statistic > 0.75
    # Grouped by weight, the mean share matches the mean weight.
    for low, high in [(0.0, 0.1), (0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.0)]:
        group = chosen & (weights >= low) & (weights < high)
        assert abs(shares[group].mean() - weights[group].mean()) < 0.02, (low, high)


def test_topic_counts_multinomial_when_redrawn_every_step() -> None:
    # With a redraw at every step and topics larger than a sequence, a user's
    # topic counts are Multinomial(length, weights) exactly.
    config = SyntheticConfig(
        n_users=150,
        n_items=10 * 200,
        n_topics=10,
        dirichlet_alpha=5.0,
        switch_prob=1.0,
        min_len=150,
        max_len=150,
    )
    seqs = generate(3, config)
    counts = topic_counts(seqs)
    expected = seqs.truth.user_topics * 150
    chosen = expected > 0
    assert expected[chosen].min() >= 5

    statistic = (((counts - expected) ** 2)[chosen] / expected[chosen]).sum()
    dof = int(np.count_nonzero(chosen) - seqs.n_users)
    p_value = stats.chi2.sf(statistic, dof)
    assert p_value > 0.01, (statistic, dof)


def test_topic_change_rate(default: Sequences) -> None:
    truth = default.truth
    topics = truth.item_topic[default.seqs.values]
    users = np.repeat(np.arange(default.n_users), default.seqs.lengths)
    same_user = users[1:] == users[:-1]
    changed = topics[1:][same_user] != topics[:-1][same_user]

    # A redraw changes topic with probability 1 - w, so the stationary chain
    # changes at a step with probability switch_prob * sum_t w_t (1 - w_t).
    weights = truth.user_topics
    per_user = 0.2 * (weights * (1 - weights)).sum(axis=1)
    expected = (per_user * (default.seqs.lengths - 1)).sum() / same_user.sum()
    assert abs(changed.mean() - expected) < 0.005


def test_no_item_repeats_within_user(default: Sequences) -> None:
    users = np.repeat(np.arange(default.n_users), default.seqs.lengths)
    pairs = users * (default.n_items + 1) + default.seqs.values
    assert len(np.unique(pairs)) == len(pairs)


def test_item_prob_is_zipf(default: Sequences) -> None:
    truth = default.truth
    ranks = np.arange(1, 51)
    assert truth.item_prob[0] == 0
    for topic in range(20):
        probs = np.sort(truth.item_prob[1:][truth.item_topic[1:] == topic])[::-1]
        assert np.isclose(probs.sum(), 1.0)
        assert np.allclose(probs / probs[0], 1.0 / ranks)


def test_zipf_exponent_zero_is_uniform() -> None:
    config = SyntheticConfig(zipf_exponent=0.0)
    truth = generate(0, config).truth
    assert np.allclose(truth.item_prob[1:], 1 / 50)


def test_popularity_ordering_within_topics(default: Sequences) -> None:
    truth = default.truth
    counts = default.item_counts()
    for topic in range(20):
        items = np.flatnonzero(truth.item_topic == topic)
        items = items[items > 0]
        rho = stats.spearmanr(truth.item_prob[items], counts[items]).statistic
        assert rho > 0.8, (topic, rho)
        most_popular = items[np.argmax(truth.item_prob[items])]
        assert counts[most_popular] == counts[items].max()


def test_ids_carry_no_topic_order(default: Sequences) -> None:
    # Topics come from a permutation, so the first 50 ids spread over many topics.
    assert len(np.unique(default.truth.item_topic[1:51])) > 10


def test_deterministic_per_seed(default: Sequences) -> None:
    again = generate(0)
    other = generate(1)
    assert np.array_equal(again.seqs.offsets, default.seqs.offsets)
    assert np.array_equal(again.seqs.values, default.seqs.values)
    assert np.array_equal(again.item_topics, default.item_topics)
    assert np.array_equal(again.truth.user_topics, default.truth.user_topics)
    assert np.array_equal(again.truth.item_prob, default.truth.item_prob)
    assert not np.array_equal(other.item_topics, default.item_topics)
    assert other.truth.config.seed == 1


def test_config_seed_replaced_by_argument() -> None:
    config = SyntheticConfig(n_users=50, seed=99)
    seqs = generate(4, config)
    assert seqs.truth.config.seed == 4
    assert np.array_equal(seqs.seqs.values, generate(4, SyntheticConfig(n_users=50)).seqs.values)


def test_lengths_fit_both_splits(default: Sequences, caplog: pytest.LogCaptureFixture) -> None:
    lengths = default.seqs.lengths
    assert lengths.min() == 20
    assert lengths.max() == 60
    with caplog.at_level(logging.INFO, logger="harness.data.split"):
        loo = make_split(default, "loo")
        user = make_split(default, "user", seed=0)
    assert "dropped" not in caplog.text
    assert len(loo.test) == default.n_users
    assert len(user.valid) + len(user.test) + np.count_nonzero(user.train.lengths) == 2000


def test_exhausted_topic_moves_to_another() -> None:
    # Two topics of 5 items and sequences of 10: a user must take every item
    # of both topics, which only works if exhausted topics are redrawn.
    config = SyntheticConfig(
        n_users=200,
        n_items=10,
        n_topics=2,
        min_interests=2,
        max_interests=2,
        switch_prob=0.0,
        min_len=10,
        max_len=10,
    )
    seqs = generate(0, config)
    for row in seqs.seqs.to_lists():
        assert sorted(row) == list(range(1, 11))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_users": 0}, r"invalid n_users=0"),
        ({"n_topics": 2000}, r"n_topics=2000: must not exceed n_items=1000"),
        ({"min_interests": 5}, r"invalid interests per user 5\.\.4"),
        ({"max_interests": 30}, r"max_interests <= n_topics=20"),
        ({"dirichlet_alpha": 0.0}, r"invalid dirichlet_alpha=0\.0"),
        ({"zipf_exponent": -1.0}, r"invalid zipf_exponent=-1\.0"),
        ({"switch_prob": 1.5}, r"invalid switch_prob=1\.5"),
        ({"min_len": 2}, r"invalid sequence lengths 2\.\.60"),
        ({"min_len": 70}, r"invalid sequence lengths 70\.\.60"),
        ({"max_len": 120}, r"cannot fill a sequence of max_len=120"),
    ],
    ids=[
        "users",
        "topics",
        "min-interests",
        "max-interests",
        "alpha",
        "zipf",
        "switch",
        "short",
        "min-above-max",
        "too-long",
    ],
)
def test_invalid_config_raises(overrides: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyntheticConfig(**overrides)
