"""Second stage: representative phoneme vectors, the audio-compliant text encoder and the SLiCK
matcher/verifier, trained on a frozen audio encoder.

Pipeline (`heron kws train-matcher --encoder runs/kws-base --out runs/matcher`):
1. LibriPhrase-style pairs spoken by training voices, augmented, encoded once by the frozen encoder.
2. CTC forced alignment of the positives -> representative phoneme vectors and the encoder's phoneme
   confusion matrix.
3. Each (keyword text, audio) example is cut to the window where the first-stage CTC matcher places
   the keyword (what the runtime will hand the verifier), up to `max_frames`.
4. Confusable keywords (phoneme edits weighted by the confusion matrix) add hard negative texts.
5. Text encoder + matcher are trained with utterance-level and subsequence-level BCE.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heron.runtime.ctc_kws import CTCKeywordMatcher
from heron.runtime.phonemes import PHONEME_TO_ID, pronounce

from heron.models.align import PhonemeTable, forced_align
from heron.models.confusable import confusable, confusion_from_alignments
from heron.models.data.augment import AugmentConfig, Augmenter
from heron.models.data.pairs import make_pairs
from heron.models.data.tts import Voice, VoiceRegistry, synthesize_many
from heron.models.data.vocab import vocabulary
from heron.models.kws_data import TrainNoise
from heron.models.matcher import MatcherConfig, SLiCKMatcher, prefix_labels
from heron.models.text_encoder import AudioCompliantTextEncoder, TextEncoderConfig
from heron.models.audio import HOP

WINDOW_MARGIN = 2  # frames kept before the first-stage match (the runtime's margin_frames)


@dataclass(frozen=True)
class MatcherTrainConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    anchors: int = 2500  # x4 pairs (positive, easy, hard, contains)
    confusables_per_positive: int = 1
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    sub_weight: float = 0.5
    seed: int = 0
    threads: int = 2


@dataclass
class Example:
    window: np.ndarray  # (T, Da) audio embeddings
    ids: list[int]  # keyword phoneme classes
    label: float
    sub: list[float]  # subsequence (prefix) labels
    kind: str
    word_lens: tuple[int, ...]  # phonemes per word of the keyword (for DSP)
    ctc_raw: float  # the first stage's score for this keyword over the whole clip


def ids_of(phonemes) -> list[int]:
    return [PHONEME_TO_ID[p] + 1 for p in phonemes]


def ctc_window(log_probs: np.ndarray, ids: list[int], max_frames: int) -> tuple[int, int, float]:
    """Where the first stage puts the keyword: (start, end_exclusive, raw score)."""
    m = CTCKeywordMatcher(ids)
    raw, starts, _ = m.step(log_probs, m.init_state())
    t = int(np.argmax(raw))
    s = max(0, int(starts[t]) - WINDOW_MARGIN)
    e = t + 1  # the runtime verifies as soon as the last phoneme is heard: no frames after it
    s = max(s, e - max_frames)
    return s, e, float(raw[t])


@torch.no_grad()
def encode_batch(encoder, clips: list[np.ndarray], batch: int = 24):
    """-> list of (emb (T, D), log_probs (T, C)) trimmed to each clip's frames."""
    out = []
    frame = encoder.config.stack * HOP
    order = np.argsort([len(c) for c in clips])
    res: dict[int, tuple] = {}
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        L = max(len(clips[j]) for j in idx)
        wav = np.zeros((len(idx), L), np.float32)
        for k, j in enumerate(idx):
            wav[k, : len(clips[j])] = clips[j]
        lp, emb, _ = encoder(torch.from_numpy(wav))
        for k, j in enumerate(idx):
            n = int(np.ceil(len(clips[j]) / frame))
            res[int(j)] = (emb[k, :n].numpy(), lp[k, :n].numpy())
    for j in range(len(clips)):
        out.append(res[j])
    return out


def build_examples(encoder, cfg: MatcherTrainConfig, split: str = "train", seed: int | None = None,
                   confusion: np.ndarray | None = None):
    """-> (examples, phoneme table (39, D), confusion (39, 39)). Pass `confusion` to generate
    confusable keywords with a given matrix (evaluation) instead of this data's own."""
    seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    reg = VoiceRegistry()
    voices = [v.id for v in reg.sample(max(64, cfg.anchors), split=split, seed=seed)]
    pairs = make_pairs(vocabulary(), cfg.anchors, seed=seed, voices=voices)
    audio = synthesize_many([(Voice.from_id(p.voice), p.audio_text) for p in pairs], desc="matcher pairs")
    aug = Augmenter(AugmentConfig(p_noise=0.7, snr_range_db=(5.0, 30.0)), TrainNoise(None),
                    [a for a in audio[:100]])
    clips = [aug(a, np.random.default_rng([seed, i])) for i, a in enumerate(audio)]
    enc = encode_batch(encoder, clips)
    # representative vectors + confusion from forced alignment of what was actually spoken
    table = PhonemeTable(encoder.config.d_model)
    post = np.zeros((39, 40))
    cnt = np.zeros(39)
    for p, (emb, lp) in zip(pairs, enc):
        tg = ids_of(p.audio_phonemes.split())
        if table.add(emb, lp, tg):
            al = forced_align(lp, tg)
            for t, u in enumerate(al):
                if u >= 0:
                    post[tg[u] - 1] += np.exp(lp[t])
                    cnt[tg[u] - 1] += 1
    if confusion is None:
        confusion = confusion_from_alignments(post, cnt)
    mf = cfg.matcher.max_frames
    examples: list[Example] = []
    for p, (emb, lp) in zip(pairs, enc):
        anchor = tuple(p.anchor_phonemes.split())
        spoken = tuple(p.audio_phonemes.split())
        wl = tuple(len(pronounce(w, max_words=None, max_phonemes=None).phonemes) for w in p.anchor.split())
        texts = [(anchor, float(p.label), p.kind, wl)]
        if p.label == 1:
            for _ in range(cfg.confusables_per_positive):
                c = confusable(anchor, confusion, rng)
                if len(c) <= cfg.text.max_phonemes and not _contains(spoken, c):
                    texts.append((c, 0.0, "confusable", (len(c),)))
        for ph, label, kind, lens in texts:
            ids = ids_of(ph)
            s, e, raw = ctc_window(lp, ids, mf)
            sub = [1.0] * len(ph) if label == 1 else prefix_labels(ph, spoken)
            examples.append(Example(emb[s:e], ids, label, sub, kind, lens, raw))
    return examples, table.vectors(), confusion


def _contains(seq, sub) -> bool:
    n = len(sub)
    return any(tuple(seq[i:i + n]) == tuple(sub) for i in range(len(seq) - n + 1))


def collate(batch: list[Example], max_frames: int, max_phonemes: int):
    B = len(batch)
    T = max(min(len(e.window), max_frames) for e in batch)
    N = max(len(e.ids) for e in batch)
    D = batch[0].window.shape[1]
    audio = np.zeros((B, T, D), np.float32)
    amask = np.zeros((B, T), bool)
    ids = np.zeros((B, N), np.int64)
    sub = np.zeros((B, N), np.float32)
    for i, e in enumerate(batch):
        w = e.window[-max_frames:]
        audio[i, : len(w)] = w
        amask[i, : len(w)] = True
        ids[i, : len(e.ids)] = e.ids
        sub[i, : len(e.sub)] = e.sub
    labels = np.asarray([e.label for e in batch], np.float32)
    return (torch.from_numpy(audio), torch.from_numpy(amask), torch.from_numpy(ids), torch.from_numpy(labels),
            torch.from_numpy(sub))


def train_matcher(cfg: MatcherTrainConfig, examples: list[Example], table: np.ndarray, log_every: int = 250):
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    text_enc = AudioCompliantTextEncoder(cfg.text, table)
    matcher = SLiCKMatcher(cfg.matcher)
    params = list(text_enc.parameters()) + list(matcher.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed)
    text_enc.train(), matcher.train()
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 200) * (0.5 * (1 + np.cos(np.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(examples), cfg.batch_size)
        audio, amask, ids, labels, sub = collate([examples[i] for i in idx], cfg.matcher.max_frames,
                                                 cfg.text.max_phonemes)
        tmask = ids > 0
        utt, subl = matcher(audio, amask, text_enc(ids), tmask)
        loss = F.binary_cross_entropy_with_logits(utt, labels)
        sub_loss = (F.binary_cross_entropy_with_logits(subl, sub, reduction="none") * tmask).sum() / tmask.sum()
        loss = loss + cfg.sub_weight * sub_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        if step % log_every == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "sub": round(sub_loss.item(), 4)}),
                  flush=True)
    return text_enc.eval(), matcher.eval()


@torch.no_grad()
def matcher_scores(text_enc, matcher, examples: list[Example], max_frames: int, max_phonemes: int) -> np.ndarray:
    out = []
    for i in range(0, len(examples), 256):
        audio, amask, ids, _, _ = collate(examples[i:i + 256], max_frames, max_phonemes)
        utt, _ = matcher(audio, amask, text_enc(ids), ids > 0)
        out.append(torch.sigmoid(utt).numpy())
    return np.concatenate(out)


def save_matcher(path: Path, text_enc, matcher, table, confusion, cfg: MatcherTrainConfig, extra: dict) -> None:
    from heron.models.weights_io import save_safetensors

    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"text.{k}": v.contiguous() for k, v in text_enc.state_dict().items()}
    tensors.update({f"matcher.{k}": v.contiguous() for k, v in matcher.state_dict().items()})
    tensors["phoneme_table"] = torch.as_tensor(table)
    tensors["confusion"] = torch.as_tensor(confusion, dtype=torch.float32)
    meta = {"format": "heron-kws-matcher/1", "config": json.loads(json.dumps(asdict(cfg))), **extra}
    save_safetensors(tensors, str(path / "matcher.safetensors"), metadata={"heron": json.dumps(meta)})
    (path / "matcher_meta.json").write_text(json.dumps(meta, indent=1))


def load_matcher(path: str | Path):
    from safetensors import safe_open

    f = Path(path) / "matcher.safetensors" if Path(path).is_dir() else Path(path)
    with safe_open(str(f), "pt") as sf:
        meta = json.loads(sf.metadata()["heron"])
        t = {k: sf.get_tensor(k) for k in sf.keys()}
    c = meta["config"]
    tcfg, mcfg = TextEncoderConfig(**c["text"]), MatcherConfig(**c["matcher"])
    text_enc = AudioCompliantTextEncoder(tcfg)
    text_enc.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("text.")})
    matcher = SLiCKMatcher(mcfg)
    matcher.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("matcher.")})
    return text_enc.eval(), matcher.eval(), t["phoneme_table"].numpy(), t["confusion"].numpy(), meta
