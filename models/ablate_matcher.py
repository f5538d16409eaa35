"""Second-stage ablations on held-out voices, same data and budget for every variant:
CTC first stage alone, SLiCK matcher, CTC+SLiCK fusion, DSP and pooled cosine over representative
vectors (training-free), matcher trained without confusable negatives, and a text encoder without
representative vectors (learned phoneme embeddings instead)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from heron.runtime import metrics
from heron.runtime.dsp import dsp_partition

from heron.models.train_kws import load_encoder
from heron.models.train_matcher import MatcherTrainConfig, build_examples, matcher_scores, save_matcher, train_matcher


def _words(table: np.ndarray, ids: list[int], lens: tuple[int, ...]) -> np.ndarray:
    vecs = table[np.asarray(ids) - 1]
    out, i = [], 0
    for n in lens:
        out.append(vecs[i:i + n].mean(0))
        i += n
    return np.stack(out)


def _report(scores: np.ndarray, kinds: list[str]) -> dict:
    kinds_a = np.asarray(kinds)
    pos = scores[np.isin(kinds_a, ["positive", "contains"])]
    out = {}
    for neg_kind in ("easy", "hard", "confusable"):
        neg = scores[kinds_a == neg_kind]
        if len(neg):
            e, _ = metrics.eer(pos, neg)
            out[neg_kind] = {"auc": round(100 * metrics.auc(pos, neg), 2), "eer": round(100 * e, 2)}
    return out


def run(encoder_dir: str, out_dir: str, cfg: MatcherTrainConfig = MatcherTrainConfig(), eval_anchors: int = 400):
    import torch

    torch.set_num_threads(cfg.threads)
    encoder, _ = load_encoder(encoder_dir)
    d = encoder.config.d_model  # the representative vectors live in the encoder's embedding space
    cfg = replace(cfg, text=replace(cfg.text, d_audio=d), matcher=replace(cfg.matcher, d_audio=d))
    train_ex, table, confusion = build_examples(encoder, cfg, split="train")
    eval_ex, _, _ = build_examples(encoder, replace(cfg, anchors=eval_anchors), split="heldout", seed=cfg.seed + 777,
                                   confusion=confusion)
    kinds = [e.kind for e in eval_ex]
    mf, mp = cfg.matcher.max_frames, cfg.text.max_phonemes
    res: dict = {"train_examples": len(train_ex), "eval_examples": len(eval_ex)}
    ctc = np.log(np.maximum([e.ctc_raw for e in eval_ex], 1e-30))
    res["ctc_first_stage"] = _report(ctc, kinds)
    res["pooled_cosine"] = _report(np.asarray([
        float(np.dot(e.window.mean(0), table[np.asarray(e.ids) - 1].mean(0)) /
              (np.linalg.norm(e.window.mean(0)) * np.linalg.norm(table[np.asarray(e.ids) - 1].mean(0)) + 1e-8))
        for e in eval_ex]), kinds)
    res["dsp"] = _report(np.asarray([dsp_partition(e.window, _words(table, e.ids, e.word_lens))[0]
                                     if len(e.window) >= len(e.word_lens) else -1.0 for e in eval_ex]), kinds)
    variants = {
        "slick": (cfg, train_ex),
        "slick_no_confusables": (cfg, [e for e in train_ex if e.kind != "confusable"]),
        "slick_no_representative_vectors": (replace(cfg, text=replace(cfg.text, use_representative=False)), train_ex),
    }
    for name, (vcfg, ex) in variants.items():
        te, m = train_matcher(vcfg, ex, table)
        p = matcher_scores(te, m, eval_ex, mf, mp)
        res[name] = _report(np.log(np.maximum(p, 1e-30)), kinds)
        if name == "slick":
            # product of the two stages' likelihoods (sum of logs)
            res["ctc_plus_slick"] = _report(ctc + np.log(np.maximum(p, 1e-30)), kinds)
            save_matcher(Path(out_dir), te, m, table, confusion, vcfg, {"encoder": str(encoder_dir)})
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "ablations.json").write_text(json.dumps(res, indent=1))
    return res
