"""The quality network: a convolutional stem followed by a Vision Transformer.

The architecture is described by an :class:`Architecture` record; named presets are
just records (data), so the weights file can store the exact parameters it was built
with. ``paper`` is the published network (5 stride-1 3x3 conv blocks 1->8->...->128 on
the 512x512 slice, a 2x2 stride-2 conv to 3 channels, centre crop to 224x224, ViT-B/16).
``fast`` downsamples early in the stem and uses a narrow, shallow transformer: the
efficient student for CPUs. ``tiny`` exists for tests and smoke runs.

A teacher has one output; a student has one output per teacher. The quality score is
always the mean of the outputs (:func:`score_from_outputs`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .architecture import PRESETS, Architecture, architecture_from_preset  # noqa: F401


def _conv_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ConvStem(nn.Module):
    """3x3 conv blocks, a 2x2 stride-2 conv block, then a centre crop."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        blocks = []
        channels = arch.input_channels
        for out_channels, stride in zip(arch.stem_channels, arch.stem_strides):
            blocks.append(_conv_block(channels, out_channels, 3, stride, arch.stem_padding))
            channels = out_channels
        blocks.append(_conv_block(channels, arch.embed_channels, 2, 2, 0))
        self.blocks = nn.Sequential(*blocks)
        self.crop = arch.effective_crop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        top = (x.shape[-2] - self.crop) // 2
        left = (x.shape[-1] - self.crop) // 2
        return x[..., top:top + self.crop, left:left + self.crop]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class QualityViT(nn.Module):
    """Slice ``(B, C, S, S)`` in [0, 1] (``C``: one channel per window) -> raw outputs ``(B, num_outputs)``."""

    def __init__(self, arch: Architecture, num_outputs: int = 1) -> None:
        super().__init__()
        if arch.embed_dim % arch.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        if arch.token_grid() < 1:
            raise ValueError(f"input_size {arch.input_size} is too small for this architecture")
        self.arch = arch
        self.num_outputs = num_outputs
        self.stem = ConvStem(arch)
        self.patch_embed = nn.Conv2d(arch.embed_channels, arch.embed_dim, arch.patch_size, stride=arch.patch_size)
        num_tokens = arch.token_grid() ** 2
        self.class_token = nn.Parameter(torch.zeros(1, 1, arch.embed_dim))
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens + 1, arch.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(
            *[EncoderBlock(arch.embed_dim, arch.num_heads, arch.mlp_dim) for _ in range(arch.depth)])
        self.norm = nn.LayerNorm(arch.embed_dim, eps=1e-6)
        self.head = nn.Linear(arch.embed_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(self.patch_embed(self.stem(x)), "b d h w -> b (h w) d")
        class_token = self.class_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([class_token, tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])


def score_from_outputs(outputs: torch.Tensor) -> torch.Tensor:
    """The quality score of each slice: the mean of the network's outputs."""
    return outputs.float().mean(dim=-1)


def build_model(arch: Architecture, num_outputs: int = 1) -> QualityViT:
    return QualityViT(arch, num_outputs)
