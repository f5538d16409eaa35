"""Confusable keyword generation (arXiv 2308.06472, our reading): hard negative *texts*.

For audio of phrase X, a confusable keyword is X's phonemes with one or two edits: substitutions
drawn from the audio encoder's own phoneme confusion matrix (how often it hears j where i was said),
plus occasional insertions and deletions. Paired with X's audio and label 0, these teach the verifier
to reject near misses without synthesizing any new audio.
"""
from __future__ import annotations

import numpy as np

from heron.runtime.phonemes import PHONEMES


def confusion_from_alignments(posteriors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(39, 40) summed class posteriors over frames aligned to each phoneme -> (39, 39) row-stochastic
    substitution probabilities (diagonal removed)."""
    p = posteriors[:, 1:] / np.maximum(counts, 1)[:, None]  # drop blank
    np.fill_diagonal(p, 0.0)
    p += 1e-4  # every substitution stays possible
    np.fill_diagonal(p, 0.0)
    return p / p.sum(1, keepdims=True)


def confusable(phonemes: tuple[str, ...], confusion: np.ndarray, rng: np.random.Generator,
               max_edits: int = 2) -> tuple[str, ...]:
    """One confusable variant (never identical to the input)."""
    idx = {p: i for i, p in enumerate(PHONEMES)}
    ids = [idx[p] for p in phonemes]
    for _ in range(50):
        out = list(ids)
        for _ in range(int(rng.integers(1, max_edits + 1))):
            r = rng.random()
            pos = int(rng.integers(len(out)))
            if r < 0.7 or len(out) <= 2:
                out[pos] = int(rng.choice(len(PHONEMES), p=confusion[out[pos]]))
            elif r < 0.85:
                out.insert(pos, int(rng.choice(len(PHONEMES), p=confusion[out[pos]])))
            else:
                del out[pos]
        if out != ids:
            return tuple(PHONEMES[i] for i in out)
    raise ValueError("could not make a confusable variant")
