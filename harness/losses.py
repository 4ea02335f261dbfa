"""Training losses: negative samplers, sampled softmax with log-Q correction, full softmax.

Item ids follow :mod:`harness.data.types`: real items are ``1..N`` and id 0 is
padding, so every sampler and loss here leaves row 0 of the embedding table out.
"""

from __future__ import annotations

import logging
import math
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import ConfigError, DataError, unknown_choice

logger = logging.getLogger(__name__)

SamplerKind = Literal["uniform", "popularity", "log-uniform"]


class NegativeSampler:
    """Sampler of batch-shared negative items, drawn with replacement from a fixed law.

    The distributions over the real items ``1..N`` are:

    - ``uniform``: ``Q(i) = 1 / N``.
    - ``popularity``: ``Q(i) = count(i) / sum(count)``. Items with count 0 are
      never drawn.
    - ``log-uniform``: a Zipf-like law over popularity rank. Items are ranked by
      decreasing count (ties: lower id first), rank ``r`` starting at 0, and
      ``Q(r) = log((r + 2) / (r + 1)) / log(N + 1)``. The terms telescope, so they
      sum to 1, and for large ``r`` the probability falls like
      ``1 / ((r + 1) log(N + 1))``. TensorFlow's ``log_uniform_candidate_sampler``
      uses the same law on class ids and expects ids sorted by decreasing
      frequency. Here the ranks come from ``item_counts``, so item ids need no
      particular order.

    Padding (id 0) is never drawn. Sampling uses inverse-CDF lookup on a
    precomputed float64 cumulative table (uniform uses ``torch.randint``), so one
    call costs ``O(n log N)`` and draws only from ``generator``.

    Args:
        item_counts: ``(N + 1,)`` non-negative interaction count per item. Entry 0
            (padding) is ignored. Only ``popularity`` and ``log-uniform`` read the
            counts, but every kind takes ``N`` from the length.
        kind: ``"uniform"``, ``"popularity"`` or ``"log-uniform"``.

    Raises:
        ConfigError: Unknown ``kind``.
        DataError: ``item_counts`` is not a 1-D array of at least two finite,
            non-negative numbers, or ``popularity`` has no positive count.
    """

    def __init__(self, item_counts: np.ndarray, kind: SamplerKind = "uniform") -> None:
        if kind not in get_args(SamplerKind):
            raise unknown_choice("negative sampling", kind, get_args(SamplerKind))
        counts = np.asarray(item_counts, dtype=np.float64)
        if counts.ndim != 1 or len(counts) < 2:
            raise DataError(
                f"invalid item_counts of shape {counts.shape}: expected (n_items + 1,) with n_items >= 1"
            )
        real = counts[1:]
        if not np.all(np.isfinite(real)) or np.any(real < 0):
            bad = int(np.flatnonzero(~np.isfinite(real) | (real < 0))[0]) + 1
            raise DataError(
                f"invalid item_counts[{bad}]={np.asarray(item_counts)[bad].item()!r}: "
                "counts must be finite and >= 0"
            )

        self.kind: SamplerKind = kind
        self.n_items = len(real)
        probs = _probabilities(real, kind)  # (N,) for items 1..N
        self._probs = np.concatenate([[0.0], probs])
        self._cdf = np.cumsum(probs)
        # A uniform draw can round up to the last cumulative value. Clamping to the last item
        # with positive mass keeps zero-probability items at the tail from being returned.
        self._last_positive = int(np.flatnonzero(probs > 0)[-1])
        with np.errstate(divide="ignore"):
            self._log_q_table = np.log(self._probs)
        self._has_zero = bool(np.any(probs == 0))
        self._device_tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def probabilities(self) -> np.ndarray:
        """``(N + 1,)`` float64 probability of drawing each item in one draw (0 for padding)."""
        return self._probs.copy()

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` negative ids with replacement on ``generator``'s device.

        Args:
            n: Number of draws.
            generator: Source of all randomness; its device is the output device.

        Returns:
            ``ids (n,) int64`` in ``1..N`` and ``log_q (n,) float32``, the natural
            log of each id's probability per draw.
        """
        if n < 1:
            raise ConfigError(f"invalid number of negatives n={n}: must be >= 1")
        device = generator.device
        cdf, log_q_table = self._tables(device)
        if self.kind == "uniform":
            ids = torch.randint(1, self.n_items + 1, (n,), generator=generator, device=device)
        else:
            u = torch.rand(n, generator=generator, dtype=torch.float64, device=device) * cdf[-1]
            index = torch.searchsorted(cdf, u, right=True).clamp_(max=self._last_positive)
            ids = index + 1
        return ids, log_q_table[ids]

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the float32 log-probability per draw of each id (targets, for log-Q correction).

        Raises:
            DataError: An id has probability 0 (``popularity`` with a zero count), so
                its log-Q correction would be infinite.
        """
        _, log_q_table = self._tables(ids.device)
        values = log_q_table[ids]
        if self._has_zero:
            zero = torch.isneginf(values)
            if bool(zero.any()):
                item = int(ids[zero][0])
                raise DataError(
                    f"item {item} has count 0 in item_counts, so popularity sampling gives it "
                    "probability 0 and its log-Q correction is infinite; compute item_counts "
                    "from the same training rows that the targets come from"
                )
        return values

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._device_tables:
            cdf = torch.as_tensor(self._cdf, dtype=torch.float64, device=device)
            log_q = torch.as_tensor(self._log_q_table, dtype=torch.float32, device=device)
            self._device_tables[key] = (cdf, log_q)
        return self._device_tables[key]


def _probabilities(counts: np.ndarray, kind: SamplerKind) -> np.ndarray:
    n = len(counts)
    if kind == "uniform":
        return np.full(n, 1.0 / n)
    if kind == "popularity":
        total = counts.sum()
        if total <= 0:
            raise DataError(
                "invalid item_counts for popularity sampling: every count is 0; "
                "pass the training interaction count of each item"
            )
        return counts / total
    # Stable sort on the negated counts puts the lower id first among equal counts.
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(n, dtype=np.float64)
    rank[order] = np.arange(n, dtype=np.float64)
    return np.log1p(1.0 / (rank + 1.0)) / math.log(n + 1.0)


def sampled_softmax_loss(
    user: torch.Tensor,
    target: torch.Tensor,
    item_emb: torch.Tensor,
    negatives: torch.Tensor,
    neg_log_q: torch.Tensor | None = None,
    target_log_q: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
    beta: float = 0.0,
    *,
    detach_weights: bool = True,
) -> torch.Tensor:
    """Compute the mean sampled-softmax negative log-likelihood of each row's target.

    Every row scores its target and the ``S`` shared negatives with inner
    products, ``s_+ = u . e_target`` and ``s_j = u . e_j``. The logits are
    ``l_+ = s_+ - log Q(target)`` and ``l_j = s_j - log Q(j)``. The log-Q terms are
    subtracted only when given. The target is corrected too, as in the standard
    sampled softmax (``tf.nn.sampled_softmax_loss`` takes a ``true_expected_count``
    for this). Subtracting ``log Q`` instead of the log of the expected count
    ``log(S Q)`` shifts every logit by the same ``log S``, which leaves the softmax
    unchanged. A negative equal to the row's target (an accidental hit) gets logit
    ``-inf`` when ``remove_accidental_hits`` is set.

    With ``beta = 0`` the loss per row is ``-l_+ + log(exp(l_+) + sum_j exp(l_j))``.

    With ``beta > 0`` the loss applies REMI's interest-aware hard-negative
    weighting (Xie et al., RecSys 2023). Its self-normalised weights are
    ``w_j = exp(beta * s_j) / sum_k exp(beta * s_k)`` over the row's remaining
    negatives, computed from the raw scores. The loss per row is
    ``-l_+ + log(exp(l_+) + S' * sum_j w_j exp(l_j))``, where ``S'`` is the number of
    remaining negatives. The weighted sum is a self-normalised importance-sampling
    estimate of the mean of ``exp(l_j)`` under the hard-negative distribution
    ``p(j) ~ exp(beta * s_j)``, scaled back to ``S'`` draws. At ``beta = 0`` every
    ``w_j = 1 / S'``, which gives the plain loss. This function then takes the plain
    code path, so the two are equal to the last bit.

    Departures from the weighted branch of REMI's public code:

    - Gradients do not flow through the weights by default, because the weights
      stand for a distribution that negatives are drawn from, and drawing carries
      no gradient. ``detach_weights=False`` lets them flow, as the reference code does.
    - The reference code weights the uncorrected ``exp(s_j)``. Here the weights
      multiply the corrected ``exp(l_j)``. For uniform negatives with both
      corrections given, every logit moves by the same constant, so the loss is
      the same.
    - The reference code keeps accidental hits. Here they are removed from the
      weights and from ``S'`` when ``remove_accidental_hits`` is set.

    Args:
        user: ``(B, D)`` user vectors (the selected interest of each row).
        target: ``(B,)`` int64 target ids in ``1..N``.
        item_emb: ``(N + 1, D)`` item embedding table, row 0 padding.
        negatives: ``(S,)`` int64 negative ids shared by all rows.
        neg_log_q: ``(S,)`` log-probability of each negative per draw, or ``None``
            for no correction.
        target_log_q: ``(B,)`` log-probability of each target per draw, or ``None``.
        remove_accidental_hits: Mask negatives equal to the row's target.
        beta: Hard-negative sharpness, ``>= 0``.
        detach_weights: Treat the hard-negative weights as constants.

    Returns:
        Scalar mean loss over the batch.

    Raises:
        ConfigError: ``beta`` is negative or not finite.
        ValueError: Inconsistent tensor shapes.
    """
    if not math.isfinite(beta) or beta < 0:
        raise ConfigError(f"invalid hard-negative beta={beta!r}: must be finite and >= 0")
    batch = _check_user_target(user, target, item_emb)
    if negatives.ndim != 1 or len(negatives) == 0:
        raise ValueError(
            f"negatives must have shape (S,) with S >= 1, got {tuple(negatives.shape)}"
        )
    if neg_log_q is not None and neg_log_q.shape != negatives.shape:
        raise ValueError(
            f"neg_log_q shape {tuple(neg_log_q.shape)} != negatives shape {tuple(negatives.shape)}"
        )
    if target_log_q is not None and target_log_q.shape != (batch,):
        raise ValueError(f"target_log_q shape {tuple(target_log_q.shape)} != ({batch},)")

    pos_score = (user * item_emb[target]).sum(-1)  # (B,)
    neg_score = user @ item_emb[negatives].T  # (B, S)
    pos_logit = pos_score if target_log_q is None else pos_score - target_log_q
    neg_logit = neg_score if neg_log_q is None else neg_score - neg_log_q.unsqueeze(0)
    hits = (
        negatives.unsqueeze(0) == target.unsqueeze(1) if remove_accidental_hits else None
    )  # (B, S)

    if beta > 0:
        weight_score = neg_score.detach() if detach_weights else neg_score
        log_weight = beta * weight_score  # (B, S)
        n_valid = torch.full(
            (batch,), float(len(negatives)), dtype=neg_logit.dtype, device=user.device
        )
        if hits is not None:
            # A row whose negatives are all hits keeps finite weights here. Its
            # logits are masked below, so these weights never reach the loss.
            all_hit = hits.all(dim=1, keepdim=True)
            log_weight = log_weight.masked_fill(hits & ~all_hit, float("-inf"))
            n_valid = (~hits).sum(dim=1).clamp(min=1).to(neg_logit.dtype)
        log_weight = torch.log_softmax(log_weight, dim=1)
        neg_logit = neg_logit + log_weight + torch.log(n_valid).unsqueeze(1)

    if hits is not None:
        neg_logit = neg_logit.masked_fill(hits, float("-inf"))
    logits = torch.cat([pos_logit.unsqueeze(1), neg_logit], dim=1)  # (B, 1 + S)
    zeros = torch.zeros(batch, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, zeros)


def full_softmax_loss(
    user: torch.Tensor, target: torch.Tensor, item_emb: torch.Tensor
) -> torch.Tensor:
    """Compute the mean softmax negative log-likelihood over all real items ``1..N``.

    Args:
        user: ``(B, D)`` user vectors.
        target: ``(B,)`` int64 target ids in ``1..N``.
        item_emb: ``(N + 1, D)`` item embedding table; row 0 (padding) is not a class.

    Returns:
        Scalar mean loss over the batch.
    """
    _check_user_target(user, target, item_emb)
    logits = user @ item_emb[1:].T  # (B, N)
    return F.cross_entropy(logits, target - 1)


def _check_user_target(user: torch.Tensor, target: torch.Tensor, item_emb: torch.Tensor) -> int:
    if user.ndim != 2 or item_emb.ndim != 2 or user.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"user (B, D) and item_emb (N + 1, D) must share D, got {tuple(user.shape)} and {tuple(item_emb.shape)}"
        )
    if target.shape != (user.shape[0],):
        raise ValueError(f"target shape {tuple(target.shape)} != ({user.shape[0]},)")
    if len(target) and (int(target.min()) < 1 or int(target.max()) >= item_emb.shape[0]):
        raise ValueError(f"target ids must be in 1..{item_emb.shape[0] - 1} (0 is padding)")
    return user.shape[0]
