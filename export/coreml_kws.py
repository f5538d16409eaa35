"""Export the streaming KWS encoder to Core ML (.mlpackage, ML program) for iOS/macOS.

Same chunk-step interface as the ONNX export: `audio_chunk` plus state inputs `cached_*`, outputs
`log_probs`, `embeddings`, `gate_probs` and `new_cached_*` (Core ML has no in/out aliasing, so the
state is passed explicitly, as with ONNX). Compute units allow the Neural Engine. Conversion runs on
Linux; predictions need macOS, so on Linux the package is validated by loading its spec and checking
input/output names and shapes.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from heron.models.conformer import GatedConformer

from .onnx_kws import _ChunkStep


def export_encoder_coreml(model: GatedConformer, path: str | Path, metadata: dict | None = None) -> dict:
    try:
        import coremltools as ct
    except ImportError as e:
        raise ImportError("Core ML export needs coremltools: pip install 'heron[export]'") from e
    model = model.eval()
    state = model.init_state(1)
    names = list(state)
    wrapper = _ChunkStep(model, names).eval()
    example = (torch.zeros(1, model.config.chunk_samples), *state.values())
    program = torch.export.export(wrapper, example).run_decompositions({})
    inputs = [ct.TensorType(name="audio_chunk", shape=example[0].shape)]
    inputs += [ct.TensorType(name=n, shape=t.shape) for n, t in state.items()]
    mlmodel = ct.convert(program, inputs=inputs, minimum_deployment_target=ct.target.iOS17,
                         compute_units=ct.ComputeUnit.ALL, convert_to="mlprogram")
    want = ["log_probs", "embeddings", "gate_probs"] + [f"new_{n}" for n in names]
    spec = mlmodel.get_spec()
    for old, new in zip([o.name for o in spec.description.output], want):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir)
    mlmodel.short_description = "heron streaming keyword-spotting encoder (one 320 ms chunk per call)"
    for k, v in (metadata or {}).items():
        mlmodel.user_defined_metadata[k] = v if isinstance(v, str) else json.dumps(v)
    mlmodel.save(str(path))
    return {"inputs": {"audio_chunk": list(example[0].shape), **{n: list(t.shape) for n, t in state.items()}},
            "outputs": want,
            "state_pairs": {n: f"new_{n}" for n in names}}


def validate_mlpackage(path: str | Path, expected: dict) -> None:
    """Load the package's spec (works on Linux) and check names and shapes against `expected`."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    ins = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outs = [o.name for o in spec.description.output]
    if ins != expected["inputs"]:
        raise ValueError(f"{path}: inputs {ins} != expected {expected['inputs']}")
    if outs != expected["outputs"]:
        raise ValueError(f"{path}: outputs {outs} != expected {expected['outputs']}")


def _convert_named(program, inputs, out_names: list[str], path, description: str):
    import coremltools as ct

    mlmodel = ct.convert(program, inputs=inputs, minimum_deployment_target=ct.target.iOS17,
                         compute_units=ct.ComputeUnit.ALL, convert_to="mlprogram")
    spec = mlmodel.get_spec()
    for old, new in zip([o.name for o in spec.description.output], out_names):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir)
    mlmodel.short_description = description
    mlmodel.save(str(path))


def export_text_encoder_coreml(text_enc, path: str | Path) -> None:
    """phoneme_ids (1, N) int32, N in 1..max_phonemes -> text_embeddings (1, N, D)."""
    import coremltools as ct
    import numpy as np

    n_max = text_enc.config.max_phonemes
    n = torch.export.Dim("n_phonemes", min=1, max=n_max)
    program = torch.export.export(text_enc.eval(), (torch.ones(1, 7, dtype=torch.int64),),
                                  dynamic_shapes={"ids": {1: n}}).run_decompositions({})
    inputs = [ct.TensorType(name="phoneme_ids", shape=(1, ct.RangeDim(1, n_max, default=7)), dtype=np.int32)]
    _convert_named(program, inputs, ["text_embeddings"], path, "heron audio-compliant text encoder (enrollment)")


def export_matcher_coreml(matcher, path: str | Path) -> None:
    """audio_window (1, T, Da), text_embeddings (1, N, Dt) -> match_prob (1,), subsequence_probs (1, N)."""
    import coremltools as ct

    from .onnx_kws import _MatcherStep

    c = matcher.config
    T = torch.export.Dim("frames", min=2, max=c.max_frames)
    N = torch.export.Dim("n_phonemes", min=1, max=c.max_phonemes)
    example = (torch.zeros(1, 20, c.d_audio), torch.zeros(1, 7, c.d_text))
    program = torch.export.export(_MatcherStep(matcher.eval()), example,
                                  dynamic_shapes={"audio": {1: T}, "text": {1: N}}).run_decompositions({})
    inputs = [ct.TensorType(name="audio_window", shape=(1, ct.RangeDim(2, c.max_frames, default=20), c.d_audio)),
              ct.TensorType(name="text_embeddings", shape=(1, ct.RangeDim(1, c.max_phonemes, default=7), c.d_text))]
    _convert_named(program, inputs, ["match_prob", "subsequence_probs"], path, "heron SLiCK keyword verifier")


def output_names(path: str | Path) -> list[str]:
    import coremltools as ct

    return [o.name for o in ct.utils.load_spec(str(path)).description.output]
