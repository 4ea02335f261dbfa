"""SASRec: the single-interest self-attentive sequential recommender of Kang & McAuley, ICDM 2018.

Reference: Wang-Cheng Kang and Julian McAuley. "Self-Attentive Sequential
Recommendation", ICDM 2018. Public code: kang205/SASRec (TensorFlow) and the
PyTorch port pmixer/SASRec.pytorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from backbones.base import BackboneConfig
from backbones.validation import check_history, check_positive, check_sizes
from harness.errors import ConfigError


@dataclass(frozen=True)
class SASRecConfig(BackboneConfig):
    """Options of SASRec. ``num_interests`` is always 1; any other value passed in is replaced.

    Attributes:
        num_blocks: Number of self-attention blocks (2 in the public code).
        num_heads: Attention heads per block; must divide ``dim`` (1 in the public code).
        dropout: Dropout rate on the input embeddings, the attention weights
            and the output of every sublayer. The TensorFlow code defaults to
            0.5, and its README trains MovieLens-1M with 0.2, the default here.
        norm_first: Pre-LN sublayers ``x + Dropout(f(LayerNorm(x)))`` with a
            final LayerNorm, the form the paper writes. ``False`` gives
            post-LN sublayers ``LayerNorm(x + Dropout(f(x)))``.
    """

    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    norm_first: bool = True

    def __post_init__(self) -> None:
        # A single-interest model: the shared num_interests argument does not apply.
        object.__setattr__(self, "num_interests", 1)
        check_sizes(self)
        check_positive("num_blocks", self.num_blocks)
        check_positive("num_heads", self.num_heads)
        if self.dim % self.num_heads != 0:
            raise ConfigError(
                f"invalid num_heads={self.num_heads}: must divide dim={self.dim}; choose a divisor of {self.dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"invalid dropout={self.dropout!r}: must be in [0, 1)")


class _SeededDropout(nn.Module):
    """Dropout that draws its masks from its own generators, never from the global torch RNG.

    One generator per device, created and seeded on the first mask drawn there.
    """

    def __init__(self, rate: float, seed: int) -> None:
        super().__init__()
        self.rate = rate
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        key = str(x.device)
        if key not in self.generators:
            # NOTE: tested on CPU only; the CUDA generator path has not been run.
            self.generators[key] = torch.Generator(device=x.device).manual_seed(self.seed)
        keep = torch.rand(x.shape, generator=self.generators[key], device=x.device) >= self.rate
        return x * keep / (1.0 - self.rate)


class _Block(nn.Module):
    """One causal self-attention block followed by the position-wise feed-forward network."""

    def __init__(self, dim: int, num_heads: int, norm_first: bool, dropout: _SeededDropout) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_first = norm_first
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.dropout = dropout

    def attend(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        q, k, v = (
            self.qkv(x).view(batch, length, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, H, L, D/H)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # (B, H, L, L)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return (weights @ v).transpose(1, 2).reshape(batch, length, dim)  # (B, L, D)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attend(self.attention_norm(x), allowed))
            return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attend(x, allowed)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class SASRec(nn.Module):
    """SASRec (Kang & McAuley, ICDM 2018): a causal Transformer encoder; the last position is the one interest.

    Input is the item embedding plus a learned position embedding, followed
    by ``num_blocks`` blocks of causal self-attention and a two-layer ReLU
    feed-forward network. With right-aligned histories the most recent item
    is at the last position, and its final hidden state is the output
    ``(B, 1, D)``. The model reads the last valid position, so left-aligned
    input works too. SASRec has a single interest (K = 1) whatever
    ``num_interests`` the caller passes.

    Padding: every query may attend only to valid keys at or before its own
    position, so padding never changes a valid position's state. A padding
    query attends to itself alone, which keeps its softmax defined; its
    state never reaches a valid position.

    Choices where the paper and the public code differ, and the defaults here:

    - Pre-LN sublayers with a final LayerNorm, as the paper writes them.
      Both public codes normalise only the attention queries and add the
      residual to the normalised queries. That variant is not reproduced.
      Option ``norm_first=False`` gives post-LN blocks.
    - No output projection after attention, as in the paper and the
      TensorFlow code (the PyTorch port's ``nn.MultiheadAttention`` has one).
      With more than one head the heads are concatenated.
    - Item embeddings are not scaled by ``sqrt(D)``. The paper adds the
      position embedding to the item embedding as is, and both public codes
      scale by ``sqrt(D)`` first. Weights are drawn He-normal over the input
      size with zero biases and a zero padding row, the rule for every
      backbone here.
    - Dropout 0.2, the rate of the TensorFlow README's MovieLens-1M run. Its
      masks come from a generator per device seeded with ``config.seed``,
      not from the global torch RNG, so a training run is reproducible from
      its seeds alone.
    """

    config_class = SASRecConfig

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.num_interests = 1
        dim = config.dim
        self.item_embedding = nn.Embedding(config.n_items + 1, dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.empty(config.max_len, dim))
        # One dropout module serves every block, so all masks come from one seeded stream.
        self.dropout = _SeededDropout(config.dropout, config.seed)
        self.blocks = nn.ModuleList(
            _Block(dim, config.num_heads, config.norm_first, self.dropout)
            for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim) if config.norm_first else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw embeddings and linear weights He-normal (fan-in), zero biases and the padding row."""
        nn.init.kaiming_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        nn.init.normal_(self.position_embedding, std=math.sqrt(2.0 / self.config.dim))
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return the final hidden state of every position ``(B, L, D)``.

        The state of a valid position depends only on the valid items at or
        before it; states of padding positions are meaningless.
        """
        mask = check_history(history, mask, self.config.max_len)
        length = history.shape[1]
        x = self.item_embedding(history) + self.position_embedding[-length:]  # (B, L, D)
        x = self.dropout(x)

        positions = torch.arange(length, device=history.device)
        causal = positions.unsqueeze(1) >= positions.unsqueeze(0)  # (L, L): query row, key column
        own = positions.unsqueeze(1) == positions.unsqueeze(0)
        allowed = (causal & mask.unsqueeze(1)) | own  # (B, L, L)
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L), shared by the heads

        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map ``history (B, L)`` and ``mask (B, L)`` to the one interest ``(B, 1, D)``.

        A row without any valid item gets a zero vector.
        """
        mask = check_history(history, mask, self.config.max_len)
        hidden = self.encode(history, mask)  # (B, L, D)
        positions = torch.arange(history.shape[1], device=history.device)
        last = torch.where(mask, positions, -1).amax(dim=1).clamp_min(0)  # (B,)
        output = hidden[torch.arange(history.shape[0], device=history.device), last]  # (B, D)
        output = output * mask.any(dim=1, keepdim=True).to(output.dtype)
        return output.unsqueeze(1)

    def auxiliary_loss(self) -> torch.Tensor:
        """Return zero: SASRec has no loss of its own."""
        return self.item_embedding.weight.new_zeros(())

    def attention(self) -> torch.Tensor | None:
        """Return ``None``: SASRec has no per-interest attention over the history."""
        return None
