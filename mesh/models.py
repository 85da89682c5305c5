"""Real model families built in code from ``torch.nn`` (no downloads), for demos, tests and
benchmarks: an MLP, a small convolutional network and a transformer encoder block.

``build_model(family, seed)`` returns a deterministic module in eval mode;
``example_inputs(family, batch, seed)`` returns the positional inputs it takes.
"""

from __future__ import annotations

import torch
from torch import nn

FAMILIES = ("mlp", "convnet", "transformer")


class MLP(nn.Module):
    def __init__(self, d_in: int = 256, d_hidden: int = 512, d_out: int = 10, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        width = d_in
        for _ in range(depth - 1):
            layers += [nn.Linear(width, d_hidden), nn.GELU()]
            width = d_hidden
        layers.append(nn.Linear(width, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPClassifier(MLP):
    """The MLP with its loss, for training jobs: ``forward(x, y)`` is the cross-entropy of its
    logits for ``x`` against the classes ``y`` (a scalar)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return nn.functional.cross_entropy(self.net(x), y)


class ConvNet(nn.Module):
    def __init__(self, channels: int = 3, width: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class TinyTransformer(nn.Module):
    def __init__(self, d_model: int = 64, heads: int = 4, classes: int = 10):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                nn.Linear(2 * d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm1(h + a)
        h = self.norm2(h + self.ff(h))
        return self.head(h.mean(dim=1))


def build_model(family: str, seed: int = 0, **kwargs: int) -> nn.Module:
    """A deterministic model of ``family`` (weights drawn from ``seed``), in eval mode."""
    constructors = {"mlp": MLP, "convnet": ConvNet, "transformer": TinyTransformer}
    if family not in constructors:
        raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = constructors[family](**kwargs)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def example_inputs(family: str, batch: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Float32 inputs of the shape ``family``'s default model takes."""
    generator = torch.Generator().manual_seed(seed)
    if family == "mlp":
        return (torch.randn(batch, 256, generator=generator),)
    if family == "convnet":
        return (torch.randn(batch, 3, 32, 32, generator=generator),)
    if family == "transformer":
        return (torch.randn(batch, 16, 64, generator=generator),)
    raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")
