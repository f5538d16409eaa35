"""A phoneme head on Google's speech_embedding frames: a second acoustic model that hears real speech.

heron's streaming encoder (1.6 M parameters) heard TTS and about six hours of real speech; it mishears
real device recordings ("snowboy" as S N OW B AO) and accepts accented sentences for keywords. Google's
speech_embedding (heron.runtime.speech_embedding, 96-d every 80 ms) heard far more real speech. This
head maps its frames to heron's phoneme classes with CTC, two outputs per frame (40 ms, the encoder's
rate, so the same keyword matcher scores both):

    (B, T, 96) -> normalize -> linear 96 -> H, GELU -> + conv(k=5) -> BiGRU x2 -> linear -> (B, 2T, classes)

It runs on a window around a first-stage candidate, never always-on (its cost stays where candidates
are), so it may look both ways. Trained on the real training speech only (`train` rows of the manifests;
the `test` splits and the check sets are never read), from features computed once per utterance (and per
augmented copy) and cached: `heron kws train-head`. Several heads trained apart run as one (`HeadEnsemble`,
their posteriors mixed; `heron kws add-head --head A --head B`).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from heron.runtime.speech_embedding import DIM, SpeechEmbedding

WEIGHTS = "embedding_head.safetensors"


@dataclass(frozen=True)
class HeadConfig:
    n_classes: int = 40     # CTC classes, blank = 0 (heron's phoneme table)
    hidden: int = 192
    conv_kernel: int = 5
    layers: int = 2          # BiGRU layers
    dropout: float = 0.1
    up: int = 2              # outputs per embedding frame (80 ms / 2 = the encoder's 40 ms)


class EmbeddingHead(nn.Module):
    def __init__(self, cfg: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.register_buffer("mean", torch.zeros(DIM))  # feature statistics of the training set
        self.register_buffer("std", torch.ones(DIM))
        self.inp = nn.Sequential(nn.Linear(DIM, h), nn.GELU())
        self.conv = nn.Conv1d(h, h, cfg.conv_kernel, padding=cfg.conv_kernel // 2)
        self.rnn = nn.GRU(h, h, num_layers=cfg.layers, batch_first=True, bidirectional=True, dropout=cfg.dropout)
        self.out = nn.Linear(2 * h, cfg.up * cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, 96) speech_embedding frames -> (B, up * T, classes) log-probabilities."""
        h = self.inp((x - self.mean) / self.std)  # (B, T, H)
        h = h + F.gelu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        h, _ = self.rnn(h)  # (B, T, 2H)
        y = self.out(h)  # (B, T, up * C)
        B, T, _ = y.shape
        return F.log_softmax(y.reshape(B, T * self.cfg.up, self.cfg.n_classes), dim=-1)


class HeadEnsemble(nn.Module):
    """Several heads trained apart (e.g. on clean and on augmented features) as one: the mixture of their
    posteriors, log((1 / M) sum_m p_m) per output frame and class. The members keep their own feature
    statistics; the ensemble shows the first member's as `mean` / `std` (what an exporter's example input uses)."""

    def __init__(self, members: list[EmbeddingHead]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one head")
        if len({(m.cfg.n_classes, m.cfg.up) for m in members}) != 1:
            raise ValueError("the heads of an ensemble must share their classes and outputs per frame")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    @property
    def mean(self) -> torch.Tensor:
        return self.members[0].mean

    @property
    def std(self) -> torch.Tensor:
        return self.members[0].std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, 96) -> (B, up * T, classes) log-probabilities of the members' mixture."""
        lp = torch.stack([m(x) for m in self.members])  # (M, B, up * T, C)
        return torch.logsumexp(lp, dim=0) - math.log(len(self.members))


# --- features, computed once per utterance ---------------------------------------------------------------

def utterance_features(emb: SpeechEmbedding, audio: np.ndarray) -> np.ndarray:
    """int16 or float audio at 16 kHz -> (frames, 96) float16, with PAD_SECONDS of silence each side."""
    x = audio.astype(np.float32) / (32768.0 if audio.dtype == np.int16 else 1.0)
    return emb.padded(x).astype(np.float16)


def feature_cache(sources: list[str], cache_dir: str | Path, threads: int = 1, log=print,
                  emb: SpeechEmbedding | None = None, augment_copies: int = 0, augment: str = "device", seed: int = 0):
    """The `train` rows of the sources -> (features list, targets list), computed once and kept in
    cache_dir (an .npz per set, keyed by the rows' files and transcripts; no pickles). `augment_copies`:
    that many more copies of every utterance through the augmentation preset `augment`
    (heron.models.data.augment.AUGMENT_PRESETS: noise, rooms, microphones, gain), each its own cached set,
    appended after the clean features with the same targets. `emb`: the speech_embedding to use (default: the
    wheel's graphs; the sequence form of heron.export.embedding_head computes the same frames faster)."""
    from heron.models.data.augment import AUGMENT_PRESETS, Augmenter
    from heron.models.data.real import read_audio, read_rows
    from heron.models.kws_data import TrainNoise

    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {augment!r}; choose from {sorted(AUGMENT_PRESETS)}")
    rows = [r for s in sources for r in read_rows(s, split="train")]
    key = hashlib.sha256("\n".join(f"{r.audio}\t{r.text}" for r in rows).encode()).hexdigest()[:16]
    X, Y = [], []
    for copy in range(augment_copies + 1):
        name = f"speech-embedding-{key}" + (f"-{augment}-{seed}-{copy}" if copy else "")
        path = Path(cache_dir) / f"{name}.npz"
        if path.is_file():
            log(f"features: {len(rows)} utterances from the cache {path}")
        else:
            emb = emb or SpeechEmbedding(threads=threads)
            augmenter = Augmenter(AUGMENT_PRESETS[augment], TrainNoise(None)) if copy else None
            rng = np.random.default_rng([seed, copy])
            chunks, targets, t0 = [], [], time.time()
            for i, r in enumerate(rows):
                audio = read_audio(r)
                if augmenter is not None:
                    audio = augmenter(audio.astype(np.float32) / 32768.0, rng)
                chunks.append(utterance_features(emb, audio))
                targets.append(np.asarray(r.targets, np.int16))
                if (i + 1) % 500 == 0:
                    log(f"features{f' (copy {copy})' if copy else ''}: {i + 1} / {len(rows)} utterances, "
                        f"{time.time() - t0:.0f} s")
            _save_features(path, chunks, targets)
            log(f"features: {len(rows)} utterances in {time.time() - t0:.0f} s -> {path}")
        x, y = _load_features(path)
        X += x
        Y += y
    return X, Y


def tts_feature_cache(n: int, cache_dir: str | Path, seed: int = 0, augment: str = "device", threads: int = 1,
                      log=print, emb: SpeechEmbedding | None = None):
    """`n` TTS utterances of the training voices (heron.models.kws_data.build_tts_pool: the pool `kws train`
    synthesizes, from the same cache) through the augmentation preset `augment` (one copy each: clean TTS
    sounds like no microphone) -> (features list, targets list), cached in cache_dir as one .npz keyed by the
    pool's texts and audio (a changed vocabulary or voice set makes a new one) and the preset and seed. Their
    texts come from the vocabulary and corpus sentences, far more words than the real corpora hold: the head
    hears phoneme sequences it would otherwise never meet."""
    from heron.models.data.augment import AUGMENT_PRESETS, Augmenter
    from heron.models.kws_data import TrainNoise, build_tts_pool

    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {augment!r}; choose from {sorted(AUGMENT_PRESETS)}")
    if n < 1:
        raise ValueError(f"the TTS pool needs at least one utterance, got {n}")
    pool = build_tts_pool(n, seed=seed)  # each utterance synthesized once (heron's TTS cache)
    key = hashlib.sha256()
    for u in pool:
        key.update(u.text.encode())
        key.update(np.ascontiguousarray(u.audio).tobytes())
    path = Path(cache_dir) / f"speech-embedding-tts-{key.hexdigest()[:16]}-{augment}-{seed}.npz"
    if not path.is_file():
        emb = emb or SpeechEmbedding(threads=threads)
        augmenter = Augmenter(AUGMENT_PRESETS[augment], TrainNoise(None))
        rng = np.random.default_rng([seed, 1000])
        chunks, targets, t0 = [], [], time.time()
        for i, u in enumerate(pool):
            chunks.append(utterance_features(emb, augmenter(u.audio.astype(np.float32) / 32768.0, rng)))
            targets.append(np.asarray(u.targets, np.int16))
            if (i + 1) % 2000 == 0:
                log(f"features (TTS): {i + 1} / {len(pool)} utterances, {time.time() - t0:.0f} s")
        _save_features(path, chunks, targets)
        log(f"features: {len(pool)} TTS utterances in {time.time() - t0:.0f} s -> {path}")
    else:
        log(f"features: TTS utterances from the cache {path}")
    return _load_features(path)


def _save_features(path: Path, chunks: list[np.ndarray], targets: list[np.ndarray]) -> None:
    """Per-utterance features and targets -> one .npz of flat arrays and offsets (written whole, then moved)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, offsets=np.cumsum([0] + [len(c) for c in chunks]), features=np.concatenate(chunks),
             target_offsets=np.cumsum([0] + [len(t) for t in targets]), targets=np.concatenate(targets))
    tmp.replace(path)


def _load_features(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What _save_features wrote -> (features list, targets list); no pickles."""
    z = np.load(path, allow_pickle=False)
    offs, feats, toffs, tg = z["offsets"], z["features"], z["target_offsets"], z["targets"]
    return ([feats[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)],
            [tg[toffs[i]:toffs[i + 1]] for i in range(len(toffs) - 1)])


# --- training ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadTrainConfig:
    epochs: int = 25
    lr: float = 2e-3
    warmup: int = 100          # steps
    frames_per_batch: int = 3000
    feature_noise: float = 0.1  # Gaussian noise on the normalized features (the training set is small)
    frame_drop: float = 0.05    # share of frames zeroed
    seed: int = 0
    confusable_weight: float = 0.0  # weight of the confusable ranking loss (0: CTC alone)
    confusables: int = 1        # near misses drawn per utterance; the loss ranks the said phrase above the hardest
    init: str | None = None     # start from this head's weights (a fine-tune) instead of from scratch


# --- confusable phrases: near misses the keyword matcher must rank below what was said --------------------
# heron's phonemes in broad classes; an edit swaps a phoneme for another of its class, or drops or adds one
BROAD_CLASSES = ("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW", "B D G K P T", "CH JH", "DH F HH S SH TH V Z ZH",
                 "M N NG", "L R W Y")
RANK_GAMMA, RANK_MARGIN = 10.0, 0.1  # the ranking loss: softplus(gamma (s_near_miss - s_said + margin)) / gamma
MATCH_GAP, MATCH_WEIGHT = 0.1, 5.0   # the keyword matcher's options in the shipped bundle (gap penalty, posterior weight)


def _same_class() -> dict[int, list[int]]:
    """Class id (heron's table: blank 0, then PHONEMES) -> the other ids of its broad class."""
    from heron.runtime.phonemes import PHONEMES

    out = {}
    for group in BROAD_CLASSES:
        ids = [PHONEMES.index(p) + 1 for p in group.split()]
        for i in ids:
            out[i] = [j for j in ids if j != i]
    return out


def _contains(y: np.ndarray, q: list[int]) -> bool:
    n = len(q)
    return any(list(y[i:i + n]) == q for i in range(len(y) - n + 1))


def confusable_pair(y: np.ndarray, rng: np.random.Generator, same: dict[int, list[int]], lo: int = 4,
                    hi: int = 12, k: int = 1) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """A phrase the utterance says (a span of its phoneme targets, lo..hi phonemes) and k near misses of it
    (one or two edits within broad classes) that the utterance does not say; None when there is none."""
    n = len(y)
    if n < lo:
        return None
    length = int(rng.integers(lo, min(hi, n) + 1))
    a = int(rng.integers(0, n - length + 1))
    said = [int(v) for v in y[a:a + length]]
    nears = [q for q in (_near_miss(said, y, rng, same, lo) for _ in range(k)) if q is not None]
    return (np.array(said), nears) if nears else None


def _near_miss(said: list[int], y: np.ndarray, rng: np.random.Generator, same: dict[int, list[int]],
               lo: int) -> np.ndarray | None:
    for _ in range(20):
        q = list(said)
        for _ in range(1 if rng.random() < 0.7 else 2):
            r, i = rng.random(), int(rng.integers(len(q)))
            if r < 0.7 or len(q) <= lo:
                q[i] = int(rng.choice(same[q[i]]))
            elif r < 0.85:
                del q[i]
            else:
                q.insert(i, int(rng.choice(same[q[i]])))
        if q != said and not _contains(y, q):
            return np.array(q)
    return None


def matcher_log_scores(lp: torch.Tensor, lengths: torch.Tensor, phrases: list[tuple[int, np.ndarray]],
                       gap: float = MATCH_GAP, weight: float = MATCH_WEIGHT) -> torch.Tensor:
    """The keyword matcher (heron.runtime.ctc_kws, without its length limit) in torch, differentiable:
    (B, T, C) log-probabilities, each utterance's valid frames, and (utterance, phoneme ids) phrases ->
    each phrase's best per-phoneme log score over the utterance (the log of the runtime's raw score)."""
    neg = -1e9
    llr = lp - lp.max(-1, keepdim=True).values + weight * lp  # the runtime's frame scores
    M, T = len(phrases), lp.shape[1]
    S = 2 * max(len(q) for _, q in phrases) - 1
    lab = torch.zeros(M, S, dtype=torch.long)
    valid = torch.zeros(M, S, dtype=torch.bool)
    skip = torch.zeros(M, S, dtype=torch.bool)
    cost = torch.zeros(M, S)
    last = torch.zeros(M, dtype=torch.long)
    for m, (_, q) in enumerate(phrases):
        s_m = 2 * len(q) - 1
        lab[m, 0:s_m:2] = torch.as_tensor(q, dtype=torch.long)
        valid[m, :s_m] = True
        cost[m, 1:s_m:2] = gap
        for s in range(2, s_m, 2):
            skip[m, s] = bool(lab[m, s] != lab[m, s - 2])
        last[m] = s_m - 1
    b = torch.as_tensor([i for i, _ in phrases], dtype=torch.long)
    emit = llr[b].gather(2, lab[:, None, :].expand(M, T, S)) - cost[:, None, :]  # (M, T, S)
    emit = emit.masked_fill(~valid[:, None, :], neg)
    live = torch.arange(T)[None, :] < lengths[b][:, None]  # (M, T)
    score = torch.full((M, S), neg)
    best = torch.full((M,), neg)
    zero, neg2 = torch.zeros(M, 1), torch.full((M, 2), neg)
    for t in range(T):
        prev = torch.cat([zero, score[:, :-1]], 1)  # state 0 may (re)start at any frame
        prev2 = torch.cat([neg2, score[:, :-2]], 1).masked_fill(~skip, neg)
        score = torch.maximum(torch.maximum(score, prev), prev2) + emit[:, t]
        end = score.gather(1, last[:, None])[:, 0]
        best = torch.where(live[:, t], torch.maximum(best, end), best)
    n = torch.as_tensor([len(q) for _, q in phrases], dtype=torch.float32)
    return best / n


def _batches(X: list[np.ndarray], keep: list[int], frames: int) -> list[list[int]]:
    """Utterances of similar length together, about `frames` frames per batch."""
    out, cur, n = [], [], 0
    for i in sorted(keep, key=lambda i: len(X[i])):
        cur.append(i)
        n += len(X[i])
        if n >= frames:
            out.append(cur)
            cur, n = [], 0
    return out + ([cur] if cur else [])


def train_head(X: list[np.ndarray], Y: list[np.ndarray], out: str | Path, cfg: HeadConfig = HeadConfig(),
               tcfg: HeadTrainConfig = HeadTrainConfig(), log=print) -> EmbeddingHead:
    """CTC training; saves OUT/embedding_head.safetensors after every epoch and resumes from it."""
    torch.manual_seed(tcfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keep = [i for i in range(len(X)) if len(Y[i]) and cfg.up * len(X[i]) > 2 * len(Y[i])]
    if not keep:
        raise ValueError("no utterance is long enough for its transcript")
    model = EmbeddingHead(cfg)
    done = 0
    if (out / WEIGHTS).is_file():
        model, meta = load_head(out)
        if meta["config"] != asdict(cfg):
            raise ValueError(f"{out / WEIGHTS} was trained with another head configuration: use a new --out")
        if meta.get("train", {}).get("init") != tcfg.init:
            raise ValueError(f"{out / WEIGHTS} was started from {meta.get('train', {}).get('init')}, not from "
                             f"{tcfg.init}: use a new --out")
        done = int(meta["epochs_done"])
        log(f"resuming after epoch {done}")
    elif tcfg.init is not None:  # a fine-tune: the given head's weights and feature statistics
        model, meta = load_head(tcfg.init)
        if meta["config"] != asdict(cfg):
            raise ValueError(f"{tcfg.init} has another head configuration than this run's")
        log(f"starting from {tcfg.init}")
    else:
        feats = np.concatenate([X[i] for i in keep]).astype(np.float32)
        model.mean.copy_(torch.from_numpy(feats.mean(0)))
        model.std.copy_(torch.from_numpy(feats.std(0) + 1e-3))
    opt = torch.optim.AdamW(model.parameters(), tcfg.lr, weight_decay=1e-2)
    rng = np.random.default_rng(tcfg.seed)
    batches = _batches(X, keep, tcfg.frames_per_batch)
    total = tcfg.epochs * len(batches)
    step = done * len(batches)
    for _ in range(done):  # the same batch order as an uninterrupted run
        rng.shuffle(batches)
    same = _same_class() if tcfg.confusable_weight > 0 else {}
    pair_rng = np.random.default_rng(tcfg.seed + 1)
    model.train()
    for epoch in range(done, tcfg.epochs):
        rng.shuffle(batches)
        t0, losses, ranks = time.time(), [], []
        for b in batches:
            T = max(len(X[i]) for i in b)
            x = np.zeros((len(b), T, DIM), np.float32)
            for j, i in enumerate(b):
                x[j, :len(X[i])] = X[i]
            xt = torch.from_numpy(x)
            xt = xt + tcfg.feature_noise * model.std * torch.randn_like(xt)
            xt = xt * (torch.rand(xt.shape[0], xt.shape[1], 1) >= tcfg.frame_drop)
            lp = model(xt)  # (B, 2T, C)
            targets = torch.from_numpy(np.concatenate([Y[i] for i in b]).astype(np.int64))
            lengths = torch.tensor([cfg.up * len(X[i]) for i in b])
            loss = F.ctc_loss(lp.transpose(0, 1), targets, lengths,
                              torch.tensor([len(Y[i]) for i in b]), blank=0, zero_infinity=True)
            if tcfg.confusable_weight > 0:  # what each utterance said must outrank a near miss of it
                phrases, groups = [], []
                for j, i in enumerate(b):
                    pair = confusable_pair(Y[i], pair_rng, same, k=tcfg.confusables)
                    if pair is not None:
                        groups.append((len(phrases), len(pair[1])))
                        phrases += [(j, pair[0])] + [(j, q) for q in pair[1]]
                if phrases:
                    s = matcher_log_scores(lp, lengths, phrases)
                    said = torch.stack([s[a] for a, _ in groups])
                    hardest = torch.stack([s[a + 1:a + 1 + n].max() for a, n in groups])
                    rank = F.softplus(RANK_GAMMA * (hardest - said + RANK_MARGIN)).mean() / RANK_GAMMA
                    loss = loss + tcfg.confusable_weight * rank
                    ranks.append(rank.item())
            lr = tcfg.lr * min(1.0, (step + 1) / tcfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            losses.append(loss.item())
        save_head(model, out, epochs_done=epoch + 1, train=asdict(tcfg))
        extra = f", confusable ranking loss {np.mean(ranks):.3f}" if ranks else ""
        log(f"epoch {epoch + 1} / {tcfg.epochs}: loss {np.mean(losses):.3f}{extra}, {time.time() - t0:.0f} s")
    model.eval()
    return model


def save_head(model: EmbeddingHead, out: str | Path, **meta) -> None:
    from safetensors.torch import save_file

    info = {"config": json.dumps(asdict(model.cfg)), **{k: json.dumps(v) for k, v in meta.items()}}
    tmp = Path(out) / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=info)
    tmp.replace(Path(out) / WEIGHTS)


def load_head(folder: str | Path) -> tuple[EmbeddingHead, dict]:
    """-> (model in eval mode, metadata) from a folder holding embedding_head.safetensors (no pickles)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (heron kws train-head --out {folder})")
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    if "config" not in meta:
        raise ValueError(f"{path} has no head configuration in its metadata")
    model = EmbeddingHead(HeadConfig(**meta["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta


def load_heads(folders: list[str | Path]) -> tuple[EmbeddingHead | HeadEnsemble, list[dict]]:
    """-> (one head, or the ensemble of several, in eval mode; each folder's metadata) from folders of
    `heron kws train-head`."""
    loaded = [load_head(f) for f in folders]
    if not loaded:
        raise ValueError("no embedding head given")
    models = [m for m, _ in loaded]
    return (models[0] if len(models) == 1 else HeadEnsemble(models).eval()), [meta for _, meta in loaded]


def log_probs(model: EmbeddingHead, feats: np.ndarray) -> np.ndarray:
    """(T, 96) features -> (up * T, classes) log-probabilities (numpy)."""
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(feats, np.float32))[None])[0].numpy()
