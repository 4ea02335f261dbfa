"""Capsule routing (ComiRec-DR, MIND): squash, routing against a brute-force loop, sizes, randomness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backbones import build_backbone
from backbones.routing import coupling_coefficients, dynamic_routing, squash

N_ITEMS, DIM, K, MAX_LEN = 40, 8, 3, 7
ROUTED = ["comirec-dr", "mind"]


def make(name: str, seed: int = 0, **options: object) -> torch.nn.Module:
    return build_backbone(
        name, n_items=N_ITEMS, dim=DIM, num_interests=K, max_len=MAX_LEN, options=options, seed=seed
    )


def right_aligned(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(1, N_ITEMS + 1, (len(lengths), MAX_LEN), generator=generator)
    mask = torch.arange(MAX_LEN).unsqueeze(0) >= MAX_LEN - torch.tensor(lengths).unsqueeze(1)
    return history * mask, mask


def brute_force_routing(
    embeddings: np.ndarray,
    mask: np.ndarray,
    logits: np.ndarray,
    maps: np.ndarray,
    iterations: int,
    axis: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Textbook routing with explicit per-item predictions and Python loops."""
    batch, length, dim = embeddings.shape
    k = logits.shape[1]
    capsules = np.zeros((batch, k, dim))
    weights = np.zeros((batch, k, length))
    for b in range(batch):
        logit = logits[b].copy()
        valid = [pos for pos in range(length) if mask[b, pos]]
        for iteration in range(iterations):
            weight = np.zeros((k, length))
            for pos in valid:
                for kk in range(k):
                    if axis == "interests":
                        weight[kk, pos] = math.exp(logit[kk, pos]) / sum(
                            math.exp(logit[j, pos]) for j in range(k)
                        )
                    else:
                        weight[kk, pos] = math.exp(logit[kk, pos]) / sum(
                            math.exp(logit[kk, q]) for q in valid
                        )
            for kk in range(k):
                total = np.zeros(dim)
                for pos in valid:
                    total += weight[kk, pos] * prediction(maps, kk, pos, length, embeddings[b, pos])
                norm2 = float(total @ total)
                capsules[b, kk] = (
                    norm2 / (1 + norm2) * total / math.sqrt(norm2) if norm2 > 0 else total
                )
            if iteration < iterations - 1:
                for kk in range(k):
                    for pos in valid:
                        logit[kk, pos] += (
                            prediction(maps, kk, pos, length, embeddings[b, pos]) @ capsules[b, kk]
                        )
            weights[b] = weight
    return capsules, weights


def prediction(
    maps: np.ndarray, k: int, pos: int, length: int, embedding: np.ndarray
) -> np.ndarray:
    if maps.ndim == 4:
        return maps[maps.shape[0] - length + pos, k] @ embedding
    return maps[k if maps.shape[0] > 1 else 0] @ embedding


def routing_inputs(maps_shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    batch, k, length, dim = 2, 2, 3, 2
    mask = torch.tensor([[True, True, True], [False, True, True]])
    embeddings = torch.randn(
        batch, length, dim, generator=generator, dtype=torch.float64
    ) * mask.unsqueeze(-1)
    logits = torch.randn(batch, k, length, generator=generator, dtype=torch.float64)
    maps = torch.randn(maps_shape, generator=generator, dtype=torch.float64)
    return embeddings, mask, logits, maps


def test_squash_hand_value() -> None:
    # |s|^2 = 25, so the output is s * 25 / 26 / 5.
    out = squash(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[15 / 26, 20 / 26], [0.0, 0.0]]))


@pytest.mark.parametrize("axis", ["interests", "positions"], ids=["interests", "positions"])
@pytest.mark.parametrize(
    "maps_shape",
    [(2, 2, 2), (1, 2, 2), (4, 2, 2, 2)],
    ids=["per-interest", "shared", "per-position"],
)
@pytest.mark.parametrize("iterations", [1, 3], ids=["1-iteration", "3-iterations"])
def test_routing_matches_brute_force(
    axis: str, maps_shape: tuple[int, ...], iterations: int
) -> None:
    embeddings, mask, logits, maps = routing_inputs(maps_shape)
    length = embeddings.shape[1]
    # A per-position stack covers max_len positions; the caller passes the last L of them.
    used = maps[-length:] if maps.dim() == 4 else maps
    capsules, weights = dynamic_routing(
        embeddings, mask, logits, used, iterations=iterations, axis=axis, stop_gradient=True
    )
    expected_capsules, expected_weights = brute_force_routing(
        embeddings.numpy(), mask.numpy(), logits.numpy(), maps.numpy(), iterations, axis
    )
    # squash adds 1e-9 under its square root, hence the relative tolerance.
    np.testing.assert_allclose(capsules.numpy(), expected_capsules, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-7, atol=1e-10)


def test_coupling_coefficients_sum_to_one() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, generator=generator)
    mask = torch.tensor([[True, True, True, True], [False, False, True, True]])
    across_interests = coupling_coefficients(logits, mask, "interests")
    torch.testing.assert_close(across_interests.sum(dim=1), mask.float())
    across_positions = coupling_coefficients(logits, mask, "positions")
    torch.testing.assert_close(across_positions.sum(dim=2), torch.ones(2, 3))
    assert (across_positions[1, :, :2] == 0).all()


def test_stop_gradient_keeps_only_last_iteration() -> None:
    embeddings, mask, logits, maps = routing_inputs((2, 2, 2))
    embeddings.requires_grad_(True)
    target = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    capsules, weights = dynamic_routing(
        embeddings, mask, logits, maps, iterations=3, axis="interests", stop_gradient=True
    )
    (grad,) = torch.autograd.grad((capsules * target).sum(), embeddings)

    # Independent route: the last iteration alone, with its coupling coefficients held constant.
    predictions = torch.einsum("koi,bli->bklo", maps, embeddings)
    last = squash(torch.einsum("bkl,bklo->bko", weights.detach(), predictions))
    (expected,) = torch.autograd.grad((last * target).sum(), embeddings)
    torch.testing.assert_close(grad, expected)

    capsules, _ = dynamic_routing(
        embeddings, mask, logits, maps, iterations=3, axis="interests", stop_gradient=False
    )
    (full,) = torch.autograd.grad((capsules * target).sum(), embeddings)
    assert not torch.allclose(full, expected)


def test_routing_rejects_zero_iterations() -> None:
    embeddings, mask, logits, maps = routing_inputs((2, 2, 2))
    with pytest.raises(ValueError, match="iterations"):
        dynamic_routing(
            embeddings, mask, logits, maps, iterations=0, axis="interests", stop_gradient=True
        )


@pytest.mark.parametrize("name", ROUTED, ids=ROUTED)
def test_squash_bounds_interest_norms(name: str) -> None:
    options = {"relu_layer": False} if name == "mind" else {}
    model = make(name, **options)
    with torch.no_grad():
        # Large embeddings push the capsule norms towards 1.
        model.item_embedding.weight.mul_(100.0)
    history, mask = right_aligned([7, 3, 1, 5])
    norms = model(history, mask).norm(dim=-1)
    assert (norms < 1).all()
    assert norms.max() > 0.99


@pytest.mark.parametrize("name", ROUTED, ids=ROUTED)
def test_iteration_count_changes_output(name: str) -> None:
    once = make(name, routing_iterations=1).eval()
    thrice = make(name, routing_iterations=3).eval()
    for key, value in once.state_dict().items():
        assert torch.equal(value, thrice.state_dict()[key]), key
    history, mask = right_aligned([7, 5])
    difference = (once(history, mask) - thrice(history, mask)).abs().max()
    assert difference > 1e-3


@pytest.mark.parametrize("name", ROUTED, ids=ROUTED)
def test_routing_axis_changes_output(name: str) -> None:
    interests = make(name, routing_axis="interests").eval()
    positions = make(name, routing_axis="positions").eval()
    history, mask = right_aligned([7, 5])
    assert not torch.allclose(interests(history, mask), positions(history, mask))
    positions(history, mask)
    torch.testing.assert_close(positions.attention().sum(dim=2), torch.ones(2, K))


def test_parameter_counts() -> None:
    embedding = (N_ITEMS + 1) * DIM  # 41 * 8 = 328
    # ComiRec-DR: one D x D map per interest, 3 * 8 * 8 = 192.
    per_interest = make("comirec-dr")
    assert sum(p.numel() for p in per_interest.parameters()) == embedding + K * DIM * DIM == 520
    # With a map per position and interest: 7 * 3 * 8 * 8 = 1344.
    per_position = make("comirec-dr", position_maps=True)
    assert (
        sum(p.numel() for p in per_position.parameters())
        == embedding + MAX_LEN * K * DIM * DIM
        == 1672
    )
    # MIND: one shared D x D map, 8 * 8 = 64, whatever K is.
    shared = make("mind", relu_layer=False)
    assert sum(p.numel() for p in shared.parameters()) == embedding + DIM * DIM == 392
    # The ReLU layer adds a D x D weight and a bias of D: 64 + 8.
    with_relu = make("mind")
    assert (
        sum(p.numel() for p in with_relu.parameters())
        == embedding + DIM * DIM + DIM * DIM + DIM
        == 464
    )


def test_dr_length_one_positions_axis_hand_value() -> None:
    # One valid item with softmax over positions: weight 1, so interest k is squash(W_k e).
    model = make("comirec-dr", routing_axis="positions")
    history, mask = right_aligned([1])
    out = model(history, mask)
    embedding = model.item_embedding.weight[history[0, -1]]
    expected = squash(torch.einsum("koi,i->ko", model.bilinear, embedding))
    torch.testing.assert_close(out[0], expected)


def test_mind_training_draws_fresh_logits() -> None:
    model = make("mind")
    history, mask = right_aligned([7, 5])
    assert not torch.allclose(model(history, mask), model(history, mask))


def test_mind_evaluation_is_deterministic() -> None:
    model = make("mind").eval()
    history, mask = right_aligned([7, 5, 2])
    first = model(history, mask)
    model.train()
    model(history, mask)
    model.eval()
    torch.testing.assert_close(model(history, mask), first, rtol=0, atol=0)
    # A user's interests do not depend on the other users in the batch.
    torch.testing.assert_close(model(history[2:], mask[2:]), first[2:], rtol=1e-6, atol=1e-7)


def test_mind_interests_differ_from_each_other() -> None:
    # With one shared map only the random logits separate the interests.
    model = make("mind", relu_layer=False).eval()
    history, mask = right_aligned([7])
    out = model(history, mask)[0]
    assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ROUTED, ids=ROUTED)
def test_forward_leaves_global_rng_alone(name: str) -> None:
    model = make(name)
    history, mask = right_aligned([7, 5])
    state = torch.random.get_rng_state()
    model(history, mask)
    model.eval()
    model(history, mask)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_dr_position_maps_ignore_padding() -> None:
    model = make("comirec-dr", position_maps=True)
    history, mask = right_aligned([7, 4, 2])
    out = model(history, mask)
    for row, length in enumerate([7, 4, 2]):
        alone = history[row : row + 1, MAX_LEN - length :]
        # The last `length` position maps serve the unpadded history too.
        unpadded = model(alone, torch.ones_like(alone, dtype=torch.bool))
        torch.testing.assert_close(out[row : row + 1], unpadded, rtol=1e-5, atol=1e-6)

    out.sum().backward()
    grad = model.bilinear.grad  # (L, K, D, D)
    # Row 0 fills all seven positions, so the maps of every position get a gradient.
    assert (grad.flatten(1).abs().sum(dim=1) > 0).all()
