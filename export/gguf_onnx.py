"""A Llama-family GGUF file (SmolLM2) -> one ONNX decode-step graph that runs the file's own quantized
blocks with onnxruntime's CPU kernels: no weight is quantized a second time.

The graph has the interface of heron's LM bundles (heron.export.onnx_lm): tokens (1, T) and
cached_key_i / cached_value_i (1, G, P, S) in; logits and the states out. T is dynamic, so one graph
prefills, decodes and verifies draft blocks. `last` (1,) int64 asks for the logits of the block's last
n positions only (1 when decoding, the draft length + 1 when verifying): the 49152-word head is a third
of a decoding step, and most of a prompt's prefill. `hidden` (1, n, D) is the head's input at those
positions (the final norm's output): a draft head on the target's own features reads it. `past_length` (1,) int64 says how many of the P
positions hold keys and values: the states are fixed-size buffers that GroupQueryAttention extends in
place when the caller binds each new state to its input's buffer (heron.runtime.lm does), so a step
copies no cache and allocates no new state arrays (shared_cache=False: states that grow by T per call).

How each GGUF block type maps onto MatMulNBits (com.microsoft; weight (N, K) in blocks of 32 along K):
  Q4_0  w = d * (q - 8)          4 bits, scale d, the default zero point 8: exact
  Q8_0  w = d * q  (q int8)      8 bits, q + 128 stored, the default zero point 128: exact
  Q4_1  w = d * q + m            4 bits, scale d, the default zero point 8, plus the block offsets'
        = d * (q - 8) + (m + 8d) share of x . w: sum_b (m_b + 8 d_b) * (x's sum over block b), a
                                 (K/32, N) fp32 MatMul on the block sums of x: exact up to fp32
                                 rounding of m + 8d (float zero points would be exact too, but
                                 onnxruntime runs them on a much slower kernel; an explicit zero
                                 point 0 costs its one-row int8 kernel 16-20%:
                                 scripts/bench_matmulnbits.py)
        int8 compute folds that term into the same MatMulNBits call instead (fold_offsets, OFFSET_LEVELS):
        x's block sums join x as extra columns and the offsets, rounded to two 4-bit levels (the second rounds
        the first's remainder: median error 1/185 of the block's own step on SmolLM2, 0.48 at worst;
        scripts/probe_offset_levels.py), join the weights as extra blocks. Per linear a block-sums MatMul and a
        Concat instead of four nodes (Reshape, ReduceSum, a MatMul reading 13 MB of fp32 offsets per step over all,
        Add); perplexity 0.03% above the exact term's (one level: +6%), 1.04-1.07x faster on machine Z
        (BENCHMARKS.md "Q4_1's block offsets").
Q, K and V are one MatMulNBits (N = (H + 2G) S), gate and up another; attention is
GroupQueryAttention with llama.cpp's interleaved RoPE (the file's Q/K rows stay as they are), norms are
(Skip)SimplifiedLayerNormalization. The tied embedding is the Q8_0 head's own int8 table, gathered
and scaled for the input tokens (one copy of it in memory).

The head of an int8 graph is ranked (HEAD_RANK, ranked_head; int8x2 on request): reading the 49152 x 576 Q8_0
table for every word is more than a quarter of a decoding step's bytes, so a 4-bit copy of it (Q4_0's rounding of
the file's rows, half the bytes) scores every word, and the 32 it ranks first are scored again in fp32 with the
file's own 8-bit rows, their exact values written over the copy's. The greedy word is then the 8-bit head's own whenever it ranks in the
copy's top 32: measured, not guaranteed (no useful bound proves it; on SmolLM2 the best word ranked 8th at worst
over 1,321 positions: scripts/probe_ranked_head.py), and the top words' scores are closer to the file's than the
int8-activation head's were; the other words keep the copy's scores (sampling's tail, perplexity +1.4%). A graph
without ranking (rank=0; int8x2 and fp32 compute by default) scores every word with the 8-bit head.

`compute` says how the quantized MatMuls run (MatMulNBits' accuracy_level):
  int8x2  (default) activations split into an int8 part and an int8 remainder, both through the int8
          kernel in one call (2 rows instead of 1: weights are read once; the int8 part read back through the
          kernel's own rounding, split_int8): ~1/127 of int8's rounding error, most of its speed
  int8    activations rounded to int8 per block of 32, as llama.cpp's own Q4_1 x Q8_1 dot products do:
          fastest; the rounding error meets only the centred weights d (q - 8) (the block offsets go
          through the exact fp32 term), so SmolLM2 keeps fp32's greedy answers on 7 of 8 chat prompts
          (perplexity +0.8%; machine B, whose int8 kernels round otherwise: 3 of 8)
  fp32    the dequantized file up to summation order (greedy equals the torch model's); onnxruntime's
          fp32 path for 4/8-bit blocks is slow on CPUs (a few tokens/s for SmolLM2 here)
Attention runs one of three ways (build_graph's `attention`, ATTENTIONS). onnxruntime's GroupQueryAttention runs a
one-token call on a path of its own that rounds differently from a block of tokens (SmolLM2, machine B: the int8
graph's logits up to 0.6 apart, int8x2's thousandths), while its int8 MatMulNBits kernels give a row the same bits in
a call of any size (on B; elsewhere the runtime checks at load: heron.runtime.lm.OnnxLM.one_row_exact).
  rows     (the default of graphs with shared state buffers, where the heads allow it and onnxruntime's CPU kernel
           takes an attention bias, onnxruntime >= 1.22; on other providers padded) each token's R = H / G query
           heads that share a key head become R rows of a G-head query (the projection's rows reordered so that
           this is a reshape, the output projection's inputs likewise: exact), so attention never sees one row and a
           single step computes what a block computes. GroupQueryAttention needs as many key rows as query rows:
           the token's key and value are repeated R times, the first T rows written at the call's positions and the
           (R - 1) T copies past the call's end (manifest "attention_spill" R - 1 per token, also in the graph's
           metadata; the runtime keeps the room and gives such a graph at most ROWS_CHUNK tokens per call, where the
           next call writes its own); an attention bias lets row j see the cache and the call's tokens up to its own
           (token j // R). RoPE is applied by RotaryEmbedding at each token's position. Each key head's keys are read
           once per step instead of once per query head: SmolLM2's one-token attention costs about what the one-row
           kernel costs (it is bound by reading the fp32 cache), and no row is padded (BENCHMARKS.md "Rows
           attention").
  padded   (int8, int8x2; ATTENTION_ROWS) a one-token call appends a copy of its query/key/value row to attention's
           input and drops that row's output: a single step then computes bit for bit what a verify block computes,
           at a fraction of the cost of a second token through every layer. The copy's key and value land one
           position past the call's end, where the next call writes its own (the runtime keeps room for it); no real
           row attends to it. The rows come from the graph's input ROWS_INPUT (1,) int64: the runtime feeds 2 for
           such exact steps, or 1 for one-row steps, attention's own one-row kernels (OnnxLM.exact_steps False, `heron
           lm generate --fast-steps`: faster plain decoding, most on long contexts, rounding of its own; speculation
           keeps exact steps).
  one-row  GroupQueryAttention as it is (pad_attention=False; graphs whose states grow by a copy per call).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heron.export.lm_bundle import write_manifest
from heron.runtime.gguf import q8_0_blocks
from heron.runtime.lm import (FEATURES_OUTPUT, HIDDEN_OUTPUT, PAST_INPUT, ROWS_INPUT, SPILL_PROP, lm_manifest,
                              state_names)
from heron.runtime.manifest import MANIFEST, FileEntry, sha256_bytes, sha256_path
from heron.runtime.sessions import MemoryFile

BLOCK = 32
MODEL_FILE = "model.int4.onnx"
# initializers of at least this many bytes go straight to a graph's sink when it has one (Graph.const)
SINK_BYTES = 1 << 16
# how the quantized MatMuls compute -> MatMulNBits' accuracy_level (0: fp32, 4: int8 activations per block)
COMPUTE = {"fp32": 0, "int8": 4, "int8x2": 4}
DEFAULT_COMPUTE = "int8x2"
# the fewest query rows GroupQueryAttention is given, by compute (module docstring): 2 makes one-token steps equal
# blocks on the int8 kernels; fp32's MatMulNBits path differs across row counts itself, so it gains nothing
ATTENTION_ROWS = {"int8": 2, "int8x2": 2}
# the words a graph's 8-bit head scores exactly after a 4-bit copy of it ranked every word (ranked_head), by compute:
# int8, the fast path, ranks (1.08x on B, perplexity +1.4%); int8x2 (fp32's answers and perplexity) and fp32 keep the
# 8-bit head on every word unless asked (rank=32: int8x2 1.08x, perplexity +1.6%; BENCHMARKS.md "A ranked head")
HEAD_RANK = {"int8": 32}
# the levels of 4-bit blocks that carry a Q4_1 matrix's block offsets inside its MatMulNBits call (fold_offsets), by
# compute: int8 folds them (two nodes fewer per linear, and no fp32 MatMul reading 13 MB per step; perplexity 0.03%
# above the exact term's), int8x2 and fp32 keep the exact fp32 term; one level would cost perplexity +6% on SmolLM2
OFFSET_LEVELS = {"int8": 2}


# how attention runs (build_graph's `attention`; the module docstring):
#   rows     each token's query heads that share a key head as rows of one head (no one-row kernel, no copied row);
#            the default of graphs with shared state buffers where onnxruntime's CPU GroupQueryAttention takes an
#            attention bias (ROWS_MIN_ORT) and the heads allow it (rows_fit)
#   padded   a one-token call's row copied so that attention sees ATTENTION_ROWS rows (the default before rows)
#   one-row  GroupQueryAttention as it is (pad_attention=False; grown states)
ATTENTIONS = ("rows", "padded", "one-row")
ROWS_MIN_ORT = (1, 22)  # onnxruntime's CPU GroupQueryAttention reads an attention bias from 1.22 (its PR #23944)


def rows_fit(n_heads: int, n_kv_heads: int, head_dim: int) -> bool:
    """Whether the rows layout applies: several query heads per key head, and heads in whole blocks of 32 (the
    output projection's columns move by heads)."""
    return n_heads > n_kv_heads and n_heads % n_kv_heads == 0 and head_dim % BLOCK == 0


def rows_supported() -> bool:
    """Whether this onnxruntime's CPU GroupQueryAttention takes an attention bias (ROWS_MIN_ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    parts = [int(p) for p in ort.__version__.split(".")[:2] if p.isdigit()]
    return len(parts) == 2 and tuple(parts) >= ROWS_MIN_ORT


def attention_for(provider: str) -> str | None:
    """build_graph's attention for a graph that runs on this onnxruntime provider: None (rows where it fits and runs)
    on the CPU provider, padded elsewhere (rows attention needs GroupQueryAttention's attention bias, which
    onnxruntime's CPU kernel reads; other providers' kernels differ in what they take)."""
    return None if provider == "CPUExecutionProvider" else "padded"


def attention_layout(compute: str, shared_cache: bool = True, pad_attention: bool = True, attention: str | None = None,
                     heads: tuple[int, int, int] | None = None) -> str:
    """build_graph's attention (ATTENTIONS): `attention` where given (rows needs shared state buffers: its spill is
    written past a call's end), else rows where it fits `heads` (n_heads, n_kv_heads, head_dim) and this onnxruntime
    runs it, else padded for the computes of ATTENTION_ROWS, else one-row; pad_attention=False or grown states:
    one-row."""
    if attention is not None:
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if attention != "one-row" and not shared_cache:
            raise ValueError(f"attention {attention!r} writes past a call's end: it needs shared state buffers")
        if attention == "rows" and heads is not None and not rows_fit(*heads):
            raise ValueError(f"attention 'rows' needs several query heads per key head and heads in blocks of "
                             f"{BLOCK}; this model has {heads}")
        return attention
    if not shared_cache or not pad_attention:
        return "one-row"
    if heads is not None and rows_fit(*heads) and rows_supported():
        return "rows"
    return "padded" if ATTENTION_ROWS.get(compute, 1) > 1 else "one-row"


def attention_rows(compute: str, shared_cache: bool = True, pad_attention: bool = True,
                   attention: str | None = None, heads: tuple[int, int, int] | None = None) -> int:
    """The query rows a graph of this compute pads attention to (padded: ATTENTION_ROWS; else 1). Only graphs
    with shared state buffers pad: the padded row's key and value are written past the call's end, which grown
    states would keep."""
    return padded_rows(compute, attention_layout(compute, shared_cache, pad_attention, attention, heads))


def padded_rows(compute: str, layout: str) -> int:
    """The query rows a graph of this compute and attention layout pads attention to (1: none)."""
    return ATTENTION_ROWS.get(compute, 1) if layout == "padded" else 1


def attention_spill(layout: str, heads: tuple[int, int, int]) -> int:
    """Positions a rows graph writes past a call's end per token of the call (heads: n_heads, n_kv_heads, head_dim):
    its key and value rows beyond the real ones (0 for other layouts)."""
    return heads[0] // heads[1] - 1 if layout == "rows" else 0


OPSET = 18
OPSET_MS = 1
QUANTIZED = ("Q4_0", "Q4_1", "Q8_0")


def head_rank(reader, cfg, compute: str, rank: int | None = None) -> int:
    """The words a graph's head scores exactly after a 4-bit copy of it ranked every word (ranked_head; 0: the head
    scores every word itself): `rank`, None: HEAD_RANK's for the compute. Only a Q8_0 head is ranked; a
    vocabulary no larger than the rank needs no ranking."""
    rank = HEAD_RANK.get(compute, 0) if rank is None else rank
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"head rank must be an integer >= 0, got {rank!r}")
    head = reader.tensors["token_embd.weight" if cfg.tie_embeddings else "output.weight"]
    return rank if head.type_name == "Q8_0" and rank < cfg.vocab_size else 0


def offset_levels(compute: str, levels: int | None = None) -> int:
    """The levels of 4-bit blocks that carry Q4_1's block offsets (fold_offsets): `levels` when given, else
    OFFSET_LEVELS' default for `compute`; 0: the exact fp32 term."""
    if levels is None:
        return OFFSET_LEVELS.get(compute, 0)
    if not isinstance(levels, int) or isinstance(levels, bool) or not 0 <= levels <= 4:
        raise ValueError(f"offset levels must be an integer in 0..4, got {levels!r}")
    return levels


def default_feature_layers(n_layers: int) -> tuple[int, ...]:
    """The middle layers whose residual streams a bundle's graph returns (FEATURES_OUTPUT) for a draft head that
    fuses them: one low and one middle layer (EAGLE-3 reads low, middle and high; the high one is `hidden`):
    SmolLM2's 30 layers -> (2, 14)."""
    last = max(0, n_layers - 2)
    return tuple(sorted({min(last, max(0, round(n_layers / 15))), min(last, max(0, n_layers // 2 - 1))}))


@dataclass
class Blocks:
    """One GGUF matrix (N rows of K) in MatMulNBits' layout, or fp32 when the file stores it unquantized."""

    n: int
    k: int
    bits: int = 0  # 0: fp32 `dense`
    packed: np.ndarray | None = None  # (N, K/32, 32 * bits / 8) uint8
    scales: np.ndarray | None = None  # (N, K/32) fp32
    offsets: np.ndarray | None = None  # (N, K/32) fp32, Q4_1: w = scale * (q - 8) + offset (its min + 8 scale)
    dense: np.ndarray | None = None  # (N, K) fp32

    def rows(self, other: "Blocks") -> "Blocks":
        """These rows followed by `other`'s (a fused Q|K|V or gate|up weight)."""
        if (self.k, self.bits, self.offsets is None) != (other.k, other.bits, other.offsets is None):
            raise ValueError("fused matrices must share K and block type")
        cat = lambda a, b: None if a is None else np.concatenate([a, b])  # noqa: E731
        return Blocks(self.n + other.n, self.k, self.bits, cat(self.packed, other.packed),
                      cat(self.scales, other.scales), cat(self.offsets, other.offsets), cat(self.dense, other.dense))

    def take_rows(self, order: np.ndarray) -> "Blocks":
        """The rows in `order` (a permutation of 0..N-1): the same blocks, reordered (exact)."""
        pick = lambda a: None if a is None else a[order]  # noqa: E731
        return Blocks(self.n, self.k, self.bits, pick(self.packed), pick(self.scales), pick(self.offsets),
                      pick(self.dense))

    def take_columns(self, order: np.ndarray) -> "Blocks":
        """The columns (inputs) in `order`, a permutation of 0..K-1 that moves whole blocks of 32 (exact)."""
        blocks = order.reshape(-1, BLOCK)
        if self.bits and not (np.all(blocks[:, 0] % BLOCK == 0) and np.all(np.diff(blocks, axis=1) == 1)):
            raise ValueError("a quantized matrix's columns move in whole blocks of 32")
        b = blocks[:, 0] // BLOCK
        pick = lambda a: None if a is None else a[:, b]  # noqa: E731
        return Blocks(self.n, self.k, self.bits, pick(self.packed), pick(self.scales), pick(self.offsets),
                      None if self.dense is None else self.dense[:, order])


def pack4(q: np.ndarray) -> np.ndarray:
    """4-bit values (..., 32) in element order -> MatMulNBits' bytes (..., 16): element 2i low nibble, 2i + 1 high."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def round_q4_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (N, B, 32) -> (q (N, B, 32) uint8 in 0..15, d (N, B) fp32) with x ~ d (q - 8): Q4_0's rounding (d = the
    block's signed extreme / -8, so the extreme maps to -8 exactly)."""
    d = (np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1) / -8.0)[..., 0].astype(np.float32)
    inv = np.divide(1.0, d, out=np.zeros(d.shape, x.dtype), where=d != 0)
    return np.clip(np.round(x * inv[..., None]) + 8, 0, 15).astype(np.uint8), d


def read_blocks(reader, name: str) -> Blocks:
    """A GGUF 2-D tensor as Blocks, its quantized bytes repacked (not re-quantized)."""
    info = reader.tensors[name]
    n, k = info.shape
    kind = info.type_name
    if kind not in QUANTIZED:
        return Blocks(n, k, dense=np.ascontiguousarray(reader.tensor(name), np.float32))
    if kind == "Q8_0":
        return Blocks(n, k, 8, *q8_0_blocks(reader.raw(name), n, k))
    raw = np.asarray(reader.raw(name)).reshape(n, k // BLOCK, -1)
    d = raw[..., :2].copy().view("<f2")[..., 0].astype(np.float32)  # (N, K/32)
    qs = raw[..., 4:] if kind == "Q4_1" else raw[..., 2:]  # (N, K/32, 16): element j low nibble, j + 16 high
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (N, K/32, 32) in element order
    packed = pack4(q)
    if kind == "Q4_0":  # w = d (q - 8): the default zero point
        return Blocks(n, k, 4, packed, d)
    m = raw[..., 2:4].copy().view("<f2")[..., 0].astype(np.float32)  # Q4_1: w = d q + m = d (q - 8) + (m + 8 d)
    return Blocks(n, k, 4, packed, d, m + 8 * d)


def dequantized(b: Blocks) -> np.ndarray:
    """(N, K) fp32, what the graph computes with (tests compare against it)."""
    if b.bits == 0:
        return b.dense
    if b.bits == 8:
        q = b.packed.astype(np.float32) - 128
    else:
        q = np.stack([b.packed & 0x0F, b.packed >> 4], axis=-1).reshape(b.n, b.k // BLOCK, BLOCK).astype(np.float32)
        q = q - 8
    w = q * b.scales[..., None] + (0 if b.offsets is None else b.offsets[..., None])
    return w.reshape(b.n, b.k)


@dataclass
class Graph:
    """Nodes and initializers under construction; names are made unique by a counter."""

    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0
    shared: dict = field(default_factory=dict)  # initializers that many nodes read (one copy in the graph)
    # where the large initializers go as they are made, serialized (a heron.runtime.sessions.MemoryFile), so that the
    # weights never sit in memory as protobuf messages: the ModelProto written after them completes the file
    sink: object | None = None

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper
        name = self.name(hint)
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        if self.sink is None or tensor.ByteSize() < SINK_BYTES:
            self.inits.append(tensor)
            return name
        # a ModelProto field `graph` (7) holding one GraphProto field `initializer` (5): protobuf merges a message
        # field that appears several times, so the model written at the end gets every such initializer in its graph
        data = tensor.SerializeToString()
        inner = _key(5) + _varint(len(data))
        self.sink.write(_key(7) + _varint(len(inner) + len(data)) + inner)
        self.sink.write(data)
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", hint: str | None = None,
           outputs: list[str] | None = None, **attrs) -> list[str]:
        from onnx import helper
        outs = outputs or [self.name(hint or op_type.lower()) for _ in range(n_out)]  # "" = an unused output
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type),
                                           domain=domain or None, **attrs))
        return outs

    def one(self, *args, **kw) -> str:
        return self.op(*args, **kw)[0]

    def model(self, name: str, inputs: list, outputs: list, opsets: dict[str, int]):
        """-> the onnx.ModelProto of the graph, its initializers moved in one at a time (helper.make_graph and
        make_model copy them whole: three copies of a model's weights at once) and dropped from `inits`."""
        from onnx import helper
        model = helper.make_model(helper.make_graph(self.nodes, name, inputs, outputs),
                                  opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                                  producer_name="heron")
        for i, tensor in enumerate(self.inits):
            model.graph.initializer.append(tensor)  # a copy: the original goes at once
            self.inits[i] = None
        self.inits = []
        return model


def _key(field_number: int) -> bytes:
    """A protobuf key for a length-delimited field (wire type 2); heron's field numbers are < 16: one byte."""
    return bytes([field_number << 3 | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _blocks(g: Graph, x: str, k: int, memo: dict) -> str:
    """x (1, T, K) -> (1, T, K/32, 32), once per input."""
    if ("blocks", x) not in memo:
        memo[("blocks", x)] = g.one("Reshape", [x, g.const(np.array([0, 0, k // BLOCK, BLOCK], np.int64), "shape")])
    return memo[("blocks", x)]


def split_int8(g: Graph, blocks: str, k: int) -> str:
    """x as blocks (1, T, K/32, 32) -> (2, T, K): [x, x - x_hi], x_hi = x rounded to int8 per block of 32 as
    MatMulNBits at accuracy level 4 rounds it (absmax / 127), read back through that kernel itself: each block one row
    of a call with a 32 x 32 identity in 4-bit blocks (x_hi within ~1e-3 of a step of the rounding's own values).
    The linear's MatMulNBits then rounds row 1 to x_hi's integers and row 2, the remainder, with 1/127 of x's step,
    so W x_hi + W (x - x_hi) carries ~1/127 of one pass's rounding error. Three nodes (and a Reshape) instead of the
    ten that computed x_hi elementwise before session 38 (int8x2 decodes 1.06-1.07x faster on machine Z:
    BENCHMARKS.md "The int8 split through the kernel itself")."""
    if "identity32" not in g.shared:  # one 32-column block per row: q - 8 = 1 on the diagonal, 0 elsewhere; scale 1
        q = np.full((BLOCK, 1, BLOCK), 8, np.uint8)
        q[np.arange(BLOCK), 0, np.arange(BLOCK)] = 9
        g.shared["identity32"] = (g.const(pack4(q), "identity32.q"), g.const(np.ones(BLOCK, np.float32), "identity32.s"))
    q, scales = g.shared["identity32"]
    hi = g.one("MatMulNBits", [blocks, q, scales], domain="com.microsoft", K=BLOCK, N=BLOCK, bits=4, block_size=BLOCK,
               accuracy_level=COMPUTE["int8"])  # (1, T, K/32, 32)
    both = g.one("Concat", [blocks, g.one("Sub", [blocks, hi])], axis=0)  # (2, T, K/32, 32)
    return g.one("Reshape", [both, g.const(np.array([0, 0, k], np.int64), "shape")])


def offset_blocks(w: Blocks, levels: int) -> Blocks:
    """A Q4_1 matrix's block offsets as `levels` extra 4-bit blocks per row group (fold_offsets): the offsets (N, K/32)
    zero-padded to a multiple of 32 columns, rounded Q4_0's way (scale = the block's signed extreme / -8), each
    further level rounding what the levels before it left over: after two levels the error is at most 1/8 of the
    first level's step (1/32 where no value clips at +8)."""
    nb = w.k // BLOCK
    width = -(-nb // BLOCK) * BLOCK
    rest = np.zeros((w.n, width), np.float64)
    rest[:, :nb] = w.offsets
    packed, scales = [], []
    for _ in range(levels):
        r = rest.reshape(w.n, width // BLOCK, BLOCK)
        q, d = round_q4_0(r)
        rest = (r - (q.astype(np.float64) - 8) * d[..., None]).reshape(w.n, width)  # what the graph's blocks miss
        packed.append(pack4(q))
        scales.append(d)
    return Blocks(w.n, width * levels, 4, np.concatenate(packed, 1), np.concatenate(scales, 1))


def fold_offsets(g: Graph, x: str, w: Blocks, memo: dict, levels: int) -> tuple[str, Blocks]:
    """x (1, T, K), a Q4_1 w -> (x' (1, T, K'), w' without offsets) with x' w'^T = x (d (q - 8))^T + the offsets'
    share: x' is x followed by `levels` copies of x's block sums (zero-padded to a block) and w' is w's own blocks
    followed by the offsets' (offset_blocks), so one MatMulNBits call computes both (no fp32 MatMul per linear)."""
    if ("fold", x) not in memo:
        nb = w.k // BLOCK
        width = -(-nb // BLOCK) * BLOCK
        if ("block_sums", w.k) not in g.shared:  # x @ ones: the block sums, zero-padded (one table per K, kept hot)
            ones = np.zeros((w.k, width), np.float32)
            ones[np.arange(w.k), np.arange(w.k) // BLOCK] = 1
            g.shared[("block_sums", w.k)] = g.const(ones, "block_sums")
        sums = g.one("MatMul", [x, g.shared[("block_sums", w.k)]])
        memo[("fold", x)] = g.one("Concat", [x] + [sums] * levels, axis=-1)
    extra = offset_blocks(w, levels)
    return memo[("fold", x)], Blocks(w.n, w.k + extra.k, 4, np.concatenate([w.packed, extra.packed], 1),
                                     np.concatenate([w.scales, extra.scales], 1))


def linear(g: Graph, x: str, w: Blocks, hint: str, compute: str, memo: dict, packed: str | None = None) -> str:
    """x (1, T, K) -> (1, T, N). `memo` caches per-input work (blocks, block sums, the int8 split) across the
    linears that read the same x, and memo["levels"] > 0 folds a Q4_1 matrix's offsets into its call (fold_offsets;
    else the exact fp32 term); `packed`: an initializer already holding w's blocks (the tied embedding)."""
    if w.bits == 0:
        return g.one("MatMul", [x, g.const(w.dense.T, hint + ".wT")], hint=hint)
    if w.offsets is not None and memo.get("levels"):
        x, w = fold_offsets(g, x, w, memo, memo["levels"])
    ins = [packed or g.const(w.packed, hint + ".q"), g.const(w.scales.reshape(-1), hint + ".scales")]
    attrs = dict(domain="com.microsoft", K=w.k, N=w.n, bits=w.bits, block_size=BLOCK,
                 accuracy_level=COMPUTE[compute])
    if compute == "int8x2":
        if ("split", x) not in memo:
            memo[("split", x)] = split_int8(g, _blocks(g, x, w.k, memo), w.k)
        y2 = g.one("MatMulNBits", [memo[("split", x)], *ins], hint=hint, **attrs)  # (2, T, N)
        y = g.one("Add", g.op("Split", [y2], n_out=2, axis=0, num_outputs=2))  # cheaper than a ReduceSum here
    else:
        y = g.one("MatMulNBits", [x, *ins], hint=hint, **attrs)
    if w.offsets is None:
        return y
    if ("sums", x) not in memo:  # (1, T, K/32, 32) -> (1, T, K/32)
        memo[("sums", x)] = g.one("ReduceSum", [_blocks(g, x, w.k, memo), g.const(np.array([-1], np.int64), "axes")],
                                  keepdims=0)
    share = g.one("MatMul", [memo[("sums", x)], g.const(w.offsets.T.copy(), hint + ".offsetsT")])  # (1, T, N)
    return g.one("Add", [y, share], hint=hint)


RANK_CHUNK = 4096  # head rows rounded at a time (rank_blocks): SmolLM2's whole head in fp32 is 113 MB, with temporaries


def rank_blocks(w: Blocks) -> Blocks:
    """An 8-bit head's rows in 4-bit blocks (Q4_0's rounding: scale = the block's signed extreme / -8), used only
    to rank the words; the top ones are scored again with the 8-bit rows themselves (ranked_head). Rounded
    RANK_CHUNK rows at a time (the same values), so building the graph never holds the head in fp32."""
    q = np.empty((w.n, w.k // BLOCK, BLOCK), np.uint8)
    d = np.empty((w.n, w.k // BLOCK), np.float32)
    for i in range(0, w.n, RANK_CHUNK):
        j = min(i + RANK_CHUNK, w.n)
        part = Blocks(j - i, w.k, w.bits, w.packed[i:j], w.scales[i:j], None if w.offsets is None else w.offsets[i:j])
        q[i:j], d[i:j] = round_q4_0(dequantized(part).reshape(j - i, w.k // BLOCK, BLOCK))
    return Blocks(w.n, w.k, 4, pack4(q), d)


def ranked_head(g: Graph, h: str, w: Blocks, packed: str, scales: str, k: int) -> str:
    """h (1, n, D) -> logits (1, n, V): every word scored by a 4-bit copy of the 8-bit head `w` (half its bytes), the
    k best of them scored again in fp32 with the 8-bit rows themselves (`packed` (V, D/32, 32) and `scales` (V, D/32):
    the graph's initializers holding w's blocks), their values written over the copy's."""
    from onnx import TensorProto
    rough = linear(g, h, rank_blocks(w), "head_rank", "int8", {})
    _, top = g.op("TopK", [rough, g.const(np.array([k], np.int64), "k")], n_out=2, axis=-1, largest=1, sorted=0)
    rows = g.one("Sub", [g.one("Cast", [g.one("Gather", [packed, top])], to=TensorProto.FLOAT),
                         g.const(np.array(128, np.float32), "zp8")])  # (1, n, k, D/32, 32)
    row_scales = g.one("Unsqueeze", [g.one("Gather", [scales, top]),
                                     g.const(np.array([-1], np.int64), "axes")])  # (1, n, k, D/32, 1)
    rows = g.one("Reshape", [g.one("Mul", [rows, row_scales]), g.const(np.array([0, 0, 0, w.k], np.int64), "shape")])
    exact = g.one("MatMul", [rows, g.one("Unsqueeze", [h, g.const(np.array([-1], np.int64), "axes")])])  # (1,n,k,1)
    exact = g.one("Squeeze", [exact, g.const(np.array([-1], np.int64), "axes")])
    return g.one("ScatterElements", [rough, top, exact], axis=-1)


def rows_attention(g: Graph, qkv: str, heads: tuple[int, int, int], past_k: str, past_v: str, new_k: str, new_v: str,
                   prep: tuple, hint: str) -> str:
    """Attention with each token's query heads that share a key head as rows of one head (the module docstring):
    qkv (1, T, (H + 2G) S) with its query in rows order (build_graph's q_order) -> (1, T, H S) in the same order.
    The G-head query rows (1, T R, G S) and the keys get llama.cpp's interleaved RoPE at their tokens' positions, the
    keys and values are repeated R times (rows past the first T are written past the call's end and masked), and
    the bias lets row j (token j // R) see the cache and the call's tokens up to its own."""
    H, G, S = heads
    R = H // G
    pos_q, pos_k, seqlens_k, total, bias, cos, sin = prep
    q, k, v = g.op("Split", [qkv, g.const(np.array([H * S, G * S, G * S], np.int64), "split")], n_out=3, axis=-1)
    q = g.one("Reshape", [q, g.const(np.array([1, -1, G * S], np.int64), "shape")])  # (1, T R, G S)
    q = g.one("RotaryEmbedding", [q, pos_q, cos, sin], domain="com.microsoft", interleaved=1, num_heads=G)
    k = g.one("RotaryEmbedding", [k, pos_k, cos, sin], domain="com.microsoft", interleaved=1, num_heads=G)
    keys, values = g.one("Concat", [k] * R, axis=1), g.one("Concat", [v] * R, axis=1)  # (1, T R, G S)
    attn = g.op("GroupQueryAttention", [q, keys, values, past_k, past_v, seqlens_k, total, "", "", "", bias], n_out=3,
                domain="com.microsoft", outputs=[g.name(hint + "attn"), new_k, new_v], num_heads=G, kv_num_heads=G,
                do_rotary=0)[0]
    return g.one("Reshape", [attn, g.const(np.array([1, -1, H * S], np.int64), "shape")])  # (1, T, H S)


def build_graph(path: str | Path, compute: str = DEFAULT_COMPUTE, shared_cache: bool = True,
                feature_layers: tuple[int, ...] = (), pad_attention: bool = True, rank: int | None = None,
                offsets: int | None = None, attention: str | None = None, sink=None):
    """-> (onnx.ModelProto, LMConfig, GGUFInfo, reader) for the GGUF file at `path`. sink: where the large
    initializers go as they are made (Graph.sink; the model returned lacks them and completes the sink's file). shared_cache: the states
    are fixed-size buffers holding `past_length` valid positions, which GroupQueryAttention extends in place
    when the caller binds each new state to its input's buffer (heron.runtime.lm does); False: the states
    grow by T every call (the interface of the torch-exported bundles, a copy of the whole cache per step).
    feature_layers: also output FEATURES_OUTPUT (1, n, k D): the residual stream after each of these k layers
    (0-based, before the last) at the last n positions, what a draft head reading several depths is trained on
    (scripts/draft_head_data.py --features); the runtime's bundles have no such output. pad_attention: attention
    sees at least attention_rows(compute, shared_cache) query rows (False: one-token calls run attention's
    one-row path, as graphs before this option did). rank: the words the 8-bit head scores exactly after a 4-bit
    copy of it ranked every word (ranked_head; head_rank(): HEAD_RANK, 32 for int8 compute; 0: the head scores every
    word). offsets: the levels of 4-bit blocks that carry Q4_1's block offsets inside each MatMulNBits call
    (fold_offsets; offset_levels(): OFFSET_LEVELS, 2 for int8 compute; 0: the exact fp32 term). attention: how
    attention runs (ATTENTIONS; None: attention_layout's choice, rows where it fits and runs)."""
    from onnx import TensorProto, helper

    from heron.models.lm.gguf_file import config_from_gguf, info, open_reader

    if compute not in COMPUTE:
        raise ValueError(f"compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
    reader = open_reader(path)
    cfg = config_from_gguf(reader)
    meta = info(reader)
    if meta.architecture != "llama":  # Qwen2 keeps HF's half-split RoPE rows and has Q/K/V biases
        raise ValueError(f"{path}: the quantized ONNX export reads Llama GGUF files; this one is {meta.architecture}")
    H, G, S, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
    if any(not 0 <= j < cfg.n_layers - 1 for j in feature_layers) or len(set(feature_layers)) != len(feature_layers):
        raise ValueError(f"feature_layers must be distinct layers in 0..{cfg.n_layers - 2}, got {feature_layers}")
    g = Graph(sink=sink)
    ins, outs = state_names(cfg.n_layers)
    levels = offset_levels(compute, offsets)

    # positions: P (cached) and T (new) from the shapes; GroupQueryAttention wants int32 lengths
    if shared_cache:  # valid positions of the state buffers (their length is their capacity)
        past_len = PAST_INPUT
    else:
        past_len = g.one("Shape", [ins[0]], start=2, end=3)  # (1,) int64
    new_len = g.one("Shape", ["tokens"], start=1, end=2)
    layout = attention_layout(compute, shared_cache, pad_attention, attention, (H, G, S))
    attn_rows = padded_rows(compute, layout)
    R = H // G if layout == "rows" else 1  # key rows attention writes per token (rows: the token's repeated R times)
    written = new_len if R == 1 else g.one("Mul", [new_len, g.const(np.array([R], np.int64), "rows")])
    total64 = g.one("Add", [past_len, written])  # (1,) int64: the positions attention's keys reach
    total = g.one("Cast", [total64], to=TensorProto.INT32)
    seqlens_k = g.one("Sub", [total, g.const(np.array([1], np.int32), "one")])  # (B,) = total - 1
    total_scalar = g.one("Squeeze", [total, g.const(np.array([0], np.int64), "axes")])
    assert attn_rows in (1, 2), attn_rows  # a one-token block's row is copied once
    pad_len = None
    if attn_rows > 1:  # T = 1: a copy of the block's row joins attention's input (module docstring)
        # ROWS_INPUT (1,) int64: the runtime feeds attn_rows for steps that equal blocks, 1 for one-row steps
        pad_len = g.one("Max", [g.one("Sub", [ROWS_INPUT, new_len]), g.const(np.array([0], np.int64), "zero_i64")])
        padded_total = g.one("Add", [total, g.one("Cast", [pad_len], to=TensorProto.INT32)])
        seqlens_k = g.one("Sub", [padded_total, g.const(np.array([1], np.int32), "one")])
        total_scalar = g.one("Squeeze", [padded_total, g.const(np.array([0], np.int64), "axes")])
        start0, seq_axis = g.const(np.array([0], np.int64), "start0"), g.const(np.array([1], np.int64), "seq_axis")
        zeros = g.const(np.zeros(4, np.int64), "zeros4")  # Pad's (begin 3 axes, end 3 axes): pad_len rows at the end
        row_pads = g.one("Concat", [zeros, pad_len, g.const(np.zeros(1, np.int64), "zero1")], axis=0)
    q_order = None
    if layout == "rows":  # positions and the bias of rows attention (rows_attention), once per call
        # the query heads sharing key head k are k R .. k R + R - 1 (GroupQueryAttention's grouping); a token's query
        # comes out of the projection as R rows of G heads, row r holding head k R + r for every k
        q_order = np.concatenate([np.arange((k * R + r) * S, (k * R + r + 1) * S) for r in range(R) for k in range(G)])
        c64 = lambda v, hint: g.const(np.array(v, np.int64), hint)  # noqa: E731
        new_scalar = g.one("Squeeze", [new_len, c64([0], "axes")])
        pos = g.one("Add", [g.one("Range", [c64(0, "zero"), new_scalar, c64(1, "one")]),
                            g.one("Squeeze", [past_len, c64([0], "axes")])])  # (T,) the tokens' positions
        pos_k = g.one("Unsqueeze", [pos, c64([0], "axes")])  # (1, T)
        rows_shape = g.one("Concat", [new_len, c64([R], "rows")], axis=0)
        pos_q = g.one("Reshape", [g.one("Expand", [g.one("Unsqueeze", [pos, c64([-1], "axes")]), rows_shape]),
                                  c64([1, -1], "shape")])  # (1, T R): each token's position, once per row
        cols = g.one("Range", [c64(0, "zero"), g.one("Squeeze", [total64, c64([0], "axes")]), c64(1, "one")])
        masked = g.one("Greater", [cols, g.one("Unsqueeze", [pos_q, c64([-1], "axes")])])  # (1, T R, P + T R)
        bias = g.one("Unsqueeze", [g.one("Where", [masked, g.const(np.array(-np.inf, np.float32), "ninf"),
                                                   g.const(np.array(0, np.float32), "zero_f")]), c64([0], "axes")])
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, S, 2, dtype=np.float64) / S)
    angles = np.outer(np.arange(cfg.max_seq_len + attn_rows - 1, dtype=np.float64), inv)  # (max_len + padding, S/2)
    cos, sin = g.const(np.cos(angles).astype(np.float32), "cos"), g.const(np.sin(angles).astype(np.float32), "sin")

    # embedding: the head's int8 blocks gathered for the tokens, then scaled
    emb = read_blocks(reader, "token_embd.weight")
    head = emb if cfg.tie_embeddings else read_blocks(reader, "output.weight")
    ids = g.one("Reshape", ["tokens", g.const(np.array([-1], np.int64), "shape")])  # (T,)
    if emb.bits == 8:
        emb_q = g.const(emb.packed, "token_embd.q")  # (V, D/32, 32) uint8, shared with the head when tied
        emb_scales = g.const(emb.scales, "token_embd.scales")  # (V, D/32), shared with a ranked head when tied
        rows = g.one("Sub", [g.one("Cast", [g.one("Gather", [emb_q, ids])], to=TensorProto.FLOAT),
                             g.const(np.array(128, np.float32), "zp8")])  # (T, D/32, 32)
        scales = g.one("Unsqueeze", [g.one("Gather", [emb_scales, ids]),
                                     g.const(np.array([-1], np.int64), "axes")])  # (T, D/32, 1)
        x = g.one("Reshape", [g.one("Mul", [rows, scales]), g.const(np.array([1, -1, D], np.int64), "shape")])
    else:
        x = g.one("Unsqueeze", [g.one("Gather", [g.const(dequantized(emb), "token_embd"), ids]),
                                g.const(np.array([0], np.int64), "axes")])
    eps = float(cfg.norm_eps)
    delta = None
    streams = {}  # layer j -> the residual stream after it (feature_layers)
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        gamma = g.const(reader.tensor(p + "attn_norm.weight").astype(np.float32), p + "attn_norm")
        if delta is None:
            h = g.one("SimplifiedLayerNormalization", [x, gamma], axis=-1, epsilon=eps, stash_type=1)
        else:  # residual add and norm in one: outputs (normed, mean, inv_std, x + delta)
            h, _, _, x = g.op("SkipSimplifiedLayerNormalization", [x, delta, gamma], domain="com.microsoft",
                              outputs=[g.name(p + "h"), "", "", g.name(p + "x")], epsilon=eps)
            if i - 1 in feature_layers:
                streams[i - 1] = x
        memo: dict = {"levels": levels}
        qkv_w = read_blocks(reader, p + "attn_q.weight").rows(read_blocks(reader, p + "attn_k.weight")).rows(
            read_blocks(reader, p + "attn_v.weight"))
        if q_order is not None:  # the query's rows come out of the projection as rows attention reads them
            qkv_w = qkv_w.take_rows(np.concatenate([q_order, np.arange(H * S, (H + 2 * G) * S)]))
        qkv = linear(g, h, qkv_w, p + "qkv", compute, memo)  # (1, T, (H + 2G) S)
        o_w = read_blocks(reader, p + "attn_output.weight")
        if q_order is not None:
            attn = rows_attention(g, qkv, (H, G, S), ins[2 * i], ins[2 * i + 1], outs[2 * i], outs[2 * i + 1],
                                  (pos_q, pos_k, seqlens_k, total_scalar, bias, cos, sin), p)
            o_w = o_w.take_columns(q_order)  # its inputs in the rows' order
        else:
            if pad_len is not None:  # (1, max(T, rows), (H + 2G) S): a one-token call's row copied (Pad's edge mode)
                qkv = g.one("Pad", [qkv, row_pads], mode="edge")
            attn, _, _ = g.op("GroupQueryAttention", [qkv, "", "", ins[2 * i], ins[2 * i + 1], seqlens_k, total_scalar,
                                                      cos, sin], n_out=3, domain="com.microsoft",
                              outputs=[g.name(p + "attn"), outs[2 * i], outs[2 * i + 1]],
                              num_heads=H, kv_num_heads=G, do_rotary=1, rotary_interleaved=1)
            if pad_len is not None:  # the block's own T rows
                attn = g.one("Slice", [attn, start0, new_len, seq_axis])
        delta = linear(g, attn, o_w, p + "o", compute, {"levels": levels})
        gamma = g.const(reader.tensor(p + "ffn_norm.weight").astype(np.float32), p + "ffn_norm")
        h, _, _, x = g.op("SkipSimplifiedLayerNormalization", [x, delta, gamma], domain="com.microsoft",
                          outputs=[g.name(p + "h"), "", "", g.name(p + "x")], epsilon=eps)
        gate_up = linear(g, h, read_blocks(reader, p + "ffn_gate.weight").rows(read_blocks(reader, p + "ffn_up.weight")),
                         p + "gate_up", compute, {"levels": levels})
        gate, up = g.op("Split", [gate_up], n_out=2, axis=-1, num_outputs=2)
        act = g.one("Mul", [g.one("Mul", [gate, g.one("Sigmoid", [gate])]), up])  # SwiGLU
        delta = linear(g, act, read_blocks(reader, p + "ffn_down.weight"), p + "down", compute, {"levels": levels})
    gamma = g.const(reader.tensor("output_norm.weight").astype(np.float32), "output_norm")
    h = g.op("SkipSimplifiedLayerNormalization", [x, delta, gamma], n_out=1, domain="com.microsoft", epsilon=eps)[0]
    # the head (a third of a decoding step) only for the positions the caller asked for: the last n
    last_rows = g.one("Neg", ["last"])
    end, axis = g.const(np.array([1 << 62], np.int64), "end"), g.const(np.array([1], np.int64), "axis")
    h = g.one("Slice", [h, last_rows, end, axis])  # (1, n, D)
    tied = emb_q if head is emb and emb.bits == 8 else None  # the head reads the embedding's int8 table
    rank = head_rank(reader, cfg, compute, rank)
    if rank:  # the tied table's blocks and scales in memory once
        table = (emb_q, emb_scales) if tied else (g.const(head.packed, "head.q"), g.const(head.scales, "head.scales"))
        g.op("Identity", [ranked_head(g, h, head, *table, rank)], outputs=["logits"])
    else:
        g.op("Identity", [linear(g, h, head, "head", compute, {}, packed=tied)], outputs=["logits"])
    g.op("Identity", [h], outputs=[HIDDEN_OUTPUT])  # the head's input: what a draft head on the target reads
    if feature_layers:
        parts = [g.one("Slice", [streams[j], last_rows, end, axis]) for j in feature_layers]
        g.op("Concat", parts, outputs=[FEATURES_OUTPUT], axis=-1)  # (1, n, k D)

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "T"])]
    inputs += [helper.make_tensor_value_info(n, f32, [1, G, "P", S]) for n in ins]
    if shared_cache:
        inputs.append(helper.make_tensor_value_info(PAST_INPUT, TensorProto.INT64, [1]))
    inputs.append(helper.make_tensor_value_info("last", TensorProto.INT64, [1]))  # logits for the last n positions
    if attn_rows > 1:
        inputs.append(helper.make_tensor_value_info(ROWS_INPUT, TensorProto.INT64, [1]))  # query rows attention sees
    outputs = [helper.make_tensor_value_info("logits", f32, [1, "n", cfg.vocab_size])]
    outputs += [helper.make_tensor_value_info(n, f32, [1, G, "P_T", S]) for n in outs]
    outputs.append(helper.make_tensor_value_info(HIDDEN_OUTPUT, f32, [1, "n", D]))
    if feature_layers:
        outputs.append(helper.make_tensor_value_info(FEATURES_OUTPUT, f32, [1, "n", len(feature_layers) * D]))
    model = g.model("heron_lm_gguf", inputs, outputs, {"": OPSET, "com.microsoft": OPSET_MS})
    model.ir_version = 10
    # the graph's own word on what it writes past a call's end (the runtime checks the manifest against it)
    helper.set_model_props(model, {SPILL_PROP: str(attention_spill(layout, (H, G, S)))})
    return model, cfg, meta, reader


def _bundle_fields(path: str | Path, compute: str, name: str | None, shared_cache: bool = True,
                   pad_attention: bool = True, rank: int | None = None, offsets: int | None = None,
                   attention: str | None = None, sink=None):
    """-> (graph, config, tokenizer, manifest fields) of a GGUF file's bundle (its graph returns the streams of
    default_feature_layers beside `hidden`; sink: build_graph's)."""
    from heron.models.lm.gguf_file import config_from_gguf, open_reader
    from heron.runtime.tokenizer import Tokenizer, tokenizer_from_gguf

    layers = default_feature_layers(config_from_gguf(open_reader(path)).n_layers)
    model, cfg, meta, reader = build_graph(path, compute, shared_cache, feature_layers=layers, pad_attention=pad_attention,
                                           rank=rank, offsets=offsets, attention=attention, sink=sink)
    heads = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
    layout = attention_layout(compute, shared_cache, pad_attention, attention, heads)
    tok = tokenizer_from_gguf(reader)
    types = sorted({t.type_name for t in reader.tensors.values() if len(t.shape) == 2})
    source = {"gguf": Path(path).name, "gguf_sha256": sha256_path(Path(path)), "tensor_types": types, "compute": compute,
              "feature_layers": list(layers),
              "attention_rows": attention_rows(compute, shared_cache, pad_attention, attention, heads),
              "attention": layout, "attention_spill": attention_spill(layout, heads),
              "head_rank": head_rank(reader, cfg, compute, rank),
              "offset_levels": offset_levels(compute, offsets) if "Q4_1" in types else 0,
              "note": "the file's quantized blocks, repacked for MatMulNBits (not quantized again; offset_levels > 0: "
                      "Q4_1's block offsets carried by that many 4-bit levels)"}
    fields = dict(name=name or meta.name or Path(path).stem, eot_id=meta.eos_id, source=source,
                  end_ids=sorted(Tokenizer(tok, meta.eos_id, meta.end_ids).end_ids),
                  chat_template=meta.chat_template, default_weights="int4")
    return model, cfg, tok, fields


def export_gguf_bundle(path: str | Path, out: str | Path, compute: str = DEFAULT_COMPUTE, name: str | None = None,
                       shared_cache: bool = True, pad_attention: bool = True, rank: int | None = None,
                       offsets: int | None = None, attention: str | None = None) -> Path:
    """A self-describing runtime folder from a GGUF file: model.int4.onnx (the file's own blocks),
    tokenizer.json (from the metadata), manifest.json with the chat template and end-of-turn ids.
    shared_cache=False: the grown-state interface instead (benchmarks compare the two); pad_attention=False: a
    graph whose one-token calls run attention's one-row path (build_graph; benchmarks compare it); rank: the words the
    8-bit head scores exactly (build_graph; 0: every word, benchmarks compare it); offsets: the levels of 4-bit blocks
    carrying Q4_1's offsets (build_graph; 0: the exact fp32 term, benchmarks compare it); attention: build_graph's
    (ATTENTIONS; None: rows where it fits and runs)."""
    import onnx

    model, cfg, tok, fields = _bundle_fields(path, compute, name, shared_cache, pad_attention, rank, offsets, attention)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, "manifest.sha256", "model.onnx", "model.int8.onnx", MODEL_FILE, "tokenizer.json"):
        (out / stale).unlink(missing_ok=True)
    onnx.save_model(model, str(out / MODEL_FILE))
    tok.save(str(out / "tokenizer.json"))
    return write_manifest(out, [MODEL_FILE, "tokenizer.json"], cfg, **fields)


def bundle_in_memory(path: str | Path, compute: str = DEFAULT_COMPUTE, name: str | None = None,
                     shared_cache: bool = True, rank: int | None = None, attention: str | None = None,
                     memory_file: bool = False):
    """The bundle export_gguf_bundle writes, kept in memory: -> (graph, LMManifest, tokenizer), the graph as bytes
    or, with memory_file where the system has them, as a heron.runtime.sessions.MemoryFile its initializers were
    streamed into as they were made (far less memory at load; OnnxLM.from_memory takes either and closes the file).
    `heron.load_lm("smollm2")` runs it with onnxruntime (heron.runtime.lm.OnnxLM.from_memory): the fast
    path with nothing written to disk, a few seconds at load (shared_cache=False: states that grow and fork,
    the default draft of a GGUF target; rank, attention: build_graph's)."""
    sink = MemoryFile() if memory_file and MemoryFile.supported() else None
    try:
        model, cfg, tok, fields = _bundle_fields(path, compute, name, shared_cache, rank=rank, attention=attention,
                                                 sink=sink)
        if sink is None:
            graph = model.SerializeToString()
            entry = FileEntry(MODEL_FILE, sha256_bytes(graph), len(graph))
        else:
            sink.write(model.SerializeToString())
            graph, entry = sink, FileEntry(MODEL_FILE, sink.sha256(), sink.size)
    except BaseException:
        if sink is not None:
            sink.close()
        raise
    text = tok.to_str().encode("utf-8")
    manifest = lm_manifest(cfg, files={MODEL_FILE: entry,
                                       "tokenizer.json": FileEntry("tokenizer.json", sha256_bytes(text), len(text))},
                           **fields)
    return graph, manifest, tok
