"""The Backbone contract, checked for every registered backbone."""

from __future__ import annotations

import pytest
import torch

from backbones import REGISTRY, build_backbone
from backbones.base import Backbone
from harness.errors import ConfigError

N_ITEMS, DIM, K, MAX_LEN = 40, 8, 3, 7
NAMES = sorted(REGISTRY)


def make(name: str, seed: int = 0, **options: object) -> torch.nn.Module:
    return build_backbone(
        name, n_items=N_ITEMS, dim=DIM, num_interests=K, max_len=MAX_LEN, options=options, seed=seed
    )


def expected_k(name: str) -> int:
    return 1 if name == "sasrec" else K


def right_aligned(
    lengths: list[int], seed: int = 0, width: int = MAX_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random histories of the given lengths, right-aligned, 0 on padding."""
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(1, N_ITEMS + 1, (len(lengths), width), generator=generator)
    positions = torch.arange(width)
    mask = positions.unsqueeze(0) >= width - torch.tensor(lengths).unsqueeze(1)
    return history * mask, mask


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_satisfies_protocol(name: str) -> None:
    model = make(name)
    assert isinstance(model, Backbone)
    assert model.item_embedding.num_embeddings == N_ITEMS + 1
    assert model.item_embedding.padding_idx == 0
    assert model.num_interests == expected_k(name)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_output_shape(name: str) -> None:
    model = make(name)
    history, mask = right_aligned([7, 3, 1, 5])
    out = model(history, mask)
    assert out.shape == (4, expected_k(name), DIM)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_padding_ids_do_not_change_output(name: str) -> None:
    model = make(name).eval()
    history, mask = right_aligned([7, 3, 1, 5])
    noisy = torch.where(mask, history, torch.randint(1, N_ITEMS + 1, history.shape))
    assert not torch.equal(noisy, history)
    torch.testing.assert_close(model(noisy, mask), model(history, mask), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_padding_matches_unpadded_history(name: str) -> None:
    model = make(name).eval()
    history, mask = right_aligned([7, 4, 2])
    padded = model(history, mask)
    for row, length in enumerate([7, 4, 2]):
        alone = history[row : row + 1, MAX_LEN - length :]
        unpadded = model(alone, torch.ones_like(alone, dtype=torch.bool))
        torch.testing.assert_close(padded[row : row + 1], unpadded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = make(name)
    history, mask = right_aligned([7, 3, 1, 5])
    target = torch.randn(4, DIM, generator=torch.Generator().manual_seed(1))
    out = model(history, mask)
    loss = (out * target.unsqueeze(1)).sum() + model.auxiliary_loss()
    loss.backward()

    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name
    grad = model.item_embedding.weight.grad
    used = torch.unique(history[mask])
    unused = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    unused[used] = False
    assert (grad[used].abs().sum(dim=1) > 0).all()
    assert (grad[unused] == 0).all()


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_same_seed_same_model(name: str) -> None:
    first, second, other = (
        make(name, seed=5).eval(),
        make(name, seed=5).eval(),
        make(name, seed=6).eval(),
    )
    history, mask = right_aligned([7, 3, 5])
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert torch.equal(first(history, mask), second(history, mask))
    assert not torch.allclose(first(history, mask), other(history, mask))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_same_seed_same_training_outputs(name: str) -> None:
    first, second = make(name, seed=3), make(name, seed=3)
    history, mask = right_aligned([7, 3, 5])
    for _ in range(2):
        assert torch.equal(first(history, mask), second(history, mask))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_batch_of_one(name: str) -> None:
    model = make(name).eval()
    history, mask = right_aligned([4, 6])
    batch = model(history, mask)
    single = model(history[1:], mask[1:])
    assert single.shape == (1, expected_k(name), DIM)
    torch.testing.assert_close(single, batch[1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_history_of_length_one(name: str) -> None:
    model = make(name).eval()
    history, mask = right_aligned([1, 1])
    out = model(history, mask)
    assert out.shape == (2, expected_k(name), DIM)
    assert torch.isfinite(out).all()
    # Only the last item is visible, so the output is that of a width-1 history.
    alone = model(history[:, -1:], mask[:, -1:])
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["comirec-sa", "remi"], ids=["comirec-sa", "remi"])
def test_attention_pools_single_item(name: str) -> None:
    model = make(name).eval()
    history, mask = right_aligned([1, 1])
    out = model(history, mask)
    # All attention falls on the one item, so every interest is its embedding.
    expected = model.item_embedding(history[:, -1]).unsqueeze(1).expand(-1, K, -1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_row_without_items_is_finite(name: str) -> None:
    options = {"relu_layer": False} if name == "mind" else {}
    model = make(name, **options)
    history, mask = right_aligned([0, 3])
    out = model(history, mask)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all()


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_auxiliary_loss_is_scalar(name: str) -> None:
    model = make(name)
    history, mask = right_aligned([7, 3])
    model(history, mask)
    aux = model.auxiliary_loss()
    assert aux.dim() == 0
    if name == "remi":
        assert aux > 0
    else:
        assert aux == 0


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_attention_shape_and_padding(name: str) -> None:
    model = make(name)
    assert model.attention() is None
    history, mask = right_aligned([7, 3, 1])
    model(history, mask)
    attention = model.attention()
    if name == "sasrec":
        assert attention is None
        return
    assert attention.shape == (3, K, MAX_LEN)
    assert (attention[~mask.unsqueeze(1).expand(-1, K, -1)] == 0).all()
    assert (attention >= 0).all()


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_shorter_batch_width_works(name: str) -> None:
    model = make(name).eval()
    history, mask = right_aligned([2, 4], width=4)
    assert model(history, mask).shape == (2, expected_k(name), DIM)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_history_longer_than_max_len_rejected(name: str) -> None:
    model = make(name)
    history, mask = right_aligned([3], width=MAX_LEN + 1)
    with pytest.raises(ConfigError, match=f"max_len={MAX_LEN}"):
        model(history, mask)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_mismatched_mask_rejected(name: str) -> None:
    model = make(name)
    history, mask = right_aligned([3, 2])
    with pytest.raises(ValueError, match="history and mask"):
        model(history, mask[:, 1:])
    with pytest.raises(ValueError, match="integer item ids"):
        model(history.float(), mask)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_float_mask_accepted(name: str) -> None:
    model = make(name).eval()
    history, mask = right_aligned([3, 5])
    torch.testing.assert_close(model(history, mask.float()), model(history, mask), rtol=0, atol=0)
