"""Audio augmentation (numpy, deterministic from a `np.random.Generator`).

Everything here takes and returns 16 kHz mono float32 and never returns samples outside [-1, 1]:
a mix that would clip is scaled down as a whole (never clipped sample by sample).
The synthetic-to-real gap is what these attack: rooms (reverberation), microphones and channels
(band-limiting, gain), talkers (speed / vocal-tract perturbation) and backgrounds (noise at an SNR).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heron.models.data.tts import SAMPLE_RATE, resample

_EPS = 1e-10


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + _EPS))


def peak_normalize(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scale down (never up) so that max |x| <= peak."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (peak / m)).astype(np.float32) if m > peak else x.astype(np.float32, copy=False)


# --- noises -------------------------------------------------------------------------------------

def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """white / pink (1/f) / brown (1/f^2) noise with unit RMS."""
    white = rng.standard_normal(n)
    if color == "white":
        out = white
    else:
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        f[0] = f[1] if n > 1 else 1.0
        power = {"pink": 0.5, "brown": 1.0}.get(color)
        if power is None:
            raise ValueError(f"unknown noise color {color!r}; use white, pink or brown")
        out = np.fft.irfft(spec / f**power, n)
    return (out / (np.sqrt(np.mean(out**2)) + _EPS)).astype(np.float32)


def babble(speech_clips: list[np.ndarray], n: int, rng: np.random.Generator, talkers: int = 5) -> np.ndarray:
    """Overlapped speech of several talkers (cocktail-party noise), unit RMS."""
    if not speech_clips:
        raise ValueError("babble needs speech clips")
    out = np.zeros(n, np.float32)
    for _ in range(talkers):
        pos = 0
        while pos < n:
            clip = speech_clips[int(rng.integers(len(speech_clips)))]
            clip = clip / (rms(clip) + _EPS)
            k = min(len(clip), n - pos)
            out[pos:pos + k] += clip[:k]
            pos += k + int(rng.integers(0, SAMPLE_RATE // 4))
    return (out / (rms(out) + _EPS)).astype(np.float32)


class NoiseBank:
    """Background noise recordings from a folder of wavs (any rate; resampled), plus synthetic colours."""

    def __init__(self, folder: str | Path | None = None, max_files: int = 200):
        self.clips: list[np.ndarray] = []
        if folder is not None and Path(folder).is_dir():
            import soundfile as sf

            for p in sorted(Path(folder).rglob("*.wav"))[:max_files]:
                audio, sr = sf.read(str(p), dtype="float32", always_2d=True)
                audio = resample(audio.mean(axis=1), sr, SAMPLE_RATE)
                if len(audio) >= SAMPLE_RATE // 2 and rms(audio) > 1e-4:
                    self.clips.append(audio / rms(audio))

    def sample(self, n: int, rng: np.random.Generator, babble_clips: list[np.ndarray] | None = None) -> np.ndarray:
        """A unit-RMS noise segment of n samples: a recording, a colour, or babble."""
        kinds = ["white", "pink", "brown"] + (["file"] * 3 if self.clips else []) + (["babble"] if babble_clips else [])
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "file":
            clip = self.clips[int(rng.integers(len(self.clips)))]
            if len(clip) < n:
                clip = np.tile(clip, n // len(clip) + 1)
            start = int(rng.integers(0, len(clip) - n + 1))
            seg = clip[start:start + n]
            return (seg / rms(seg)).astype(np.float32)
        if kind == "babble":
            return babble(babble_clips or [], n, rng)
        return colored_noise(n, kind, rng)


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled to the given SNR (speech power over noise power, in dB)."""
    if len(noise) != len(speech):
        raise ValueError(f"noise has {len(noise)} samples, speech {len(speech)}")
    gain = rms(speech) / (rms(noise) * 10 ** (snr_db / 20.0))
    return peak_normalize(speech + gain * noise)


# --- channel and room ---------------------------------------------------------------------------

def synthetic_rir(rng: np.random.Generator, rt60: float | None = None, length_s: float | None = None) -> np.ndarray:
    """A room impulse response: direct path, sparse early reflections, exponentially decaying tail."""
    rt60 = float(rng.uniform(0.15, 0.8)) if rt60 is None else rt60
    length_s = min(1.2, rt60 * 1.2) if length_s is None else length_s
    n = max(16, int(length_s * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    onset = int(rng.uniform(0.002, 0.01) * SAMPLE_RATE)
    tail[:onset] = 0.0
    h = tail * float(rng.uniform(0.1, 0.5))
    h[0] = 1.0
    for _ in range(int(rng.integers(3, 9))):  # early reflections
        k = int(rng.uniform(0.001, 0.03) * SAMPLE_RATE)
        if k < n:
            h[k] += float(rng.uniform(-0.6, 0.6))
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    n = len(x) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(rir, size), size)[: len(x)]
    y *= rms(x) / (rms(y) + _EPS)
    return peak_normalize(y.astype(np.float32))


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Play faster (factor > 1) or slower: changes tempo and pitch together, like Kaldi's speed perturbation.

    It also shifts the formants, which approximates a different vocal-tract length.
    """
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor {factor} outside [0.5, 2]")
    return resample(x, int(round(SAMPLE_RATE * factor)), SAMPLE_RATE)


def band_limit(x: np.ndarray, rate: int = 8000) -> np.ndarray:
    """Telephone-like channel: down to `rate` and back (removes everything above rate/2)."""
    return peak_normalize(resample(resample(x, SAMPLE_RATE, rate), rate, SAMPLE_RATE)[: len(x)])


def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    return peak_normalize(x * np.float32(10 ** (gain_db / 20.0)))


def pad_silence(x: np.ndarray, before_s: float, after_s: float, rng: np.random.Generator,
                floor_db: float = -70.0) -> np.ndarray:
    """Pad with low-level noise (digital silence never occurs in real recordings)."""
    b, a = int(before_s * SAMPLE_RATE), int(after_s * SAMPLE_RATE)
    floor = 10 ** (floor_db / 20.0)
    pre = rng.standard_normal(b).astype(np.float32) * floor
    post = rng.standard_normal(a).astype(np.float32) * floor
    return np.concatenate([pre, x.astype(np.float32), post])


# --- device microphones ----------------------------------------------------------------------------

def mic_response(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheap microphone's frequency response: a random high-pass corner (80-400 Hz), a low-pass
    roll-off (3.4-7.5 kHz) and one to three resonances of +-8 dB, applied as a smooth gain curve."""
    n = len(x)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    hp = float(rng.uniform(80, 400))
    lp = float(rng.uniform(3400, 7500))
    order = float(rng.uniform(1, 3))
    g = 1.0 / np.sqrt(1 + (hp / np.maximum(f, 1.0)) ** (2 * order)) / np.sqrt(1 + (f / lp) ** (2 * order))
    logf = np.log(np.maximum(f, 1.0))
    for _ in range(int(rng.integers(1, 4))):
        centre, width, db = np.log(rng.uniform(300, 6000)), float(rng.uniform(0.1, 0.5)), float(rng.uniform(-8, 8))
        g = g * 10 ** (db / 20 * np.exp(-0.5 * ((logf - centre) / width) ** 2))
    y = np.fft.irfft(np.fft.rfft(x) * g, n).astype(np.float32)
    return peak_normalize(y * (rms(x) / (rms(y) + _EPS)))


def clip_distort(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An overdriven input stage: drive 2-10x into a hard or soft (tanh) clipper."""
    drive = float(rng.uniform(2, 10)) / (np.max(np.abs(x)) + _EPS)
    y = np.clip(x * drive, -1, 1) if rng.random() < 0.5 else np.tanh(x * drive)
    return (y * 0.9).astype(np.float32)


def auto_gain(x: np.ndarray, rng: np.random.Generator, frame: int = 320) -> np.ndarray:
    """A phone's automatic gain control: the level is pulled to a target with a fast attack and a
    slow release, so pauses (and the noise in them) are pumped up and onsets are squashed."""
    n = len(x)
    k = max(1, n // frame)
    env = np.sqrt(np.mean(np.square(x[: k * frame].reshape(k, frame), dtype=np.float64), axis=1) + _EPS)
    max_gain = 10 ** (float(rng.uniform(10, 30)) / 20)
    target = float(np.max(env))
    attack, release = float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.02, 0.1))
    gains = np.empty(k)
    g = 1.0
    for i in range(k):
        want = min(max_gain, target / env[i])
        g += (want - g) * (attack if want < g else release)
        gains[i] = g
    per_sample = np.interp(np.arange(n), np.arange(k) * frame + frame / 2, gains)
    return peak_normalize((x * per_sample).astype(np.float32))


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentation chain (defaults tuned for wake-word training)."""

    p_speed: float = 0.5
    speed_range: tuple[float, float] = (0.85, 1.15)
    p_reverb: float = 0.5
    p_band_limit: float = 0.15
    p_noise: float = 0.8
    snr_range_db: tuple[float, float] = (0.0, 30.0)
    gain_range_db: tuple[float, float] = (-25.0, 0.0)
    pad_range_s: tuple[float, float] = (0.0, 0.5)
    # device audio (0 = off): microphone response, automatic gain control, overdriven input, and the
    # speech at the very end of a clip (a long lead-in, no tail: wake words end clips on devices)
    p_mic: float = 0.0
    p_agc: float = 0.0
    p_clip: float = 0.0
    p_at_end: float = 0.0
    lead_in_s: tuple[float, float] = (0.5, 1.5)


AUGMENT_PRESETS = {
    "standard": AugmentConfig(),
    "device": AugmentConfig(snr_range_db=(-5.0, 30.0), p_mic=0.5, p_agc=0.3, p_clip=0.1, p_at_end=0.2),
}


class Augmenter:
    """The whole chain; `augmenter(x, rng)` is deterministic given the generator's state."""

    def __init__(self, config: AugmentConfig = AugmentConfig(), noise: NoiseBank | None = None,
                 babble_clips: list[np.ndarray] | None = None):
        self.config = config
        self.noise = noise or NoiseBank(None)
        self.babble_clips = babble_clips

    def __call__(self, x: np.ndarray, rng: np.random.Generator, info: dict | None = None) -> np.ndarray:
        """`info`, when given, receives where the input went: "speed" (input samples per output
        sample) and "lead" (samples of padding before it); the later steps keep time in place."""
        c = self.config
        n_in = len(x)
        if rng.random() < c.p_speed:
            x = speed_perturb(x, float(rng.uniform(*c.speed_range)))
        speed = n_in / max(1, len(x))
        if c.p_at_end and rng.random() < c.p_at_end:
            lead = float(rng.uniform(*c.lead_in_s))
            x = pad_silence(x, lead, 0.0, rng)
        else:
            lead = float(rng.uniform(*c.pad_range_s))
            x = pad_silence(x, lead, float(rng.uniform(*c.pad_range_s)), rng)
        if info is not None:
            info["speed"], info["lead"] = speed, int(lead * SAMPLE_RATE)
        if rng.random() < c.p_reverb:
            x = reverberate(x, synthetic_rir(rng))
        if rng.random() < c.p_band_limit:
            x = band_limit(x, int(rng.choice([8000, 11025])))
        if rng.random() < c.p_noise:
            x = add_noise(x, self.noise.sample(len(x), rng, self.babble_clips), float(rng.uniform(*c.snr_range_db)))
        if c.p_mic and rng.random() < c.p_mic:
            x = mic_response(x, rng)
        if c.p_agc and rng.random() < c.p_agc:
            x = auto_gain(x, rng)
        if c.p_clip and rng.random() < c.p_clip:
            x = clip_distort(x, rng)
        x = x / (np.max(np.abs(x)) + _EPS) * 0.9  # level set by the gain step, not by the engine
        return apply_gain(x, float(rng.uniform(*c.gain_range_db)))
