"""Google's speech_embedding, window by window (the wheel's graph) against one pass over the mel sequence (the form
bundles carry, heron.export.embedding_head.sequence_embedding_graph): milliseconds per call for n embedding frames,
1 onnxruntime thread, best of 5 x 20 calls on the same mels; checks that both give the same frames.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_speech_embedding.py
"""
from __future__ import annotations

import time

import numpy as np


def best_ms(fn, n: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e3


def main() -> int:
    from heron.export.embedding_head import sequence_speech_embedding
    from heron.runtime.metrics import machine
    from heron.runtime.speech_embedding import STEP_FRAMES, WINDOW_FRAMES, SpeechEmbedding

    print(machine())
    window, sequence = SpeechEmbedding(threads=1), sequence_speech_embedding(threads=1)
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 4)).astype(np.float32)
    spec = window.mels(audio)
    for n in (1, 8, 16, 32):
        mels = spec[: WINDOW_FRAMES + STEP_FRAMES * (n - 1)]
        a, b = window.from_mels(mels), sequence.from_mels(mels)
        assert a.shape == b.shape == (n, a.shape[1]) and np.allclose(a, b, atol=1e-4)
        tw, ts = best_ms(lambda: window.from_mels(mels)), best_ms(lambda: sequence.from_mels(mels))
        print(f"{n:3d} frames: windows {tw:6.2f} ms, one sequence {ts:6.2f} ms ({tw / ts:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
