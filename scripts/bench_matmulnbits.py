"""One onnxruntime MatMulNBits (4-bit weights, blocks of 32, int8 compute) on this CPU, with the default zero
point, an explicit 4-bit zero-point input, and fp32 zero points (which would hold Q4_1's block minimums
exactly), for one and two activation rows: why heron's Q4_1 graphs use the default zero point 8 and an fp32
offsets term (export/gguf_onnx.py). Microseconds per call, best of 7 x 3000 calls (300 with fp32 zero points).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_matmulnbits.py
"""
from __future__ import annotations

import time

import numpy as np

SHAPES = [(576, 3072), (1536, 576)]  # SmolLM2's gate|up and down projections (K, N)


def session(K: int, N: int, M: int, zero_point: str, rng):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from heron.export.gguf_onnx import Graph

    g = Graph()
    ins = ["x", g.const(rng.integers(0, 255, (N, K // 32, 16), dtype=np.uint8), "q"),
           g.const(rng.random(N * K // 32).astype(np.float32), "s")]
    if zero_point == "4-bit":
        ins.append(g.const(np.zeros((N, (K // 32 + 1) // 2), np.uint8), "zp"))
    elif zero_point == "fp32":
        ins.append(g.const(rng.random(N * K // 32).astype(np.float32) * 15, "zp"))
    g.op("MatMulNBits", ins, domain="com.microsoft", K=K, N=N, bits=4, block_size=32, accuracy_level=4, outputs=["y"])
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, 1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def best_us(s, feed: dict, n: int = 3000) -> float:
    for _ in range(100):
        s.run(None, feed)
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            s.run(None, feed)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> int:
    from heron.runtime.metrics import machine

    print(machine())
    rng = np.random.default_rng(0)
    for K, N in SHAPES:
        for M in (1, 2):
            x = {"x": rng.standard_normal((M, 1, K)).astype(np.float32)}
            t = {zp: best_us(session(K, N, M, zp, rng), x, 300 if zp == "fp32" else 3000) for zp in ("4-bit", "default", "fp32")}
            print(f"K={K} N={N} rows={M}: explicit 4-bit zero point {t['4-bit']:.1f} us, default {t['default']:.1f} us, "
                  f"fp32 zero points {t['fp32']:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
