"""The speech gate's per-stream policy (numpy): when the encoder runs at all.

The bundle's speech-gate graph gives, per chunk, P(speech) from the front end's output (heron.models.
speech_gate trains it). The policy, apart from the model call as in silero-vad's VADIterator, turns
those probabilities into open / closed chunks: a chunk at or above `threshold` opens the encoder; an
open encoder stays open while chunks stay at or above the lower `release`, and for `hangover` chunks
after the last chunk above `threshold` (the end of a word is quieter than its start). A closed chunk
runs no encoder module: its caches move on as closed modules' do and it yields blank frames.

With `steady_db` > 0, a closed stream also skips the front end and the gate itself on steady non-speech:
after a chunk the gate scored clearly closed (below `release`) and that was itself no louder than the chunk
before it (plus `steady_db`), a following chunk whose level (RMS of the pre-emphasized audio, dB) is at most
`steady_db` above it stays closed without running any graph, for at most STEADY_MAX_CHUNKS chunks in a row
before the gate scores one again. Speech louder than the noise it starts in is always scored, and so is
the chunk after a jump in level (the gate may miss the first chunk of a word).

The policy's state is two numbers, kept in the stream's encoder state (`STATE_KEY`) with the audio of the
last chunks (`PAST_KEY`: when the gate opens, the front end and the encoder run the last closed chunks
first, for context) and the steady-skip state (`STEADY_KEY`), so a stream's reset and independent streams
need nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_KEY = "speech_gate"  # [open (0/1), hangover chunks left]
PAST_KEY = "speech_gate_past"  # the audio before the chunk: the front end's context + the last PAST_CHUNKS chunks
PAST_CHUNKS = 2
STEADY_KEY = "speech_gate_steady"  # [closed chunks in a row, reference level dB (nan: none), skipped in a row,
#                                      the last chunk's level dB]
STEADY_MAX_CHUNKS = 16  # the gate scores at least every 16th chunk of a steady stretch (5.1 s at 320 ms)


def level_db(chunk: np.ndarray) -> float:
    """The chunk's level for the steady skip: RMS of the pre-emphasized audio (x[n] - 0.97 x[n-1]), in dB:
    speech onsets raise it more than low-frequency noise does."""
    d = chunk[1:] - 0.97 * chunk[:-1]
    return 10.0 * float(np.log10(float(np.dot(d, d)) / max(1, d.size) + 1e-12))


@dataclass(frozen=True)
class GatePolicy:
    """The manifest's `speech_gate` section."""

    threshold: float = 0.5
    release: float = 0.3
    hangover: int = 2
    steady_db: float = 0.0  # 0: the gate scores every chunk

    def __post_init__(self):
        if not 0.0 < self.release <= self.threshold < 1.0:
            raise ValueError(f"speech gate: need 0 < release <= threshold < 1, got release {self.release}, "
                             f"threshold {self.threshold}")
        if isinstance(self.hangover, bool) or not isinstance(self.hangover, int) or not 0 <= self.hangover <= 100:
            raise ValueError(f"speech gate: hangover must be an integer in [0, 100] chunks, got {self.hangover!r}")
        if not 0.0 <= self.steady_db <= 20.0:
            raise ValueError(f"speech gate: steady_db must be in [0, 20] dB, got {self.steady_db!r}")

    @classmethod
    def from_dict(cls, section: object, where: str) -> "GatePolicy":
        """The manifest's `speech_gate` section, checked (types, ranges, release <= threshold, no unknown
        fields): BundleError otherwise. `steady_db` may be absent (bundles made before it: 0, off)."""
        from heron.runtime.manifest import Fields

        f = Fields({"speech_gate": section}, where)
        f.only("speech_gate", ("threshold", "release", "hangover", "steady_db"))
        thr = f.float("speech_gate.threshold", 0.01, 0.99)
        release = f.float("speech_gate.release", 0.01, 0.99)
        if release > thr:
            f.fail("speech_gate.release", f"must be at most speech_gate.threshold ({thr})")
        steady = f.float("speech_gate.steady_db", 0.0, 20.0, optional=True)
        return cls(thr, release, f.int("speech_gate.hangover", 0, 100), 0.0 if steady is None else steady)

    def to_dict(self) -> dict:
        """The manifest's `speech_gate` section (what `from_dict` reads back)."""
        d = {"threshold": self.threshold, "release": self.release, "hangover": self.hangover}
        return {**d, "steady_db": self.steady_db} if self.steady_db else d

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
