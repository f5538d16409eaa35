"""Train the gated streaming conformer (phoneme CTC + gate compute penalty) on TTS speech.

`heron kws train --preset default --out runs/kws` trains, checkpoints (safetensors) every
`ckpt_every` steps and resumes from the last checkpoint in `--out` when restarted. Everything is
deterministic from the seed (the batch of step k depends only on (seed, k)).
Training-time augmentation on features: VTLP (warped mel filterbank per utterance) and SpecAugment.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heron.models.conformer import PRESETS, ConformerConfig, GatedConformer, gate_cost_weights
from heron.models.frontend import mel_filterbank
from heron.models.audio import HOP, SAMPLE_RATE
from heron.models.data.augment import AUGMENT_PRESETS
from heron.models.data.real import load_user_pool, with_cuts
from heron.models.kws_data import BatchConfig, BatchStream, build_tts_pool, crop_budget


@dataclass(frozen=True)
class TrainConfig:
    model: ConformerConfig = field(default_factory=lambda: PRESETS["base"])
    steps: int = 6000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 500
    weight_decay: float = 0.01
    gate_penalty: float = 0.05  # weight of the expected-compute term
    gate_warmup: int = 1500  # steps before the penalty starts (learn phonemes first)
    pool_size: int = 16000  # TTS utterances synthesized for training
    max_seconds: float = 3.2
    vtlp: tuple[float, float] = (0.88, 1.12)
    spec_time_masks: int = 2
    spec_time_width: int = 10  # feature frames
    spec_freq_masks: int = 2
    spec_freq_width: int = 6  # mel bins
    seed: int = 0
    threads: int = 2
    ckpt_every: int = 250
    log_every: int = 25
    user_data: tuple[str, ...] = ()  # real data sources (TSV manifests' train rows, CSV audio,text, LibriSpeech folders)
    real_fraction: float = 0.0  # with user_data: share of each batch drawn from it (0: pooled with the TTS)
    init: str = ""  # start from this checkpoint's weights (fine-tuning; its model config is used)
    augment: str = "standard"  # augmentation preset (heron.models.data.augment.AUGMENT_PRESETS)
    align: str = ""  # checkpoint whose CTC alignment cuts long real utterances between words (default: init)
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit
    # real-speech teacher (heron.models.teacher): weight of the frame loss on the real utterances (0 = off),
    # the student block it is applied to (1..n_layers), and where its frames are cached (default --out)
    teacher_weight: float = 0.0
    teacher_layer: int = 3
    teacher_cache: str = ""
    grow_layers: int = 0  # with init: append this many blocks (output projections zeroed) before fine-tuning


TRAIN_PRESETS = {
    "smoke": TrainConfig(model=PRESETS["tiny"], steps=20, batch_size=4, pool_size=40, warmup=5, gate_warmup=10,
                         ckpt_every=10, log_every=5),
    "small": TrainConfig(model=PRESETS["small"], steps=3000, pool_size=8000),
    "default": TrainConfig(),
}


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def spec_augment(feats: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    B, T, M = feats.shape
    out = feats.clone()
    for b in range(B):
        for _ in range(cfg.spec_time_masks):
            w = int(torch.randint(0, cfg.spec_time_width + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, T - w), (1,), generator=gen))
            out[b, t0:t0 + w] = 0.0
        for _ in range(cfg.spec_freq_masks):
            w = int(torch.randint(0, cfg.spec_freq_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, M - w), (1,), generator=gen))
            out[b, :, f0:f0 + w] = 0.0
    return out


class Featurizer:
    """Log-mels with a per-utterance VTLP warp (training only)."""

    def __init__(self, model: GatedConformer, cfg: TrainConfig):
        self.fe = model.frontend
        c = self.fe.config
        self.warps = torch.linspace(cfg.vtlp[0], cfg.vtlp[1], 9)
        self.banks = torch.stack([mel_filterbank(c.n_mels, c.f_min, c.f_max, float(w)) for w in self.warps])

    def __call__(self, wav: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        mel = None if gen is None else self.banks[torch.randint(0, len(self.warps), (wav.shape[0],), generator=gen)]
        return self.fe(self.fe.pad_history(wav), mel)


def save_checkpoint(path: Path, model: GatedConformer, opt: torch.optim.Optimizer | None, step: int,
                    cfg: TrainConfig, extra: dict | None = None, aux: torch.nn.Module | None = None) -> None:
    """`aux`: training-only modules (the teacher projection), saved as aux.* so that a run resumes
    with them; `release` drops them."""
    from heron.models.weights_io import save_safetensors

    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    if aux is not None:
        tensors.update({f"aux.{k}": v.detach().contiguous() for k, v in aux.state_dict().items()})
    if opt is not None:
        index = {id(p): i for i, p in enumerate(_trained_params(model, aux))}
        for param, st in opt.state.items():
            i = index[id(param)]
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"opt.{i}.{k}"] = v.detach().contiguous().reshape(v.shape)
    meta = {"step": step, "train_config": _jsonable(asdict(cfg)), "model_config": asdict(model.config),
            "format": "heron-kws-encoder/1", **(extra or {})}
    tmp = path / "model.safetensors.tmp"
    save_safetensors(tensors, str(tmp), metadata={"heron": json.dumps(meta)})
    os.replace(tmp, path / "model.safetensors")
    (path / "meta.json").write_text(json.dumps(meta, indent=1))


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint folder or .safetensors file -> (tensors, meta). Safetensors only: nothing is unpickled."""
    from safetensors import safe_open

    p = Path(path)
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.exists():
        raise FileNotFoundError(f"no checkpoint at {f}")
    try:
        with safe_open(str(f), "pt") as sf:
            meta = json.loads((sf.metadata() or {})["heron"])
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{f} is not a valid heron checkpoint: {e}") from e
    return tensors, meta


def load_encoder(path: str | Path) -> tuple[GatedConformer, dict]:
    """Checkpoint -> (model in eval mode, meta)."""
    tensors, meta = read_checkpoint(path)
    model = GatedConformer(ConformerConfig(**meta["model_config"]))
    model.load_state_dict({k[6:]: v.float() for k, v in tensors.items() if k.startswith("model.")})
    return model.eval(), meta


def _trained_params(model: torch.nn.Module, aux: torch.nn.Module | None) -> list[torch.nn.Parameter]:
    return list(model.parameters()) + (list(aux.parameters()) if aux is not None else [])


def restore_optimizer(opt: torch.optim.Optimizer, model: GatedConformer, tensors: dict[str, torch.Tensor],
                      aux: torch.nn.Module | None = None) -> None:
    params = _trained_params(model, aux)
    for i, param in enumerate(params):
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if st:
            opt.state[param] = st


def estimate_normalization(model: GatedConformer, stream: BatchStream, batches: int = 4) -> None:
    fe = model.frontend
    feats = []
    with torch.no_grad():
        for _ in range(batches):
            wav, *_ = next(stream)
            feats.append(fe.log_mel(fe.pad_history(torch.from_numpy(wav))).reshape(-1, fe.config.n_mels))
    allf = torch.cat(feats)
    fe.mean.copy_(allf.mean(0))
    fe.std.copy_(allf.std(0).clamp_min(1e-3))


def teacher_loss(pred: torch.Tensor, teacher: np.ndarray, mask: np.ndarray, mean: torch.Tensor,
                 std: torch.Tensor) -> torch.Tensor:
    """DistilHuBERT's frame loss (L1 + -log sigmoid(cosine)) between the projected student frames
    (B, T, D) and the standardized teacher frames, over the frames where the teacher heard speech."""
    m = torch.from_numpy(mask)
    T = min(pred.shape[1], m.shape[1])
    m = m[:, :T]
    if not m.any():
        return pred.sum() * 0.0
    p = pred[:, :T][m]
    t = (torch.from_numpy(teacher[:, :T]).float()[m] - mean) / std
    return F.l1_loss(p, t) - F.logsigmoid(F.cosine_similarity(p, t, dim=-1)).mean()


def train(cfg: TrainConfig, out: str | Path, progress: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.init:  # fine-tuning: the architecture is the initial checkpoint's
        init_tensors, init_meta = read_checkpoint(cfg.init)
        init_model = ConformerConfig(**init_meta["model_config"])
        cfg = replace(cfg, model=replace(init_model, n_layers=init_model.n_layers + cfg.grow_layers))
    elif cfg.grow_layers:
        raise ValueError("--grow-layers needs --init (the model it grows)")
    model = GatedConformer(cfg.model)
    teacher_on = cfg.teacher_weight > 0
    if teacher_on and not cfg.user_data:
        raise ValueError("--teacher-weight needs real speech (--user-data): the teacher hears real utterances")
    if teacher_on and not 1 <= cfg.teacher_layer <= cfg.model.n_layers:
        raise ValueError(f"--teacher-layer {cfg.teacher_layer} outside 1..{cfg.model.n_layers}")
    from heron.models.teacher import TEACHER_DIM

    proj = torch.nn.Linear(cfg.model.d_model, TEACHER_DIM) if teacher_on else None
    opt = torch.optim.AdamW(_trained_params(model, proj), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.98))
    start = 0
    if (out / "model.safetensors").exists():
        tensors, meta = read_checkpoint(out)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if proj is not None:
            proj.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("aux.")})
        restore_optimizer(opt, model, tensors, proj)
        start = int(meta["step"])
        print(f"resuming from step {start}")
    if start >= cfg.steps:
        return out
    if start == 0 and cfg.init:  # a resumed run continues from its own checkpoint, never from init
        state = {k[6:]: v.float() for k, v in init_tensors.items() if k.startswith("model.")}
        if cfg.grow_layers:
            missing, unexpected = model.load_state_dict(state, strict=False)
            first_new = cfg.model.n_layers - cfg.grow_layers
            if unexpected or any(not k.startswith(tuple(f"blocks.{i}." for i in range(first_new, cfg.model.n_layers)))
                                 for k in missing):
                raise ValueError(f"{cfg.init} does not fit the grown model (missing {missing[:3]}, unexpected {unexpected[:3]})")
            for blk in model.blocks[first_new:]:
                blk.start_as_identity()
            print(f"grown from {first_new} to {cfg.model.n_layers} blocks (new blocks start as residual identities)")
        else:
            model.load_state_dict(state)
        print(f"fine-tuning from {cfg.init} (step {init_meta.get('step')})")
    if cfg.augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {cfg.augment!r}; choose from {sorted(AUGMENT_PRESETS)}")
    aug = AUGMENT_PRESETS[cfg.augment]
    frame = cfg.model.stack * HOP
    bcfg = BatchConfig(batch_size=cfg.batch_size, max_seconds=cfg.max_seconds,
                       chunk_samples=cfg.model.chunk_samples, seed=cfg.seed, real_fraction=cfg.real_fraction,
                       teacher_frame=frame if teacher_on else 0)
    real_pool = None
    if cfg.user_data:  # checked and read before the (slow) TTS synthesis: a bad row fails at once
        real = load_user_pool(cfg.user_data)
        aligner = cfg.align or cfg.init
        max_len, budget = crop_budget(bcfg, aug)
        if aligner:
            real = with_cuts(real, aligner, longer_than=budget, cache_dir=out / "align-cache", threads=cfg.threads)
        n_long = sum(len(u.audio) > max_len for u in real)
        n_cut = sum(bool(u.cuts) for u in real)
        print(f"real speech: {len(real)} utterances, {sum(len(u.audio) for u in real) / SAMPLE_RATE / 3600:.2f} h; "
              f"{n_long} longer than {cfg.max_seconds} s, {n_cut} with word cut points"
              + ("" if aligner else " (no --init/--align checkpoint: long ones are used whole)"))
        if teacher_on:
            from heron.models.teacher import with_teacher

            real, t_mean, t_std = with_teacher(real, frame, cfg.teacher_cache or out / "teacher-cache",
                                               threads=cfg.threads, progress=progress)
            t_mean, t_std = torch.from_numpy(t_mean), torch.from_numpy(t_std)
    pool = build_tts_pool(cfg.pool_size, seed=cfg.seed)
    if cfg.user_data:
        if cfg.real_fraction > 0:
            real_pool = real
        else:
            pool += real
    stream = BatchStream(pool, bcfg, aug, start_step=start, real_pool=real_pool)
    if start == 0 and not cfg.init:  # a fine-tune keeps the initial model's feature normalization
        norm_stream = BatchStream(pool, replace(bcfg, seed=cfg.seed + 99991), aug, real_pool=real_pool)
        estimate_normalization(model, norm_stream)
        norm_stream.close()
    feat = Featurizer(model, cfg)
    costs = gate_cost_weights(cfg.model)
    gen = torch.Generator().manual_seed(cfg.seed * 1000003 + start)
    log = open(out / "train_log.jsonl", "a")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train kws", unit="step", disable=None)
    t_start = time.time()
    model.train()
    step = start
    try:
        for step in range(start, cfg.steps):
            wav, n_samples, targets, tlens, *teach = next(stream)
            wav_t = torch.from_numpy(wav)
            feats = spec_augment(feat(wav_t, gen), cfg, gen)
            emb, probs, *hidden = model.encode_features(feats, force_open=step < cfg.gate_warmup,
                                                        hidden_layer=cfg.teacher_layer if teacher_on else None)
            log_probs = F.log_softmax(model.head(emb), dim=-1)  # (B, T, 40)
            in_lens = torch.from_numpy(np.ceil(n_samples / frame).astype(np.int64)).clamp(max=log_probs.shape[1])
            ctc = F.ctc_loss(log_probs.transpose(0, 1), torch.from_numpy(targets), in_lens, torch.from_numpy(tlens),
                             blank=0, reduction="sum", zero_infinity=True) / max(1, int(in_lens.sum()))
            compute = (probs * costs).sum(-1).mean()  # expected share of module compute that runs
            lam = cfg.gate_penalty if (cfg.model.gated and step >= cfg.gate_warmup) else 0.0
            loss = ctc + lam * compute
            distill = torch.zeros(())
            if teacher_on:
                distill = teacher_loss(proj(hidden[0]), teach[0], teach[1], t_mean, t_std)
                loss = loss + cfg.teacher_weight * distill
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ctc=f"{ctc.item():.3f}", on=f"{(probs > 0.5).float().mean().item():.2f}")
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                rec = {"step": step, "loss": round(loss.item(), 4), "ctc": round(ctc.item(), 4),
                       **({"teacher": round(distill.item(), 4)} if teacher_on else {}),
                       "gates_open": round((probs > 0.5).float().mean().item(), 3), "lr": _lr(cfg, step),
                       "elapsed_s": round(time.time() - t_start, 1)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
            done = step + 1
            timed_out = cfg.max_minutes and (time.time() - t_start) > cfg.max_minutes * 60
            if done % cfg.ckpt_every == 0 or done == cfg.steps or timed_out:
                save_checkpoint(out, model, opt, done, cfg, aux=proj)
            if timed_out:
                print(f"stopping at step {done}: --max-minutes {cfg.max_minutes} reached")
                break
    finally:
        stream.close()
        log.close()
        if bar is not None:
            bar.close()
    return out



def release(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Strip optimizer state and store weights in `dtype` (fp16 halves the size; loading casts back
    to fp32). The result is what ships in models/weights/."""
    from heron.models.weights_io import save_safetensors

    tensors, meta = read_checkpoint(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
               for k, v in tensors.items() if k.startswith("model.")}
    meta = {**meta, "released_from": str(src), "dtype": str(dtype).replace("torch.", "")}
    save_safetensors(weights, str(dst / "model.safetensors"), metadata={"heron": json.dumps(meta)})
    (dst / "meta.json").write_text(json.dumps(meta, indent=1))
    return dst
