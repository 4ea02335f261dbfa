"""ComiRec-SA: the self-attentive multi-interest extractor of Cen et al., KDD 2020.

Reference: Yukuo Cen, Jianwei Zhang, Xu Zou, Chang Zhou, Hongxia Yang and Jie
Tang. "Controllable Multi-Interest Framework for Recommendation", KDD 2020.
Public code: THUDM/ComiRec (TensorFlow, ``src/model.py``) and the PyTorch
port ShiningCosmos/pytorch_ComiRec, which the REMI and BaM code reuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import BackboneConfig
from backbones.validation import check_history, check_positive, check_sizes


@dataclass(frozen=True)
class ComiRecSAConfig(BackboneConfig):
    """Options of ComiRec-SA.

    Attributes:
        hidden: Width of the attention's hidden layer ``W1``; ``None`` means
            ``4 * dim`` as in the public code.
        position_embedding: Add a learned position embedding to the keys of
            the attention (on by default in the public code).
        hidden_bias: Give ``W1`` a bias, as the TensorFlow code's dense layer
            has (the PyTorch ports drop it).
    """

    hidden: int | None = None
    position_embedding: bool = True
    hidden_bias: bool = True

    def __post_init__(self) -> None:
        check_sizes(self)
        if self.hidden is not None:
            check_positive("hidden", self.hidden)

    @property
    def hidden_size(self) -> int:
        """Width of ``W1`` after resolving the ``None`` default."""
        return 4 * self.dim if self.hidden is None else self.hidden


class SelfAttentiveExtractor(nn.Module):
    """Multi-head additive attention over a history: ``A = softmax_L(W2 tanh(W1 (H + P)))``.

    One attention head per interest; interest ``k`` is ``sum_l A[k, l] H[l]``.
    The position embedding ``P`` enters only the attention logits, not the
    pooled vectors, as in the public code. Histories are right-aligned, so row
    ``max_len - 1`` of ``P`` is always the most recent item and a shorter
    batch of width ``L`` uses the last ``L`` rows.

    Bias choices: the TensorFlow code gives both layers a bias and the
    PyTorch ports drop both. ``W1`` keeps its bias by default
    (``hidden_bias``). ``W2`` has none, because a per-interest constant
    shifts every logit of that interest equally and cancels in the softmax
    over positions, so it would be a parameter without gradient.
    """

    def __init__(
        self,
        dim: int,
        num_interests: int,
        max_len: int,
        hidden: int,
        position_embedding: bool,
        hidden_bias: bool,
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, hidden, bias=hidden_bias)
        self.heads = nn.Linear(hidden, num_interests, bias=False)
        self.position = nn.Parameter(torch.empty(max_len, dim)) if position_embedding else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw weights from He-normal (fan-in) and zero the bias."""
        nn.init.kaiming_normal_(self.hidden.weight)
        nn.init.kaiming_normal_(self.heads.weight)
        if self.hidden.bias is not None:
            nn.init.zeros_(self.hidden.bias)
        if self.position is not None:
            nn.init.normal_(self.position, std=math.sqrt(2.0 / self.position.shape[1]))

    def forward(
        self, embeddings: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``embeddings (B, L, D)`` into ``K`` interests.

        Args:
            embeddings: ``(B, L, D)`` item embeddings, zero on padding.
            mask: ``(B, L)`` bool, True on real items.

        Returns:
            ``interests (B, K, D)`` and ``attention (B, K, L)``. The attention
            is exactly zero on padding and sums to one over the valid
            positions. A row without valid items gets all-zero attention.
        """
        batch, length, dim = embeddings.shape

        # Only valid positions need logits; the rest are filled below. Short
        # histories (most of them in sparse data) then cost less than L positions.
        index = mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of valid positions
        keys = embeddings.reshape(-1, dim).index_select(0, index)  # (N, D)
        if self.position is not None:
            keys = keys + self.position[-length:].index_select(0, index % length)

        # W2 tanh(z) = 2 W2 sigmoid(2 z) - W2 1, and the last term is the same
        # at every position, so it cancels in the softmax over positions. The
        # sigmoid form gives the same attention and runs several times faster
        # than torch.tanh on CPU (torch 2.13).
        bias = None if self.hidden.bias is None else 2.0 * self.hidden.bias
        hidden = torch.sigmoid(F.linear(2.0 * keys, self.hidden.weight, bias))  # (N, hidden)
        scores = 2.0 * self.heads(hidden)  # (N, K)

        # A finite fill instead of -inf keeps rows without valid items free of NaN.
        fill = torch.finfo(scores.dtype).min
        logits = scores.new_full((batch * length, scores.shape[1]), fill).index_copy(
            0, index, scores
        )
        logits = logits.view(batch, length, -1).transpose(1, 2)  # (B, K, L)
        valid = mask.unsqueeze(1).to(logits.dtype)  # (B, 1, L)
        attention = torch.softmax(logits, dim=-1) * valid
        interests = torch.bmm(attention, embeddings)  # (B, K, D)
        return interests, attention


class ComiRecSA(nn.Module):
    """ComiRec-SA (Cen et al., KDD 2020): K attention heads pool the item history.

    ``H`` is the item embeddings (zero on padding), ``P`` a learned position
    embedding (option ``position_embedding``, on by default as in the public
    code), ``A = softmax_L(W2 tanh(W1 (H + P)))`` with padding masked before
    the softmax, and the interests are ``A H``. ``W1`` is ``D x 4D`` as in the
    public code (option ``hidden``); see :class:`SelfAttentiveExtractor` for
    the bias choices.

    Departures from the public code: parameters are drawn He-normal (fan-in)
    for every weight matrix and embedding, with the padding row zeroed, the
    same rule for every backbone of this package. The PyTorch ports apply
    He-normal to every tensor, including the 3-D position embedding (whose
    fan-in then becomes ``L * D``) and the padding row. Histories are
    right-aligned, where the data iterator of the REMI code aligns them
    left, so position embeddings count back from the most recent item.
    """

    config_class = ComiRecSAConfig

    def __init__(self, config: ComiRecSAConfig) -> None:
        super().__init__()
        self.config = config
        self.num_interests = config.num_interests
        self.item_embedding = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.extractor = SelfAttentiveExtractor(
            config.dim,
            config.num_interests,
            config.max_len,
            config.hidden_size,
            config.position_embedding,
            config.hidden_bias,
        )
        self._attention: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        nn.init.kaiming_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map ``history (B, L)`` and ``mask (B, L)`` to interests ``(B, K, D)``."""
        mask = check_history(history, mask, self.config.max_len)
        embeddings = self.item_embedding(history) * mask.unsqueeze(-1)  # (B, L, D)
        interests, self._attention = self.extractor(embeddings, mask)
        self._mask = mask
        return interests

    def auxiliary_loss(self) -> torch.Tensor:
        """Return zero: ComiRec-SA has no loss of its own."""
        return self.item_embedding.weight.new_zeros(())

    def attention(self) -> torch.Tensor | None:
        """Return the last forward pass's attention ``(B, K, L)`` (``None`` before any forward)."""
        return self._attention
