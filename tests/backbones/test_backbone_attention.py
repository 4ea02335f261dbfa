"""Attention backbones checked against plain re-computations: ComiRec-SA and SASRec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from backbones.sasrec import SASRec

N_ITEMS, DIM, K, MAX_LEN = 30, 8, 3, 6


def histories() -> tuple[torch.Tensor, torch.Tensor]:
    history = torch.tensor([[0, 0, 4, 9, 11, 2], [3, 5, 7, 9, 2, 30], [0, 0, 0, 0, 0, 6]])
    return history, history != 0


@pytest.mark.parametrize(
    "options",
    [{}, {"position_embedding": False}, {"hidden_bias": False, "hidden": 5}],
    ids=["default", "no-positions", "no-bias-hidden-5"],
)
def test_sa_attention_matches_tanh_formula(options: dict[str, object]) -> None:
    model = build_backbone(
        "comirec-sa", n_items=N_ITEMS, dim=DIM, num_interests=K, max_len=MAX_LEN, options=options
    ).double()
    history, mask = histories()
    interests = model(history, mask)
    attention = model.attention()

    # Independent route: A = softmax over valid positions of W2 tanh(W1 (H + P) + b), per user in numpy.
    extractor = model.extractor
    w1 = extractor.hidden.weight.detach().numpy()
    b1 = (
        np.zeros(w1.shape[0])
        if extractor.hidden.bias is None
        else extractor.hidden.bias.detach().numpy()
    )
    w2 = extractor.heads.weight.detach().numpy()
    table = model.item_embedding.weight.detach().numpy()
    positions = (
        np.zeros((MAX_LEN, DIM))
        if extractor.position is None
        else extractor.position.detach().numpy()
    )
    for row in range(history.shape[0]):
        valid = mask[row].numpy()
        h = table[history[row].numpy()][valid]  # (n, D)
        p = positions[valid]
        logits = w2 @ np.tanh(w1 @ (h + p).T + b1[:, None])  # (K, n)
        a = np.exp(logits - logits.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(
            attention[row][:, valid].detach().numpy(), a, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(interests[row].detach().numpy(), a @ h, rtol=1e-9, atol=1e-12)
        assert (attention[row][:, ~valid] == 0).all()


def reference_sasrec(model: SASRec, items: torch.Tensor) -> torch.Tensor:
    """Pre-LN SASRec on one unpadded history, one position at a time: ``(n, D)``."""
    n = items.shape[0]
    x = model.item_embedding.weight[items] + model.position_embedding[-n:]
    for block in model.blocks:
        qkv = F.linear(
            F.layer_norm(x, (DIM,), block.attention_norm.weight, block.attention_norm.bias),
            block.qkv.weight,
            block.qkv.bias,
        )
        q, k, v = qkv[:, :DIM], qkv[:, DIM : 2 * DIM], qkv[:, 2 * DIM :]
        heads = block.num_heads
        size = DIM // heads
        attended = torch.zeros(n, DIM, dtype=x.dtype)
        for t in range(n):
            for head in range(heads):
                part = slice(head * size, (head + 1) * size)
                scores = torch.stack([q[t, part] @ k[s, part] for s in range(t + 1)]) / math.sqrt(
                    size
                )
                weights = torch.softmax(scores, dim=0)
                attended[t, part] = sum(weights[s] * v[s, part] for s in range(t + 1))
        x = x + attended
        first, _, second = block.feed_forward
        normed = F.layer_norm(
            x, (DIM,), block.feed_forward_norm.weight, block.feed_forward_norm.bias
        )
        x = x + second(torch.relu(first(normed)))
    return F.layer_norm(x, (DIM,), model.final_norm.weight, model.final_norm.bias)


@pytest.mark.parametrize("heads", [1, 2], ids=["one-head", "two-heads"])
def test_sasrec_matches_loop_reference(heads: int) -> None:
    model = (
        build_backbone(
            "sasrec", n_items=N_ITEMS, dim=DIM, max_len=MAX_LEN, options={"num_heads": heads}
        )
        .double()
        .eval()
    )
    history, mask = histories()
    out = model(history, mask)
    for row in range(history.shape[0]):
        expected = reference_sasrec(model, history[row][mask[row]])
        torch.testing.assert_close(out[row, 0], expected[-1])
        torch.testing.assert_close(model.encode(history, mask)[row][mask[row]], expected)


def test_sasrec_is_causal() -> None:
    model = build_backbone("sasrec", n_items=N_ITEMS, dim=DIM, max_len=MAX_LEN).eval()
    history, mask = histories()
    changed = history.clone()
    changed[:, -1] = torch.tensor([1, 1, 1])
    before, after = model.encode(history, mask), model.encode(changed, mask)
    # Positions before the last one cannot see the last item.
    torch.testing.assert_close(
        before[:, :-1][mask[:, :-1]], after[:, :-1][mask[:, :-1]], rtol=0, atol=0
    )
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_sasrec_post_norm_option() -> None:
    model = build_backbone(
        "sasrec", n_items=N_ITEMS, dim=DIM, max_len=MAX_LEN, options={"norm_first": False}
    ).eval()
    history, mask = histories()
    out = model(history, mask)
    # Post-LN ends every block in a LayerNorm with unit weight at initialisation: zero mean per vector.
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(3, 1), rtol=0, atol=1e-6)
    noisy = torch.where(mask, history, torch.randint(1, N_ITEMS + 1, history.shape))
    torch.testing.assert_close(model(noisy, mask), out, rtol=0, atol=0)


def test_sasrec_reads_last_valid_position() -> None:
    model = build_backbone("sasrec", n_items=N_ITEMS, dim=DIM, max_len=MAX_LEN).eval()
    right = torch.tensor([[0, 0, 0, 4, 9, 11]])
    left = torch.tensor([[4, 9, 11, 0, 0, 0]])
    alone = model(right[:, -3:], torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(model(right, right != 0), alone)
    # Left-aligned input is read at its last item, position 2.
    left_out = model(left, left != 0)
    torch.testing.assert_close(left_out[:, 0], model.encode(left, left != 0)[:, 2], rtol=0, atol=0)
    assert not torch.allclose(left_out, alone)


def test_sasrec_dropout_is_seeded() -> None:
    def make(seed: int) -> torch.nn.Module:
        return build_backbone(
            "sasrec", n_items=N_ITEMS, dim=DIM, max_len=MAX_LEN, options={"dropout": 0.5}, seed=seed
        )

    history, mask = histories()
    first, second, other = make(0), make(0), make(1)
    state = torch.random.get_rng_state()
    a, b = first(history, mask), first(history, mask)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(second(history, mask), a, rtol=0, atol=0)
    assert torch.equal(torch.random.get_rng_state(), state)

    # Same weights, another dropout stream: the seed drives the masks.
    other.load_state_dict(first.state_dict())
    assert not torch.allclose(other(history, mask), a)
    first.eval()
    torch.testing.assert_close(first(history, mask), first(history, mask), rtol=0, atol=0)
