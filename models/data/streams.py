"""Long labelled streams for always-on evaluation.

A stream is minutes to hours of negative speech (TTS of corpus sentences and phrases) and background
noise, with keyword utterances inserted at known times. The label file lists every insertion as
`keyword,start_s,end_s,voice`; evaluation counts detections against it (FA/h, FRR, latency).
Streams are built block by block and written incrementally, so an hour costs little memory.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heron.models.data.augment import NoiseBank, add_noise, peak_normalize, reverberate, rms, synthetic_rir
from heron.models.data.tts import SAMPLE_RATE, Voice, VoiceRegistry, synthesize
from heron.models.audio import HOP


@dataclass(frozen=True)
class StreamConfig:
    minutes: float = 10.0
    keywords: tuple[str, ...] = ("hey heron",)
    keywords_per_minute: float = 2.0  # average rate of inserted keyword utterances
    speech_fraction: float = 0.6  # share of the negative background that is speech (rest is noise only)
    snr_range_db: tuple[float, float] = (5.0, 25.0)
    split: str = "heldout"  # voice split used for both keywords and background speech
    seed: int = 0


@dataclass(frozen=True)
class StreamLabel:
    keyword: str
    start_s: float
    end_s: float
    voice: str


def _speech_bounds(x: np.ndarray, thresh_db: float = -35.0) -> tuple[int, int]:
    """First and last sample of the loud part (where the keyword really starts and ends)."""
    frame = HOP
    n = len(x) // frame
    if n == 0:
        return 0, len(x)
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    active = np.nonzero(20 * np.log10(e / (e.max() + 1e-12)) > thresh_db)[0]
    if active.size == 0:
        return 0, len(x)
    return int(active[0] * frame), int(min(len(x), (active[-1] + 1) * frame))


def build_stream(config: StreamConfig, out_wav: str | Path, out_labels: str | Path,
                 sentences: list[str], registry: VoiceRegistry | None = None,
                 noise: NoiseBank | None = None, progress: bool = True) -> list[StreamLabel]:
    """Write a 16 kHz mono wav and a CSV of keyword times; returns the labels."""
    import soundfile as sf

    if config.minutes <= 0:
        raise ValueError("stream length must be positive")
    if not sentences:
        raise ValueError("background speech needs sentences")
    rng = np.random.default_rng(config.seed)
    registry = registry or VoiceRegistry()
    noise = noise or NoiseBank(None)
    total = int(config.minutes * 60 * SAMPLE_RATE)
    labels: list[StreamLabel] = []
    block_s = 20.0
    written = 0
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=int(config.minutes * 60), desc="stream", unit="s", leave=False, disable=None)
        except ImportError:
            bar = None
    Path(out_wav).parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(out_wav), "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        while written < total:
            n = min(int(block_s * SAMPLE_RATE), total - written)
            block = np.zeros(n, np.float32)
            voice_pool = registry.sample(8, split=config.split, seed=int(rng.integers(2**31)))
            if rng.random() < config.speech_fraction:  # background talk
                pos = int(rng.integers(0, SAMPLE_RATE))
                while pos < n:
                    v = voice_pool[int(rng.integers(len(voice_pool)))]
                    clip = synthesize(v, sentences[int(rng.integers(len(sentences)))])
                    k = min(len(clip), n - pos)
                    block[pos:pos + k] += clip[:k] * float(rng.uniform(0.3, 1.0))
                    pos += k + int(rng.uniform(0.2, 2.0) * SAMPLE_RATE)
            # keywords: a Poisson number per block, never overlapping each other
            n_kw = rng.poisson(config.keywords_per_minute * n / SAMPLE_RATE / 60.0)
            taken: list[tuple[int, int]] = []
            for _ in range(n_kw):
                kw = config.keywords[int(rng.integers(len(config.keywords)))]
                v: Voice = voice_pool[int(rng.integers(len(voice_pool)))]
                clip = synthesize(v, kw)
                if len(clip) + SAMPLE_RATE >= n:
                    continue
                start = int(rng.integers(SAMPLE_RATE // 2, n - len(clip) - SAMPLE_RATE // 2))
                if any(start < b + SAMPLE_RATE and start + len(clip) + SAMPLE_RATE > a for a, b in taken):
                    continue
                taken.append((start, start + len(clip)))
                # the keyword is said over whatever is there, a bit louder than the background
                block[start:start + len(clip)] *= 0.3
                block[start:start + len(clip)] += clip
                s0, s1 = _speech_bounds(clip)
                labels.append(StreamLabel(kw, (written + start + s0) / SAMPLE_RATE,
                                          (written + start + s1) / SAMPLE_RATE, v.id))
            if rng.random() < 0.5:
                block = reverberate(block, synthetic_rir(rng)) if rms(block) > 1e-4 else block
            bg = noise.sample(n, rng)
            if rms(block) > 1e-4:
                block = add_noise(block, bg, float(rng.uniform(*config.snr_range_db)))
            else:
                block = peak_normalize(bg * 0.05)
            f.write(block)
            written += n
            if bar is not None:
                bar.update(int(n / SAMPLE_RATE))
    if bar is not None:
        bar.close()
    labels.sort(key=lambda lab: lab.start_s)
    write_labels(labels, out_labels)
    return labels


def write_labels(labels: list[StreamLabel], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["keyword", "start_s", "end_s", "voice"])
        for lab in labels:
            w.writerow([lab.keyword, f"{lab.start_s:.3f}", f"{lab.end_s:.3f}", lab.voice])


def read_labels(path: str | Path) -> list[StreamLabel]:
    with open(path, newline="") as f:
        return [StreamLabel(r["keyword"], float(r["start_s"]), float(r["end_s"]), r.get("voice", ""))
                for r in csv.DictReader(f)]
