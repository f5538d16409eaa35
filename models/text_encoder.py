"""Audio-compliant text encoder (arXiv 2308.06472, our reading).

Phonemes are looked up in a table of representative phoneme vectors taken from the trained audio
encoder (models/align.py), so a keyword's text embedding starts inside the audio embedding space; a
small convolutional encoder adds context (coarticulation, position). With `use_representative=False`
the table is an ordinary learned embedding (the ablation).

Enrollment = G2P + this encoder: no audio, a few milliseconds.
Legend: B = batch, N = phonemes, Da = audio embedding width, D = model width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

N_TOKENS = 40  # 0 = padding, 1..39 = phonemes (the CTC class ids)


@dataclass(frozen=True)
class TextEncoderConfig:
    d_audio: int = 128  # width of the representative vectors (the audio encoder's width)
    d_model: int = 96
    max_phonemes: int = 20
    n_layers: int = 2
    kernel: int = 3
    use_representative: bool = True
    dropout: float = 0.1


class ConvLayer(nn.Module):
    def __init__(self, c: TextEncoderConfig):
        super().__init__()
        self.norm = nn.LayerNorm(c.d_model)
        self.dw = nn.Conv1d(c.d_model, c.d_model, c.kernel, padding=c.kernel // 2, groups=c.d_model)
        self.pw = nn.Linear(c.d_model, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, mask):
        y = self.dw((self.norm(x) * mask[..., None]).transpose(1, 2)).transpose(1, 2)
        return x + self.drop(self.pw(torch.nn.functional.silu(y)))


class AudioCompliantTextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig = TextEncoderConfig(), table=None):
        super().__init__()
        self.config = c = config
        if c.use_representative:
            t = torch.zeros(N_TOKENS, c.d_audio)
            if table is not None:
                t[1:] = torch.as_tensor(table, dtype=torch.float32)
            self.register_buffer("table", t)  # frozen: it is measured, not learned
        else:
            self.embed = nn.Embedding(N_TOKENS, c.d_audio, padding_idx=0)
        self.proj = nn.Linear(c.d_audio, c.d_model)
        self.pos = nn.Embedding(c.max_phonemes, c.d_model)
        self.layers = nn.ModuleList(ConvLayer(c) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids] if self.config.use_representative else self.embed(ids)  # (B, N, Da)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, N) phoneme classes, 0 = padding -> (B, N, D)."""
        mask = (ids > 0).float()
        pos = torch.arange(ids.shape[1], device=ids.device).clamp(max=self.config.max_phonemes - 1)
        x = self.proj(self.lookup(ids)) + self.pos(pos)[None]
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x) * mask[..., None]
