"""Diffusion transformers (DiT, Peebles & Xie 2023) as generators, critics and classifiers, and
the deep-recursive DiT of Adversarial Flow (arXiv 2511.22475, Sec. 3.7-3.8).

The whole network family is this file: ``modulate``, small modules, ``DiT`` and one
``initialize_weights``; attention (``F.scaled_dot_product_attention`` with optional QK-norm) and
the MLP are timm's ``timm.layers.Attention`` and ``timm.layers.Mlp``. Sizes are data:
``FAMILIES`` maps a name to (depth, width, heads) and a size string ``"NAME/PATCH"`` adds the
patch size, so ``"XL/2"`` is DiT-XL/2 and ``"T/7"`` the tiny family on 7x7 patches (28x28 MNIST). XL, L, M and B are MeanFlow's sizes, which AF uses; XS/1 is
the MNIST latent board's (a 4 x 7 x 7 latent as 49 tokens).

Roles (AF Sec. 3.7): the generator maps x to an output of x's shape (unpatchified); the critic
prepends a learned [CLS] token and reads one logit from it through LayerNorm + Linear; the
classifier reads ``num_classes`` logits the same way (or from the mean of the patch tokens).
Conditioning (class label, zero/one/two times) is summed into one vector that drives adaLN-Zero
modulation in every block. ``time_inputs=0`` drops the timestep projection (one-step models).

The recursive variant (Sec. 3.8) runs the block stack ``repeats`` times on the same hidden state;
each pass adds a learned timestep-like embedding of its pass index to the conditioning, so the
passes are distinguishable while every weight is shared (the parameter count does not depend on
``repeats``). Only the generator recurses; critics and classifiers keep the standard depth.

Speed options (docs/results-history.md, #2026-11-23-af-dit-guidance): ``attention`` picks the SDPA
kernel (cuDNN was the fastest for head dim 72 on an H100) and ``residual_bf16`` keeps the hidden
state between blocks in bf16 under bf16 autocast (half the memory traffic of the LayerNorm,
modulation and residual kernels; the reference DiT keeps it fp32).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import Attention, Mlp
from torch.nn.attention import SDPBackend, sdpa_kernel

from onestep.config import POSITIVE, FieldError, at_least, one_of
from onestep.errors import ConfigError
from onestep.interfaces import Backbone, DataSpec, NetworkRequest

FAMILIES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "M": (16, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
    "XS": (6, 256, 4),
    "T": (4, 128, 4),
    "P": (2, 32, 2),
}
READOUTS = ("cls", "mean")
# SDPA kernel choice; "auto" lets torch pick (the kernels compared: see the module docstring).
# A named kernel falls back to the math kernel where it cannot run (cuDNN on CPU).
ATTENTION_KERNELS: dict[str, tuple[SDPBackend, ...]] = {
    "auto": (),
    "cudnn": (SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH),
    "flash": (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH),
    "math": (SDPBackend.MATH,),
}


GELU_TANH = partial(nn.GELU, approximate="tanh")
LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)  # QK-norm (AF App. D: stable bf16 training at scale)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_2d(width: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding ``[rows * cols, width]`` (half per axis)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    parts = []
    for axis in (r.reshape(-1), c.reshape(-1)):
        angle = axis[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    emb = torch.cat(parts, 1)
    return F.pad(emb, (0, width - emb.shape[1])).float()


class TimestepEmbedder(nn.Module):
    """A scalar in [0, 1] -> sinusoidal features of 1000 * t -> MLP (DiT's time scale)."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angle = 1000 * t.float()[:, None] * freqs[None]
        feats = torch.cat([angle.cos(), angle.sin()], 1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """Pre-LayerNorm transformer block with adaLN-Zero modulation by the condition ``c``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool, attention: str = "auto") -> None:
        super().__init__()
        self.kernels = ATTENTION_KERNELS[attention]
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=LAYER_NORM)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=GELU_TANH)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        with sdpa_kernel(list(self.kernels)) if self.kernels else nullcontext():
            a = self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_a.unsqueeze(1) * a
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """Generator head: adaLN-modulated LayerNorm, then a linear map to patch pixels."""

    def __init__(self, width: int, patch: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch * patch * channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class Readout(nn.Module):
    """Critic/classifier head: LayerNorm + Linear on one token (AF Sec. 3.7)."""

    def __init__(self, width: int, outputs: int, bias: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, outputs, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class DiT(nn.Module):
    """One DiT for one role. ``forward(x, s=None, t=None, y=None)`` with the times this network
    was built for (``time_inputs``: 0 none, 1 ``t``, 2 ``s`` and ``t``) and labels ``y``
    (``None`` means the null label ``num_classes``)."""

    def __init__(
        self, shape: tuple[int, int, int], *, role: str, num_classes: int, time_inputs: int,
        class_conditional: bool, depth: int, width: int, heads: int, patch: int,
        mlp_ratio: float = 4.0, qk_norm: bool = False, repeats: int = 0, readout: str = "cls",
        attention: str = "auto", residual_bf16: bool = False,
    ) -> None:
        super().__init__()
        channels, rows, cols = shape
        self.shape, self.role, self.patch = tuple(shape), role, patch
        self.num_classes, self.time_inputs = num_classes, time_inputs
        self.grid = (rows // patch, cols // patch)
        self.repeats = max(1, repeats)
        self.readout = readout
        self.residual_bf16 = residual_bf16
        self.patch_embed = nn.Conv2d(channels, width, patch, stride=patch)
        self.register_buffer("pos_embed", sincos_2d(width, *self.grid)[None], persistent=False)
        self.time_embedders = nn.ModuleList(TimestepEmbedder(width) for _ in range(time_inputs))
        self.label_embedding = nn.Embedding(num_classes + 1, width) if class_conditional else None
        self.repeat_embedder = TimestepEmbedder(width) if repeats >= 1 else None
        uses_cls = role != "generator" and readout == "cls"
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if uses_cls else None
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, qk_norm, attention) for _ in range(depth))
        if role == "generator":
            self.head = FinalLayer(width, patch, channels)
        else:
            self.head = Readout(width, 1 if role == "critic" else num_classes, bias=role == "classifier")
        initialize_weights(self)

    def condition(self, batch: int, s, t, y, device) -> torch.Tensor:
        """The adaLN condition ``[B, width]``: sum of time and label embeddings (zero if none)."""
        width = self.blocks[0].norm1.normalized_shape[0]
        c = torch.zeros(batch, width, device=device, dtype=self.patch_embed.weight.dtype)
        times = {0: (), 1: (("t", t),), 2: (("s", s), ("t", t))}[self.time_inputs]
        for embed, (name, time) in zip(self.time_embedders, times):
            if time is None:
                raise ValueError(f"dit {self.role}: built with time_inputs={self.time_inputs}, but {name} was not given")
            c = c + embed(time.reshape(-1).expand(batch))
        if self.label_embedding is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, device=device, dtype=torch.long)
            c = c + self.label_embedding(y)
        return c

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        b, p, (gr, gc) = h.shape[0], self.patch, self.grid
        h = h.view(b, gr, gc, p, p, self.shape[0]).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, *self.shape)

    def pass_conditions(self, c: torch.Tensor) -> list[torch.Tensor]:
        """The condition of each pass through the blocks: ``c`` plus the embedding of the pass
        index (1, 1 - 1/R, ..., 1/R, read as a time) for the recursive generator."""
        if self.repeat_embedder is None:
            return [c]
        ids = torch.arange(self.repeats, 0, -1, device=c.device, dtype=torch.float32) / self.repeats
        return [c + self.repeat_embedder(ids[r].expand(c.shape[0])) for r in range(self.repeats)]

    def forward(self, x, s=None, t=None, y=None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"dit {self.role}: expected input [B, {', '.join(map(str, self.shape))}], got {list(x.shape)}")
        b, io_dtype = x.shape[0], x.dtype
        x = x.to(self.patch_embed.weight.dtype)  # bf16 parameters (DeepSpeed bf16) take fp32 data
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(b, -1, -1).to(h.dtype), h], dim=1)
        c = self.condition(b, s, t, y, x.device)
        if self.residual_bf16 and torch.is_autocast_enabled(h.device.type) \
                and torch.get_autocast_dtype(h.device.type) == torch.bfloat16:
            h = h.to(torch.bfloat16)
        for c_pass in self.pass_conditions(c):
            for block in self.blocks:
                h = block(h, c_pass)
        if self.role == "generator":
            return self.unpatchify(self.head(h, c)).to(io_dtype)
        token = h[:, 0] if self.cls_token is not None else h.mean(1)
        out = self.head(token).to(io_dtype)
        return out.squeeze(-1) if self.role == "critic" else out


def initialize_weights(model: DiT) -> None:
    """DiT's initialisation: Xavier-uniform linears with zero bias, patch embedding as a linear,
    N(0, 0.02) embeddings and time MLPs, and zeros for every adaLN modulation and the generator's
    output layer (adaLN-Zero), so every block starts as the identity and the generator's
    initial output is exactly zero."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    w = model.patch_embed.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.patch_embed.bias)
    if model.label_embedding is not None:
        nn.init.normal_(model.label_embedding.weight, std=0.02)
    if model.cls_token is not None:
        nn.init.normal_(model.cls_token, std=0.02)
    embedders = [*model.time_embedders] + ([model.repeat_embedder] if model.repeat_embedder is not None else [])
    for emb in embedders:
        nn.init.normal_(emb.mlp[0].weight, std=0.02)
        nn.init.normal_(emb.mlp[2].weight, std=0.02)
    modulations = [blk.adaLN_modulation[-1] for blk in model.blocks]
    if isinstance(model.head, FinalLayer):
        modulations.append(model.head.adaLN_modulation[-1])
        modulations.append(model.head.linear)
    for lin in modulations:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)


# --------------------------------------------------------------------------- backbones
def parse_size(size: str, field: str = "backbone.size") -> tuple[int, int, int, int]:
    """``"B/2"`` -> (depth, width, heads, patch)."""
    name, _, patch = size.partition("/")
    if name not in FAMILIES or not patch.isdigit() or int(patch) < 1:
        raise ConfigError(
            f"{field}: expected NAME/PATCH with NAME one of {', '.join(FAMILIES)} and PATCH a positive int (e.g. B/2, T/7), got {size!r}"
        )
    return (*FAMILIES[name], int(patch))


def _family_and_patch(_instance, attribute: attrs.Attribute, value: str) -> None:
    try:
        parse_size(value, attribute.name)
    except ConfigError as exc:
        raise FieldError(attribute.name, str(exc).split(": ", 1)[1]) from None


@attrs.define
class DiTConfig:
    size: str = attrs.field(default="T/2", validator=_family_and_patch)
    """NAME/PATCH, NAME in FAMILIES (XL, L, M, B: MeanFlow/AF sizes; S, T, P: small)"""
    mlp_ratio: float = attrs.field(default=4.0, validator=POSITIVE)
    qk_norm: bool = False  # LayerNorm on queries and keys (stabilises bf16 training)
    readout: str = attrs.field(default="cls", validator=one_of(READOUTS))
    """critic/classifier output from a [CLS] token ("cls") or mean of patch tokens ("mean")"""
    attention: str = attrs.field(default="auto", validator=one_of(tuple(ATTENTION_KERNELS)))
    """SDPA kernel: auto (torch picks), cudnn, flash, efficient, math"""
    residual_bf16: bool = False  # under bf16 autocast, keep the residual stream in bf16 (fp32 otherwise)


@attrs.define
class RecursiveDiTConfig(DiTConfig):
    repeats: int = attrs.field(default=2, validator=at_least(1))  # passes of the generator's block stack (effective depth = repeats x depth)


class DiTBackbone(Backbone):
    """Diffusion transformer (DiT) with adaLN-Zero; generator, [CLS]-token critic or classifier."""

    name = "dit"
    Config = DiTConfig

    def compile(self, module: DiT, **options) -> None:
        """Regional compilation: each block, not the whole network. Every block shares one graph,
        so the warm-up is a fraction of the whole network's for a slightly lower MFU
        (docs/results-history.md, #2026-11-23-af-dit-guidance)."""
        for block in module.blocks:
            block.compile(**options)

    def repeats(self, request: NetworkRequest) -> int:
        """Passes through the block stack; 0 means a plain DiT (no repeat embedding)."""
        return 0

    def build(self, request: NetworkRequest, spec: DataSpec) -> DiT:
        depth, width, heads, patch = parse_size(self.config.size)
        if len(spec.shape) != 3:
            raise ConfigError(
                f"backbone {self.name}: needs image-shaped data [C, H, W], got shape {tuple(spec.shape)}; use backbone mlp for points"
            )
        _, rows, cols = spec.shape
        if rows % patch or cols % patch:
            raise ConfigError(f"backbone.size: patch {patch} does not divide the image size {rows}x{cols}")
        if request.role == "classifier" and spec.num_classes < 1:
            raise ConfigError(f"backbone {self.name}: a classifier needs labelled data (num_classes > 0)")
        return DiT(
            tuple(spec.shape), role=request.role, num_classes=spec.num_classes,
            time_inputs=request.time_inputs,
            class_conditional=request.class_conditional and spec.num_classes > 0,
            depth=depth, width=width, heads=heads, patch=patch, mlp_ratio=self.config.mlp_ratio,
            qk_norm=self.config.qk_norm, repeats=self.repeats(request), readout=self.config.readout,
            attention=self.config.attention, residual_bf16=self.config.residual_bf16,
        )


class RecursiveDiTBackbone(DiTBackbone):
    """Deep-recursive DiT (AF Sec. 3.8): the generator's blocks run ``repeats`` times on one hidden
    state with a learned per-pass embedding; weights shared; critics/classifiers stay plain."""

    name = "dit-recursive"
    Config = RecursiveDiTConfig

    def repeats(self, request: NetworkRequest) -> int:
        return self.config.repeats if request.role == "generator" else 0
