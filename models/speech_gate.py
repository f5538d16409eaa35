"""The speech gate: a tiny chunk-level speech / non-speech head on the front-end output the encoder
already computes (no second feature extractor). When it says "no speech", the runtime runs no encoder
module for the chunk (heron.runtime.modular): an always-on spotter then pays for the front end and this
head alone on silence and noise.

Input: the front end's output for one chunk, x (1, C, d) (C = chunk frames). A 2-layer MLP scores every
frame; the chunk's logit is the log-sum-exp of its frames' (speech anywhere in the chunk opens it)
-> P(speech in this chunk).

Training (`train_speech_gate`): the encoder is frozen; clips of 6.4 s are built from real training
speech (the `train/` splits; never the check's data) placed at random in synthetic backgrounds
(white / pink / brown noise, mains hum, tone chords, clicks and bursts, near-silence; each through a
random band filter) at random SNR and level, and from backgrounds alone. A chunk's label is 1 when it
overlaps a placed utterance's voiced span (its frames within 35 dB of the utterance's loudest) and the
frozen encoder hears a phoneme in it (pauses inside a long utterance are not speech to a keyword
spotter; the policy's hangover keeps the chunks after speech open). Speech missed costs more than noise
let through (positive weight 4): a closed chunk inside a keyword loses it; an open chunk on noise only
costs compute. The per-stream policy (threshold, a lower release threshold, a hangover) is
heron.runtime.speech_gate.GatePolicy; its values travel in the bundle's manifest.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from heron.models.audio import SAMPLE_RATE
from heron.models.data.augment import colored_noise

HIDDEN = 64
FILE = "speech_gate.safetensors"


class SpeechGate(nn.Module):
    def __init__(self, d_model: int, hidden: int = HIDDEN):
        super().__init__()
        self.d_model = d_model
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, d) -> P(speech) (B,)."""
        frame_logits = self.net(x)[..., 0]  # (B, C)
        return torch.sigmoid(torch.logsumexp(frame_logits, dim=1) - np.log(x.shape[1]))


@dataclass
class GateTrainConfig:
    steps: int = 600
    batch: int = 16
    clip_s: float = 6.4
    lr: float = 3e-3
    pos_weight: float = 2.0
    seed: int = 0
    speech_only_p: float = 0.15    # clips with no background (real recordings' own room noise)
    noise_only_p: float = 0.3      # clips with no speech at all
    device_p: float = 0.0          # utterances made device-like: room reverberation and a cheap microphone


# --- synthetic backgrounds ---------------------------------------------------------------------------

def _hum(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    f0 = float(rng.choice([50.0, 60.0]))
    x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) for k in range(1, 8))
    return x + 0.05 * rng.standard_normal(n)


def _chords(n: int, rng: np.random.Generator) -> np.ndarray:
    """Music-like: sustained chords of harmonic tones changing every 0.3-1.5 s."""
    out = np.zeros(n)
    i = 0
    while i < n:
        m = min(n - i, int(rng.uniform(0.3, 1.5) * SAMPLE_RATE))
        t = np.arange(m) / SAMPLE_RATE
        env = np.minimum(1.0, np.minimum(t / 0.02, (t[-1] - t + 1e-3) / 0.05))
        for f in 110.0 * 2 ** (rng.integers(0, 36, size=int(rng.integers(2, 5))) / 12):
            out[i:i + m] += env * sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 4))
        i += m
    return out


def _bursts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Clicks, knocks and short noise bursts over a quiet floor."""
    x = 0.02 * rng.standard_normal(n)
    for _ in range(int(rng.integers(2, 12))):
        at, m = int(rng.integers(0, n)), int(rng.integers(40, 3000))
        seg = rng.standard_normal(min(m, n - at)) * np.exp(-np.arange(min(m, n - at)) / (m / 4))
        x[at:at + len(seg)] += seg
    return x


def _band(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random high-pass, low-pass or band-pass (FFT mask with soft edges), or none."""
    kind = int(rng.integers(4))
    if kind == 0:
        return x
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    lo = float(np.exp(rng.uniform(np.log(20), np.log(2000)))) if kind in (1, 3) else 0.0
    hi = float(np.exp(rng.uniform(np.log(800), np.log(8000)))) if kind in (2, 3) else 1e9
    mask = 1 / (1 + (lo / np.maximum(f, 1e-3)) ** 4) / (1 + (f / hi) ** 4)
    return np.fft.irfft(spec * mask, n=len(x))


def background(n: int, rng: np.random.Generator) -> np.ndarray:
    """One unit-RMS non-speech background of n samples (or near-silence, scaled later)."""
    kind = str(rng.choice(["white", "pink", "brown", "hum", "chords", "bursts", "silence"]))
    if kind in ("white", "pink", "brown"):
        x = colored_noise(n, kind, rng)
    elif kind == "hum":
        x = _hum(n, rng)
    elif kind == "chords":
        x = _chords(n, rng)
    elif kind == "bursts":
        x = _bursts(n, rng)
    else:
        x = rng.standard_normal(n) * 1e-3
    x = _band(np.asarray(x, np.float64), rng)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def voiced_span(audio: np.ndarray, floor_db: float = 35.0, frame: int = 160) -> tuple[int, int]:
    """(first, last) sample of the frames within `floor_db` of the loudest frame."""
    n = len(audio) // frame
    if n == 0:
        return 0, len(audio)
    e = 10 * np.log10(np.mean(audio[:n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1) + 1e-12)
    on = np.flatnonzero(e >= e.max() - floor_db)
    return int(on[0] * frame), int((on[-1] + 1) * frame)


def make_clip(pool: list[np.ndarray], n: int, chunk: int, rng: np.random.Generator, cfg: GateTrainConfig
              ) -> tuple[np.ndarray, np.ndarray]:
    """A clip of n samples and its per-chunk speech labels (n // chunk)."""
    speech = np.zeros(n, np.float32)
    voiced = np.zeros(n, bool)
    if rng.random() >= cfg.noise_only_p:
        for _ in range(int(rng.integers(1, 3))):
            u = pool[int(rng.integers(len(pool)))]
            u = u[: n // 2] if len(u) > n // 2 else u
            if cfg.device_p and rng.random() < cfg.device_p:  # far-field: reverberant, band-limited
                from heron.models.data.augment import mic_response, reverberate, synthetic_rir

                u = mic_response(reverberate(u.astype(np.float64), synthetic_rir(rng)), rng).astype(np.float32)
            at = int(rng.integers(0, n - len(u) + 1))
            speech[at:at + len(u)] += u
            a, b = voiced_span(u)
            voiced[at + a:at + b] = True
    if voiced.any() and rng.random() < cfg.speech_only_p:
        x = speech
    else:
        bg = background(n, rng)
        if voiced.any():
            s_rms = float(np.sqrt(np.mean(speech[voiced].astype(np.float64) ** 2)))
            x = speech + bg * s_rms / 10 ** (float(rng.uniform(-5, 30)) / 20)
        else:
            x = bg
    x = x / (np.max(np.abs(x)) + 1e-9) * 10 ** (float(rng.uniform(-45, -1)) / 20)
    labels = voiced[: (n // chunk) * chunk].reshape(-1, chunk).any(axis=1)
    return x.astype(np.float32), labels.astype(np.float32)


def _front(model, wav: torch.Tensor) -> torch.Tensor:
    """The front end's output for whole chunks: (B, S) -> (B, chunks, C, d)."""
    from heron.models.frontend import CONTEXT

    c = model.config
    feats = model.frontend(torch.cat([torch.zeros(wav.shape[0], CONTEXT), wav], dim=1))
    x = model.inp(model.stack_frames(feats))
    B, T, D = x.shape
    n = T // c.chunk_frames
    return x[:, : n * c.chunk_frames].reshape(B, n, c.chunk_frames, D)


@torch.no_grad()
def heard(model, wav: torch.Tensor, p_phoneme: float = 0.5) -> torch.Tensor:
    """(B, chunks) 1 where the frozen encoder hears a phoneme (non-blank posterior >= p_phoneme) in the chunk."""
    from heron.models.conformer import BLANK

    c = model.config
    lp, _, _ = model(wav)
    B, T, _ = lp.shape
    n = T // c.chunk_frames
    speech = (1 - lp[:, : n * c.chunk_frames, BLANK].exp()).reshape(B, n, c.chunk_frames).amax(dim=2) >= p_phoneme
    return speech.float()


def train_speech_gate(model, pool: list[np.ndarray], cfg: GateTrainConfig = GateTrainConfig(),
                      log=print) -> SpeechGate:
    """Train the gate on `pool` (real training utterances, float32 at 16 kHz) with `model` frozen."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = model.eval()
    c = model.config
    gate = SpeechGate(c.d_model)
    opt = torch.optim.AdamW(gate.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n = int(cfg.clip_s * SAMPLE_RATE) // c.chunk_samples * c.chunk_samples
    t0 = time.time()
    for step in range(cfg.steps):
        clips, labels = zip(*(make_clip(pool, n, c.chunk_samples, rng, cfg) for _ in range(cfg.batch)))
        wav = torch.from_numpy(np.stack(clips))
        with torch.no_grad():
            x = _front(model, wav)
            y = torch.from_numpy(np.stack(labels)) * heard(model, wav)
        p = gate(x.reshape(-1, *x.shape[2:])).reshape(y.shape).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(p, y, weight=1 + (cfg.pos_weight - 1) * y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / cfg.steps))
        if step % 50 == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                recall = float(((p >= 0.5) & (y > 0)).sum() / y.sum().clamp(min=1))
                closed = float(((p < 0.5) & (y == 0)).sum() / (y == 0).sum().clamp(min=1))
            log(f"step {step}: loss {loss.item():.4f}, speech chunks kept {recall:.3f}, "
                f"non-speech chunks closed {closed:.3f} ({time.time() - t0:.0f} s)")
    return gate.eval()


def save_gate(gate: SpeechGate, folder: str | Path, meta: dict) -> Path:
    import json

    from heron.models.weights_io import save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.contiguous() for k, v in gate.state_dict().items()}, str(folder / FILE),
              metadata={"meta": json.dumps(meta), "d_model": str(gate.d_model)})
    return folder / FILE


def load_gate(folder: str | Path) -> tuple[SpeechGate, dict]:
    import json

    from safetensors import safe_open

    path = Path(folder) / FILE
    if not path.is_file():
        raise FileNotFoundError(f"no speech gate at {path} (train one: heron kws train-gate)")
    try:
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        gate = SpeechGate(int(md["d_model"]), hidden=int(state["net.0.weight"].shape[0]))
        gate.load_state_dict(state)
    except Exception as e:  # safetensors / torch raise their own types
        raise ValueError(f"{path} is not a readable speech gate: {str(e).splitlines()[0]}") from None
    return gate.eval(), json.loads(md.get("meta", "{}"))



@torch.no_grad()
def gate_probs_on_clips(model, gate: SpeechGate, pool: list[np.ndarray], n_clips: int, seed: int,
                        cfg: GateTrainConfig = GateTrainConfig()) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-chunk P(speech) and labels on `n_clips` clips built like the training clips (another seed)."""
    rng = np.random.default_rng(seed)
    c = model.config
    n = int(cfg.clip_s * SAMPLE_RATE) // c.chunk_samples * c.chunk_samples
    probs, labels = [], []
    for _ in range(n_clips):
        x, y = make_clip(pool, n, c.chunk_samples, rng, cfg)
        wav = torch.from_numpy(x[None])
        probs.append(gate(_front(model, wav)[0]).numpy())
        labels.append(y * heard(model, wav)[0].numpy())
    return probs, labels


def policy_rates(probs: list[np.ndarray], labels: list[np.ndarray], policy) -> tuple[float, float]:
    """(share of speech chunks left open, share of non-speech chunks closed) under a GatePolicy,
    each clip run as a stream from a fresh state."""
    kept = sp_total = closed = ns_total = 0
    for p, y in zip(probs, labels):
        st = policy.init_state()
        for pi, yi in zip(p, y):
            is_open, st = policy.step(float(pi), st)
            if yi:
                sp_total, kept = sp_total + 1, kept + is_open
            else:
                ns_total, closed = ns_total + 1, closed + (not is_open)
    return kept / max(1, sp_total), closed / max(1, ns_total)


def choose_policy(probs, labels, min_kept: float = 0.995, hangover: int = 2):
    """The highest threshold (0.05 steps) that keeps at least `min_kept` of the speech chunks open
    (release at 0.6 x threshold): as much closed on non-speech as that recall allows."""
    from heron.runtime.speech_gate import GatePolicy

    best = GatePolicy(0.05, 0.03, hangover)
    for t in np.arange(0.05, 0.96, 0.05):
        pol = GatePolicy(round(float(t), 2), round(float(t) * 0.6, 3), hangover)
        if policy_rates(probs, labels, pol)[0] >= min_kept:
            best = pol
    return best


def run(encoder: str | Path, user_data: list[str], out: str | Path, cfg: GateTrainConfig = GateTrainConfig(),
        eval_clips: int = 300, min_kept: float = 0.995, steady_db: float = 0.0) -> tuple[Path, dict]:
    """`heron kws train-gate`: train on 90% of the real training utterances, choose the policy on clips
    made from the other 10% (plus `steady_db`, heron.runtime.speech_gate), save the gate with its policy and
    report -> (file, report)."""
    from dataclasses import asdict, replace

    from heron.models.data.real import load_user_pool
    from heron.models.train_kws import load_encoder

    model, _ = load_encoder(encoder)
    pool = [u.audio.astype(np.float32) / 32768.0 for u in load_user_pool(user_data)]  # train rows only
    rng = np.random.default_rng(cfg.seed)
    held = set(rng.choice(len(pool), size=max(1, len(pool) // 10), replace=False).tolist())
    train_pool = [a for i, a in enumerate(pool) if i not in held]
    held_pool = [a for i, a in enumerate(pool) if i in held]
    gate = train_speech_gate(model, train_pool, cfg)
    probs, labels = gate_probs_on_clips(model, gate, held_pool, eval_clips, cfg.seed + 1000, cfg)
    policy = replace(choose_policy(probs, labels, min_kept=min_kept), steady_db=steady_db)
    kept, closed = policy_rates(probs, labels, policy)
    report = {"policy": asdict(policy), "held_out_speech_chunks_open": round(kept, 4),
              "held_out_nonspeech_chunks_closed": round(closed, 4), "held_out_clips": eval_clips,
              "train_utterances": len(train_pool), "held_out_utterances": len(held_pool), "steps": cfg.steps,
              "encoder": str(encoder), "user_data": list(user_data), "seed": cfg.seed, "device_speech": cfg.device_p}
    return save_gate(gate, out, report), report
