"""LibriPhrase-style audio/text pairs and "contains" pairs for streaming.

For an anchor phrase (the enrolled text) the pair's audio is:
- positive: the same phrase spoken by a voice;
- easy negative: a random phrase with the same number of words;
- hard negative: the phrase with the smallest non-zero phoneme Levenshtein distance to the anchor,
  among phrases with the same number of words (the LibriPhrase rule);
- contains: a longer utterance with the anchor phrase inside it (label 1), for streaming models.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np

from heron.models.data.vocab import Phrase, nearest_by_phonemes, vocabulary


@dataclass(frozen=True)
class Pair:
    anchor: str  # the text that is enrolled
    anchor_phonemes: str
    audio_text: str  # what the audio says
    audio_phonemes: str
    voice: str  # voice id (filled when audio is synthesized)
    label: int  # 1 = the anchor is spoken in the audio
    kind: str  # positive | easy | hard | contains
    distance: int  # phoneme edit distance between anchor and audio text (0 for positives)


def make_pairs(phrases: list[Phrase], n_anchors: int, seed: int = 0, voices: list[str] | None = None,
               candidates_per_anchor: int = 4000) -> list[Pair]:
    """Four pairs per anchor (positive, easy, hard, contains), deterministic from the seed.

    Hard negatives are searched among up to `candidates_per_anchor` phrases of the same word count.
    """
    rng = np.random.default_rng(seed)
    by_n: dict[int, list[Phrase]] = {}
    for p in phrases:
        by_n.setdefault(p.n_words, []).append(p)
    counts = sorted(by_n)
    if not counts:
        raise ValueError("empty vocabulary")
    pairs: list[Pair] = []
    voice_of = (lambda: voices[int(rng.integers(len(voices)))]) if voices else (lambda: "")
    for _ in range(n_anchors):
        n = counts[int(rng.integers(len(counts)))]
        group = by_n[n]
        if len(group) < 2:
            continue
        a = group[int(rng.integers(len(group)))]
        ap = " ".join(a.phonemes)

        def pair(b: Phrase, label: int, kind: str, text: str | None = None) -> Pair:
            from heron.runtime.phonemes import levenshtein

            return Pair(a.text, ap, text or b.text, " ".join(b.phonemes), voice_of(), label, kind,
                        0 if label else levenshtein(a.phonemes, b.phonemes))

        pairs.append(pair(a, 1, "positive"))
        while True:
            e = group[int(rng.integers(len(group)))]
            if e.phonemes != a.phonemes:
                break
        pairs.append(pair(e, 0, "easy"))
        idx = rng.choice(len(group), size=min(candidates_per_anchor, len(group)), replace=False)
        cands = [group[int(i)] for i in idx]
        j, _ = nearest_by_phonemes(a.phonemes, [c.phonemes for c in cands])
        pairs.append(pair(cands[j], 0, "hard"))
        left = phrases[int(rng.integers(len(phrases)))]
        right = phrases[int(rng.integers(len(phrases)))]
        text = f"{left.text} {a.text} {right.text}"
        pairs.append(Pair(a.text, ap, text, " ".join(left.phonemes + a.phonemes + right.phonemes), voice_of(), 1,
                          "contains", 0))
    return pairs


def write_pairs(pairs: list[Pair], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(Pair.__dataclass_fields__))
        w.writeheader()
        for p in pairs:
            w.writerow(asdict(p))


def read_pairs(path: str | Path) -> list[Pair]:
    with open(path, newline="") as f:
        return [Pair(**{**r, "label": int(r["label"]), "distance": int(r["distance"])}) for r in csv.DictReader(f)]


def heldout_pair_clips(n_anchors: int, seed: int, desc: str = "pairs"):
    """LibriPhrase-style pairs (no "contains") spoken by held-out voices, padded with 0.2-0.6 s of
    near-silence and mixed with synthetic noise at 15-35 dB SNR: yields (pair, audio)."""
    from heron.models.data.augment import NoiseBank, add_noise, pad_silence
    from heron.models.data.tts import Voice, VoiceRegistry, synthesize_many

    reg = VoiceRegistry()
    voices = [v.id for v in reg.sample(max(32, n_anchors), split="heldout", seed=seed)]
    pairs = [p for p in make_pairs(vocabulary(), n_anchors, seed=seed, voices=voices) if p.kind != "contains"]
    audio = synthesize_many([(Voice.from_id(p.voice), p.audio_text) for p in pairs], desc=desc)
    rng = np.random.default_rng(seed)
    noise = NoiseBank(None)
    for p, a in zip(pairs, audio):
        a = pad_silence(a, rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6), rng)
        yield p, add_noise(a, noise.sample(len(a), rng), float(rng.uniform(15, 35)))
