"""Train, validation and test splits of prepared sequences.

Two protocols are supported:

- ``"loo"`` (leave-one-out, the BaM protocol): every user's last item is the
  test target and the second-last item the validation target.
- ``"user"`` (the ComiRec and REMI protocol): users are split 80/10/10 into
  training, validation and test users. A validation or test user's sequence
  is cut into a history (the first 80%) and targets (the rest).

``Split.train`` has one row per internal user id of the data set, so row
``u`` always belongs to user ``u``. Users who contribute nothing to training
(dropped users, and validation and test users of the user split) have empty
rows, which the training sampler skips.
"""

from __future__ import annotations

import logging

import numpy as np

from harness.config import SplitName, check_choice
from harness.data.types import EvalSet, Ragged, Sequences, Split
from harness.errors import DataError

logger = logging.getLogger(__name__)

# Minimum sequence length of each protocol. Leave-one-out needs two held-out
# items and one history item, and the user split one history item and one target.
MIN_LENGTH: dict[str, int] = {"loo": 3, "user": 2}

# A leave-one-out user gives a training example only with 4 items: two held
# out, then a target with one history item before it.
_LOO_MIN_TRAINABLE = 4


def make_split(seqs: Sequences, protocol: str = "loo", seed: int = 0) -> Split:
    """Split every user's sequence into training rows and validation and test sets.

    Leave-one-out: the training row is the sequence without its last two items,
    validation is (history: all but the last two, target: the second-last) and
    test is (history: all but the last, target: the last). Users with fewer
    than 3 items are dropped.

    User split: the users with at least 2 items are shuffled by
    ``numpy.random.default_rng(seed)`` and cut into validation and test parts
    of ``max(1, round(n / 10))`` users each (halves rounded up), the rest
    being training users. Training users' whole sequences are training rows.
    A validation or test user with ``n`` items has the first ``floor(0.8 * n)``
    items as history and the remaining items as targets. Flooring matches the
    ComiRec reference code (``int(len(item_list) * 0.8)`` in
    ``src/data_iterator.py`` of THUDM/ComiRec) and leaves at least one history
    item and at least one target for every ``n >= 2``. Users with fewer
    than 2 items are dropped.

    Dropped users are logged with their count. The validation and test sets
    list users in increasing id order.

    Args:
        seqs: Prepared sequences of the data set.
        protocol: ``"loo"`` or ``"user"``.
        seed: Seed of the user shuffle; leave-one-out ignores it.

    Returns:
        The split; ``train`` has one row per user of ``seqs`` (see the module docstring).

    Raises:
        ConfigError: If ``protocol`` is not a valid split name.
        DataError: If leave-one-out leaves no training row with 2 items (the
            smallest that gives one training example), or the user split has
            fewer than 3 users with at least 2 items.
    """
    check_choice("split", protocol, SplitName)

    lengths = seqs.seqs.lengths
    kept_users = np.flatnonzero(lengths >= MIN_LENGTH[protocol])
    n_dropped = seqs.n_users - len(kept_users)
    if n_dropped:
        logger.info(
            "%s: dropped %d of %d users with fewer than %d items for the %s split",
            seqs.name,
            n_dropped,
            seqs.n_users,
            MIN_LENGTH[protocol],
            protocol,
        )

    if protocol == "loo":
        return _leave_one_out(seqs, kept_users)
    return _user_split(seqs, kept_users, seed, n_dropped)


def _leave_one_out(seqs: Sequences, kept_users: np.ndarray) -> Split:
    lengths = seqs.seqs.lengths
    if not np.any(lengths >= _LOO_MIN_TRAINABLE):
        n_short = int(np.count_nonzero(lengths < _LOO_MIN_TRAINABLE))
        raise DataError(
            f"data set {seqs.name!r}: nothing to train on with the 'loo' split, because "
            f"all {n_short} users have fewer than {_LOO_MIN_TRAINABLE} items (two are held out "
            "and a training example needs a target with one item before it); "
            "use a data set with longer sequences or lower the k-core threshold"
        )

    offsets = seqs.seqs.offsets
    values = seqs.seqs.values
    starts = offsets[kept_users]
    ends = offsets[kept_users + 1]

    # Dropped users keep an empty training row so that row u stays user u.
    train_ends = offsets[:-1].copy()
    train_ends[kept_users] = ends - 2
    train = _slice_rows(values, offsets[:-1], train_ends)

    valid = EvalSet(
        users=kept_users,
        history=_slice_rows(values, starts, ends - 2),
        targets=_slice_rows(values, ends - 2, ends - 1),
    )
    test = EvalSet(
        users=kept_users,
        history=_slice_rows(values, starts, ends - 1),
        targets=_slice_rows(values, ends - 1, ends),
    )
    return Split(train=train, valid=valid, test=test, n_items=seqs.n_items, protocol="loo")


def _user_split(seqs: Sequences, kept_users: np.ndarray, seed: int, n_dropped: int) -> Split:
    n_kept = len(kept_users)
    if n_kept < 3:
        raise DataError(
            f"data set {seqs.name!r}: the 'user' split needs at least 3 users with 2 or more "
            f"items (one each for training, validation and test), found {n_kept} "
            f"({n_dropped} of {seqs.n_users} users are too short); "
            "use a larger data set or the 'loo' split"
        )

    # Round half up so that 25 users give 3 validation users, not Python's banker's 2.
    n_eval = max(1, (n_kept + 5) // 10)
    n_train = n_kept - 2 * n_eval
    shuffled = np.random.default_rng(seed).permutation(kept_users)
    train_users = np.sort(shuffled[:n_train])
    valid_users = np.sort(shuffled[n_train : n_train + n_eval])
    test_users = np.sort(shuffled[n_train + n_eval :])

    offsets = seqs.seqs.offsets
    values = seqs.seqs.values
    train_ends = offsets[:-1].copy()
    train_ends[train_users] = offsets[train_users + 1]
    train = _slice_rows(values, offsets[:-1], train_ends)

    return Split(
        train=train,
        valid=_cut_history(seqs.seqs, valid_users),
        test=_cut_history(seqs.seqs, test_users),
        n_items=seqs.n_items,
        protocol="user",
    )


def _cut_history(seqs: Ragged, users: np.ndarray) -> EvalSet:
    starts = seqs.offsets[users]
    ends = seqs.offsets[users + 1]
    # Integer floor of 0.8 * n, exact where the float product could round.
    cuts = starts + (4 * (ends - starts)) // 5
    return EvalSet(
        users=users,
        history=_slice_rows(seqs.values, starts, cuts),
        targets=_slice_rows(seqs.values, cuts, ends),
    )


def _slice_rows(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Ragged:
    """Gather ``values[starts[r]:ends[r]]`` for every row ``r`` into a new Ragged."""
    lengths = (ends - starts).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Flat index of every gathered value: start of its row plus its position inside the row.
    position = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    flat = values[np.repeat(starts.astype(np.int64), lengths) + position]
    return Ragged(offsets, flat.astype(np.int64, copy=False))
