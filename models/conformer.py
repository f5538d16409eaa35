"""Gated streaming conformer: the keyword spotter's audio encoder (arXiv 2309.00140, our reading).

Audio is processed in chunks of `chunk_frames` encoder frames (each frame = `stack` 10 ms feature
frames, so 8 x 40 ms = 320 ms by default). Inside a chunk attention is full; across chunks it is
causal with `left_chunks` chunks of left context; the depthwise convolution is causal. Nothing looks
beyond the current chunk, so `forward_chunk` over a stream equals `forward` over the whole utterance.

Each conformer block has four binary gates (FFN1, attention, convolution, FFN2) decided once per
chunk from the mean of the block's input over that chunk. A closed gate skips its module: the
residual passes through unchanged, the attention cache marks that chunk's keys invalid, and the
convolution history receives zeros, so caches stay consistent whether or not a module ran. Gates are
trained with a straight-through estimator and a compute penalty (`gate_cost`).

A phoneme CTC head (39 phonemes + blank) is the SLiCK "Encoder" task; its frame embeddings feed the
audio-compliant text encoder and the matcher.

Legend: B = batch, T = encoder frames, C = frames per chunk, N = chunks, D = model width,
H = heads, L = cached left-context frames, K = conv kernel.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heron.models.frontend import CONTEXT, HOP, FrontendConfig, LogMel
from heron.runtime.manifest import GATE_NAMES, GATE_THRESHOLD  # defined once, with the bundle schema

N_PHONEME_CLASSES = 40  # 39 phonemes + CTC blank (index 0); phoneme id i -> class i + 1
BLANK = 0


@dataclass(frozen=True)
class ConformerConfig:
    n_mels: int = 40
    stack: int = 4  # feature frames per encoder frame (40 ms)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ff_mult: int = 4
    conv_kernel: int = 15
    chunk_frames: int = 8  # encoder frames per chunk (320 ms)
    left_chunks: int = 4  # attention left context, in chunks
    dropout: float = 0.1
    gated: bool = True
    gate_init_bias: float = 3.0  # gates start open

    @property
    def chunk_samples(self) -> int:
        return self.chunk_frames * self.stack * HOP

    @property
    def left_frames(self) -> int:
        return self.left_chunks * self.chunk_frames


PRESETS = {
    "tiny": ConformerConfig(d_model=64, n_layers=2, n_heads=2, ff_mult=2, conv_kernel=7),  # tests
    "small": ConformerConfig(d_model=96, n_layers=4, n_heads=4),
    "base": ConformerConfig(),
}


def straight_through(p: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 in the forward pass, identity gradient to p in the backward pass."""
    hard = (p > GATE_THRESHOLD).to(p.dtype)
    return hard + p - p.detach()


class FeedForward(nn.Module):
    def __init__(self, c: ConformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.d_model)
        self.up = nn.Linear(c.d_model, c.d_model * c.ff_mult)
        self.down = nn.Linear(c.d_model * c.ff_mult, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.drop(self.down(self.drop(F.silu(self.up(self.norm(x))))))


class ChunkedAttention(nn.Module):
    """Multi-head self-attention over the current chunk plus cached left context."""

    def __init__(self, c: ConformerConfig):
        super().__init__()
        self.h, self.dh = c.n_heads, c.d_model // c.n_heads
        self.norm = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.out = nn.Linear(c.d_model, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def project(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, T, dh)

    def attend(self, q, k, v, allowed):
        """allowed: bool, broadcastable to (B, H, Tq, Tk)."""
        scores = (q @ k.transpose(-1, -2)) * self.dh**-0.5
        scores = scores.masked_fill(~allowed, -1e4)  # finite: a fully masked row stays finite
        y = self.drop(torch.softmax(scores, dim=-1)) @ v  # (B, H, Tq, dh)
        B, H, T, dh = y.shape
        return self.drop(self.out(y.transpose(1, 2).reshape(B, T, H * dh)))


class CausalConv(nn.Module):
    """Conformer convolution module with a causal depthwise convolution."""

    def __init__(self, c: ConformerConfig):
        super().__init__()
        self.k = c.conv_kernel
        self.norm = nn.LayerNorm(c.d_model)
        self.pw1 = nn.Linear(c.d_model, 2 * c.d_model)
        self.dw = nn.Conv1d(c.d_model, c.d_model, c.conv_kernel, groups=c.d_model)
        self.dw_norm = nn.LayerNorm(c.d_model)
        self.pw2 = nn.Linear(c.d_model, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def pre(self, x):
        return F.glu(self.pw1(self.norm(x)), dim=-1)  # (B, T, D)

    def post(self, u, history):
        """u: (B, T, D) GLU output; history: (B, D, K-1) previous GLU outputs -> (y, new history)."""
        z = torch.cat([history, u.transpose(1, 2)], dim=2)  # (B, D, K-1+T)
        y = self.dw(z).transpose(1, 2)  # (B, T, D)
        y = self.drop(self.pw2(F.silu(self.dw_norm(y))))
        return y, z[:, :, z.shape[2] - (self.k - 1):]


class GatedConformerBlock(nn.Module):
    def __init__(self, c: ConformerConfig):
        super().__init__()
        self.c = c
        self.ffn1, self.attn, self.conv, self.ffn2 = FeedForward(c), ChunkedAttention(c), CausalConv(c), FeedForward(c)
        self.norm = nn.LayerNorm(c.d_model)
        self.gate = nn.Linear(c.d_model, len(GATE_NAMES))
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, c.gate_init_bias)

    def start_as_identity(self) -> None:
        """Zero every module's output projection, so the block adds nothing to its input (only its
        final LayerNorm acts): a block appended to a trained encoder starts where the encoder was."""
        for lin in (self.ffn1.down, self.attn.out, self.conv.pw2, self.ffn2.down):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def gate_probs(self, x):
        """x: (B, N*C, D) -> gate probabilities (B, N, 4), one decision per chunk and module."""
        B, T, D = x.shape
        pooled = x.view(B, T // self.c.chunk_frames, self.c.chunk_frames, D).mean(dim=2)
        return torch.sigmoid(self.gate(pooled))

    def gates(self, x, force_open: bool = False):
        """(probabilities, 0/1 gates with straight-through gradient); all ones when ungated or with
        `force_open` (training warm-up: modules learn before gates may close them, since a closed
        module gets no gradient)."""
        if not self.c.gated or force_open:
            ones = x.new_ones(x.shape[0], x.shape[1] // self.c.chunk_frames, len(GATE_NAMES))
            return ones, ones
        p = self.gate_probs(x)
        return p, straight_through(p)

    def forward(self, x, attn_allowed, force_open: bool = False):
        """Whole sequence. x: (B, T, D), T a multiple of C; attn_allowed: (T, T) chunk mask."""
        C = self.c.chunk_frames
        p, g = self.gates(x, force_open)  # (B, N, 4)
        gf = g.repeat_interleave(C, dim=1)  # (B, T, 4) per frame
        x = x + 0.5 * gf[..., 0:1] * self.ffn1(x)
        q, k, v = self.attn.project(x)
        key_on = gf[..., 1] > 0.5  # (B, T): keys of skipped chunks do not exist
        allowed = attn_allowed[None, None] & key_on[:, None, None, :]
        x = x + gf[..., 1:2] * self.attn.attend(q, k, v, allowed)
        u = self.conv.pre(x) * gf[..., 2:3]  # skipped chunks feed zeros to the conv history
        hist = u.new_zeros(u.shape[0], u.shape[2], self.conv.k - 1)
        y, _ = self.conv.post(u, hist)
        x = x + gf[..., 2:3] * y
        x = x + 0.5 * gf[..., 3:4] * self.ffn2(x)
        return self.norm(x), p

    def forward_chunk(self, x, k_cache, v_cache, key_valid, conv_hist, skip: bool):
        """One chunk. x: (B, C, D); caches: (B, H, L, dh) x2, key_valid (B, L), conv_hist (B, D, K-1).

        With skip=True closed gates really skip their modules (python branches; batch size 1). With
        skip=False every module runs and is multiplied by its gate: same numbers, traceable graph.
        """
        B, C, D = x.shape
        p, g = self.gates(x)  # (B, 1, 4)
        g = g[:, 0]  # (B, 4)
        on = [bool(g[0, i] > 0.5) for i in range(4)] if skip else [True] * 4
        if on[0]:
            x = x + 0.5 * g[:, 0, None, None] * self.ffn1(x)
        if on[1]:
            q, k, v = self.attn.project(x)
            k_all, v_all = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
            valid = torch.cat([key_valid, g[:, 1:2].expand(B, C)], dim=1)  # (B, L+C)
            x = x + g[:, 1, None, None] * self.attn.attend(q, k_all, v_all, valid[:, None, None, :] > 0.5)
        else:
            k_all = torch.cat([k_cache, k_cache.new_zeros(B, self.attn.h, C, self.attn.dh)], dim=2)
            v_all = torch.cat([v_cache, v_cache.new_zeros(B, self.attn.h, C, self.attn.dh)], dim=2)
            valid = torch.cat([key_valid, key_valid.new_zeros(B, C)], dim=1)
        L = k_cache.shape[2]
        new_k, new_v, new_valid = k_all[:, :, C:C + L], v_all[:, :, C:C + L], valid[:, C:C + L]
        if on[2]:
            u = self.conv.pre(x) * g[:, 2, None, None]
            y, new_hist = self.conv.post(u, conv_hist)
            x = x + g[:, 2, None, None] * y
        else:
            new_hist = torch.cat([conv_hist, conv_hist.new_zeros(B, D, C)], dim=2)[:, :, C:]
        if on[3]:
            x = x + 0.5 * g[:, 3, None, None] * self.ffn2(x)
        return self.norm(x), p, new_k, new_v, new_valid, new_hist


class GatedConformer(nn.Module):
    """waveform -> (phoneme log-probs, frame embeddings, gate probabilities)."""

    def __init__(self, config: ConformerConfig = ConformerConfig()):
        super().__init__()
        self.config = c = config
        self.frontend = LogMel(FrontendConfig(n_mels=c.n_mels))
        self.inp = nn.Linear(c.n_mels * c.stack, c.d_model)
        self.inp_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(GatedConformerBlock(c) for _ in range(c.n_layers))
        self.head = nn.Linear(c.d_model, N_PHONEME_CLASSES)

    # --- whole utterance -------------------------------------------------------------------------
    def chunk_mask(self, T: int, device=None) -> torch.Tensor:
        c = self.config
        chunk = torch.arange(T, device=device) // c.chunk_frames
        diff = chunk[:, None] - chunk[None, :]  # query chunk - key chunk
        return (diff >= 0) & (diff <= c.left_chunks)

    def pad_to_chunks(self, wav: torch.Tensor) -> torch.Tensor:
        """Zero-pad the end so the length is a whole number of chunks."""
        n = self.config.chunk_samples
        return F.pad(wav, (0, (-wav.shape[1]) % n))

    def stack_frames(self, feats):
        B, Fr, M = feats.shape
        T = Fr // self.config.stack
        if Fr != T * self.config.stack:  # (an identity slice exports as `alias`, which Core ML lacks)
            feats = feats[:, : T * self.config.stack]
        return feats.reshape(B, T, M * self.config.stack)

    def encode_features(self, feats, force_open: bool = False, hidden_layer: int | None = None):
        """(B, F, n_mels) normalized log-mels, F a multiple of stack * chunk_frames -> (emb, gate probs),
        and with `hidden_layer` k (1..n_layers) also the output of block k (a distillation target)."""
        x = self.inp_drop(self.inp(self.stack_frames(feats)))
        mask = self.chunk_mask(x.shape[1], x.device)
        probs = []
        hidden = None
        for k, blk in enumerate(self.blocks, 1):
            x, p = blk(x, mask, force_open)
            probs.append(p)
            if k == hidden_layer:
                hidden = x
        if hidden_layer is None:
            return x, torch.stack(probs, dim=1)  # (B, T, D), (B, layers, N, 4)
        if hidden is None:
            raise ValueError(f"hidden_layer {hidden_layer} outside 1..{len(self.blocks)}")
        return x, torch.stack(probs, dim=1), hidden

    def forward(self, wav: torch.Tensor):
        """wav: (B, S) float32 at 16 kHz -> log_probs (B, T, 40), emb (B, T, D), gate probs (B, layers, N, 4).

        S is padded to whole chunks; frame t covers audio [t*40 ms, (t+1)*40 ms).
        """
        wav = self.pad_to_chunks(wav)
        feats = self.frontend(self.frontend.pad_history(wav))
        emb, probs = self.encode_features(feats)
        return F.log_softmax(self.head(emb), dim=-1), emb, probs

    # --- streaming ----------------------------------------------------------------------------------
    def init_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        """Explicit streaming state, owned by the caller. Names match the exported model's inputs."""
        c = self.config
        dh = c.d_model // c.n_heads
        st = {"cached_audio": torch.zeros(batch, CONTEXT)}
        for i in range(c.n_layers):
            st[f"cached_key_{i}"] = torch.zeros(batch, c.n_heads, c.left_frames, dh)
            st[f"cached_value_{i}"] = torch.zeros(batch, c.n_heads, c.left_frames, dh)
            st[f"cached_valid_{i}"] = torch.zeros(batch, c.left_frames)
            st[f"cached_conv_{i}"] = torch.zeros(batch, c.d_model, c.conv_kernel - 1)
        return st

    def forward_chunk(self, wav_chunk: torch.Tensor, state: dict[str, torch.Tensor], skip: bool = False):
        """wav_chunk: (B, chunk_samples) -> (log_probs (B, C, 40), emb (B, C, D), gate probs (B, layers, 4),
        new_state). Feeding a stream chunk by chunk equals `forward` on the whole stream."""
        c = self.config
        if wav_chunk.shape[1] != c.chunk_samples:
            raise ValueError(f"chunk must have {c.chunk_samples} samples, got {wav_chunk.shape[1]}")
        audio = torch.cat([state["cached_audio"], wav_chunk], dim=1)
        new = {"cached_audio": audio[:, audio.shape[1] - CONTEXT:]}
        x = self.inp(self.stack_frames(self.frontend(audio)))
        probs = []
        for i, blk in enumerate(self.blocks):
            x, p, k, v, valid, hist = blk.forward_chunk(
                x, state[f"cached_key_{i}"], state[f"cached_value_{i}"], state[f"cached_valid_{i}"],
                state[f"cached_conv_{i}"], skip)
            new[f"cached_key_{i}"], new[f"cached_value_{i}"] = k, v
            new[f"cached_valid_{i}"], new[f"cached_conv_{i}"] = valid, hist
            probs.append(p[:, 0])
        return F.log_softmax(self.head(x), dim=-1), x, torch.stack(probs, dim=1), new

    def config_dict(self) -> dict:
        return asdict(self.config)


def gate_cost_weights(config: ConformerConfig) -> torch.Tensor:
    """Relative compute of (ffn1, attn, conv, ffn2) per frame, for the compute penalty."""
    d, f, k = config.d_model, config.ff_mult, config.conv_kernel
    ffn = 2 * d * d * f
    attn = 4 * d * d + 2 * d * (config.left_frames + config.chunk_frames)
    conv = 3 * d * d + d * k
    w = torch.tensor([ffn, attn, conv, ffn], dtype=torch.float32)
    return w / w.sum()


def macs_per_second(config: ConformerConfig, n_mels: int = 40) -> dict[str, float]:
    """Multiply-accumulates per second of audio, ungated, by part (matmuls and convolutions only)."""
    c = config
    chunks_per_s = 16000 / c.chunk_samples
    C, d, L = c.chunk_frames, c.d_model, c.left_frames
    feat_frames = C * c.stack
    front = feat_frames * (400 * 402 + 201 * n_mels) + C * (n_mels * c.stack) * d
    ffn = C * 2 * d * d * c.ff_mult
    attn = C * (3 * d * d + d * d) + 2 * C * (L + C) * d
    conv = C * (2 * d * d + d * c.conv_kernel + d * d)
    per_layer = {"ffn1": ffn, "attn": attn, "conv": conv, "ffn2": ffn}
    out = {"frontend": front * chunks_per_s, "head": C * d * N_PHONEME_CLASSES * chunks_per_s}
    for k, v in per_layer.items():
        out[k] = v * c.n_layers * chunks_per_s
    out["total"] = sum(out.values())
    return out
