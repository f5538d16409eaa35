"""Core ML conversion shared by the keyword-spotting and language-model exports.

Conversion runs on Linux (coremltools); predictions need macOS, so packages are validated on Linux by
loading their spec. Outputs get the same names as in the ONNX graphs, so one manifest describes both.
"""
from __future__ import annotations

import json
from pathlib import Path


def coremltools():
    try:
        import coremltools as ct
    except ImportError as e:
        raise ImportError("Core ML export needs coremltools: pip install 'heron[export]'") from e
    return ct


def convert_named(program, inputs, out_names: list[str], path: str | Path, description: str,
                  metadata: dict | None = None) -> None:
    """Convert an exported program (ML program, iOS 17, all compute units) and save it with the given
    output names, description and user metadata."""
    ct = coremltools()
    mlmodel = ct.convert(program, inputs=inputs, minimum_deployment_target=ct.target.iOS17,
                         compute_units=ct.ComputeUnit.ALL, convert_to="mlprogram")
    spec = mlmodel.get_spec()
    for old, new in zip([o.name for o in spec.description.output], out_names):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir)
    mlmodel.short_description = description
    for k, v in (metadata or {}).items():
        mlmodel.user_defined_metadata[k] = v if isinstance(v, str) else json.dumps(v)
    mlmodel.save(str(path))


def output_names(path: str | Path) -> list[str]:
    return [o.name for o in coremltools().utils.load_spec(str(path)).description.output]
