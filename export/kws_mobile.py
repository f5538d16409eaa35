"""A mobile keyword-spotting bundle: only what a device needs, made from a full bundle (no torch).

    heron kws export --mobile --out out/mobile            # from the shipped bundle
    heron kws export --mobile --model my-bundle --out out/mobile

Kept: the int8 single-graph encoder, the phoneme table (per-word times), the embedding head that checks
the first stage's candidates with its two feature graphs (when the full bundle has one; `head=False`,
`--no-head`, drops it: a smaller bundle that scores as the first stage alone) and a manifest; a README.md
inside names each file, the graph's inputs, outputs and state pairs, and points to the loop's
specification (docs/runtime.md). Dropped: the Z-norm background bank and everything else only
enrollment needs (keywords reach a device as keyword files, which carry their own Z-norm statistics),
the per-module graphs and the speech gate (a port runs the single graph), the fp32 graphs.
The manifest names the full bundle's identity (`mobile.made_from`): keyword files enrolled with that
bundle load here, others are refused.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from heron.runtime.bundle import load_bundle, write_manifest
from heron.runtime.manifest import MOBILE_LOOP_SPEC as LOOP_SPEC
from heron.runtime.manifest import HeadCheck, Mobile, file_table

HEAD_FILES = (*HeadCheck.FILES, "embedding_notice")  # the head, its two feature graphs and their licence


def _readme(m: dict, made_from: str) -> str:
    enc = m["encoder"]
    states = [n for n in enc["inputs"] if n != "audio_chunk"]
    lines = [
        "# heron keyword-spotting bundle (mobile)",
        "",
        f"Made by `heron kws export --mobile` from the bundle whose manifest sha256 is `{made_from}`.",
        "Keywords are not enrolled here: load keyword files (`heron kws enroll TEXT --out F.kw` on a computer, with",
        "that bundle). The run-time loop (chunking, state pairs, the CTC keyword recurrence, Z-norm and",
        f"calibration, peak picking, word times) is specified in heron's `{LOOP_SPEC}`; `runtime/js/` in heron's",
        "repository is a JavaScript implementation of it (Node and browsers).",
        "",
        "## Files",
        "",
        "| file | what | bytes |",
        "|---|---|---|",
    ]
    what = {"encoder_int8": "the streaming encoder, int8 ONNX (one call per chunk)",
            "phoneme_table": "representative phoneme vectors (39 x D float32, .npy): per-word times (optional)",
            "speech_embedding_mel": "the embedding head's features, 1 of 2: 16 kHz samples (int16 scale) -> 32 log-mels "
                                    "every 10 ms",
            "speech_embedding": "the embedding head's features, 2 of 2: a mel sequence -> one 96-d vector every 80 ms",
            "embedding_head": "the embedding head: 96-d vectors -> phoneme log-probabilities, run around the first "
                              "stage's candidates (docs/runtime.md, section 5b)",
            "embedding_notice": "the licence of the two feature graphs (Apache-2.0)"}
    for key in ("encoder_int8", "phoneme_table", *HEAD_FILES):
        if key in m["files"]:
            f = m["files"][key]
            lines.append(f"| `{f['path']}` | {what[key]} | {f['bytes']} |")
    lines += [
        "| `manifest.json` | everything the loop needs: audio format, class table, calibration, matcher options, "
        "file checksums | |",
        "| `manifest.sha256` | sha256 of manifest.json: the bundle's identity | |",
        "",
        "## The encoder graph",
        "",
        f"- Audio: mono float32 samples in [-1, 1] at {m['sample_rate']} Hz, in chunks of {m['chunk_samples']} samples "
        f"({m['chunk_samples'] / m['sample_rate'] * 1000:.0f} ms); features are computed inside the graph.",
        f"- Input `audio_chunk` [1, {m['chunk_samples']}] float32, plus {len(states)} state tensors, all zeros at the "
        "start of a stream.",
        f"- Outputs: `log_probs` [1, {m['frames_per_chunk']}, {len(m['phonemes']['classes'])}] (one row per "
        f"{m['frame_seconds'] * 1000:.0f} ms frame; column i is `phonemes.classes[i]`, blank = "
        f"{m['phonemes']['blank']}), `embeddings` [1, {m['frames_per_chunk']}, D] (per-word times), `gate_probs` "
        "(analysis only), and each state's next value.",
        "- State pairs: feed output `state_pairs[input]` of one call as `input` of the next call.",
        "",
        "| state input | shape | next value from output |",
        "|---|---|---|",
    ]
    for n in states:
        lines.append(f"| `{n}` | {enc['inputs'][n]} | `{enc['state_pairs'][n]}` |")
    if m.get("embedding_head") is not None:
        h = m["embedding_head"]
        lines += [
            "",
            "## The embedding head",
            "",
            f"Frames whose first-stage confidence reaches {h['min_confidence']} are candidates; the head scores the "
            f"keyword on the audio from {h['before_s']} s before the earliest candidate path to the latest chunk, "
            "and multiplies each candidate's first-stage score by exp(weight * (ln h - offset)) (weight "
            f"{h['weight']}, offset {h['offset']}); other frames get the factor of the lowest h. Graphs (float32):",
            "",
            "- `acoustic/melspectrogram.onnx`: input `input` [1, samples] (audio x 32767) -> [frames, 1, 1, 32]; "
            "heron uses value / 10 + 2.",
            "- `acoustic/embedding_model.onnx`: input `input_1` [1, mel frames, 32, 1] -> one 96-d vector per 8 mel "
            "frames (76-frame windows).",
            "- `acoustic/embedding_head.onnx`: input `embeddings` [1, frames, 96] -> `log_probs` [1, head frames, classes].",
            "",
            "The window handling (silence padding, frames kept across chunks) is section 5b of the loop's "
            "specification.",
        ]
    lines += [
        "",
        "On x86 CPUs without AVX-512 VNNI, set onnxruntime's session option `session.x64quantprecision` = `1` so that",
        "the int8 products are exact (heron's Python and JavaScript runtimes do).",
        "",
    ]
    return "\n".join(lines)


def write_mobile_bundle(source: str | Path | None, out: str | Path, head: bool = True) -> Path:
    """A verified full bundle (default: the shipped one) -> a mobile bundle in `out` (new or empty folder);
    head=False leaves the embedding head out (the first stage alone, 5 MB smaller)."""
    src = load_bundle(source)
    m = src.manifest
    if m.mobile is not None:
        raise ValueError(f"{src.root} is already a mobile bundle; make one from a full bundle")
    if m.target != "onnx" or not m.has("encoder_int8"):
        raise ValueError(f"{src.root} has no int8 ONNX encoder (encoder_int8); export one with heron kws export")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "manifest.sha256"):  # a half-written bundle never looks complete
        (out / stale).unlink(missing_ok=True)
    files = {}
    keep_head = head and m.embedding_head is not None
    for key in ("encoder_int8", "phoneme_table", *(HEAD_FILES if keep_head else ())):
        if m.has(key):
            name = m.files[key].path  # the same place as in the full bundle (acoustic/ for the head)
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.path(key), out / name)
            files[key] = name
    mobile = replace(m, speech_gate=None, verifier=None, embedding_head=m.embedding_head if keep_head else None,
                     mobile=Mobile(src.identity),
                     files=file_table(out, files))
    (out / "README.md").write_text(_readme(mobile.to_dict(), src.identity))
    files["readme"] = "README.md"
    write_manifest(out, replace(mobile, files=file_table(out, files)))
    load_bundle(out)  # what was written loads
    return out
