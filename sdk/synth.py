"""Synthesized speech for demos and tests of your own keywords: `heron.synth.test_clip("hey heron")`.

Uses the data engine's TTS voices (the apt engines `make setup` installs; `heron doctor` lists them).
Voices of the held-out split were never used to train the shipped models.
"""
from __future__ import annotations

import numpy as np


def test_clip(keyword: str, before: str = "the weather will be cloudy this afternoon",
              after: str = "please remember to buy some milk", snr_db: float = 20.0,
              seed: int = 3) -> tuple[np.ndarray, int, tuple[float, float]]:
    """Other speech, then `keyword` in a held-out voice, then more speech, over pink noise ->
    (float32 audio, sample rate, (keyword start s, keyword end s))."""
    from heron.models.audio import SAMPLE_RATE
    from heron.models.data.augment import add_noise, colored_noise
    from heron.models.data.tts import VoiceRegistry, synthesize

    rng = np.random.default_rng(seed)
    v1, v2 = VoiceRegistry().sample(2, split="heldout", seed=seed)
    gap = np.zeros(int(0.6 * SAMPLE_RATE), np.float32)
    a, kw, b = synthesize(v1, before), synthesize(v2, keyword), synthesize(v1, after)
    audio = np.concatenate([gap, a, gap, kw, gap, b, gap])
    audio = add_noise(audio, colored_noise(len(audio), "pink", rng), snr_db)
    start = (2 * len(gap) + len(a)) / SAMPLE_RATE
    return audio.astype(np.float32), SAMPLE_RATE, (start, start + len(kw) / SAMPLE_RATE)
