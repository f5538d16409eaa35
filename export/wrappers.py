"""Export-only wrappers: positional tensors in, positional tensors out, shared by the ONNX and Core ML
exports of the keyword spotter."""
from __future__ import annotations

import torch
from torch import nn

from heron.models.conformer import GatedConformer


class ChunkStep(nn.Module):
    """Export-only wrapper: positional tensors in, positional tensors out (skip=False: a pure graph)."""

    def __init__(self, model: GatedConformer, state_names: list[str]):
        super().__init__()
        self.model = model
        self.state_names = state_names

    def forward(self, audio_chunk, *state):
        st = dict(zip(self.state_names, state))
        log_probs, emb, gates, new = self.model.forward_chunk(audio_chunk, st, skip=False)
        return (log_probs, emb, gates, *[new[n] for n in self.state_names])


class MatcherStep(nn.Module):
    def __init__(self, matcher):
        super().__init__()
        self.matcher = matcher

    def forward(self, audio, text):
        # one window and one keyword: every frame and phoneme is real, so the masks are all true
        am = torch.ones(audio.shape[:2], dtype=torch.bool)
        tm = torch.ones(text.shape[:2], dtype=torch.bool)
        utt, sub = self.matcher(audio, am, text, tm)
        return torch.sigmoid(utt), torch.sigmoid(sub)
