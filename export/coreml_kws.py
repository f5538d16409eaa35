"""Export the streaming KWS encoder to Core ML (.mlpackage, ML program) for iOS/macOS.

Same chunk-step interface as the ONNX export: `audio_chunk` plus state inputs `cached_*`, outputs
`log_probs`, `embeddings`, `gate_probs` and `new_cached_*` (Core ML has no in/out aliasing, so the
state is passed explicitly, as with ONNX). Compute units allow the Neural Engine. Conversion runs on
Linux; predictions need macOS, so on Linux the package is validated by loading its spec and checking
input/output names and shapes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from heron.export.coreml import convert_named, coremltools
from heron.export.wrappers import ChunkStep, MatcherStep
from heron.models.conformer import GatedConformer


def export_encoder_coreml(model: GatedConformer, path: str | Path, metadata: dict | None = None) -> dict:
    ct = coremltools()
    model = model.eval()
    state = model.init_state(1)
    names = list(state)
    wrapper = ChunkStep(model, names).eval()
    example = (torch.zeros(1, model.config.chunk_samples), *state.values())
    program = torch.export.export(wrapper, example).run_decompositions({})
    inputs = [ct.TensorType(name="audio_chunk", shape=example[0].shape)]
    inputs += [ct.TensorType(name=n, shape=t.shape) for n, t in state.items()]
    want = ["log_probs", "embeddings", "gate_probs"] + [f"new_{n}" for n in names]
    convert_named(program, inputs, want, path, "heron streaming keyword-spotting encoder (one 320 ms chunk per call)",
                  metadata)
    return {"inputs": {"audio_chunk": list(example[0].shape), **{n: list(t.shape) for n, t in state.items()}},
            "outputs": want,
            "state_pairs": {n: f"new_{n}" for n in names}}


def validate_mlpackage(path: str | Path, expected: dict) -> None:
    """Load the package's spec (works on Linux) and check names and shapes against `expected`."""
    spec = coremltools().utils.load_spec(str(path))
    ins = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outs = [o.name for o in spec.description.output]
    if ins != expected["inputs"]:
        raise ValueError(f"{path}: inputs {ins} != expected {expected['inputs']}")
    if outs != expected["outputs"]:
        raise ValueError(f"{path}: outputs {outs} != expected {expected['outputs']}")


def export_text_encoder_coreml(text_enc, path: str | Path) -> None:
    """phoneme_ids (1, N) int32, N in 1..max_phonemes -> text_embeddings (1, N, D)."""
    import numpy as np

    ct = coremltools()
    n_max = text_enc.config.max_phonemes
    n = torch.export.Dim("n_phonemes", min=1, max=n_max)
    program = torch.export.export(text_enc.eval(), (torch.ones(1, 7, dtype=torch.int64),),
                                  dynamic_shapes={"ids": {1: n}}).run_decompositions({})
    inputs = [ct.TensorType(name="phoneme_ids", shape=(1, ct.RangeDim(1, n_max, default=7)), dtype=np.int32)]
    convert_named(program, inputs, ["text_embeddings"], path, "heron audio-compliant text encoder (enrollment)")


def export_matcher_coreml(matcher, path: str | Path) -> None:
    """audio_window (1, T, Da), text_embeddings (1, N, Dt) -> match_prob (1,), subsequence_probs (1, N)."""
    ct = coremltools()
    c = matcher.config
    T = torch.export.Dim("frames", min=2, max=c.max_frames)
    N = torch.export.Dim("n_phonemes", min=1, max=c.max_phonemes)
    example = (torch.zeros(1, 20, c.d_audio), torch.zeros(1, 7, c.d_text))
    program = torch.export.export(MatcherStep(matcher.eval()).eval(), example,
                                  dynamic_shapes={"audio": {1: T}, "text": {1: N}}).run_decompositions({})
    inputs = [ct.TensorType(name="audio_window", shape=(1, ct.RangeDim(2, c.max_frames, default=20), c.d_audio)),
              ct.TensorType(name="text_embeddings", shape=(1, ct.RangeDim(1, c.max_phonemes, default=7), c.d_text))]
    convert_named(program, inputs, ["match_prob", "subsequence_probs"], path, "heron SLiCK keyword verifier")
