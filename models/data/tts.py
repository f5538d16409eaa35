"""Local text-to-speech engines and the voice registry (training and evaluation speech).

Every engine is a Debian package driven through its command-line tool; what is installed is
detected at run time. A `Voice` is an engine voice plus prosody (rate, pitch, word gap); its `id`
names it completely, so synthesis is a pure function of (voice id, text) and is cached on disk by
content hash. All audio comes back as 16 kHz mono float32 in [-1, 1].

Engines: espeak-ng (7 English accents x ~90 human-sounding variants), mbrola (diphone voices via
espeak-ng), flite, festival, pico. See ../shared/SETUP-NOTES.md for how each is installed.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from heron.models.audio import SAMPLE_RATE  # noqa: E402,F401 (the data engine writes the models' rate)
CACHE_VERSION = "1"  # bump to invalidate cached audio when synthesis changes

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# espeak-ng variants that do not sound like a person (robots, effects, test voices) are left out.
_ESPEAK_VARIANTS_EXCLUDED = {"announcer", "Mr", "UniRobot", "fast", "anikaRobot", "Demonic", "croak", "Tweaky",
                             "Storm", "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6",
                             "robosoft7", "robosoft8"}  # espeak-ng variant file names
MBROLA_VOICES = ("mb-us1", "mb-us2", "mb-us3", "mb-en1")
FLITE_VOICES = ("kal16", "awb", "rms", "slt", "kal")
FESTIVAL_VOICES = {"kal": "voice_kal_diphone", "ked": "voice_ked_diphone", "slt": "voice_cmu_us_slt_arctic_hts"}
PICO_VOICES = ("en-US", "en-GB")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: engine + engine voice + prosody. `id` is stable and unique."""

    engine: str
    name: str
    rate: float = 1.0  # speaking-rate factor (1.0 = engine default)
    pitch: int = 50  # espeak/mbrola pitch 0-99 (others: ignored, 50)
    word_gap: int = 0  # extra silence between words, in 10 ms units (espeak/mbrola)

    @property
    def base_id(self) -> str:
        """Engine voice without prosody: what a held-out split holds out."""
        return f"{self.engine}/{self.name}"

    @property
    def id(self) -> str:
        return f"{self.base_id}/r{self.rate:.2f}/p{self.pitch}/g{self.word_gap}"

    @classmethod
    def from_id(cls, vid: str) -> "Voice":
        """Inverse of `id` ("espeak/en-us+f3/r1.00/p50/g0" -> Voice)."""
        try:
            eng, name, r, p, g = vid.split("/")
            return cls(eng, name, float(r[1:]), int(p[1:]), int(g[1:]))
        except ValueError:
            raise ValueError(f"not a voice id: {vid!r} (expected engine/name/rR/pP/gG)") from None


def _run(cmd: list[str], *, input_text: str | None = None, timeout: float = 60.0) -> bytes:
    p = subprocess.run(cmd, input=input_text.encode() if input_text is not None else None,
                       capture_output=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-300:]}")
    return p.stdout


def _decode_wav(data: bytes) -> np.ndarray:
    import soundfile as sf

    if not data:
        raise RuntimeError("TTS engine produced no audio")
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), sr, SAMPLE_RATE)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling (soxr), float32 in/out."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio.astype(np.float32), sr_in, sr_out).astype(np.float32)


def _read_wav_file(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return _decode_wav(f.read())


class Engine:
    """A TTS engine: which voices it has, and text -> 16 kHz float32 audio for one of them."""

    name = ""
    binary = ""

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def version(self) -> str:
        return self.name

    def base_voices(self) -> list[Voice]:
        raise NotImplementedError

    def synth(self, voice: Voice, text: str) -> np.ndarray:
        raise NotImplementedError


class EspeakEngine(Engine):
    name, binary = "espeak", "espeak-ng"

    @functools.lru_cache(maxsize=1)
    def version(self) -> str:
        return _run([self.binary, "--version"]).decode().strip()

    @functools.lru_cache(maxsize=1)
    def variants(self) -> tuple[str, ...]:
        out = _run([self.binary, "--voices=variant"]).decode().splitlines()[1:]
        names = [tok[3:] for line in out for tok in line.split() if tok.startswith("!v/")]
        excluded = {n.lower() for n in _ESPEAK_VARIANTS_EXCLUDED}
        return tuple(sorted(n for n in names if n.lower() not in excluded))

    def base_voices(self) -> list[Voice]:
        return [Voice(self.name, f"{a}+{v}" if v else a) for a in ESPEAK_ACCENTS for v in ("",) + self.variants()]

    def synth(self, voice: Voice, text: str) -> np.ndarray:
        wpm = int(round(175 * voice.rate))
        cmd = [self.binary, "-v", voice.name, "-s", str(wpm), "-p", str(voice.pitch), "-g", str(voice.word_gap),
               "--stdout"]
        return _decode_wav(_run(cmd, input_text=text))  # stdin: text starting with "-" is not an option


class MbrolaEngine(EspeakEngine):
    """mbrola diphone voices, driven through espeak-ng (`-v mb-us1`)."""

    name, binary = "mbrola", "espeak-ng"

    def available(self) -> bool:
        if shutil.which("mbrola") is None or shutil.which(self.binary) is None:
            return False
        return bool(self.base_voices())

    def base_voices(self) -> list[Voice]:
        roots = [Path("/usr/share/mbrola"), Path("/usr/lib/mbrola")]
        have = [v for v in MBROLA_VOICES if any((r / v[3:]).exists() for r in roots)]
        return [Voice(self.name, v) for v in have]


class FliteEngine(Engine):
    name, binary = "flite", "flite"

    @functools.lru_cache(maxsize=1)
    def version(self) -> str:
        # flite prints its version and exits 1
        p = subprocess.run([self.binary, "--version"], capture_output=True, timeout=10, check=False)
        return (p.stdout or p.stderr).decode(errors="replace").strip().splitlines()[-1]

    def base_voices(self) -> list[Voice]:
        p = subprocess.run([self.binary, "-lv"], capture_output=True, timeout=10, check=False)
        out = p.stdout.decode(errors="replace")
        have = set(out.split(":", 1)[-1].split())
        return [Voice(self.name, v) for v in FLITE_VOICES if v in have]

    def synth(self, voice: Voice, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory() as d:
            path, txt = os.path.join(d, "out.wav"), os.path.join(d, "in.txt")
            with open(txt, "w") as f:
                f.write(text)  # from a file: text starting with "-" is not an option
            _run([self.binary, "-voice", voice.name, "--setf", f"duration_stretch={1.0 / voice.rate:.3f}",
                  "-f", txt, "-o", path])
            return _read_wav_file(path)


class FestivalEngine(Engine):
    name, binary = "festival", "text2wave"

    def base_voices(self) -> list[Voice]:
        roots = [Path("/usr/share/festival/voices")]
        found = {p.name for r in roots if r.exists() for p in r.glob("*/*")}
        want = {"kal": "kal_diphone", "ked": "ked_diphone", "slt": "cmu_us_slt_arctic_hts"}
        return [Voice(self.name, k) for k, d in want.items() if d in found]

    def synth(self, voice: Voice, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "out.wav")
            ev = f"({FESTIVAL_VOICES[voice.name]}) (Parameter.set 'Duration_Stretch {1.0 / voice.rate:.3f})"
            _run([self.binary, "-eval", ev, "-F", str(SAMPLE_RATE), "-o", path], input_text=text)
            return _read_wav_file(path)


class PicoEngine(Engine):
    name, binary = "pico", "pico2wave"

    def base_voices(self) -> list[Voice]:
        return [Voice(self.name, v) for v in PICO_VOICES]

    def synth(self, voice: Voice, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "out.wav")
            speed = int(round(100 * voice.rate))
            _run([self.binary, "-l", voice.name, "-w", path, f'<speed level="{speed}">{text}</speed>'])
            return _read_wav_file(path)


ENGINES: dict[str, Engine] = {e.name: e for e in (EspeakEngine(), MbrolaEngine(), FliteEngine(), FestivalEngine(),
                                                    PicoEngine())}


def available_engines() -> list[str]:
    return [name for name, e in ENGINES.items() if e.available()]


def _stable_hash(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")


class VoiceRegistry:
    """All installed voices, with a deterministic held-out split by engine voice.

    `hold_out_fraction` of the engine voices (chosen by a hash of their base id, so the split does not
    change when other engines are installed) are reserved for evaluation; `hold_out` also names base
    ids or engines to hold out explicitly ("flite/slt", "festival").
    """

    def __init__(self, engines: list[str] | None = None, hold_out_fraction: float = 0.15,
                 hold_out: tuple[str, ...] = ()):
        if not 0.0 <= hold_out_fraction < 1.0:
            raise ValueError(f"hold_out_fraction must be in [0, 1), got {hold_out_fraction}")
        names = available_engines() if engines is None else engines
        unknown = [n for n in names if n not in ENGINES]
        if unknown:
            raise ValueError(f"unknown TTS engines {unknown}; known: {sorted(ENGINES)}")
        missing = [n for n in names if not ENGINES[n].available()]
        if missing:
            raise RuntimeError(f"TTS engines not installed: {missing} (see `heron doctor`)")
        if not names:
            raise RuntimeError("no TTS engine is installed; `apt-get install espeak-ng` (see `heron doctor`)")
        self.engines = list(names)
        self.hold_out_fraction = hold_out_fraction
        self.hold_out = tuple(hold_out)
        self.base = [v for n in self.engines for v in ENGINES[n].base_voices()]

    def is_held_out(self, voice: Voice) -> bool:
        if voice.engine in self.hold_out or voice.base_id in self.hold_out:
            return True
        return (_stable_hash(voice.base_id) % 10_000) < self.hold_out_fraction * 10_000

    def voices(self, split: str = "train") -> list[Voice]:
        """Base voices of a split: "train", "heldout" or "all"."""
        if split == "all":
            return list(self.base)
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train, heldout or all, got {split!r}")
        want = split == "heldout"
        return [v for v in self.base if self.is_held_out(v) == want]

    def sample(self, n: int, split: str = "train", seed: int = 0, distinct: bool = True) -> list[Voice]:
        """n voices with random prosody; engines are drawn with weight sqrt(number of their voices), so
        espeak's hundreds of variants dominate less and the few voices of small engines recur.

        With distinct=True no base voice repeats until every voice of its engine has been used.
        """
        rng = np.random.default_rng(seed)
        pool = self.voices(split)
        if not pool:
            raise RuntimeError(f"no voices in split {split!r}")
        by_engine: dict[str, list[Voice]] = {}
        for v in pool:
            by_engine.setdefault(v.engine, []).append(v)
        engines = sorted(by_engine)
        weights = np.sqrt([len(by_engine[e]) for e in engines])
        weights /= weights.sum()
        queues: dict[str, list[int]] = {e: [] for e in engines}
        used: set[str] = set()
        out: list[Voice] = []
        while len(out) < n:
            e = engines[int(rng.choice(len(engines), p=weights))]
            if distinct and len(used) < len(pool) and all(v.base_id in used for v in by_engine[e]):
                continue  # this engine is used up while others still have unused voices
            if not queues[e]:
                queues[e] = [int(i) for i in rng.permutation(len(by_engine[e]))]
            base = by_engine[e][queues[e].pop()]
            used.add(base.base_id)
            out.append(with_random_prosody(base, rng))
        return out


def with_random_prosody(base: Voice, rng: np.random.Generator) -> Voice:
    """Speaking rate 0.75-1.3x, pitch 20-85, word gap 0-8 (espeak/mbrola only)."""
    rate = float(np.round(rng.uniform(0.75, 1.3), 2))
    if base.engine in ("espeak", "mbrola"):
        return replace(base, rate=rate, pitch=int(rng.integers(20, 86)), word_gap=int(rng.integers(0, 9)))
    return replace(base, rate=rate)


# --- cached, parallel synthesis -----------------------------------------------------------------

def cache_dir() -> Path:
    root = os.environ.get("HERON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "heron")
    return Path(root) / "tts"


def _cache_key(voice: Voice, text: str) -> str:
    eng = ENGINES[voice.engine]
    return hashlib.sha256(f"{CACHE_VERSION}\0{eng.version()}\0{voice.id}\0{text}".encode()).hexdigest()


def synthesize(voice: Voice, text: str, use_cache: bool = True) -> np.ndarray:
    """(voice, text) -> 16 kHz mono float32 audio, cached on disk as int16 by content hash."""
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    if voice.engine not in ENGINES:
        raise ValueError(f"unknown engine {voice.engine!r}")
    path = cache_dir() / (_cache_key(voice, text) + ".npy") if use_cache else None
    if path is not None and path.exists():
        try:
            return np.load(path, allow_pickle=False).astype(np.float32) / 32767.0
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # a torn write from an interrupted run: synthesize again
    audio = ENGINES[voice.engine].synth(voice, text)
    audio = np.clip(audio, -1.0, 1.0)
    pcm = np.round(audio * 32767.0).astype(np.int16)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, pcm, allow_pickle=False)
        os.replace(tmp, path)
    return pcm.astype(np.float32) / 32767.0


def synthesize_many(jobs: list[tuple[Voice, str]], workers: int | None = None, progress: bool = True,
                    desc: str = "synth") -> list[np.ndarray]:
    """Synthesize (voice, text) jobs in parallel on all cores (engines are subprocesses)."""
    workers = workers or os.cpu_count() or 1
    bar = _progress(len(jobs), desc) if progress else None
    out: list[np.ndarray | None] = [None] * len(jobs)

    def one(i: int) -> None:
        out[i] = synthesize(*jobs[i])
        if bar is not None:
            bar.update(1)

    with ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(one, range(len(jobs))))
    if bar is not None:
        bar.close()
    return out  # type: ignore[return-value]


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="utt", leave=False, disable=None)


def throughput(utterances: int, workers: int, seed: int = 0) -> list[dict]:
    """`heron data bench`: each installed engine's synthesis speed on `utterances` fresh (uncached) texts in
    its voices -> one row per engine: voices, utterances/s, seconds of audio per second (None: not installed)."""
    import time

    from heron.models.data.vocab import vocabulary

    phrases = [p.text for p in vocabulary() if p.n_words >= 2][: utterances * 3]
    rows = []
    for name, eng in ENGINES.items():
        if not eng.available():
            rows.append({"engine": name, "voices": None, "utterances_per_s": None, "audio_s_per_s": None})
            continue
        voices = VoiceRegistry(engines=[name], hold_out_fraction=0.0).sample(utterances, seed=seed)
        stamp = str(time.time_ns())[-4:]  # a fresh text per job so nothing comes from the cache
        jobs = [(v, f"{phrases[i % len(phrases)]} {stamp}") for i, v in enumerate(voices)]
        t0 = time.perf_counter()
        audio = synthesize_many(jobs, workers=workers, progress=False)
        dt = time.perf_counter() - t0
        rows.append({"engine": name, "voices": len(eng.base_voices()), "utterances_per_s": len(jobs) / dt,
                     "audio_s_per_s": sum(len(a) for a in audio) / SAMPLE_RATE / dt})
    return rows
