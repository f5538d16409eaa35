"""Training data for the keyword-spotting encoder: TTS utterances with phoneme targets, augmented.

A pool of (text, voice) utterances is synthesized once (cached on disk by the data engine), then a
background process draws batches from it: augmentation (speed, room, channel, noise, gain) and crop
to a whole number of chunks. Noise-only clips (empty targets) teach the gates to close on
non-speech. All of it is deterministic from the seed.

Training noise is synthetic (colours, hum, tones, bursts, babble): the real recordings in
../shared/data/real_speech/noise are kept for evaluation so that false-accept figures stay honest.
User data (LibriPhrase-style CSV or a LibriSpeech-layout folder) can replace or join the TTS pool.
"""
from __future__ import annotations

import re
import multiprocessing as mp
import os
from dataclasses import dataclass

import numpy as np

from heron.models.data.augment import AugmentConfig, Augmenter, NoiseBank, colored_noise, rms
from heron.models.data.tts import SAMPLE_RATE, VoiceRegistry, synthesize_many
from heron.models.data.real import Utterance, crop_span, transcript_targets
from heron.models.data.vocab import corpus_sentences, vocabulary
from heron.models.teacher import frame_targets


def text_targets(text: str) -> tuple[int, ...]:
    """Free text (any length) -> CTC classes (phoneme id + 1)."""
    return transcript_targets(text)[0]


def training_texts(n: int, seed: int) -> list[str]:
    """A mix of keyword-like phrases (1-4 words) and sentence pieces (3-8 words)."""
    rng = np.random.default_rng(seed)
    phrases = [p.text for p in vocabulary()]
    sentences = [s for s in corpus_sentences() if 3 <= len(s.split())]
    out = []
    for _ in range(n):
        if rng.random() < 0.6:
            out.append(phrases[int(rng.integers(len(phrases)))])
        else:
            words = sentences[int(rng.integers(len(sentences)))].split()
            k = int(rng.integers(3, 9))
            i = int(rng.integers(0, max(1, len(words) - k + 1)))
            out.append(" ".join(words[i:i + k]))
    # only what is spoken: symbols like "-" or "/" are read out differently by each engine
    cleaned = [" ".join(re.findall(r"[a-z]+(?:'[a-z]+)?", t)) for t in out]
    return [t if t else "hello" for t in cleaned]


def build_tts_pool(n: int, seed: int = 0, split: str = "train", hold_out_fraction: float = 0.15,
                   engines: list[str] | None = None) -> list[Utterance]:
    reg = VoiceRegistry(engines=engines, hold_out_fraction=hold_out_fraction)
    texts = training_texts(n, seed)
    voices = reg.sample(n, split=split, seed=seed + 1, distinct=False)
    audio = synthesize_many(list(zip(voices, texts)), desc=f"tts pool ({split})")
    pool = []
    for t, a in zip(texts, audio):
        try:
            targets, ends = transcript_targets(t)
            pool.append(Utterance(t, targets, np.round(a * 32767).astype(np.int16), ends))
        except ValueError:
            continue
    return pool


class TrainNoise(NoiseBank):
    """Synthetic background noises for training: colours, mains hum, tone chords, bursts, babble."""

    def sample(self, n, rng, babble_clips=None):
        kind = int(rng.integers(6 if babble_clips else 5))
        t = np.arange(n) / SAMPLE_RATE
        if kind == 0:
            x = colored_noise(n, ("white", "pink", "brown")[int(rng.integers(3))], rng)
        elif kind == 1:  # hum: mains fundamental + harmonics + a little noise
            f0 = float(rng.choice([50.0, 60.0]))
            x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 8))
            x = x + 0.1 * colored_noise(n, "pink", rng)
        elif kind == 2:  # music-like: a few sustained tones that change every so often
            x = np.zeros(n)
            seg = int(rng.uniform(0.2, 1.0) * SAMPLE_RATE)
            for s in range(0, n, seg):
                e = min(n, s + seg)
                for f in 110 * 2 ** (rng.integers(0, 36, size=3) / 12):
                    x[s:e] += np.sin(2 * np.pi * f * t[s:e]) * np.exp(-3 * (t[s:e] - t[s]))
        elif kind == 3:  # bursts: amplitude-modulated noise (traffic, dishes, keyboard)
            env = np.repeat(rng.random(n // 800 + 1) ** 4, 800)[:n]
            x = colored_noise(n, "white", rng) * env
        elif kind == 4:
            x = colored_noise(n, "brown", rng) + 0.3 * colored_noise(n, "white", rng)
        else:
            from heron.models.data.augment import babble

            x = babble(babble_clips, n, rng, talkers=int(rng.integers(3, 8)))
        x = np.asarray(x, np.float32)
        return (x / rms(x)).astype(np.float32)


@dataclass(frozen=True)
class BatchConfig:
    batch_size: int = 32
    max_seconds: float = 3.2  # crop/pad to a whole number of chunks up to this
    chunk_samples: int = 5120
    noise_only_fraction: float = 0.08
    real_fraction: float = 0.0  # share of utterances drawn from the real-speech pool (when there is one)
    seed: int = 0
    teacher_frame: int = 0  # > 0: also return teacher targets (utterances with `teacher` frames) per this many samples


def crop_budget(cfg: BatchConfig, aug: AugmentConfig) -> tuple[int, int]:
    """-> (max_len, budget) in samples: the longest clip (whole chunks), and the longest raw speech that
    still fits it after the slowest speed perturbation (what a long utterance is cropped to)."""
    max_len = int(cfg.max_seconds * SAMPLE_RATE) // cfg.chunk_samples * cfg.chunk_samples
    return max_len, int(max_len * min(1.0, aug.speed_range[0]))


def make_batch(pool: list[Utterance], cfg: BatchConfig, augmenter: Augmenter, rng: np.random.Generator,
               real_pool: list[Utterance] | None = None):
    """-> wav (B, S) float32, n_samples (B,), targets (sum U,), target_lengths (B,). With a real pool,
    each utterance comes from it with probability cfg.real_fraction. With cfg.teacher_frame, also
    teacher (B, S / teacher_frame, D) float16 and teacher_mask (B, S / teacher_frame) bool: the clean
    utterance's teacher frame under each student frame that holds its speech (False elsewhere and for
    utterances without teacher frames).

    Speech is never cut apart from its transcript: a long utterance is cropped between words (its
    targets with it, `crop_span`) to a span that still fits `max_seconds` after the slowest speed
    perturbation; whatever is still longer (padding, an utterance with no cut points) makes the
    batch longer instead of being cut."""
    max_len, budget = crop_budget(cfg, augmenter.config)
    wavs, lens, targets, tlens, placed = [], [], [], [], []
    for _ in range(cfg.batch_size):
        if rng.random() < cfg.noise_only_fraction:
            n = int(rng.integers(cfg.chunk_samples, max_len + 1))
            x = augmenter.noise.sample(n, rng, augmenter.babble_clips) * float(10 ** rng.uniform(-3, -0.7))
            x = np.clip(x, -1, 1).astype(np.float32)
            tgt: tuple[int, ...] = ()
            placed.append(None)
        else:
            src = real_pool if real_pool and rng.random() < cfg.real_fraction else pool
            u = src[int(rng.integers(len(src)))]
            start, end, tgt = crop_span(u, budget, rng)
            info: dict = {}
            x = augmenter(u.audio[start:end].astype(np.float32) / 32767.0, rng, info)
            placed.append((u, start, end - start, info) if u.teacher is not None else None)
        wavs.append(x)
        lens.append(len(x))
        targets.extend(tgt)
        tlens.append(len(tgt))
    S = max(lens)
    S = -(-S // cfg.chunk_samples) * cfg.chunk_samples
    out = np.zeros((len(wavs), S), np.float32)
    for i, x in enumerate(wavs):
        out[i, : len(x)] = x
    batch = (out, np.asarray(lens), np.asarray(targets, np.int64), np.asarray(tlens))
    if not cfg.teacher_frame:
        return batch
    T = S // cfg.teacher_frame
    dim = next((p[0].teacher.shape[1] for p in placed if p is not None), 1)
    teach = np.zeros((len(wavs), T, dim), np.float16)
    mask = np.zeros((len(wavs), T), bool)
    for i, p in enumerate(placed):
        if p is not None:
            u, start, n, info = p
            teach[i], mask[i] = frame_targets(u.teacher, start, n, info.get("speed", 1.0), info.get("lead", 0), T,
                                              cfg.teacher_frame)
    return (*batch, teach, mask)


def _worker(pool, real_pool, cfg: BatchConfig, aug_cfg: AugmentConfig, queue, worker_id: int, start_step: int,
            n_workers: int):
    os.environ["OMP_NUM_THREADS"] = "1"
    babble_src = [u.audio.astype(np.float32) / 32767.0 for u in pool[:200]]
    augmenter = Augmenter(aug_cfg, TrainNoise(None), babble_src)
    step = start_step + worker_id
    while True:
        rng = np.random.default_rng([cfg.seed, step])  # batch k is the same whoever makes it
        queue.put((step, make_batch(pool, cfg, augmenter, rng, real_pool)))
        step += n_workers  # worker i makes steps i, i + n, i + 2n, ...


class BatchStream:
    """Batches made by background processes, in step order, deterministic from (seed, step)."""

    def __init__(self, pool, cfg: BatchConfig, aug_cfg: AugmentConfig = AugmentConfig(), workers: int = 1,
                 start_step: int = 0, real_pool=None):
        ctx = mp.get_context("fork")
        self.queue = ctx.Queue(maxsize=8)
        self.procs = [ctx.Process(target=_worker, args=(pool, real_pool, cfg, aug_cfg, self.queue, i, start_step, workers),
                                  daemon=True)
                      for i in range(workers)]
        for p in self.procs:
            p.start()
        self.pending: dict[int, tuple] = {}
        self.next_step = start_step

    def __next__(self):
        while self.next_step not in self.pending:
            step, batch = self.queue.get(timeout=600)
            self.pending[step] = batch
        batch = self.pending.pop(self.next_step)
        self.next_step += 1
        return batch

    def close(self):
        for p in self.procs:
            p.terminate()
