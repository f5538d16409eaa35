"""heron's native decoder: a Llama-family GGUF file decoded by a small C library (heron_lm.c), no onnxruntime.

The library runs the file's own Q4_1 / Q4_0 / Q8_0 blocks (split at load into value, scale and offset arrays: the
same bytes, never quantized again; the file's pages are let go) with activations rounded per block of 32 to int16,
not int8: greedy decoding keeps fp32's answers at the memory traffic of 4-bit weights. It is compiled once on the machine that runs it (`python -m heron.runtime.native build`,
which `make setup` calls where a C compiler exists) with that CPU's instruction set; a file name carries a
digest of the source and the flags, so a stale build is never loaded.

    lm = NativeLM("SmolLM2-135M-Instruct.Q4_1.gguf")
    logits = lm.forward([1, 2, 3], last=1)   # (1, V); the cache grows by 3
    lm.trim(1)                                # speculation rewinds

The library also samples (Sampler: heron.runtime.decoding.probs and draw for any engine's logits, where it is built)
and runs a draft head beside the decoder (heron.runtime.native.head).

The backend protocol is heron.runtime.lm.LMBackend's; the KV cache is numpy arrays this object owns (fp16: keys and
values rounded once as they are cached, half fp32's bytes). numpy and
ctypes only: no torch, no onnxruntime.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from heron.runtime.gguf import GGUFFile

SOURCE = Path(__file__).resolve().with_name("heron_lm.c")
BUILD_DIR = Path(__file__).resolve().with_name("_build")
ABI = 13  # heron_lm.c's HL_ABI: the struct layouts and signatures below
# -march=native: the CPU that builds it runs it (AVX2 / AVX-512 kernels as it has them); OpenMP for threads
CFLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-fopenmp")
LAYER_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
TYPES = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # ggml types the library's linears read -> its kinds (nibbles, int8)
BLOCK = 32
CHUNK = 64  # tokens per library call in a long prompt (bounds the scratch)
MAX_THREADS = 64
ACTIVATIONS = ("int16", "int8")  # how a layer's linears round their inputs per block of 32 (heron_lm.c's act8)
W_Q4A8 = 5  # heron_lm.c's kind for 4-bit blocks read with int8 activations (group_rows_a8's layout)
GROUP = 8  # rows interleaved in heron_lm.c's layout: one vector lane each
UNIT = 2 * GROUP  # rows whose two groups' blocks lie side by side (one stream for the kernels)


class NativeError(RuntimeError):
    """The native library cannot be built or loaded here: says why and what to do."""


class HlLinear(ctypes.Structure):
    """heron_lm.c's hl_linear: one linear's blocks in the library's layout (group_rows / group_rows_a8) and its kind."""
    _fields_ = [("qs", ctypes.c_void_p), ("d", ctypes.c_void_p), ("m", ctypes.c_void_p), ("type", ctypes.c_int32),
                ("n", ctypes.c_int32), ("k", ctypes.c_int32)]


class _Model(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int32), ("dim", ctypes.c_int32), ("n_heads", ctypes.c_int32),
                ("n_kv_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32), ("ffn_dim", ctypes.c_int32),
                ("vocab", ctypes.c_int32), ("eps", ctypes.c_float), ("emb", HlLinear), ("head", HlLinear), ("out_norm", ctypes.c_void_p), ("layers", ctypes.POINTER(HlLinear)),
                ("norms", ctypes.POINTER(ctypes.c_void_p)), ("rope_cos", ctypes.c_void_p),
                ("rope_sin", ctypes.c_void_p), ("rope_len", ctypes.c_int32), ("threads", ctypes.c_int32),
                ("act8", ctypes.c_int32)]


class HlHead(ctypes.Structure):
    """heron_lm.c's hl_head: a draft head's linears and vectors (heron.runtime.native.head.NativeHead builds it)."""
    _fields_ = [("dim", ctypes.c_int32), ("ffn", ctypes.c_int32), ("n_blocks", ctypes.c_int32),
                ("n_words", ctypes.c_int32), ("vocab", ctypes.c_int32), ("eps", ctypes.c_float), ("proj", HlLinear),
                ("words", HlLinear), ("blocks", ctypes.POINTER(HlLinear)), ("norms", ctypes.POINTER(ctypes.c_void_p)),
                ("emb_norm", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("oov", ctypes.c_void_p),
                ("row_of_word", ctypes.c_void_p), ("threads", ctypes.c_int32)]


def split_blocks(raw: np.ndarray, type_name: str, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A tensor's ggml blocks -> (values, fp16 scales, fp16 offsets or None), row by row: Q4_1's and Q4_0's nibbles
    (n, k/32, 16) with offsets (Q4_0's -8 d, exact in fp16), Q8_0's int8 values (n, k/32, 32). group_rows
    interleaves them as the library reads them."""
    nb = k // BLOCK
    size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[type_name]
    b = np.asarray(raw, np.uint8).reshape(n, nb, size)
    d = np.ascontiguousarray(b[:, :, 0:2]).view(np.float16).reshape(n, nb)
    if type_name == "Q8_0":
        return np.ascontiguousarray(b[:, :, 2:]), d, None
    if type_name == "Q4_1":
        return np.ascontiguousarray(b[:, :, 4:]), d, np.ascontiguousarray(b[:, :, 2:4]).view(np.float16).reshape(n, nb)
    return np.ascontiguousarray(b[:, :, 2:]), d, (d.astype(np.float32) * -8).astype(np.float16)


def group_rows(values: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray | None]:
    """split_blocks' row-by-row arrays -> the library's layout: rows in groups of GROUP, a block's GROUP rows side by
    side, one row per vector lane; groups in units of two (UNIT rows, the last padded with zero rows), a unit's two
    groups side by side pair by pair (a pair's 16 rows: one 512-bit vector). Nibbles (units, nb, 8 j, 2 groups, 8 rows,
    2): row r's bytes 2j, 2j + 1 (elements 2j + u low, 16 + 2j + u high); int8 (units, nb, 16 i, 2 groups, 8 rows,
    2): row r's elements 2i, 2i + 1; scales and offsets (units, nb, 2 groups, 8 rows)."""
    values, sides, u = _padded_units(values, d, m)
    nb, width = values.shape[1:]
    v = values.reshape(u, 2, GROUP, nb, width // 2, 2).transpose(0, 3, 4, 1, 2, 5)  # (u, nb, pairs, 2, rows, 2)
    return (np.ascontiguousarray(v), *sides)


def _padded_units(values: np.ndarray, d: np.ndarray, m: np.ndarray | None):
    """Rows padded with zero rows to whole units of UNIT -> (values, (scales, offsets) in their layout (units, nb,
    2 groups, 8 rows), units)."""
    n, nb, width = values.shape
    pad = -n % UNIT
    if pad:
        values = np.concatenate([values, np.zeros((pad, nb, width), values.dtype)])
        d = np.concatenate([d, np.zeros((pad, nb), d.dtype)])
        m = None if m is None else np.concatenate([m, np.zeros((pad, nb), m.dtype)])
    u = (n + pad) // UNIT
    side = lambda a: None if a is None else np.ascontiguousarray(a.reshape(u, 2, GROUP, nb).transpose(0, 3, 1, 2))
    return values, (side(d), side(m)), u


def group_rows_a8(values: np.ndarray, d: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-bit blocks (split_blocks' nibbles, (n, nb, 16)) -> heron_lm.c's W_Q4A8 layout, read with int8 activations:
    groups of GROUP rows one after the other (padded to whole units of UNIT rows, as group_rows'), each group's
    blocks in turn, a block in 4 chunks v, row r's 4 bytes the row's block bytes 4v .. 4v + 3 as the file stores
    them: (groups, nb, 4 v, 8 rows, 4); scales and offsets as group_rows'."""
    if values.shape[2] != 16 or m is None:
        raise ValueError("int8 activations read 4-bit blocks only")
    values, sides, u = _padded_units(values, d, m)
    v = values.reshape(2 * u, GROUP, values.shape[1], 4, 4).transpose(0, 2, 3, 1, 4)  # (groups, nb, v, rows, 4)
    return (np.ascontiguousarray(v), *sides)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def library_path() -> Path:
    """Where the library for this source and these flags lives (built or not)."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(CFLAGS).encode())
    return BUILD_DIR / f"libheron_lm-{h.hexdigest()[:12]}.so"


def available() -> bool:
    """Whether this source's library is built here (load() would find it)."""
    return library_path().is_file()


def build(out: Path | None = None, cflags: Sequence[str] = CFLAGS) -> Path:
    """Compile heron_lm.c for this CPU -> the library's path (an existing build is kept). out: the file to write
    (default: library_path(), inside the installed package). cflags: the compiler's flags (tests build the AVX2-only
    and portable variants with another -march and an out of their own)."""
    cc = _compiler()
    if cc is None:
        raise NativeError("no C compiler (cc, gcc or clang) on PATH: heron's native decoder cannot be built here; "
                          "the onnxruntime engine needs none")
    out = Path(out) if out is not None else library_path()
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # compiled beside, renamed: never half a library
        part = Path(tmp) / out.name
        run = subprocess.run([cc, *cflags, str(SOURCE), "-o", str(part), "-lm"], capture_output=True, text=True)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise NativeError(f"{cc} could not build heron's native decoder: {last}")
        os.replace(part, out)
    if out.parent == BUILD_DIR:  # builds of older sources or flags are never loaded again
        for old in BUILD_DIR.glob("libheron_lm-*.so"):
            if old != out:
                old.unlink(missing_ok=True)
    return out


_LIB: ctypes.CDLL | None = None


def load(path: Path | None = None) -> ctypes.CDLL:
    """The built library (path: default library_path()); NativeError with the build command if it is missing."""
    global _LIB
    if path is None and _LIB is not None:
        return _LIB
    p = Path(path) if path is not None else library_path()
    if not p.is_file():
        raise NativeError(f"heron's native decoder is not built for this source ({p.name}): run "
                          f"`{Path(sys.executable).name} -m heron.runtime.native build` (or `make setup`)")
    lib = ctypes.CDLL(str(p))
    lib.hl_abi.restype = ctypes.c_int
    if lib.hl_abi() != ABI:
        raise NativeError(f"{p} speaks ABI {lib.hl_abi()}, this module {ABI}: rebuild it")
    lib.hl_simd.restype = ctypes.c_int
    lib.hl_scratch_floats.restype = ctypes.c_size_t
    lib.hl_scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int]
    lib.hl_forward.restype = ctypes.c_int
    vp = ctypes.c_void_p
    lib.hl_forward.argtypes = [ctypes.POINTER(_Model), vp, ctypes.c_int, ctypes.c_int, vp, vp, ctypes.c_int, vp, vp,
                               ctypes.c_int, vp, vp]
    lib.hl_head_scratch_floats.restype = ctypes.c_size_t
    lib.hl_head_scratch_floats.argtypes = [ctypes.POINTER(HlHead)]
    lib.hl_head_run.restype = ctypes.c_int
    lib.hl_head_run.argtypes = [ctypes.POINTER(HlHead), vp, ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, vp, vp]
    lib.hl_probs.restype = ctypes.c_int
    lib.hl_probs.argtypes = [vp, ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_float, vp, vp,
                             vp, vp]
    lib.hl_draw.restype = ctypes.c_int
    lib.hl_draw.argtypes = [vp, ctypes.c_int, ctypes.c_double]
    lib.hl_certain.restype = ctypes.c_int
    lib.hl_certain.argtypes = [vp, ctypes.c_int]
    lib.hl_linear_apply.restype = ctypes.c_int
    lib.hl_linear_apply.argtypes = [ctypes.POINTER(HlLinear), ctypes.c_int, vp, vp, ctypes.c_int]
    if path is None:
        _LIB = lib
    return lib


def address(a: np.ndarray) -> int:
    """An array's data address for the library (its owner keeps the array alive while the library reads it)."""
    return a.ctypes.data


def linear_apply(lib: ctypes.CDLL, linear: HlLinear, x: np.ndarray) -> np.ndarray:
    """x (T, k) through one of a model's linears alone, its input rounded as a forward rounds it (int8 for W_Q4A8,
    else int16), on one thread: (T, n). For tests and probes."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != linear.k or not len(x):
        raise ValueError(f"x must be (T >= 1, {linear.k}), got {x.shape}")
    y = np.zeros((len(x), linear.n), np.float32)
    if lib.hl_linear_apply(ctypes.byref(linear), len(x), address(x), address(y), int(linear.type == W_Q4A8)):
        raise ValueError("hl_linear_apply refused its arguments")
    return y


class NativeLM:
    """A Llama-family GGUF file run by the native library: heron.runtime.lm.LMBackend's protocol.

    path: the .gguf file. threads: the OpenMP team that runs each call (linears split by rows, attention by heads;
    any count computes the same bits). max_len: the longest sequence (default: the
    file's context length). library: a built library to load (default: this source's build)."""

    name = "native"
    branchable = False  # snapshots are rewind points into the one cache
    exact_steps = True  # a step computes what the same token computes inside a block, bit for bit
    has_hidden = True  # hidden_at: the final hidden states of the last call's positions (a draft head's input)
    # what verifying one more draft token costs, in plain steps, by the library's kernels (hl_simd: portable C, AVX2,
    # AVX2 + VNNI on 256-bit vectors, AVX-512 + VNNI), past VERIFY_TABLES' windows and for the draft head's windows:
    # SmolLM2's calls of 5 to 9 tokens add ~0.25-0.35 of a step per token with AVX-512's kernels, ~0.6-0.8 with AVX2's
    # (its steps read memory ahead of the kernels since session 44: a step got faster than the arithmetic of a block),
    # on machine Z; the portable C is bound by arithmetic
    VERIFY_COSTS = {0: 0.9, 1: 0.6, 2: 0.3, 3: 0.3}
    # ... and k = 1, 2, ... 8 draft tokens together (decoding.best_window's table: the kernels compute tokens in tiles
    # of up to 9 with AVX-512, 4 with VNNI on AVX-512VL's 256-bit vectors, 2 on AVX2), by (hl_simd, one thread or
    # more); past the table each token costs VERIFY_COSTS'. SmolLM2 on machine Z, calls after a 300-token context, the
    # mean of two runs (they differed by up to 0.2, AVX2's by up to 0.4): `OMP_NUM_THREADS=2 python
    # scripts/bench_smollm2_spec.py --bundles smollm2 --threads 2 --consistency-only [--march x86-64-v3]` prints a
    # T-token call's price, T = 1..9 (the table + 1). Levels 1 and 3: session 44; level 2: session 43's, measured
    # when Z's build had 256-bit tiles and no prefetch
    VERIFY_TABLES = {(3, 1): (0.16, 0.39, 0.85, 1.13, 1.49, 1.87, 2.26, 2.58),
                     (3, 2): (0.12, 0.3, 0.71, 0.96, 1.18, 1.5, 1.8, 2.04),
                     (2, 1): (0.15, 0.34, 0.63, 1.3, 1.64, 2.0, 2.32, 2.82),
                     (2, 2): (0.11, 0.2, 0.36, 0.84, 1.09, 1.36, 1.59, 2.04),
                     (1, 1): (0.44, 1.13, 1.72, 2.38, 2.94, 3.59, 4.38, 5.04),
                     (1, 2): (0.38, 0.94, 1.38, 1.94, 2.4, 2.97, 3.77, 4.11)}
    # int8 activations (activations="int8") price their calls by the same tables: on machine S their own (isolated
    # calls' prices, lower on AVX2: `OMP_NUM_THREADS=2 python scripts/bench_smollm2_spec.py --bundles smollm2 --threads 2
    # --consistency-only --activations int8 --march x86-64-v3`) made the head and prompt lookup draft more, and
    # lose, where these did not (BENCHMARKS.md "int8 activations on the native decoder")
    feature_layers: tuple[int, ...] = ()  # no middle layers' streams (streams_at answers None)
    # the prompt cache (decoding.start_cache): a generation keeps the positions its prompt shares with what the cache
    # holds (cached_tokens) instead of computing them again; heron.load_lm turns it on (prompt_cache=True)
    reuse_prefix = False
    keeps_prefix = True  # its steps compute what its blocks compute, bit for bit: a kept position is a fresh one

    def __init__(self, path: str | Path, *, threads: int = 1, max_len: int | None = None,
                 library: Path | None = None, activations: str = "int16"):
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
        self._lib = load(library)
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        md = self.file.metadata
        arch = md.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"{self.path}: the native decoder runs Llama-family GGUF files; this one is {arch!r}")

        def need(key):
            v = md.get(f"llama.{key}")
            if v is None:
                raise ValueError(f"{self.path}: GGUF metadata lacks llama.{key}")
            return v

        H, D = int(need("attention.head_count")), int(need("embedding_length"))
        G = int(md.get("llama.attention.head_count_kv", H))
        S = D // H
        if md.get("llama.rope.dimension_count", S) != S or H % G or D % H or S % 2:
            raise ValueError(f"{self.path}: the native decoder needs full RoPE and whole key-head groups")
        if md.get("llama.rope.scaling.type", "none") not in ("none", None):
            raise ValueError(f"{self.path}: RoPE scaling is not supported by the native decoder")
        L, F = int(need("block_count")), int(need("feed_forward_length"))
        ctx = int(md.get("llama.context_length", 2048))
        self.max_len = int(max_len) if max_len is not None else ctx
        if not 1 <= self.max_len <= ctx:
            raise ValueError(f"max_len must be in [1, {ctx}] (the file's context length), got {max_len!r}")
        self.n_layers, self.n_kv_heads, self.head_dim = L, G, S
        self._keep = []  # every array the library points into

        act8 = activations == "int8"

        def linear(name, shape=None, layer=False):
            t = self.file.tensors.get(name)
            if t is None:
                raise ValueError(f"{self.path}: no tensor {name!r}")
            if t.type_name not in TYPES:
                raise ValueError(f"{self.path}: tensor {name!r} is {t.type_name}; the native decoder's linears read "
                                 "Q4_0, Q4_1 and Q8_0 blocks")
            if len(t.shape) != 2 or t.shape[1] % BLOCK or (shape is not None and tuple(t.shape) != shape):
                raise ValueError(f"{self.path}: tensor {name!r} has shape {t.shape}, expected {shape}")
            blocks = split_blocks(self.file.raw(name), t.type_name, *t.shape)
            a8 = act8 and layer
            if a8 and TYPES[t.type_name] != 4:
                raise ValueError(f"{self.path}: int8 activations need every layer's linears in 4-bit blocks; "
                                 f"{name!r} is {t.type_name}")
            arrays = group_rows_a8(*blocks) if a8 else group_rows(*blocks)
            self._keep.extend(a for a in arrays if a is not None)
            qs, d, m = arrays
            kind = W_Q4A8 if a8 else TYPES[t.type_name]
            return HlLinear(address(qs), address(d), address(m) if m is not None else None, kind, *t.shape)

        def vector(name, n):
            t = self.file.tensors.get(name)
            if t is None or t.type_name != "F32" or t.shape != (n,):
                raise ValueError(f"{self.path}: tensor {name!r} must be F32 of shape ({n},)")
            a = np.ascontiguousarray(self.file.tensor(name), np.float32)
            self._keep.append(a)
            return a

        emb = linear("token_embd.weight")
        V = emb.n
        if emb.k != D:
            raise ValueError(f"{self.path}: token_embd.weight is {V} x {emb.k}, expected width {D}")
        head_name = "output.weight" if "output.weight" in self.file.tensors else "token_embd.weight"
        head = linear(head_name, (V, D)) if head_name == "output.weight" else emb
        shapes = {"attn_q": (H * S, D), "attn_k": (G * S, D), "attn_v": (G * S, D), "attn_output": (D, H * S),
                  "ffn_gate": (F, D), "ffn_up": (F, D), "ffn_down": (D, F)}
        layers = (HlLinear * (7 * L))(*[linear(f"blk.{i}.{k}.weight", shapes[k], layer=True) for i in range(L)
                                       for k in LAYER_LINEARS])
        norms = [vector(f"blk.{i}.{k}.weight", D) for i in range(L) for k in ("attn_norm", "ffn_norm")]
        norm_ptrs = (ctypes.c_void_p * len(norms))(*[address(a) for a in norms])
        out_norm = vector("output_norm.weight", D)
        theta = float(md.get("llama.rope.freq_base", 10000.0))
        inv = 1.0 / theta ** (np.arange(0, S, 2, dtype=np.float64) / S)
        angles = np.outer(np.arange(self.max_len, dtype=np.float64), inv)  # (max_len, S/2)
        self._cos, self._sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        self._layers, self._norm_ptrs = layers, norm_ptrs
        self._m = _Model(L, D, H, G, S, F, V, float(need("attention.layer_norm_rms_epsilon")), emb, head,
                         address(out_norm), layers, norm_ptrs, address(self._cos), address(self._sin), self.max_len,
                         threads, int(act8))
        self.activations = activations
        self.vocab_size, self.threads = V, threads
        self.metadata = md
        self.eot_id = md.get("tokenizer.ggml.eos_token_id")
        self.end_ids = frozenset(int(md[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                                      "tokenizer.ggml.eom_token_id") if isinstance(md.get(k), int))
        self.file = None  # every array the library reads is a copy: the file's pages can go
        self._scratch = np.zeros(self._lib.hl_scratch_floats(ctypes.byref(self._m), CHUNK), np.float32)
        self._scores = np.zeros(H * self.max_len, np.float32)
        self._n = 0
        self._cap = 0
        self._k = self._v = np.zeros((L, G, 0, S), np.float16)  # the KV cache in fp16
        self._ids = np.zeros(0, np.int32)  # the token at each cached position (cached_tokens)
        self.dim = D
        self.source_file = self.path  # a draft head takes its output rows from the file (draft_head.target_rows)
        self._source = None
        self._hidden, self._hidden_start = None, 0
        simd = self._lib.hl_simd()
        self.verify_cost = self.VERIFY_COSTS.get(simd, 0.9)  # decoding.verify_cost reads it
        self.verify_costs = self.VERIFY_TABLES.get((simd, min(threads, 2)))  # decoding.verify_costs reads it

    @property
    def source(self) -> dict:
        """The file this runs, as a bundle's manifest names its source: {"gguf": name, "gguf_sha256": ...} (a draft
        head checks it was trained for this file; the sha256 is computed once, when first asked)."""
        if self._source is None:
            from heron.runtime.manifest import sha256_path

            self._source = {"gguf": self.path.name, "gguf_sha256": sha256_path(self.path)}
        return self._source

    def hidden_at(self, position: int) -> np.ndarray | None:
        """The final hidden state (D,) at a position the last forward returned logits for; else None."""
        if self._hidden is None or not 0 <= position < self._n:
            return None
        i = position - self._hidden_start
        return self._hidden[i] if 0 <= i < len(self._hidden) else None

    def streams_at(self, position: int) -> None:
        return None

    def cached_tokens(self) -> list[int]:
        """The tokens whose keys and values the cache holds, position by position (whatever made the calls: the
        decoding engine, or forward / trim / reset / restore directly)."""
        return self._ids[:self._n].tolist()

    # ---- the cache -------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self._n

    @property
    def cache_bytes(self) -> int:
        """Bytes the KV cache holds now (keys and values in fp16, for every reserved position)."""
        return self._k.nbytes + self._v.nbytes

    def reserve(self, n: int) -> None:
        """Room for n positions (capped at max_len) without regrowing."""
        n = min(int(n), self.max_len)
        if n <= self._cap:
            return
        L, G, S = self.n_layers, self.n_kv_heads, self.head_dim
        k, v = np.zeros((L, G, n, S), np.float16), np.zeros((L, G, n, S), np.float16)
        k[:, :, :self._n], v[:, :, :self._n] = self._k[:, :, :self._n], self._v[:, :, :self._n]
        ids = np.zeros(n, np.int32)
        ids[:self._n] = self._ids[:self._n]
        self._k, self._v, self._ids, self._cap = k, v, ids, n

    def trim(self, n: int) -> None:
        if not 0 <= n <= self._n:
            raise ValueError(f"cannot trim {n} of {self._n} cached positions")
        self._n -= n

    def reset(self) -> None:
        self._n = 0

    def snapshot(self) -> int:
        return self._n

    def restore(self, state: int) -> None:
        if not 0 <= state <= self._n:
            raise ValueError(f"a snapshot at {state} cannot be restored over {self._n} cached positions")
        self._n = state

    # ---- the forward ---------------------------------------------------------------------------------
    def forward(self, tokens: Sequence[int], last: int | None = None) -> np.ndarray:
        """Append tokens to the cache -> logits (n, V) float32 at the last n positions (last; default all)."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = len(ids)
        if T == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        n_out = T if last is None else int(last)
        if not 1 <= n_out <= T:
            raise ValueError(f"last must be in [1, {T}], got {last!r}")
        if self._n + T > self.max_len:
            raise ValueError(f"{self._n} cached + {T} new positions exceed max_len {self.max_len}")
        if self._n + T > self._cap:
            self.reserve(max(self._n + T, min(self.max_len, 2 * self._cap, self._n + T + 256)))
        ids = ids.astype(np.int32)
        out = np.empty((n_out, self.vocab_size), np.float32)
        hidden = np.empty((n_out, self.dim), np.float32)
        self._hidden = None
        done = 0
        for a in range(0, T, CHUNK):
            chunk = ids[a:a + CHUNK]
            t = len(chunk)
            want = max(0, min(t, n_out - (T - a - t)))  # the chunk's rows among the last n_out
            dst, hid = out[done:done + want], hidden[done:done + want]
            rc = self._lib.hl_forward(ctypes.byref(self._m), address(chunk), t, self._n, address(self._k),
                                      address(self._v), self._cap, address(self._scratch), address(self._scores), want,
                                      address(dst) if want else None, address(hid) if want else None)
            if rc != 0:
                raise RuntimeError(f"heron's native decoder refused the call (code {rc})")
            self._ids[self._n:self._n + t] = chunk
            self._n += t
            done += want
        self._hidden, self._hidden_start = hidden, self._n - n_out
        return out


class Sampler:
    """The library's sampler: heron.runtime.decoding.probs and draw where the library is built (any engine's logits).

    probs: softmax(logits / temperature) in one pass (float exponentials as attention's softmax, their sum in double:
    a likely word's probability within ~1e-6 of numpy's float64 one, words below 1e-38 of the likeliest 0), then
    top-k / top-p / min-p sorting only the likeliest words (decoding.nucleus's words and order); a float64 row as
    decoding's numpy code returns. draw: the id numpy's Generator.choice draws from the same uniform (its arithmetic:
    the same running sums), one uniform per draw and none where a word is certain (p exactly 1), as decoding.draw.
    Safe across threads (scratch per thread; the library's calls release the GIL)."""

    def __init__(self, lib: ctypes.CDLL):
        self._lib, self._local = lib, threading.local()

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This thread's scratch for rows of n words (kept between calls: fresh pages cost more than the kernel)."""
        s = getattr(self._local, "scratch", None)
        if s is None or s[0].shape[0] != n:
            s = self._local.scratch = (np.empty(n, np.float32), np.empty(2 * n, np.int32), np.zeros(1, np.int32))
        return s

    def probs(self, logits: np.ndarray, temperature: float, top_p: float = 1.0, top_k: int = 0,
              min_p: float = 0.0) -> np.ndarray:
        """float32 logits (V,) or (T, V) -> their distributions (same shape, float64), decoding.probs' filters."""
        x = np.ascontiguousarray(logits, np.float32)
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[1]
        out = np.empty(rows.shape, np.float64)
        e, cand, kept = self._scratch(n)
        for r, o in zip(rows, out):
            rc = self._lib.hl_probs(address(r), n, float(temperature), float(top_p), int(top_k), float(min_p),
                                    address(o), address(e), address(cand), address(kept))
            if rc < -1:
                raise ValueError("logits must be finite numbers" if rc == -3 else
                                 "temperature must be > 0, top_p in (0, 1], top_k >= 0 and min_p in [0, 1), got "
                                 f"{temperature!r}, {top_p!r}, {top_k!r}, {min_p!r}")
        return out.reshape(x.shape)

    def draw(self, p: np.ndarray, rng: np.random.Generator) -> int:
        """One id drawn from the distribution p (V,) float64."""
        p = np.ascontiguousarray(p, np.float64)
        n = p.shape[-1]
        k = self._lib.hl_certain(address(p), n)
        if k >= 0:
            return k
        k = self._lib.hl_draw(address(p), n, rng.random())
        if k < 0:
            raise ValueError("a distribution to draw from needs finite, non-negative mass")
        return k


_SAMPLER: list = []


def sampler() -> Sampler | None:
    """The built library's Sampler, or None where this source's library is not built (decoding's numpy code then)."""
    if not _SAMPLER:
        try:
            _SAMPLER.append(Sampler(load()) if available() else None)
        except (NativeError, OSError):
            _SAMPLER.append(None)
    return _SAMPLER[0]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m heron.runtime.native", description="heron's native decoder")
    ap.add_argument("command", choices=("build", "path"), help="build: compile for this CPU; path: print the "
                    "library's path")
    args = ap.parse_args(argv)
    try:
        p = build() if args.command == "build" else library_path()
    except NativeError as e:
        print(f"heron native: {e}", file=sys.stderr)
        return 1
    print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
