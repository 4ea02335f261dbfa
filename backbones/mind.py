"""MIND: the multi-interest extractor of Li et al., CIKM 2019.

Reference: Chao Li, Zhiyuan Liu, Mengmeng Wu, Yuchi Xu, Huan Zhao, Pipei
Huang, Guoliang Kang, Qiwei Chen, Wei Li and Dik Lun Lee. "Multi-Interest
Network with Dynamic Routing for Recommendation at Tmall", CIKM 2019. Public
code of this variant: THUDM/ComiRec (TensorFlow, ``Model_MIND``) and the
PyTorch port ShiningCosmos/pytorch_ComiRec, which the REMI and BaM code reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from backbones.base import BackboneConfig
from backbones.routing import RoutingAxis, dynamic_routing
from backbones.validation import check_history, check_positive, check_sizes
from harness.config import check_choice


@dataclass(frozen=True)
class MINDConfig(BackboneConfig):
    """Options of MIND.

    Attributes:
        routing_iterations: Number of routing iterations (3 in the public code).
        routing_axis: Softmax axis of the coupling coefficients. The default
            ``"interests"`` follows the MIND and capsule papers and the
            TensorFlow ComiRec code. ``"positions"`` follows the public
            PyTorch ports.
        stop_gradient: Detach the item predictions in every routing
            iteration but the last, as the public code does.
        relu_layer: Pass the capsules through a ``D x D`` dense layer with
            ReLU, as the paper's ReLU layers after the extractor do.
        logit_std: Standard deviation of the normal routing logits.
    """

    routing_iterations: int = 3
    routing_axis: RoutingAxis = "interests"
    stop_gradient: bool = True
    relu_layer: bool = True
    logit_std: float = 1.0

    def __post_init__(self) -> None:
        check_sizes(self)
        check_positive("routing_iterations", self.routing_iterations)
        check_choice("routing_axis", self.routing_axis, RoutingAxis)
        check_positive("logit_std", self.logit_std)


class MIND(nn.Module):
    """MIND (Li et al., CIKM 2019): behaviour-to-interest routing with one shared bilinear map.

    Every item predicts every interest with the same map, ``u_hat[l] = S e_l``.
    The interests differ only because the routing logits start at random,
    drawn from ``N(0, logit_std^2)`` anew for every batch. Three routing
    iterations with squash follow (see :mod:`backbones.routing`), then an
    optional dense ReLU layer.

    Choices where the paper and the public code differ, and the defaults here:

    - Routing softmax axis: the papers normalise across interests (the
      default); the public PyTorch ports normalise across positions. Option
      ``routing_axis``.
    - Random logits: standard normal as in the PyTorch port (the TensorFlow
      code truncates at two standard deviations).
    - Stop-gradient on the predictions in all iterations but the last, as in
      both public versions (option ``stop_gradient``).
    - ReLU layer: on by default because the paper (its Figure 2) feeds the
      capsules through ReLU layers. Both public versions have the switch but
      turn it on only for the Books data set. The layer has a bias, as the TensorFlow dense
      layer has (the PyTorch port drops it). With the layer on, interest
      norms are no longer bounded by 1.
    - No bias on ``S``, as in the PyTorch port (the TensorFlow dense layer
      has one). Every weight matrix is drawn He-normal over its input size
      and the padding row is zero.
    - K is fixed. The paper lowers it per user to ``max(1, min(K, log2 n))``
      for a history of n items. The public code keeps K fixed, and so does
      every backbone here, so that interest-balance metrics compare equal K.

    Randomness: the module owns a ``torch.Generator`` seeded from
    ``config.seed``. In train mode every forward pass draws fresh logits
    ``(B, K, L)`` from it, so one user gets different logits in different
    batches, as in both public versions. In eval mode every forward pass reseeds a
    separate generator with ``config.seed`` and draws one ``(K, max_len)``
    matrix that all users share (a batch of width ``L`` uses its last ``L``
    columns). Evaluation is therefore deterministic and a user's interests
    do not depend on the batch size or on the other users in the batch. The
    global torch RNG is never used.
    """

    config_class = MINDConfig

    def __init__(self, config: MINDConfig) -> None:
        super().__init__()
        self.config = config
        self.num_interests = config.num_interests
        dim = config.dim
        self.item_embedding = nn.Embedding(config.n_items + 1, dim, padding_idx=0)
        self.bilinear = nn.Linear(dim, dim, bias=False)
        self.relu_layer = nn.Linear(dim, dim) if config.relu_layer else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self._attention: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw weights from He-normal (fan-in), zero the biases and the padding row."""
        nn.init.kaiming_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        nn.init.kaiming_normal_(self.bilinear.weight)
        if self.relu_layer is not None:
            nn.init.kaiming_normal_(self.relu_layer.weight)
            nn.init.zeros_(self.relu_layer.bias)

    def routing_logits(self, batch: int, length: int) -> torch.Tensor:
        """Draw the initial routing logits ``(B, K, L)`` on the CPU (see the class docstring)."""
        std = self.config.logit_std
        if self.training:
            return std * torch.randn(batch, self.num_interests, length, generator=self.generator)
        generator = torch.Generator().manual_seed(self.config.seed)
        shared = torch.randn(1, self.num_interests, self.config.max_len, generator=generator)
        return std * shared[:, :, self.config.max_len - length :].expand(batch, -1, -1)

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map ``history (B, L)`` and ``mask (B, L)`` to interests ``(B, K, D)``."""
        mask = check_history(history, mask, self.config.max_len)
        batch, length = history.shape
        embeddings = self.item_embedding(history) * mask.unsqueeze(-1)  # (B, L, D)
        logits = self.routing_logits(batch, length).to(
            device=embeddings.device, dtype=embeddings.dtype
        )
        interests, self._attention = dynamic_routing(
            embeddings,
            mask,
            logits,
            self.bilinear.weight.unsqueeze(0),  # (1, D, D), shared by all K
            iterations=self.config.routing_iterations,
            axis=self.config.routing_axis,
            stop_gradient=self.config.stop_gradient,
        )
        if self.relu_layer is not None:
            interests = torch.relu(self.relu_layer(interests))
        return interests

    def auxiliary_loss(self) -> torch.Tensor:
        """Return zero: MIND has no loss of its own."""
        return self.item_embedding.weight.new_zeros(())

    def attention(self) -> torch.Tensor | None:
        """Return the last forward pass's coupling coefficients ``(B, K, L)`` (``None`` before any forward)."""
        return self._attention
