"""Phoneme error rate (PER) of an encoder checkpoint: greedy CTC decoding of whole utterances against
the CMU-dictionary / G2P phonemes of their transcripts.

It measures what the keyword matcher depends on, without any keyword: how well the encoder hears
phonemes in real held-out speech (the `test/` splits of the training corpora, never trained on)
compared with TTS voices held out of training. `heron kws per --checkpoint RUN --data MANIFEST.tsv`;
`--head DIR` measures an embedding head (`heron kws train-head`) instead, on the speech_embedding frames
bundles compute.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from heron.runtime.phonemes import levenshtein

from heron.models.conformer import BLANK
from heron.models.data.real import Utterance, load_rows, read_rows


def greedy_ctc(log_probs: np.ndarray, blank: int = BLANK) -> list[int]:
    """(T, C) -> classes: best class per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1)
    out, prev = [], blank
    for c in best.tolist():
        if c != blank and c != prev:
            out.append(c)
        prev = c
    return out


def encoder_log_probs(model):
    """An encoder (waveform -> (log-probs, ...)) -> a function Utterance -> (T, classes) log-probs."""
    import torch

    def of(u: Utterance) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(u.audio.astype(np.float32) / 32767.0)[None])[0][0].numpy()
    return of


def head_log_probs(folder: str | Path, emb):
    """An embedding head's folder -> a function Utterance -> (T, classes) log-probs, on the speech_embedding
    frames of `emb` (the bundles' sequence graph: heron.export.embedding_head.sequence_speech_embedding; the
    utterance padded with silence, as in the head's training)."""
    from heron.models.embedding_head import load_head, log_probs, utterance_features

    head, _ = load_head(folder)
    return lambda u: log_probs(head, utterance_features(emb, u.audio))


def phoneme_error_rate(model, utterances: list[Utterance], log_probs_of=None) -> dict:
    """-> {"per": edits / reference phonemes (%), "utterances", "phonemes"} over the utterances, from an
    encoder `model` or any `log_probs_of(utterance)` (e.g. head_log_probs)."""
    of = log_probs_of or encoder_log_probs(model)
    edits = total = 0
    for u in utterances:
        edits += levenshtein(greedy_ctc(of(u)), list(u.targets))
        total += len(u.targets)
    return {"per": round(100.0 * edits / max(1, total), 2), "utterances": len(utterances), "phonemes": total}


def run(checkpoint: str | Path | None, data: list[str], split: str = "test", tts: int = 300, seed: int = 4242,
        threads: int = 2, head: str | Path | None = None, emb=None) -> dict:
    """PER on each data source's `split` rows and on `tts` utterances of held-out TTS voices, of the encoder
    checkpoint or (`head`) of an embedding head on `emb`'s frames (see head_log_probs): exactly one of the two."""
    import torch

    from heron.models.kws_data import build_tts_pool

    if (checkpoint is None) == (head is None):
        raise ValueError("give an encoder checkpoint or an embedding head (--checkpoint or --head), not both or neither")
    torch.set_num_threads(threads)
    if head is not None:
        if emb is None:
            raise ValueError("an embedding head's phoneme error rate needs the speech_embedding frames (emb)")
        of = head_log_probs(head, emb)
        res: dict = {"head": str(head)}
    else:
        from heron.models.train_kws import load_encoder

        model, meta = load_encoder(checkpoint)
        of = encoder_log_probs(model)
        res = {"checkpoint": str(checkpoint), "step": meta.get("step")}
    res.update(split=split, date=time.strftime("%Y-%m-%d"))
    for src in data:
        res[str(src)] = phoneme_error_rate(None, load_rows(read_rows(src, split=split)), of)
    if tts:
        res["tts_heldout_voices"] = phoneme_error_rate(None, build_tts_pool(tts, seed=seed, split="heldout"), of)
    return res
