"""Log-mel front end in plain torch, streaming-exact and exportable.

The STFT is a matmul with a windowed DFT basis (no torch.stft), so the same graph exports to ONNX
and Core ML and a numpy port is a few lines. Frames are not centred: streaming keeps the last
`N_FFT - HOP` samples as state, whole-utterance processing left-pads that many zeros, and both see
the same frames.

VTLP (vocal-tract length perturbation) for training warps the mel filterbank's frequency axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from heron.models.audio import CONTEXT, HOP, N_BINS, N_FFT, SAMPLE_RATE  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class FrontendConfig:
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 7600.0
    log_floor: float = 1e-6


def _hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_mels: int, f_min: float, f_max: float, warp: float = 1.0) -> torch.Tensor:
    """(N_BINS, n_mels) HTK triangular filters; warp != 1 scales the frequency axis (VTLP)."""
    mel_pts = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz_pts = 700.0 * (10 ** (mel_pts / 2595.0) - 1.0)
    freqs = torch.linspace(0, SAMPLE_RATE / 2, N_BINS, dtype=torch.float64) * warp
    lo, ce, hi = hz_pts[:-2], hz_pts[1:-1], hz_pts[2:]
    up = (freqs[:, None] - lo[None]) / (ce - lo)[None]
    down = (hi[None] - freqs[:, None]) / (hi - ce)[None]
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def dft_basis() -> torch.Tensor:
    """(N_FFT, 2 * N_BINS): Hann-windowed cos and -sin columns."""
    n = torch.arange(N_FFT, dtype=torch.float64)
    k = torch.arange(N_BINS, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / N_FFT)  # periodic Hann
    ang = 2 * math.pi * n[:, None] * k[None] / N_FFT
    return torch.cat([window[:, None] * torch.cos(ang), -window[:, None] * torch.sin(ang)], dim=1).float()


FFT_SPLIT = (20, 20)  # N_FFT = N1 * N2: the DFT runs as two small matmuls (Cooley-Tukey), not one 400 x 402


def fft_factors() -> dict[str, torch.Tensor]:
    """The two stages of the windowed real DFT of a frame, N_FFT = N1 * N2 (sample n = N2 * n1 + n2,
    bin k = k1 + N1 * k2):  X[k] = sum_n2 T[n2, k1] W_N2^(n2 k2) sum_n1 x[N2 n1 + n2] W_N1^(n1 k1),
    W_M = exp(-2 pi i / M). About a fifth of the multiply-adds of the direct DFT matmul (`dft_basis`),
    with the same result to float rounding (tests/test_frontend.py)."""
    n1_, n2_ = FFT_SPLIT
    k2_ = -(-N_BINS // n1_)  # stage 2 computes only the k2 that reach bins < N_BINS
    n = torch.arange(N_FFT, dtype=torch.float64)
    a1 = 2 * math.pi * torch.arange(n1_, dtype=torch.float64)[:, None] * torch.arange(n1_, dtype=torch.float64)[None] / n1_
    tw = 2 * math.pi * torch.arange(n2_, dtype=torch.float64)[:, None] * torch.arange(n1_, dtype=torch.float64)[None] / N_FFT
    a2 = 2 * math.pi * torch.arange(n2_, dtype=torch.float64)[:, None] * torch.arange(k2_, dtype=torch.float64)[None] / n2_
    c2, s2 = torch.cos(a2), -torch.sin(a2)
    return {
        "window": (0.5 - 0.5 * torch.cos(2 * math.pi * n / N_FFT)).float(),  # periodic Hann
        "stage1": torch.cat([torch.cos(a1), -torch.sin(a1)], dim=1).float(),  # (N1: n1, 2 * N1: [re | im] k1)
        "twiddle_re": torch.cos(tw).float(), "twiddle_im": (-torch.sin(tw)).float(),  # (N2: n2, N1: k1)
        "stage2": torch.cat([torch.cat([c2, s2], dim=1), torch.cat([-s2, c2], dim=1)], dim=0).float(),  # (2 N2, 2 K2)
    }


def power_spectrum(frames: torch.Tensor, f: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, F, N_FFT) frames -> (B, F, N_BINS) power of the Hann-windowed DFT, in two small matmuls."""
    n1_, n2_ = FFT_SPLIT
    B, F = frames.shape[0], frames.shape[1]
    x = (frames * f["window"]).reshape(B, F, n1_, n2_).transpose(2, 3)  # (B, F, n2, n1)
    a = x @ f["stage1"]  # (B, F, n2, 2 N1)
    ar, ai = a[..., :n1_], a[..., n1_:]
    tr, ti = f["twiddle_re"], f["twiddle_im"]
    b = torch.cat([ar * tr - ai * ti, ar * ti + ai * tr], dim=2).transpose(2, 3)  # (B, F, k1, 2 N2)
    X = b @ f["stage2"]  # (B, F, k1, 2 K2): [re | im]
    k2_ = X.shape[-1] // 2
    power = X[..., :k2_] ** 2 + X[..., k2_:] ** 2  # (B, F, k1, k2)
    return power.transpose(2, 3).reshape(B, F, n1_ * k2_)[..., :N_BINS]  # bin k = k1 + N1 k2


class LogMel(nn.Module):
    """waveform (B, S) -> normalized log-mel (B, F, n_mels); S = F * HOP after CONTEXT samples of history."""

    def __init__(self, config: FrontendConfig = FrontendConfig()):
        super().__init__()
        self.config = config
        factors = fft_factors()
        self._fft_names = tuple(factors)
        for name, t in factors.items():
            self.register_buffer(f"fft_{name}", t, persistent=False)
        self.register_buffer("mel", mel_filterbank(config.n_mels, config.f_min, config.f_max), persistent=False)
        # feature normalization, estimated from training audio (saved with the model)
        self.register_buffer("mean", torch.zeros(config.n_mels))
        self.register_buffer("std", torch.ones(config.n_mels))

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, CONTEXT + F*HOP) -> (B, F, N_FFT) without torch.unfold (exports everywhere)."""
        n_frames = (wav.shape[1] - CONTEXT) // HOP
        # frame f = wav[f*HOP : f*HOP + N_FFT] = blocks f, f+1, f+2 of HOP samples, trimmed to N_FFT;
        # the tail pad only feeds the trimmed part
        if wav.shape[1] != CONTEXT + n_frames * HOP:  # (an identity slice exports as `alias`, which Core ML lacks)
            wav = wav[:, : CONTEXT + n_frames * HOP]
        wav = torch.nn.functional.pad(wav, (0, 3 * HOP - N_FFT))
        blocks = wav.reshape(wav.shape[0], n_frames + 2, HOP)
        stacked = torch.cat([blocks[:, :-2], blocks[:, 1:-1], blocks[:, 2:]], dim=2)  # (B, F, 3*HOP)
        return stacked[:, :, :N_FFT]

    def log_mel(self, wav: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
        """Un-normalized log-mels. mel: a (N_BINS, n_mels) filterbank, or (B, N_BINS, n_mels) for one
        per utterance (VTLP in training); default: the model's own."""
        power = power_spectrum(self.frames(wav), {k: getattr(self, f"fft_{k}") for k in self._fft_names})
        return torch.log(power @ (self.mel if mel is None else mel) + self.config.log_floor)

    def forward(self, wav: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
        return (self.log_mel(wav, mel) - self.mean) / self.std

    def pad_history(self, wav: torch.Tensor) -> torch.Tensor:
        """Whole-utterance input: prepend the zero history a fresh stream starts with."""
        return torch.nn.functional.pad(wav, (CONTEXT, 0))
