"""Google's speech_embedding (numpy + onnxruntime): 96-d features of real speech every 80 ms.

Google trained it on a large body of real speech for keyword spotting ("Training Keyword Spotters with
Limited and Synthesized Speech Data", Lin et al. 2020; TF-Hub speech_embedding/1, Apache-2.0). The two
ONNX graphs heron reads are the ones the `openwakeword` 0.4.0 wheel ships (its own per-word models are
CC BY-NC-SA and are never read here):

    melspectrogram.onnx   16 kHz samples (int16 scale) -> 32 log-mels every 10 ms (32 ms window)
    embedding_model.onnx  76 mel frames (775 ms) -> one 96-d vector; heron steps the window by 8 frames

Embedding frame i covers the mel frames [8 i, 8 i + 76): audio from 80 i ms to 80 i + 775 ms (+22 ms of
the mel window). The wheel's embedding graph takes a batch of such windows; a bundle carries it rewritten
(heron.export.embedding_head.sequence_embedding_graph) to take one whole mel sequence and return the same
frames, computing the 68 frames neighbouring windows share once: the runtime reads either form.
heron's encoder hears a few hours of real speech; this network heard far more, so a small head on its
frames (heron.models.embedding_head) hears real device audio better (issue 19).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
MEL_HOP = 160            # samples per mel frame (10 ms)
MEL_BINS = 32
MEL_FFT = 512            # samples per mel window (the graph's own, measured)
WINDOW_FRAMES = 76       # mel frames per embedding (775 ms)
STEP_FRAMES = 8          # mel frames between embeddings (80 ms)
DIM = 96
MEL_FILE, EMBEDDING_FILE = "melspectrogram.onnx", "embedding_model.onnx"
PAD_SECONDS = 0.4  # silence around an utterance or window, so the 775 ms windows cover its edges (the head's training)
INSTALL_HINT = "pip install --no-deps openwakeword==0.4.0 (its two Apache-2.0 feature graphs only)"


def openwakeword_models_dir() -> Path:
    """The folder holding the two graphs inside an installed openwakeword wheel (found, not imported:
    importing openwakeword needs scipy and more)."""
    spec = importlib.util.find_spec("openwakeword")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"Google's speech_embedding graphs come from the openwakeword wheel: {INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "resources" / "models"
    missing = [f for f in (MEL_FILE, EMBEDDING_FILE) if not (d / f).is_file()]
    if missing:
        raise RuntimeError(f"{d} lacks {', '.join(missing)} (openwakeword 0.6 ships none: {INSTALL_HINT})")
    return d


def n_frames(n_samples: int) -> int:
    """Embedding frames for n_samples of audio (0 when shorter than one 775 ms window)."""
    mels = max(0, (n_samples - MEL_FFT) // MEL_HOP + 1)  # the mel graph's frames (512-sample window)
    return max(0, (mels - WINDOW_FRAMES) // STEP_FRAMES + 1)


class SpeechEmbedding:
    """The two graphs as one function of audio: `embed(x)` -> (frames, 96)."""

    def __init__(self, folder: str | Path | None = None, threads: int = 1, sessions=None):
        """folder: the two graphs (default: the installed openwakeword wheel's); sessions: (mel, embedding)
        onnxruntime sessions already opened (a bundle's verified files)."""
        from heron.runtime.sessions import open_session

        if sessions is not None:
            self.mel, self.embedding = sessions
        else:
            folder = Path(folder) if folder is not None else openwakeword_models_dir()
            for f in (MEL_FILE, EMBEDDING_FILE):
                if not (folder / f).is_file():
                    raise FileNotFoundError(f"{folder / f} is missing ({INSTALL_HINT})")
            self.mel = open_session(folder / MEL_FILE, threads)
            self.embedding = open_session(folder / EMBEDDING_FILE, threads)
        # (windows, 76, 32, 1): the wheel's form; (1, mel frames, 32, 1): the sequence form
        self.sequence = self.embedding.get_inputs()[0].shape[1] != WINDOW_FRAMES

    def mels(self, audio: np.ndarray) -> np.ndarray:
        """(samples,) float in [-1, 1] at 16 kHz -> (mel frames, 32), scaled as openWakeWord scales them
        to match the TF-Hub model (x / 10 + 2)."""
        x = np.asarray(audio)
        if x.ndim != 1:
            raise ValueError(f"expected mono audio (samples,), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("audio contains NaN or infinite samples")
        if len(x) < MEL_FFT:  # shorter than one mel window
            return np.zeros((0, MEL_BINS), np.float32)
        spec = self.mel.run(None, {"input": (x.astype(np.float32) * 32767.0)[None]})[0]  # (T, 1, ?, 32)
        return spec.reshape(-1, MEL_BINS) / 10.0 + 2.0

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """(samples,) float in [-1, 1] at 16 kHz -> (n_frames(samples), 96) float32."""
        return self.from_mels(self.mels(audio))

    def from_mels(self, spec: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        """Mel frames (from `mels`) -> the embedding frames listed in `frames` (default: all of them).
        The mel graph floors its output relative to the loudest part of its input, so the mels of a window
        holding silence depend on the whole window, not only on each frame's own audio."""
        n = (len(spec) - WINDOW_FRAMES) // STEP_FRAMES + 1
        frames = np.arange(max(n, 0)) if frames is None else np.asarray(frames, np.int64)
        if len(frames) == 0:
            return np.zeros((0, DIM), np.float32)
        if frames.min() < 0 or frames.max() >= max(n, 0):
            raise ValueError(f"embedding frames {frames.min()}..{frames.max()} lie outside the {max(n, 0)} of these mels")
        if self.sequence:  # each run of consecutive frames in one call over the mels it covers
            runs = np.split(frames, np.flatnonzero(np.diff(frames) != 1) + 1)
            return np.concatenate([self._sequence(spec[r[0] * STEP_FRAMES: r[-1] * STEP_FRAMES + WINDOW_FRAMES])
                                   for r in runs])
        idx = frames[:, None] * STEP_FRAMES + np.arange(WINDOW_FRAMES)[None]  # (n, 76)
        windows = spec[idx][..., None].astype(np.float32)  # (n, 76, 32, 1)
        return self.embedding.run(None, {"input_1": windows})[0].reshape(len(frames), DIM)

    def _sequence(self, spec: np.ndarray) -> np.ndarray:
        """(76 + 8 (n - 1), 32) mels -> (n, 96) through the sequence form."""
        x = np.ascontiguousarray(spec, np.float32)[None, :, :, None]  # (1, mel frames, 32, 1)
        return self.embedding.run(None, {"input_1": x})[0].reshape(-1, DIM)

    def padded(self, audio: np.ndarray) -> np.ndarray:
        """embed() of the audio with PAD_SECONDS of silence each side (how the head was trained)."""
        x = np.asarray(audio, np.float32)
        pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), np.float32)
        return self.embed(np.concatenate([pad, x if x.ndim == 1 else x.reshape(-1), pad]))
