"""The one ONNX int8 quantizer for every heron export (KWS encoder and LM step graphs).

Dynamic quantization: int8 weights, activations quantized at run time (onnxruntime's U8S8 kernels;
see heron.runtime.sessions for the exact-int8 option on x86 without VNNI). Weights that are gathered
rather than multiplied (an MoE layer's stacked experts picked per token, an embedding table) become int8
too: stored int8 with one scale per row, gathered as int8, then widened and scaled (only what was picked)."""
from __future__ import annotations

from pathlib import Path


def quantize_int8(src: str | Path, dst: str | Path, *, keep_fp32_inputs: tuple[str, ...] = (),
                  per_channel: bool = False, op_types: tuple[str, ...] | None = None,
                  gathered: bool = False) -> Path:
    """Write `dst`, an int8-weight copy of the ONNX graph `src`.

    keep_fp32_inputs: nodes reading an initializer whose name starts with one of these stay fp32
    (the KWS front end's DFT and mel matmuls: 8-bit spectra would cost accuracy and save ~0.6 MB);
    per_channel: one scale per output channel (the LM's wide matmuls); op_types: only these ops;
    gathered: also the stacked weights that GatherND/Gather pick from (quantize_gathered)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = []
    if keep_fp32_inputs:
        graph = onnx.load(str(src)).graph
        keep = [n.name for n in graph.node if any(i.startswith(keep_fp32_inputs) for i in n.input)]
    if gathered:  # a tied head reads the embedding through a Transpose, which the quantizer cannot see past
        model = onnx.load(str(src))
        if fold_transposed_weights(model):
            src = Path(dst).with_suffix(".folded.onnx")
            onnx.save(model, str(src))
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=keep, op_types_to_quantize=list(op_types) if op_types else None)
    finally:
        if gathered and Path(src).name.endswith(".folded.onnx"):
            Path(src).unlink(missing_ok=True)
    if gathered:
        quantize_gathered(dst, dst)
    return Path(dst)


def fold_transposed_weights(model) -> int:
    """MatMul(x, Transpose(W)) with W an initializer -> MatMul(x, W^T) with W^T an initializer of its own (the
    tied head: W stays for the embedding's Gather). Returns how many were folded."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers = _readers(g)
    done = 0
    for node in list(g.node):
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        users = readers.get(node.output[0], [])
        if not users or any(u.op_type != "MatMul" or i != 1 for u, i in users):
            continue
        perm = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"), None)
        w = numpy_helper.to_array(inits[node.input[0]])
        g.initializer.append(numpy_helper.from_array(w.transpose(perm).copy(), node.output[0] + "_folded"))
        for u, _ in users:
            u.input[1] = node.output[0] + "_folded"
        g.node.remove(node)
        done += 1
    return done


def _readers(graph) -> dict[str, list]:
    """value name -> [(node, input index)] of the nodes that read it."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    return readers


GATHER_OPS = ("GatherND", "Gather")
MIN_GATHERED_ELEMENTS = 1 << 14  # smaller stacks stay fp32 (little size to save)


def quantize_gathered(src: str | Path, dst: str | Path) -> int:
    """Rewrite every fp32 initializer of rank >= 2 that only Gather/GatherND nodes read (as their data) as an
    int8 initializer plus a per-row scale (symmetric, the last axis shares a scale): each gather then picks
    int8 rows and their scales, Cast widens them, Mul rescales. Returns how many were rewritten."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    readers = _readers(g)
    done = 0
    for init in list(g.initializer):
        uses = readers.get(init.name, [])
        if (init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2 or not uses
                or any(n.op_type not in GATHER_OPS or i != 0 for n, i in uses)
                or any(n.op_type == "Gather" and next((a.i for a in n.attribute if a.name == "axis"), 0) != 0
                       for n, _ in uses)):
            continue
        w = numpy_helper.to_array(init)
        if w.size < MIN_GATHERED_ELEMENTS:
            continue
        scale = np.maximum(np.abs(w).max(axis=-1, keepdims=True), 1e-12) / 127.0  # (..., 1)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        g.initializer.remove(init)
        g.initializer.extend([numpy_helper.from_array(q, init.name + "_int8"),
                              numpy_helper.from_array(scale.astype(np.float32), init.name + "_scale")])
        for node, _ in uses:  # gather the int8 rows and their scales alike, then widen and rescale
            out = node.output[0]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            node.input[0] = init.name + "_int8"
            node.output[0] = out + "_int8"
            extra = [helper.make_node(node.op_type, [init.name + "_scale", node.input[1]], [out + "_scale"],
                                      name=node.name + "_scale", **attrs),
                     helper.make_node("Cast", [out + "_int8"], [out + "_wide"], name=node.name + "_wide",
                                      to=onnx.TensorProto.FLOAT),
                     helper.make_node("Mul", [out + "_wide", out + "_scale"], [out], name=node.name + "_rescale")]
            at = list(g.node).index(node) + 1
            for k, n in enumerate(extra):
                g.node.insert(at + k, n)
        done += 1
    onnx.save(model, str(dst))
    return done
