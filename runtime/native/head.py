"""A draft head (heron.runtime.draft_head's architecture) run by heron's native library (heron_lm.c's hl_head_run):
its int8 blocks (or the same re-rounded to 4 bits) in the library's layout, run in the native target's own OpenMP
team. numpy and ctypes only."""
from __future__ import annotations

import ctypes

import numpy as np

from heron.runtime.native import BLOCK, MAX_THREADS, TYPES, HlHead, HlLinear, address, group_rows

HEAD_BITS = (8, 4)  # a native draft head's inner linears: as stored (int8 blocks), or re-rounded to 4 bits


def int8_linear(packed: np.ndarray, scales: np.ndarray, keep: list) -> HlLinear:
    """An int8 linear in blocks of 32 (packed (n, k/32, 32) uint8 = value + 128, as onnxruntime's 8-bit MatMulNBits
    and heron's Q8 rows store them; scales n x k/32 float32) -> the library's Q8 linear (fp16 scales: every scale must
    be zero or in fp16's normal range, else ValueError). keep: the list that keeps its arrays alive."""
    packed, s32 = _int8_blocks(packed, scales)
    n, nb, _ = packed.shape
    arrays = group_rows(packed ^ np.uint8(0x80), s32.astype(np.float16), None)  # value + 128 -> int8
    keep.extend(x for x in arrays if x is not None)
    return HlLinear(address(arrays[0]), address(arrays[1]), None, TYPES["Q8_0"], n, nb * BLOCK)


def _int8_blocks(packed, scales) -> tuple[np.ndarray, np.ndarray]:
    """int8_linear's arguments checked -> (packed (n, nb, 32) uint8, scales (n, nb) float32)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 3 or packed.shape[2] != BLOCK:
        raise ValueError(f"int8 blocks must be (n, k/32, 32) uint8, got {packed.dtype} {packed.shape}")
    n, nb, _ = packed.shape
    s32 = np.asarray(scales, np.float32).reshape(-1)
    if s32.size != n * nb:
        raise ValueError(f"{n} x {nb} blocks need {n * nb} scales, got {s32.size}")
    a = np.abs(s32)
    if not np.isfinite(s32).all() or ((a > 0) & ((a < np.finfo(np.float16).tiny) | (a > 65504))).any():
        raise ValueError("a block scale outside fp16's normal range")
    return packed, s32.reshape(n, nb)


def round_q4_1(w: np.ndarray, refits: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights in blocks of 32, (n, nb, 32) float32 -> Q4_1 blocks as split_blocks gives them: (nibbles (n, nb, 16),
    element j in byte j's low nibble and element 16 + j in its high one; scales d, offsets m fp16 (n, nb)), w ~ d q + m
    with q in 0..15. From the block's range, then `refits` least-squares fits of d and m to the rounded q (each fit
    lowers the block's squared error for its q); q rounded last with the fp16 d and m the library reads."""
    w = np.asarray(w, np.float32)
    if w.ndim != 3 or w.shape[2] != BLOCK or not np.isfinite(w).all():
        raise ValueError(f"weights must be finite blocks of {BLOCK}, (n, nb, {BLOCK}); got {w.shape}")

    def rounded(d, m):
        return np.clip(np.rint((w - m[..., None]) / np.where(d > 0, d, 1)[..., None]), 0, 15)

    lo, hi = w.min(-1), w.max(-1)
    d, m = (hi - lo) / 15, lo
    for _ in range(refits):
        q = rounded(d, m)
        qc = q - q.mean(-1, keepdims=True)
        var = (qc * qc).sum(-1)
        fit = np.divide((qc * w).sum(-1), var, out=np.zeros_like(var), where=var > 0)
        keep = fit > 0  # a block whose q came out constant keeps its range's scale
        d = np.where(keep, fit, d)
        m = np.where(keep, w.mean(-1) - d * q.mean(-1), m)
    d16, m16 = d.astype(np.float16), m.astype(np.float16)
    q = rounded(d16.astype(np.float32), m16.astype(np.float32)).astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4), d16, m16


def int8_as_q4_linear(packed: np.ndarray, scales: np.ndarray, keep: list) -> HlLinear:
    """int8_linear's blocks re-rounded to 4 bits (round_q4_1): the library's Q4_1 linear, about half the bytes
    (20 a block of 32 against 34). keep: the list that keeps its arrays alive."""
    packed, s32 = _int8_blocks(packed, scales)
    n, nb, _ = packed.shape
    arrays = group_rows(*round_q4_1((packed.astype(np.int16) - 128).astype(np.float32) * s32[..., None]))
    keep.extend(arrays)
    return HlLinear(address(arrays[0]), address(arrays[1]), address(arrays[2]), TYPES["Q4_1"], n, nb * BLOCK)


class NativeHead:
    """A draft head (heron.runtime.draft_head's architecture) run by the native library, in the target's own OpenMP
    team: no onnxruntime session between the target's steps, two threads reading its weights.

    linears: name -> (packed (n, k/32, 32) uint8, scales) for "proj" and "blocks.{i}.gate|up|down"; words: the
    head's output rows, the same form (n_words, dim); vectors: "emb_norm", "blocks.{i}.norm", "bias", "oov" float32;
    row_of_word (vocab,): each target word's row among the head's words (n_words or more: none). lib: the target's
    loaded library (NativeLM._lib); threads: its team's size. bits: 8, every linear as given; 4, the input projection
    and the blocks re-rounded to 4-bit blocks (int8_as_q4_linear), the words kept in 8 bits."""

    def __init__(self, lib: ctypes.CDLL, linears: dict, words: tuple, vectors: dict, row_of_word: np.ndarray,
                 n_blocks: int, eps: float, threads: int = 1, bits: int = 8):
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
        if bits not in HEAD_BITS or isinstance(bits, bool):
            raise ValueError(f"bits must be one of {HEAD_BITS}, got {bits!r}")
        self._lib, self._keep = lib, []
        keep = self._keep
        out = int8_linear(*words, keep)
        N, D = out.n, out.k
        inner = int8_linear if bits == 8 else int8_as_q4_linear
        proj = inner(*linears["proj"], keep)
        blocks = [inner(*linears[f"blocks.{i}.{k}"], keep) for i in range(n_blocks) for k in ("gate", "up", "down")]
        F = blocks[0].n if blocks else D
        if (proj.n, proj.k) != (D, 2 * D) or any((b.n, b.k) != ((D, F) if j % 3 == 2 else (F, D))
                                                    for j, b in enumerate(blocks)) or F % BLOCK:
            raise ValueError(f"the head's linears do not fit a head of width {D}")

        def vector(name, n):
            a = np.ascontiguousarray(vectors[name], np.float32).reshape(-1)
            if a.shape != (n,):
                raise ValueError(f"the head's {name} has {a.size} values, expected {n}")
            keep.append(a)
            return a

        norms = [vector(f"blocks.{i}.norm", D) for i in range(n_blocks)]
        rows = np.asarray(row_of_word, np.int64).reshape(-1)
        rows = np.where((rows >= 0) & (rows < N), rows, -1).astype(np.int32)
        keep.append(rows)
        self._blocks = (HlLinear * max(1, len(blocks)))(*blocks)
        self._norms = (ctypes.c_void_p * max(1, n_blocks))(*[address(a) for a in norms])
        self._h = HlHead(D, F, n_blocks, N, len(rows), float(eps), proj, out, self._blocks, self._norms,
                        address(vector("emb_norm", D)), address(vector("bias", N)), address(vector("oov", D)),
                        address(rows), threads)
        self.dim, self.n_words, self.vocab_size, self.threads, self.bits = D, N, len(rows), threads, bits
        self._scratch = np.zeros(lib.hl_head_scratch_floats(ctypes.byref(self._h)), np.float32)

    def _run(self, hidden, token: int, g: int, rows, logits, feature, prices=None, probs=None) -> int:
        h = np.ascontiguousarray(hidden, np.float32).reshape(-1)
        if h.shape != (self.dim,):
            raise ValueError(f"the head reads a hidden state of {self.dim} floats, got {h.size}")
        rc = self._lib.hl_head_run(ctypes.byref(self._h), address(h), int(token), g,
                                   None if rows is None else address(rows), None if logits is None else address(logits),
                                   None if feature is None else address(feature), address(self._scratch),
                                   None if prices is None else address(prices),
                                   None if probs is None else address(probs))
        if rc < 0:
            raise RuntimeError(f"heron's native decoder refused the head's call (code {rc})")
        return rc

    def step(self, hidden, token: int) -> tuple[np.ndarray, np.ndarray]:
        """hidden (D,), the word that followed it (a target id) -> logits (N,), the head's feature (D,)."""
        logits, feature = np.empty(self.n_words, np.float32), np.empty(self.dim, np.float32)
        self._run(hidden, token, 1, None, logits, feature)
        return logits, feature

    def greedy(self, hidden, token: int, g: int, prices=None, probs: np.ndarray | None = None) -> np.ndarray:
        """Up to g chained steps, each from the last one's first choice, in one call -> the rows chosen (int32).
        prices (g,): a window of k words costs prices[k - 1] past a plain step; the window stops where the head's
        own probabilities say a longer one would not pay (decoding.confidence_window's rule, in the library).
        probs: a float32 array of g that receives the probability of each step's first choice, for the steps run
        (the window's words and, where it stopped short of g, the one that ended it); the rest is left as it was."""
        if not 1 <= g <= 1 << 10:
            raise ValueError(f"a window of 1 to 1024 words, got {g}")
        rows = np.empty(g, np.int32)
        if prices is not None:
            prices = np.ascontiguousarray(prices, np.float32).reshape(-1)
            if prices.shape != (g,) or not np.all(np.isfinite(prices)):
                raise ValueError(f"prices must be {g} finite numbers, one per window length")
        if probs is not None and (probs.dtype != np.float32 or probs.shape != (g,) or not probs.flags.c_contiguous):
            raise ValueError(f"probs must be a contiguous float32 array of {g}")
        n = self._run(hidden, token, g, rows, None, None, prices, probs)
        return rows[:n]
