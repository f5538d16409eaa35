"""The log-mel front end: the two-stage DFT equals the direct windowed DFT, and streaming chunks give
the whole clip's features."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from heron.models.frontend import N_BINS, N_FFT, LogMel, dft_basis, fft_factors, power_spectrum  # noqa: E402


def test_two_stage_dft_equals_the_direct_dft():
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 17, N_FFT, generator=g) * 0.3
    spec = frames.double() @ dft_basis().double()
    ref = spec[..., :N_BINS] ** 2 + spec[..., N_BINS:] ** 2
    got = power_spectrum(frames, fft_factors()).double()
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))
    # a pure tone lands in its own bin: bin 50 is 2 kHz at 16 kHz
    t = torch.arange(N_FFT, dtype=torch.float32)
    tone = torch.cos(2 * np.pi * 50 * t / N_FFT)[None, None]
    p = power_spectrum(tone, fft_factors())[0, 0]
    assert int(p.argmax()) == 50 and float(p[50]) > 100 * float(p[60:].max())


def test_streamed_features_equal_the_whole_clip():
    from heron.models.frontend import CONTEXT, HOP

    fe = LogMel().eval()
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(1, 32 * HOP * 3, generator=g) * 0.1
    whole = fe(fe.pad_history(wav))
    hist = torch.zeros(1, CONTEXT)
    parts = []
    for i in range(0, wav.shape[1], 32 * HOP):
        chunk = torch.cat([hist, wav[:, i:i + 32 * HOP]], dim=1)
        parts.append(fe(chunk))
        hist = chunk[:, -CONTEXT:]
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-4)
