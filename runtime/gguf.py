"""GGUF files (llama.cpp's format) read with numpy alone: metadata, tensor table, dequantization.

Memory-mapped and bounds-checked: every count, length and offset is checked against the file before
it is used, so a truncated or edited file is one `GGUFError` line, never a huge allocation or a read
past the end. Dequantizes F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (the types of the small Llama-family
files heron loads); any other type is refused naming the tensor.

Layout (GGUF v2/v3, little-endian): magic "GGUF", version u32, tensor count u64, metadata count u64;
metadata as (string key, u32 type, value); tensor infos as (string name, u32 n_dims, u64 dims[n_dims]
(fastest-varying first), u32 ggml type, u64 offset); then the data section at the next multiple of
`general.alignment` (default 32), each tensor at its offset from there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_COUNT = 1 << 20  # tensors, metadata keys, array items: more is not a model file
MAX_DIMS = 4
MAX_STRING = 1 << 26

# metadata value types
_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
            12: "<f8"}
_BOOL, _STRING, _ARRAY = 7, 8, 9

# ggml tensor types: name, elements per block, bytes per block
TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34),
         30: ("BF16", 1, 2)}


class GGUFError(ValueError):
    """A GGUF file that cannot be read as one: says what and where."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest-varying first): GGUF's dims reversed
    type: int
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return TYPES[self.type][0] if self.type in TYPES else f"ggml type {self.type}"


class _Cursor:
    def __init__(self, buf: np.ndarray, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> np.ndarray:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated at byte {self.pos} reading {what} ({n} bytes; file is {len(self.buf)})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str):
        dt = np.dtype(fmt)
        return self.take(dt.itemsize, what).view(dt)[0].item()

    def count(self, what: str, limit: int = MAX_COUNT) -> int:
        n = self.scalar("<u8", what)
        if n > limit:
            raise GGUFError(f"{self.path}: {what} is {n}, more than {limit}: not a model file (or a corrupt one)")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"the length of {what}", MAX_STRING)
        raw = self.take(n, what).tobytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path}: {what} at byte {self.pos - n} is not UTF-8") from None

    def value(self, vtype: int, key: str, depth: int = 0):
        if vtype in _SCALARS:
            v = self.scalar(_SCALARS[vtype], key)
            return bool(v) if vtype == _BOOL else v
        if vtype == _STRING:
            return self.string(key)
        if vtype == _ARRAY and depth == 0:
            itype = self.scalar("<u4", key)
            n = self.count(f"the length of {key}")
            if itype in _SCALARS:  # numeric arrays in one read
                dt = np.dtype(_SCALARS[itype])
                return self.take(n * dt.itemsize, key).view(dt).tolist()
            return [self.value(itype, key, depth + 1) for _ in range(n)]
        raise GGUFError(f"{self.path}: metadata {key!r} has unknown value type {vtype}")


class GGUFFile:
    """`GGUFFile(path)`: `.metadata` (dict), `.tensors` (name -> TensorInfo), `.tensor(name)` (float32)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no GGUF file at {p}")
        if p.stat().st_size < 24:
            raise GGUFError(f"{p}: {p.stat().st_size} bytes is too short for a GGUF file")
        self._buf = np.memmap(p, dtype=np.uint8, mode="r")
        cur = _Cursor(self._buf, self.path)
        if cur.take(4, "the magic").tobytes() != MAGIC:
            raise GGUFError(f"{p} is not a GGUF file (no GGUF magic)")
        self.version = cur.scalar("<u4", "the version")
        if self.version not in VERSIONS:
            raise GGUFError(f"{p}: GGUF version {self.version}; heron reads versions {VERSIONS}")
        n_tensors = cur.count("the tensor count")
        n_kv = cur.count("the metadata count")
        self.metadata: dict = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            self.metadata[key] = cur.value(cur.scalar("<u4", f"the type of {key!r}"), key)
        infos = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name {i}")
            n_dims = cur.scalar("<u4", f"the rank of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"{p}: tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS})")
            dims = [cur.scalar("<u8", f"the shape of {name!r}") for _ in range(n_dims)]
            ttype = cur.scalar("<u4", f"the type of {name!r}")
            offset = cur.scalar("<u8", f"the offset of {name!r}")
            infos.append((name, dims, ttype, offset))
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise GGUFError(f"{p}: general.alignment {align!r} is not a power of two")
        self.data_start = -(-cur.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, ttype, offset in infos:
            if name in self.tensors:
                raise GGUFError(f"{p}: tensor {name!r} is listed twice")
            n = 1
            for d in dims:
                if d <= 0 or d > 1 << 40:
                    raise GGUFError(f"{p}: tensor {name!r} has dimension {d}")
                n *= d
            if ttype in TYPES:
                _, per_block, block_bytes = TYPES[ttype]
                if dims[0] % per_block:
                    raise GGUFError(f"{p}: tensor {name!r} rows ({dims[0]}) are not whole {TYPES[ttype][0]} blocks")
                nbytes = n // per_block * block_bytes
            else:
                nbytes = 0  # unknown type: listed, refused when read
            start = self.data_start + offset
            if offset % align or start + nbytes > len(self._buf):
                raise GGUFError(f"{p}: tensor {name!r} ({nbytes} bytes at offset {offset}) lies outside the file "
                                f"or off the {align}-byte alignment")
            self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ttype, start, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored (a read-only view of the memory map)."""
        t = self._info(name)
        return self._buf[t.offset:t.offset + t.nbytes]

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in numpy order (GGUF's dims reversed)."""
        t = self._info(name)
        if t.type not in TYPES:
            raise GGUFError(f"{self.path}: tensor {name!r} is {t.type_name}; heron reads "
                            f"{', '.join(v[0] for v in TYPES.values())}")
        return dequantize(self.raw(name), t.type).reshape(t.shape)

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        return self.tensors[name]


def q8_0_blocks(raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A Q8_0 tensor's stored bytes (N rows of K) -> its blocks as onnxruntime's MatMulNBits reads them, not
    quantized again: q + 128 as uint8 (N, K/32, 32) (8 bits, zero point 128) and the scales float32 (N, K/32)."""
    _, per_block, block_bytes = TYPES[8]
    if k % per_block or np.asarray(raw).size != n * (k // per_block) * block_bytes:
        raise GGUFError(f"{n} x {k} Q8_0 blocks need {n * (k // per_block) * block_bytes} bytes, got {np.asarray(raw).size}")
    raw = np.asarray(raw, np.uint8).reshape(n, k // per_block, block_bytes)
    d = raw[..., :2].copy().view("<f2")[..., 0].astype(np.float32)  # (N, K/32)
    q = raw[..., 2:].view(np.int8).astype(np.int16) + 128  # (N, K/32, 32)
    return q.astype(np.uint8), d


def dequantize(raw: np.ndarray, ttype: int) -> np.ndarray:
    """Stored bytes of one tensor -> flat float32 (ggml's reference formulas)."""
    name, per_block, block_bytes = TYPES[ttype]
    raw = np.ascontiguousarray(raw, np.uint8)
    if name == "F32":
        return raw.view("<f4").astype(np.float32)
    if name == "F16":
        return raw.view("<f2").astype(np.float32)
    if name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    blocks = raw.reshape(-1, block_bytes)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1) scale
    if name == "Q8_0":
        q = blocks[:, 2:].view(np.int8).astype(np.float32)  # (n, 32)
        return (q * d).reshape(-1)
    if name == "Q4_0":
        qs = blocks[:, 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # low nibbles first
        return (q * d).reshape(-1)
    # Q4_1: scale and minimum, then 16 bytes of nibbles
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (q * d + m).reshape(-1)
