"""Phoneme error rate (PER) of an encoder checkpoint: greedy CTC decoding of whole utterances against
the CMU-dictionary / G2P phonemes of their transcripts.

It measures what the keyword matcher depends on, without any keyword: how well the encoder hears
phonemes in real held-out speech (the `test/` splits of the training corpora, never trained on)
compared with TTS voices held out of training. `heron kws per --checkpoint RUN --data MANIFEST.tsv`.
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


def phoneme_error_rate(model, utterances: list[Utterance]) -> dict:
    """-> {"per": edits / reference phonemes (%), "utterances", "phonemes"} over the utterances."""
    import torch

    edits = total = 0
    with torch.no_grad():
        for u in utterances:
            lp, _, _ = model(torch.from_numpy(u.audio.astype(np.float32) / 32767.0)[None])
            edits += levenshtein(greedy_ctc(lp[0].numpy()), list(u.targets))
            total += len(u.targets)
    return {"per": round(100.0 * edits / max(1, total), 2), "utterances": len(utterances), "phonemes": total}


def run(checkpoint: str | Path, data: list[str], split: str = "test", tts: int = 300, seed: int = 4242,
        threads: int = 2) -> dict:
    """PER on each data source's `split` rows and on `tts` utterances of held-out TTS voices."""
    import torch

    from heron.models.kws_data import build_tts_pool
    from heron.models.train_kws import load_encoder

    torch.set_num_threads(threads)
    model, meta = load_encoder(checkpoint)
    res: dict = {"checkpoint": str(checkpoint), "step": meta.get("step"), "split": split,
                 "date": time.strftime("%Y-%m-%d")}
    for src in data:
        res[str(src)] = phoneme_error_rate(model, load_rows(read_rows(src, split=split)))
    if tts:
        res["tts_heldout_voices"] = phoneme_error_rate(model, build_tts_pool(tts, seed=seed, split="heldout"))
    return res
