"""Dynamic routing between capsules (Sabour et al., NeurIPS 2017), shared by ComiRec-DR and MIND.

The history items are the low-level capsules and the K interests are the
high-level capsules. Item ``l`` sends the prediction ``u_hat[k, l] = W_k e_l``
to interest ``k``, a bilinear map of its embedding. Routing starts from
logits ``b[k, l]`` and repeats: coupling coefficients ``c = softmax(b)``,
capsules ``v_k = squash(sum_l c[k, l] u_hat[k, l])``, agreement update
``b[k, l] += u_hat[k, l] . v_k``.

The axis of the softmax is where public implementations disagree. The
capsule paper normalises across interests, so every item distributes one
unit of weight over the K interests. So do the MIND paper (Li et al., CIKM
2019, a softmax over the routing logits of one behaviour) and the
TensorFlow code of ComiRec (THUDM/ComiRec, ``src/model.py``,
``softmax(axis=1)``). The PyTorch ports (ShiningCosmos/pytorch_ComiRec and the REMI and
BaM code built on it) normalise across positions, so every interest is a
weighted mean of the history. Both are available as ``axis``, and the
backbones default to ``"interests"``.

Padding positions never receive weight. With ``axis="positions"`` they are
masked before the softmax, so the weights over the valid positions sum to
one. The PyTorch ports zero padding only after the softmax; there the valid
weights sum to less than one whenever the history is shorter than L.

When a map does not depend on the position, the predictions are never
formed. By linearity, ``sum_l c[k, l] W_k e_l = W_k (sum_l c[k, l] e_l)`` and
``(W_k e_l) . v_k = e_l . (W_k^T v_k)``, so each step costs ``O(B K L D + B K D^2)``
instead of the ``O(B K L D^2)`` of the public code, with the same result up
to rounding.
"""

from __future__ import annotations

from typing import Literal

import torch

RoutingAxis = Literal["interests", "positions"]


def squash(vectors: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Apply the capsule non-linearity ``|s|^2 / (1 + |s|^2) * s / |s|`` along the last axis.

    The output norm is ``|s|^2 / (1 + |s|^2)``, which is always below 1.
    ``eps`` keeps the zero vector (a user without valid items) at zero
    instead of NaN.
    """
    squared_norm = vectors.pow(2).sum(dim=-1, keepdim=True)
    scale = squared_norm / (1.0 + squared_norm) / torch.sqrt(squared_norm + eps)
    return scale * vectors


def coupling_coefficients(
    logits: torch.Tensor, mask: torch.Tensor, axis: RoutingAxis
) -> torch.Tensor:
    """Turn routing logits ``(B, K, L)`` into coupling coefficients, zero on padding.

    Args:
        logits: ``(B, K, L)`` routing logits.
        mask: ``(B, L)`` bool, True on real items.
        axis: ``"interests"`` (softmax over K) or ``"positions"`` (softmax over
            the valid positions).

    Returns:
        ``(B, K, L)`` weights. With ``"interests"`` they sum to one over K at
        every valid position. With ``"positions"`` they sum to one over L for
        every interest of a user with at least one valid item.
    """
    valid = mask.unsqueeze(1)  # (B, 1, L)
    if axis == "interests":
        weights = torch.softmax(logits, dim=1)
    else:
        # A finite fill keeps rows without any valid item free of NaN; the
        # multiplication below zeroes them.
        filled = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        weights = torch.softmax(filled, dim=2)
    return weights * valid.to(weights.dtype)


def dynamic_routing(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    logits: torch.Tensor,
    maps: torch.Tensor,
    *,
    iterations: int,
    axis: RoutingAxis,
    stop_gradient: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route the items of a history to K interest capsules.

    Args:
        embeddings: ``(B, L, D)`` item embeddings, zero on padding.
        mask: ``(B, L)`` bool, True on real items.
        logits: ``(B, K, L)`` initial routing logits.
        maps: Bilinear maps, each stored as an ``(out, in)`` matrix. The
            shape is ``(K, D, D)`` for one map per interest (ComiRec-DR),
            ``(1, D, D)`` for one map shared by all interests (MIND), or
            ``(L, K, D, D)`` for one map per position and interest. In the
            last case row ``L - 1`` belongs to the last position.
        iterations: Number of routing iterations (>= 1).
        axis: Softmax axis of the coupling coefficients (see the module docstring).
        stop_gradient: Treat the predictions as constants in every iteration
            but the last, as the ComiRec code does. Only the last iteration
            then carries gradient to the embeddings and maps, and the
            coupling coefficients carry none.

    Returns:
        ``capsules (B, K, D)`` after squash, and the coupling coefficients
        ``(B, K, L)`` of the last iteration.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if maps.dim() == 4:
        predictions = torch.einsum("lkoi,bli->bklo", maps, embeddings).contiguous()  # (B, K, L, D)
    for iteration in range(iterations):
        last = iteration == iterations - 1
        constant = stop_gradient and not last
        weights = coupling_coefficients(logits, mask, axis)  # (B, K, L)

        if maps.dim() == 4:
            source = predictions.detach() if constant else predictions
            capsules = squash(torch.matmul(weights.unsqueeze(2), source).squeeze(2))  # (B, K, D)
            if not last:
                # A broadcast product and sum: batched (L x D) @ (D x 1) products are slower on CPU.
                logits = logits + (source * capsules.unsqueeze(2)).sum(dim=-1)  # (B, K, L)
            continue

        items = embeddings.detach() if constant else embeddings
        kernels = maps.detach() if constant else maps
        pooled = torch.bmm(weights, items)  # (B, K, D): sum_l c[k, l] e_l
        capsules = squash(
            _apply_maps(kernels, pooled)
        )  # (B, K, D): W_k applied to the pooled items
        if not last:
            pulled_back = _apply_maps(kernels.transpose(1, 2), capsules)  # (B, K, D): W_k^T v_k
            logits = logits + torch.bmm(pulled_back, items.transpose(1, 2))  # (B, K, L)
    return capsules, weights


def _apply_maps(maps: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Multiply interest k's vector by ``maps[k]`` (or by the one shared map): ``(B, K, D)``."""
    # (K, B, D_in) @ (K|1, D_in, D_out) broadcasts a shared map over K.
    return torch.matmul(vectors.transpose(0, 1), maps.transpose(1, 2)).transpose(0, 1)
