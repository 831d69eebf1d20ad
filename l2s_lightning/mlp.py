"""The auxiliary network g: Linear(D, hidden) → activation → Linear(hidden, D), plain PyTorch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from l2s_lightning.errors import L2SInputError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


class SteeringMLP(nn.Module):
    """g(h) ≈ z. With ``normalize_input`` the input is standardised with the buffers ``input_mean`` and
    ``input_std`` (set from the training rows by :meth:`set_input_stats`)."""

    input_mean: Tensor
    input_std: Tensor

    def __init__(
        self,
        dim: int,
        hidden: int = 100,
        activation: str = "tanh",
        bias_out: bool = True,
        normalize_input: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise L2SInputError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        if dim <= 0 or hidden <= 0:
            raise L2SInputError(f"dim and hidden must be positive, got dim={dim}, hidden={hidden}")
        self.dim, self.hidden, self.activation, self.bias_out = dim, hidden, activation, bias_out
        self.normalize_input = normalize_input
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, dim, bias=bias_out)
        )
        self.register_buffer("input_mean", torch.zeros(dim))
        self.register_buffer("input_std", torch.ones(dim))

    @torch.no_grad()
    def set_input_stats(self, mean: Tensor, std: Tensor, eps: float = 1e-6) -> None:
        self.input_mean.copy_(mean.to(self.input_mean))
        self.input_std.copy_(std.to(self.input_std).clamp_min(eps))

    def forward(self, context: Tensor) -> Tensor:
        if self.normalize_input:
            context = (context - self.input_mean) / self.input_std
        return self.net(context)
