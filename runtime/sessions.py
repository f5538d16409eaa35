"""onnxruntime sessions as heron opens them: one place for threads, providers and int8 precision.

int8 graphs (dynamic quantization: uint8 activations x int8 weights) run on onnxruntime's U8S8
kernels. On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) those kernels add pairs of u8 x s8
products in 16 bits and can saturate, so the same bundle scores differently there than on a VNNI
machine or an ARM phone. `session.x64quantprecision=1` makes onnxruntime use its exact U8U8 path on
exactly those CPUs (weights are converted once at load; nothing changes elsewhere), so an int8 bundle
gives the same results on every x86 machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

EXACT_INT8 = ("session.x64quantprecision", "1")


def session_options(threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry(*EXACT_INT8)
    return opts


def open_session(path: str | Path, threads: int = 1, providers: Sequence[str] | None = None):
    """An onnxruntime session for a verified bundle file, or one BundleError line for a graph
    onnxruntime cannot load."""
    import onnxruntime as ort

    from heron.runtime.bundle import BundleError

    try:
        return ort.InferenceSession(str(path), session_options(threads),
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime raises its own (pybind) exception types
        raise BundleError(f"{path}: onnxruntime cannot load this graph: {str(e).splitlines()[0][:300]}") from None
