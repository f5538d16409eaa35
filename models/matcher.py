"""SLiCK matcher (arXiv 2409.09067, our reading): utterance- and subsequence-level audio-text matching.

Keywords are bounded (at most `max_phonemes` phonemes, audio windows of at most `max_frames`
frames), so matching is a fixed-size problem. Text positions attend to the audio window
(cross-attention), a self-attention layer relates the positions, and two heads predict:
- subsequence level: for each phoneme position i, whether the keyword's first i+1 phonemes are
  spoken in the audio (a finer-grained target that separates near-miss keywords), and
- utterance level: whether the whole keyword is spoken.
Legend: B = batch, T = audio frames, N = phonemes, Da = audio width, D = model width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MatcherConfig:
    d_audio: int = 128
    d_text: int = 96
    d_model: int = 96
    n_heads: int = 4
    max_frames: int = 64  # 2.56 s of 40 ms frames
    max_phonemes: int = 20
    dropout: float = 0.1


class SLiCKMatcher(nn.Module):
    def __init__(self, config: MatcherConfig = MatcherConfig()):
        super().__init__()
        self.config = c = config
        self.audio_proj = nn.Sequential(nn.LayerNorm(c.d_audio), nn.Linear(c.d_audio, c.d_model))
        self.audio_pos = nn.Embedding(c.max_frames, c.d_model)
        self.text_proj = nn.Linear(c.d_text, c.d_model)
        self.cross = nn.MultiheadAttention(c.d_model, c.n_heads, dropout=c.dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(c.d_model)
        self.self_layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, 2 * c.d_model, c.dropout,
                                                     batch_first=True, norm_first=True)
        self.sub_head = nn.Linear(c.d_model, 1)
        self.pool = nn.Linear(c.d_model, 1)
        self.utt_head = nn.Sequential(nn.Linear(c.d_model, c.d_model), nn.SiLU(), nn.Linear(c.d_model, 1))

    def forward(self, audio, audio_mask, text, text_mask):
        """audio (B, T, Da), audio_mask (B, T) bool, text (B, N, Dt), text_mask (B, N) bool
        -> utterance logit (B,), subsequence logits (B, N)."""
        T = audio.shape[1]
        a = self.audio_proj(audio) + self.audio_pos(torch.arange(T, device=audio.device))[None]
        q = self.text_proj(text)
        y, _ = self.cross(q, a, a, key_padding_mask=~audio_mask, need_weights=False)
        x = self.cross_norm(q + y)
        x = self.self_layer(x, src_key_padding_mask=~text_mask)
        sub = self.sub_head(x).squeeze(-1)  # (B, N)
        w = self.pool(x).squeeze(-1).masked_fill(~text_mask, -1e4).softmax(-1)  # (B, N)
        utt = self.utt_head((w[..., None] * x).sum(1)).squeeze(-1)  # (B,)
        return utt, sub


def prefix_labels(anchor: tuple[str, ...], spoken: tuple[str, ...]) -> list[float]:
    """Subsequence targets: 1 where the anchor's first i+1 phonemes occur contiguously in what was spoken."""
    out = []
    for i in range(len(anchor)):
        pre = anchor[: i + 1]
        n = len(pre)
        out.append(float(any(spoken[j:j + n] == pre for j in range(len(spoken) - n + 1))))
    return out
