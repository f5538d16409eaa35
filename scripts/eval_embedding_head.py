"""The embedding head (heron kws train-head) against heron's encoder, alone and fused, per utterance.

    .venv/bin/python scripts/eval_embedding_head.py --head DIR [--head DIR2] [--bundle B] [--weights 0.5,1,2] [--check] [--json OUT]

Selection figure (always): the `test/` splits' keyword figure of scripts/eval_kws_testsplits.py (150 phrases
enrolled from text; mean AUC / FRR at 0 and 2 false accepts) and phoneme error rates, for the encoder's
log-probabilities, the head's, and the two fused per utterance: log score = encoder's + w * head's, each the
first-stage matcher's best path over the whole utterance. `--check` also scores the check's pool
(../shared/tools/eval_real_keywords.py: its files, positives / negatives rule and metric functions) the same
way. This is late fusion per file, an upper bound on what a runtime verifier around the encoder's detections
can give; the check's own figure comes from `heron kws score` on a bundle. Writes only --json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_kws_testsplits import draw_phrases, figure, log_prob_bank, phrase_scores, read_mono, test_rows  # noqa: E402

CHECK_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools"


def per(lps, targets, blank: int) -> float:
    """Pooled phoneme error rate (%) of greedy CTC decoding, as `heron kws per` computes it (models/eval_per.py)."""
    from heron.models.eval_per import greedy_ctc
    from heron.runtime.phonemes import levenshtein

    errors = sum(levenshtein(greedy_ctc(lp, blank), t) for lp, t in zip(lps, targets))
    return round(100 * errors / sum(len(t) for t in targets), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", action="append", required=True,
                    help="folder of heron kws train-head; repeated: the heads' posteriors mixed (HeadEnsemble)")
    ap.add_argument("--bundle", default=None, help="KWS bundle whose encoder is fused (default: the shipped one)")
    ap.add_argument("--weights", default="0.5,1,2", help="fusion weights w to report")
    ap.add_argument("--check", action="store_true", help="also the check's pool (late fusion per file)")
    ap.add_argument("--phrases", type=int, default=150)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()
    import torch

    from heron.export.embedding_head import sequence_speech_embedding
    from heron.models.data.real import transcript_targets
    from heron.models.embedding_head import load_heads, log_probs, utterance_features
    from heron.runtime.metrics import machine
    from heron.runtime.spotter import KeywordSpotter

    torch.set_num_threads(1)
    weights = [float(w) for w in a.weights.split(",")]
    rows = test_rows()
    if rows is None:
        return 2
    sp = KeywordSpotter.load(a.bundle, speech_gate=False)
    head, metas = load_heads(a.head)
    emb = sequence_speech_embedding()  # the frames bundles compute

    def both(path):
        x = read_mono(path, sp.sample_rate)
        return sp.encode(x)[0], log_probs(head, utterance_features(emb, x))

    enc, hd = zip(*(both(p) for p, _, _ in rows))
    targets, keep = [], []
    for i, (_, t, _) in enumerate(rows):
        try:
            targets.append(list(transcript_targets(" ".join(t))[0]))
            keep.append(i)
        except ValueError:
            pass
    res = {"head": a.head, "head_epochs": [m.get("epochs_done") for m in metas], "bundle": str(sp.bundle.root), "machine": machine(),
           "per_test": {"encoder": per([enc[i] for i in keep], targets, sp.blank),
                        "head": per([hd[i] for i in keep], targets, sp.blank)}}
    phrases = draw_phrases(rows, sp, a.phrases, 0)
    s_enc = phrase_scores(phrases, log_prob_bank(enc, sp.n_classes, sp.blank), sp.matcher_options, sp.blank)
    s_hd = phrase_scores(phrases, log_prob_bank(hd, sp.n_classes, sp.blank), sp.matcher_options, sp.blank)
    res["test_splits"] = {"encoder": figure(rows, phrases, s_enc), "head": figure(rows, phrases, s_hd),
                          **{f"fused w={w:g}": figure(rows, phrases, [x + w * y for x, y in zip(s_enc, s_hd)])
                             for w in weights}}
    print(f"PER on the test splits: encoder {res['per_test']['encoder']}, head {res['per_test']['head']}")
    for k, v in res["test_splits"].items():
        print(f"test splits, {k}: AUC {v[0]} / FRR@0FA {v[1]}% / FRR@2FA {v[2]}%")
    if a.check:
        res["check"] = check(sp, head, emb, weights)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


def check(sp, head, emb, weights) -> dict:
    """The check's pool, each file's best path per keyword: encoder alone, head alone, fused."""
    sys.path.insert(0, str(CHECK_TOOL))
    import eval_real_keywords as ck
    from heron.models.embedding_head import log_probs, utterance_features
    from heron.runtime.ctc_kws import CTCKeywordMatcher
    from heron.runtime.phonemes import pronounce

    rows = ck.load_pool()
    enc, hd = [], []
    for r in rows:
        x = read_mono(r["path"], sp.sample_rate)
        enc.append(sp.encode(x)[0])
        hd.append(log_probs(head, utterance_features(emb, x)))
    banks = [log_prob_bank(v, sp.n_classes, sp.blank) for v in (enc, hd)]
    out: dict = {}
    for key, text in ck.KEYWORDS.items():
        m = CTCKeywordMatcher(sp.classes(pronounce(text)), sp.matcher_options, blank=sp.blank)
        s_enc, s_hd = (np.log(np.maximum(m.max_scores_batch(b), 1e-30)) for b in banks)
        pos = np.array([r["transcript"] == text for r in rows])
        neg = np.array([not ck.contains(r["transcript"], text) for r in rows]) & ~pos
        hours = sum(r["duration_s"] for r, n in zip(rows, neg) if n) / 3600
        for name, s in [("encoder", s_enc), ("head", s_hd)] + [(f"fused w={w:g}", s_enc + w * s_hd) for w in weights]:
            auc, eer = ck.auc_eer(s[pos], s[neg])
            out.setdefault(name, {})[key] = (round(auc, 2), round(eer, 2), round(ck.frr_at_fah(s[pos], s[neg], hours, 1.0), 1))
    for name, per_kw in out.items():
        mean = np.mean(list(per_kw.values()), axis=0)
        per_kw["mean"] = tuple(round(float(v), 2) for v in mean)
        print(f"check, {name}: " + ", ".join(f"{k} {v[0]} / {v[1]} / {v[2]}%" for k, v in per_kw.items()))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
