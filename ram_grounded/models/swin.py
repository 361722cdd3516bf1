"""Swin Transformer image encoder with the key names of recognize-anything's Swin.

The module tree (``patch_embed``, ``layers.N.blocks.M.{norm1,attn,norm2,mlp}``,
``layers.N.downsample``, ``norm``, ``avgpool``) and the persistent buffers
(``relative_position_index`` in every block, ``attn_mask`` in shifted blocks) match the
official ``ram/models/swin_transformer.py``, so its checkpoints load without renaming.
The output is ``[B, 1 + L, C]``: token 0 is the mean of the L final (normed) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SwinConfig:
    """Sizes of one Swin encoder (the fields of the official ``config_swin*.json``)."""

    image_res: int = 384
    window_size: int = 12
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    patch_size: int = 4
    mlp_ratio: float = 4.0

    @property
    def vision_width(self) -> int:
        """Channels of the final stage (the official ``vision_width``)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "SwinConfig":
        """Build from an official swin config dict (extra keys such as ``ckpt`` are ignored)."""
        return cls(
            image_res=int(d["image_res"]),
            window_size=int(d["window_size"]),
            embed_dim=int(d["embed_dim"]),
            depths=tuple(int(x) for x in d["depths"]),
            num_heads=tuple(int(x) for x in d["num_heads"]),
        )


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, ws, ws, C] (row-major windows)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """Index into the ``(2ws-1)^2`` bias table for every (query, key) pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """Additive mask (0 / -100) that keeps shifted windows from mixing distant regions."""
    region = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            region[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(region, ws).view(-1, ws * ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention + MLP, pre-norm residual."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        # A stage no larger than one window uses a single unshifted window (official rule).
        if min(resolution) <= window_size:
            shift_size, window_size = 0, min(resolution)
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(*resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, length, c = x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, ws).view(-1, ws * ws, c), self.attn_mask)
        y = window_reverse(y.view(-1, ws, ws, c), ws, h, w)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y.reshape(b, length, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order x00, x10, x01, x11) -> LayerNorm -> Linear 4C->2C."""

    def __init__(self, resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: blocks (odd ones shifted by window//2), then optional downsampling."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """Conv patchify + LayerNorm."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """Swin encoder returning ``[B, 1 + L, vision_width]`` (mean token first)."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        res = config.image_res // config.patch_size
        n = len(config.depths)
        self.layers = nn.ModuleList(
            BasicLayer(config.embed_dim * 2 ** i, (res // 2 ** i, res // 2 ** i), config.depths[i],
                       config.num_heads[i], config.window_size, config.mlp_ratio, downsample=i < n - 1)
            for i in range(n)
        )
        self.norm = nn.LayerNorm(config.vision_width)
        self.avgpool = nn.AdaptiveAvgPool1d(1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_res
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(f"expected images of {size}x{size}, got {tuple(pixel_values.shape[-2:])}")
        x = self.patch_embed(pixel_values)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        pooled = self.avgpool(x.transpose(1, 2)).transpose(1, 2)
        return torch.cat([pooled, x], dim=1)


def swin_buffer_keys(keys: list[str] | set[str]) -> list[str]:
    """Keys of recomputable Swin buffers (the official loader drops them from checkpoints)."""
    return [k for k in keys if "relative_position_index" in k or "attn_mask" in k]

