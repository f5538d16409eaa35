"""Real recorded speech for training the encoder: manifests checked before anything is read or
synthesized, transcripts turned into phoneme targets word by word, and word cut points from CTC
forced alignment so that a long utterance is cropped *together with* its transcript.

Accepted sources (one or more, mixed):
- a TSV manifest with columns file, transcript, split (AN4, speechocean762, speech_commands in
  ../shared/data): its `train` rows only; `test` rows stay an honest check;
- a CSV with columns audio, text (LibriPhrase-style);
- a LibriSpeech-layout folder (*.trans.txt next to the flac/wav files);
- the bare name of a dataset folder with a manifest.tsv under HERON_DATA (default: ../shared/data beside
  the checkout), e.g. `an4`, `speechocean762`, `speech_commands`.

Every problem names the file and row: a missing audio file, an empty transcript, a word with no
pronunciation, audio that is unreadable, shorter than MIN_SECONDS, longer than MAX_SECONDS, or not finite.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from heron.models.audio import HOP, SAMPLE_RATE
from heron.runtime.phonemes import pronounce

MIN_SECONDS = 0.1  # shorter audio cannot hold a spoken word (and CTC needs a frame per phoneme)
MAX_SECONDS = 60.0  # longer files are not utterances; refuse rather than allocate
MAX_TRANSCRIPT_CHARS = 2000
DATA_ENV = "HERON_DATA"  # where bare dataset names are looked up (default: ../shared/data beside the checkout)


def data_root() -> Path:
    import os

    return Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[3] / "shared" / "data")


def resolve_source(source: str | Path) -> Path:
    """A data source as given: an existing file or folder as is; a bare name (no folder, no suffix) that is
    not one becomes data_root()/name/manifest.tsv when that exists. Anything else is returned unchanged
    (read_rows then names what is missing, and the datasets a bare name could have meant)."""
    path = Path(source)
    if path.exists() or len(path.parts) != 1 or path.suffix:
        return path
    named = data_root() / path.name / "manifest.tsv"
    return named if named.is_file() else path


def _known_names() -> str:
    root = data_root()
    names = sorted(d.name for d in root.iterdir() if (d / "manifest.tsv").is_file()) if root.is_dir() else []
    return f"{', '.join(names)} under {root}" if names else f"none found under {root} (set {DATA_ENV})"


@dataclass(frozen=True)
class Utterance:
    """One training utterance. `word_ends[i]` is the number of targets up to and including word i;
    `cuts` (len words + 1, samples) are the boundaries between words, where audio may be cut
    without cutting a word: empty when unknown (the utterance is then only used whole)."""

    text: str
    targets: tuple[int, ...]  # CTC classes (phoneme id + 1)
    audio: np.ndarray  # int16
    word_ends: tuple[int, ...] = ()
    cuts: tuple[int, ...] = ()
    teacher: np.ndarray | None = None  # teacher frames of the clean audio (heron.models.teacher), float16


class DataError(ValueError):
    """A training-data problem, with the file and row it comes from."""


def transcript_targets(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Free transcript (any length) -> (CTC targets, cumulative target count per word).

    Each whitespace token is pronounced on its own (digits and letter runs may give several words;
    they stay one unit for cutting). Raises ValueError naming a token with no pronunciation."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty transcript")
    if len(text) > MAX_TRANSCRIPT_CHARS:
        raise ValueError(f"transcript is {len(text)} characters; at most {MAX_TRANSCRIPT_CHARS}")
    targets: list[int] = []
    ends: list[int] = []
    for token in text.split():
        try:
            ids = pronounce(token, max_words=None, max_phonemes=None).ids()
        except ValueError:
            if not any(c.isalnum() for c in token):  # punctuation on its own is not spoken
                continue
            raise ValueError(f"cannot pronounce {token!r}") from None
        targets.extend(i + 1 for i in ids)
        ends.append(len(targets))
    if not targets:
        raise ValueError(f"nothing pronounceable in {text!r}")
    return tuple(targets), tuple(ends)


@dataclass(frozen=True)
class Row:
    source: str  # "manifest.tsv row 12" (1-based, the header is row 1)
    audio: Path
    text: str
    targets: tuple[int, ...] = ()  # filled in by read_rows when it checks the transcript
    word_ends: tuple[int, ...] = ()


def read_rows(path: str | Path, split: str = "train") -> list[Row]:
    """A data source -> its rows of `split` (TSV manifests; CSV files and folders have no split),
    checked (files exist, transcripts pronounceable) before any audio is read, with their targets.
    Raises DataError naming the file and row."""
    path = resolve_source(path)
    rows: list[Row] = []
    if path.is_file() and path.suffix in (".tsv", ".csv"):
        tsv = path.suffix == ".tsv"
        cols = ("file", "transcript") if tsv else ("audio", "text")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if tsv else ",")
            need = set(cols) | ({"split"} if tsv else set())
            if not need <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: needs columns {', '.join(sorted(need))}; has {reader.fieldnames}")
            for i, r in enumerate(reader, start=2):
                if tsv and r["split"] != split:  # training reads train rows only: test stays an honest check
                    continue
                if not r[cols[0]] or r[cols[1]] is None:
                    raise DataError(f"{path.name} row {i}: missing {cols[0]} or {cols[1]}")
                rows.append(Row(f"{path} row {i}", (path.parent / r[cols[0]]), r[cols[1]]))
    elif path.is_dir():
        for trans in sorted(path.rglob("*.trans.txt")):
            for i, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
                uid, _, text = line.partition(" ")
                found = [trans.parent / (uid + ext) for ext in (".flac", ".wav") if (trans.parent / (uid + ext)).exists()]
                if not found:
                    raise DataError(f"{trans} line {i}: no audio file {uid}.flac or {uid}.wav")
                rows.append(Row(f"{trans} line {i}", found[0], text))
    elif not path.exists():
        hint = f" (nor a dataset name: {_known_names()})" if len(path.parts) == 1 and not path.suffix else ""
        raise DataError(f"{path}: no such file or folder{hint}")
    else:
        raise DataError(f"{path}: expected a TSV manifest (file, transcript, split), a CSV (audio, text) "
                        "or a LibriSpeech-layout folder")
    if not rows:
        raise DataError(f"{path}: no {split} utterances found")
    checked = []
    for r in rows:
        if not r.audio.is_file():
            raise DataError(f"{r.source}: no such audio file {r.audio}")
        try:
            targets, ends = transcript_targets(r.text)
        except ValueError as e:
            raise DataError(f"{r.source}: {e}") from None
        checked.append(Row(r.source, r.audio, r.text, targets, ends))
    return checked


def read_audio(row: Row) -> np.ndarray:
    """-> 16 kHz mono int16. Raises DataError for unreadable, empty, too short or non-finite audio."""
    import soundfile as sf

    from heron.models.data.tts import resample

    try:
        info = sf.info(str(row.audio))
        if info.duration > MAX_SECONDS:
            raise DataError(f"{row.source}: {row.audio.name} is {info.duration:.0f} s; at most {MAX_SECONDS:.0f} s")
        a, sr = sf.read(str(row.audio), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise DataError(f"{row.source}: cannot read {row.audio.name}: {e}") from None
    if a.size == 0 or len(a) < MIN_SECONDS * sr:
        raise DataError(f"{row.source}: {row.audio.name} has {len(a)} samples; at least {MIN_SECONDS} s needed")
    if not np.isfinite(a).all():
        raise DataError(f"{row.source}: {row.audio.name} has NaN or infinite samples")
    a = resample(a.mean(axis=1), sr, SAMPLE_RATE)
    return np.round(np.clip(a, -1, 1) * 32767).astype(np.int16)


def load_rows(rows: list[Row]) -> list[Utterance]:
    """Rows from `read_rows` -> utterances (audio read and checked)."""
    return [Utterance(r.text, r.targets, read_audio(r), word_ends=r.word_ends) for r in rows]


def load_user_pool(paths: str | Path | list | tuple) -> list[Utterance]:
    """One or more data sources -> utterances (whole; see `with_cuts` for cropping)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = [r for p in paths for r in read_rows(p)]  # every manifest checked before audio is read
    return load_rows(rows)


# --- word cut points from forced alignment ----------------------------------------------------------

def word_cuts(align: np.ndarray, word_ends: tuple[int, ...], frame_samples: int, n_samples: int) -> tuple[int, ...]:
    """Frame-level alignment ((T,) target index per frame, -1 blank) -> cut samples between words.

    The cut between word i and i+1 is halfway between the last frame that emits a target of word i
    and the first frame that emits one of word i+1 (CTC emissions are spikes; the gap is mostly
    blank). The first and last cuts are the file's ends."""
    emit_frames = {}
    for t, u in enumerate(align):
        if u >= 0:
            emit_frames.setdefault(int(u), []).append(t)
    starts = [0, *word_ends[:-1]]
    cuts = [0]
    for i in range(len(word_ends) - 1):
        last = max(emit_frames[word_ends[i] - 1])
        first = min(emit_frames[starts[i + 1]])
        cuts.append(int(round((last + 1 + first) / 2 * frame_samples)))
    cuts.append(n_samples)
    cuts = [min(max(c, 0), n_samples) for c in cuts]
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError("alignment gives non-increasing cuts")
    return tuple(cuts)


def with_cuts(pool: list[Utterance], checkpoint: str | Path, longer_than: int, cache_dir: str | Path | None,
              threads: int = 2) -> list[Utterance]:
    """Word cut points for every utterance longer than `longer_than` samples, by CTC forced alignment
    with an encoder checkpoint. Cached (keyed by the checkpoint's and the audio's hashes). An
    utterance that cannot be aligned keeps no cuts (it is then used whole)."""
    import torch

    from heron.models.align import forced_align
    from heron.models.train_kws import load_encoder

    long_ids = [i for i, u in enumerate(pool) if len(u.audio) > longer_than]
    if not long_ids:
        return pool
    ck = Path(checkpoint)
    ck_file = ck / "model.safetensors" if ck.is_dir() else ck
    h = hashlib.sha256(ck_file.read_bytes())
    for i in long_ids:
        h.update(pool[i].audio.tobytes())
        h.update(repr(pool[i].targets).encode())
    cache = Path(cache_dir) / f"cuts-{h.hexdigest()[:20]}.json" if cache_dir else None
    if cache is not None and cache.exists():
        cuts = json.loads(cache.read_text())
    else:
        torch.set_num_threads(threads)
        model, _ = load_encoder(ck)
        frame = model.config.stack * HOP
        cuts = []
        with torch.no_grad():
            for i in long_ids:
                u = pool[i]
                lp, _, _ = model(torch.from_numpy(u.audio.astype(np.float32) / 32767.0)[None])
                n_frames = -(-len(u.audio) // frame)
                path = forced_align(lp[0, :n_frames].numpy(), list(u.targets))
                try:
                    cuts.append(list(word_cuts(path, u.word_ends, frame, len(u.audio))) if path is not None else [])
                except ValueError:  # words in the wrong order: keep the utterance whole
                    cuts.append([])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(cuts))
            tmp.replace(cache)
    out = list(pool)
    for i, c in zip(long_ids, cuts):
        out[i] = replace(pool[i], cuts=tuple(c))
    return out


def crop_span(u: Utterance, budget: int, rng: np.random.Generator) -> tuple[int, int, tuple[int, ...]]:
    """-> (start, end, targets): a span of at most `budget` samples, cut only between words, targets
    cut with it.

    Short utterances and those without cut points come back whole (never audio without its words
    or words without their audio). A random start word; the span grows forwards, then backwards, as far
    as the budget allows."""
    if len(u.audio) <= budget or len(u.cuts) < 2:
        return 0, len(u.audio), u.targets
    n = len(u.cuts) - 1
    fits = [i for i in range(n) if u.cuts[i + 1] - u.cuts[i] <= budget]
    if not fits:
        return 0, len(u.audio), u.targets
    i = fits[int(rng.integers(len(fits)))]
    j = i
    while j + 1 < n and u.cuts[j + 2] - u.cuts[i] <= budget:
        j += 1
    while i > 0 and u.cuts[j + 1] - u.cuts[i - 1] <= budget:  # near the end: grow backwards
        i -= 1
    t0 = u.word_ends[i - 1] if i else 0
    return u.cuts[i], u.cuts[j + 1], u.targets[t0:u.word_ends[j]]


def crop_words(u: Utterance, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    """-> (audio, targets): `crop_span` applied to the audio."""
    start, end, targets = crop_span(u, budget, rng)
    return u.audio[start:end], targets
