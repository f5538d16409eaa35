"""Reading audio files for the spotter: one rule for every command that takes a file.

- any number of channels: several are mixed down to mono (phone and laptop recordings are often
  stereo; `channels` tells the caller, who says so);
- any sample rate (streams resample to the model's rate);
- float samples are clipped to [-1, 1]: decoders of lossy formats (mp3, ogg) overshoot full scale
  slightly, and that is the recording, not an error;
- NaN or infinite samples, empty files and unreadable or corrupt files (also when the damage is found
  mid-file) are refused with one line (ValueError);
- files are read in blocks, so an hours-long file costs the memory of one block.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

BLOCK_SECONDS = 10.0


class AudioFile:
    """An opened, checked audio file: `sample_rate`, `channels`, `seconds`, and `blocks()` of float32 mono."""

    def __init__(self, path: str | Path):
        import soundfile as sf

        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"no such file: {self.path}")
        if not self.path.is_file():
            raise ValueError(f"{self.path} is not a regular file")
        try:
            info = sf.info(str(self.path))
        except (RuntimeError, OSError) as e:  # soundfile raises LibsndfileError (a RuntimeError)
            raise ValueError(f"cannot read {self.path} as audio ({str(e).splitlines()[0]})") from None
        if info.frames == 0:
            raise ValueError(f"{self.path}: the file has no samples")
        self.sample_rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.seconds = info.frames / info.samplerate

    def blocks(self, seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
        import soundfile as sf

        n = max(1, int(seconds * self.sample_rate))
        blocks = sf.blocks(str(self.path), blocksize=n, dtype="float32", always_2d=True)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                return
            except (RuntimeError, OSError, sf.SoundFileError) as e:  # a file damaged after its header
                raise ValueError(f"cannot read {self.path} as audio ({str(e).splitlines()[0]})") from None
            a = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{self.path}: audio contains NaN or infinite samples")
            yield np.clip(a, -1.0, 1.0)

    def read(self) -> np.ndarray:
        """The whole file (for short clips; use blocks() for long ones)."""
        return np.concatenate(list(self.blocks()))
