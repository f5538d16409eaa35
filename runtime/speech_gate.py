"""The speech gate's per-stream policy (numpy): when the encoder runs at all.

The bundle's speech-gate graph gives, per chunk, P(speech) from the front end's output (heron.models.
speech_gate trains it). The policy, apart from the model call as in silero-vad's VADIterator, turns
those probabilities into open / closed chunks: a chunk at or above `threshold` opens the encoder; an
open encoder stays open while chunks stay at or above the lower `release`, and for `hangover` chunks
after the last chunk above `threshold` (the end of a word is quieter than its start). A closed chunk
runs no encoder module: its caches move on as closed modules' do and it yields blank frames.

The policy's state is two numbers, kept in the stream's encoder state (`STATE_KEY`) with the front
end's outputs of the last closed chunks (`PAST_KEY`: when the gate opens, the encoder runs them first
for context), so a stream's reset and independent streams need nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_KEY = "speech_gate"  # [open (0/1), hangover chunks left]
PAST_KEY = "speech_gate_past"  # the front end's outputs of the last PAST_CHUNKS closed chunks (zeros: none)
PAST_CHUNKS = 2


@dataclass(frozen=True)
class GatePolicy:
    """The manifest's `speech_gate` section."""

    threshold: float = 0.5
    release: float = 0.3
    hangover: int = 2

    def __post_init__(self):
        if not 0.0 < self.release <= self.threshold < 1.0:
            raise ValueError(f"speech gate: need 0 < release <= threshold < 1, got release {self.release}, "
                             f"threshold {self.threshold}")
        if isinstance(self.hangover, bool) or not isinstance(self.hangover, int) or not 0 <= self.hangover <= 100:
            raise ValueError(f"speech gate: hangover must be an integer in [0, 100] chunks, got {self.hangover!r}")

    @classmethod
    def from_dict(cls, section: object, where: str) -> "GatePolicy":
        """The manifest's `speech_gate` section, checked (types, ranges, release <= threshold, no unknown
        fields): BundleError otherwise."""
        from heron.runtime.manifest import Fields

        f = Fields({"speech_gate": section}, where)
        f.only("speech_gate", ("threshold", "release", "hangover"))
        thr = f.float("speech_gate.threshold", 0.01, 0.99)
        release = f.float("speech_gate.release", 0.01, 0.99)
        if release > thr:
            f.fail("speech_gate.release", f"must be at most speech_gate.threshold ({thr})")
        return cls(thr, release, f.int("speech_gate.hangover", 0, 100))

    def to_dict(self) -> dict:
        """The manifest's `speech_gate` section (what `from_dict` reads back)."""
        return {"threshold": self.threshold, "release": self.release, "hangover": self.hangover}

    @staticmethod
    def init_state() -> np.ndarray:
        return np.zeros(2, np.float32)

    def step(self, p: float, state: np.ndarray) -> tuple[bool, np.ndarray]:
        """(is this chunk open, the new state) for a chunk of speech probability p."""
        is_open, left = bool(state[0]), int(state[1])
        if p >= self.threshold:
            is_open, left = True, self.hangover
        elif is_open and p >= self.release:
            pass
        elif is_open and left > 0:
            left -= 1
        else:
            is_open, left = False, 0
        return is_open, np.array([float(is_open), float(left)], np.float32)
