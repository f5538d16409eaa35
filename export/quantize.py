"""The one ONNX int8 quantizer for every heron export (KWS encoder and LM step graphs).

Dynamic quantization: int8 weights, activations quantized at run time (onnxruntime's U8S8 kernels;
see heron.runtime.sessions for the exact-int8 option on x86 without VNNI)."""
from __future__ import annotations

from pathlib import Path


def quantize_int8(src: str | Path, dst: str | Path, *, keep_fp32_inputs: tuple[str, ...] = (),
                  per_channel: bool = False, op_types: tuple[str, ...] | None = None) -> Path:
    """Write `dst`, an int8-weight copy of the ONNX graph `src`.

    keep_fp32_inputs: nodes reading an initializer whose name starts with one of these stay fp32
    (the KWS front end's DFT and mel matmuls: 8-bit spectra would cost accuracy and save ~0.6 MB);
    per_channel: one scale per output channel (the LM's wide matmuls); op_types: only these ops."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = []
    if keep_fp32_inputs:
        graph = onnx.load(str(src)).graph
        keep = [n.name for n in graph.node if any(i.startswith(keep_fp32_inputs) for i in n.input)]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     nodes_to_exclude=keep, op_types_to_quantize=list(op_types) if op_types else None)
    return Path(dst)
