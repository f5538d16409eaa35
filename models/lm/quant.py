"""Weight-only int8 and int4 linears for heron's torch language models: one path for heron checkpoints,
Hugging Face folders and GGUF files (every loader returns a heron `Transformer`, and this module
quantizes that).

As gpt-fast's `quantize.py`: `quantize_model(model, bits)` swaps each `nn.Linear` of the layers
(attention q/k/v/o, the dense FFN's gate/up/down) and the head for a drop-in `WeightOnlyLinear` that
keeps only the quantized weights and computes with them at run time:

  int8  symmetric, groups of 32 along the input:        w = q * scale,                q in [-127, 127]
        (GGUF Q8_0's blocks; a whole row where 32 does not divide the input)
  int4  asymmetric, groups of 32 along the input:       w = (q - 8) * scale + zero,   q in [0, 15]
        (torch's int4pack convention, and GGUF Q4_1's own blocks centred: scale d, zero m + 8 d; the
        min/max rounding here gives back a Q4_1 file's codes, scales and zeros from its dequantized
        weights, so a GGUF model is not quantized a second time: tests/test_lm_quant.py)

MoE expert stacks become a `QuantStack` of the same bits (indexing dequantizes only the selected
experts); routers stay fp32. The tied embedding keeps one int8 table for its lookups
(`QuantEmbedding`) and the head its own int8 copy (a head is one matmul per token over the whole
vocabulary; int4 there costs answers first).

Run-time kernels: each call dequantizes the weight into the activation's dtype and runs F.linear. On
this project's CPUs (AVX2 without AVX-512) torch's own weight-only kernels (`_weight_int8pack_mm`,
`_weight_int4pack_mm_for_cpu`) measured 10-20x slower than an fp32 F.linear of the same shape, so they
are not used; the torch path's gain is memory (SmolLM2's weights: 538 MB fp32 -> ~100 MB int4), while
speed on a CPU comes from the onnxruntime path (heron.export.gguf_onnx).

fp32 on a CPU (`pack_linears`, what heron's torch backend does with its model): torch's fp32 F.linear runs on MKL
here, whose few-row products (a verify block) measured slow on an AMD CPU; a `PackedLinear` keeps a copy of its
weight in oneDNN's layout, made at its first inference call, and runs inference on oneDNN's kernels (SmolLM2-135M on
machine Z, AMD EPYC: a 9-token verify 1.32x faster on 1 thread, 1.52x on 2; a one-token step 1.00x / 1.18x;
scripts/bench_torch_linears.py, BENCHMARKS.md "The torch target's linears on oneDNN"). The same fp32 products up
to summation order. Training (gradients on), tracing and export, other devices and dtypes take F.linear on the weight
as before; the weight stays an ordinary parameter (readable, trainable, changed in place: the copy is remade), so the
copy costs its bytes again in memory, which is why models whose linears hold more than PACK_MAX_BYTES keep F.linear.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

BITS = (8, 4)
GROUP = 32  # group size along the input dimension
ROWS_AT_ONCE = 4096  # a larger linear (a vocabulary head) is dequantized this many rows at a time


def int8_group(k: int, group: int = GROUP) -> int:
    """int8's group along an input of size k: `group` where it divides k, else the whole row."""
    return group if k % group == 0 else k


def quantize_int8(w: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> (q int8 (N, K), scale fp32 (N, K/g)), symmetric per group of g = int8_group(K) inputs: the
    layout of GGUF's Q8_0 blocks, whose codes and scales come back exactly from their dequantized values."""
    N, K = w.shape
    g = int8_group(K, group)
    q, scale = torch.empty(N, K, dtype=torch.int8), torch.empty(N, K // g)
    for i in range(0, N, ROWS_AT_ONCE):  # a slice at a time: fp32 scratch of a few MB, not of the whole table
        blocks = w[i:i + ROWS_AT_ONCE].detach().float().reshape(-1, K // g, g)
        s = blocks.abs().amax(dim=-1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        q[i:i + ROWS_AT_ONCE] = torch.clamp(torch.round(blocks / s[..., None]), -127, 127).reshape(-1, K)
        scale[i:i + ROWS_AT_ONCE] = s
    return q, scale


def quantize_int4(w: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) -> (codes packed two per byte uint8 (N, K/2), scale (N, K/group), zero (N, K/group)), with
    w ~ (q - 8) * scale + zero per group: the group's minimum maps to code 0 and its maximum to 15."""
    N, K = w.shape
    packed, scale, zero = torch.empty(N, K // 2, dtype=torch.uint8), torch.empty(N, K // group), torch.empty(N, K // group)
    for i in range(0, N, ROWS_AT_ONCE):  # a slice at a time: fp32 scratch of a few MB
        g = w[i:i + ROWS_AT_ONCE].detach().float().reshape(-1, K // group, group)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        s = (hi - lo) / 15.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.clamp(torch.round((g - lo[..., None]) / s[..., None]), 0, 15).to(torch.uint8).reshape(-1, K)
        packed[i:i + ROWS_AT_ONCE], scale[i:i + ROWS_AT_ONCE], zero[i:i + ROWS_AT_ONCE] = pack_int4(q), s, lo + 8.0 * s
    return packed, scale, zero


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in [0, 15] -> (N, K/2) uint8: element 2i in the low nibble, 2i + 1 in the high one."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) codes in [0, 15] (uint8)."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


PACK_MAX_BYTES = 1 << 30  # pack_linears leaves a model alone above this many bytes of fp32 linear weights


class PackedLinear(nn.Linear):
    """An `nn.Linear` whose fp32 inference on a CPU runs on oneDNN with a packed copy of the weight (module
    docstring); anything else is F.linear on the weight itself."""

    _packed = None  # (weight version, data pointer, oneDNN weight, oneDNN bias or None)

    def _copy(self):
        w = self.weight
        key = (w._version, w.data_ptr())
        if self._packed is None or self._packed[:2] != key:  # first call, or the weight changed since
            bias = None if self.bias is None else self.bias.detach().to_mkldnn()
            self._packed = key + (w.detach().to_mkldnn(), bias)
        return self._packed

    def __getstate__(self):  # copies and pickles leave the oneDNN copy behind (it has no storage to copy)
        state = dict(self.__dict__)
        state.pop("_packed", None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or self.weight.dtype != torch.float32 or self.weight.device.type != "cpu"
                or (self.bias is not None and self.bias.dtype != torch.float32)
                or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling() or x.numel() == 0):
            return F.linear(x, self.weight, self.bias)
        *_, w, b = self._copy()
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch._C._nn.mkldnn_linear(rows.to_mkldnn(), w, b).to_dense()
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module, max_bytes: int = PACK_MAX_BYTES) -> int:
    """Make every plain fp32 `nn.Linear` of `model` a `PackedLinear` (in place: the same parameters, hooks and
    names) if oneDNN is available and they hold at most `max_bytes` of weights together (a tied head counted
    again: its copy is its own); -> how many were made. Nothing is copied until an inference call."""
    if not torch.backends.mkldnn.is_available():
        return 0
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.dtype == torch.float32]
    if sum(m.weight.numel() * 4 for m in linears) > max_bytes:
        return 0
    for m in linears:
        m.__class__ = PackedLinear
    return len(linears)


class WeightOnlyLinear(nn.Module):
    """A drop-in `nn.Linear` (no bias or a float bias) whose weight is kept int8 or int4 (see the module)."""

    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool = False, group: int = GROUP):
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
        if bits == 4 and in_features % group:
            raise ValueError(f"int4 needs the input size ({in_features}) to be a multiple of the group ({group})")
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        N, K = out_features, in_features
        if bits == 8:
            self.group = int8_group(K, group)
            self.register_buffer("q", torch.zeros(N, K, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(N, K // self.group))
            self.zero = None
        else:
            self.register_buffer("q", torch.zeros(N, K // 2, dtype=torch.uint8))
            self.register_buffer("scale", torch.ones(N, K // group))
            self.register_buffer("zero", torch.zeros(N, K // group))
        self.bias = nn.Parameter(torch.zeros(N), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group: int = GROUP) -> "WeightOnlyLinear":
        """The quantized copy of `linear` (on its device)."""
        w = linear.weight
        out = cls(linear.in_features, linear.out_features, bits, bias=linear.bias is not None, group=group)
        if bits == 8:
            q, scale = quantize_int8(w, group)
            out.q.copy_(q)
            out.scale.copy_(scale)
        else:
            q, scale, zero = quantize_int4(w, group)
            out.q.copy_(q)
            out.scale.copy_(scale)
            out.zero.copy_(zero)
        if linear.bias is not None:
            out.bias.data.copy_(linear.bias.detach().float())
        return out.to(w.device)

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: slice = slice(None)) -> torch.Tensor:
        """The (out, in) weight these codes stand for (or its `rows`), in `dtype`."""
        K = self.in_features
        codes, scale = self.q[rows], self.scale[rows].to(dtype)[..., None]
        N = codes.shape[0]
        if self.bits == 8:
            return (codes.to(dtype).reshape(N, K // self.group, self.group) * scale).reshape(N, K)
        q = unpack_int4(codes).to(dtype).reshape(N, K // self.group, self.group)
        return ((q - 8) * scale + self.zero[rows].to(dtype)[..., None]).reshape(N, K)

    @property
    def weight(self) -> torch.Tensor:
        """The weight dequantized (fp32), for code that reads a linear's weight."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.out_features <= ROWS_AT_ONCE:
            return F.linear(x, self.dequantize(x.dtype), bias)
        # a vocabulary-sized head: dequantize a slice of rows at a time (a few MB of scratch, not the
        # whole fp32 matrix per token)
        return torch.cat([F.linear(x, self.dequantize(x.dtype, slice(i, i + ROWS_AT_ONCE)),
                                   None if bias is None else bias[i:i + ROWS_AT_ONCE])
                          for i in range(0, self.out_features, ROWS_AT_ONCE)], dim=-1)

    def extra_repr(self) -> str:
        how = f"int{self.bits} groups of {self.group}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {how}"


class QuantEmbedding(nn.Module):
    """A drop-in `nn.Embedding` kept as int8 rows, one scale per group of 32 (lookups dequantize only the
    rows they read)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.group = int8_group(embedding_dim)
        self.register_buffer("q", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, embedding_dim // self.group))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> "QuantEmbedding":
        out = cls(emb.num_embeddings, emb.embedding_dim)
        q, scale = quantize_int8(emb.weight)
        out.q.copy_(q)
        out.scale.copy_(scale)
        return out.to(emb.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table dequantized (fp32): for code that reads an embedding's statistics."""
        return self._rows(self.q, self.scale)

    def _rows(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        blocks = q.float().reshape(*q.shape[:-1], -1, self.group)
        return (blocks * scale[..., None]).reshape(q.shape)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._rows(self.q[ids], self.scale[ids])


class QuantStack(nn.Module):
    """A drop-in for an MoE's stacked expert weights (E, out, in): kept int8 per row or int4 in groups of
    32 along the input; indexing (`stack[e]`, `stack[idx]`) dequantizes only the experts it selects."""

    def __init__(self, stack: torch.Tensor, bits: int, group: int = GROUP):
        super().__init__()
        E, N, K = stack.shape
        self.shape, self.bits, self.group = (E, N, K), bits, group
        if bits == 8:
            self.group = int8_group(K, group)
            q, scale = quantize_int8(stack.reshape(E * N, K), group)
            self.register_buffer("q", q.reshape(E, N, K))
            self.register_buffer("scale", scale.reshape(E, N, K // self.group))
            self.zero = None
        else:
            q, scale, zero = quantize_int4(stack.reshape(E * N, K), group)
            self.register_buffer("q", q.reshape(E, N, K // 2))
            self.register_buffer("scale", scale.reshape(E, N, K // group))
            self.register_buffer("zero", zero.reshape(E, N, K // group))

    def __getitem__(self, index) -> torch.Tensor:
        q, scale = self.q[index], self.scale[index]
        lead, K = q.shape[:-1], self.shape[2]
        if self.bits == 8:
            return (q.float().reshape(*lead, K // self.group, self.group) * scale[..., None]).reshape(*lead, K)
        codes = unpack_int4(q.reshape(-1, q.shape[-1])).float().reshape(*lead, K // self.group, self.group)
        return ((codes - 8) * scale[..., None] + self.zero[index][..., None]).reshape(*lead, K)


def quantize_model(model: nn.Module, bits: int, group: int = GROUP) -> nn.Module:
    """Quantize a heron `Transformer` in place (weights only) and return it: every `nn.Linear` of its layers
    and its MoE expert stacks to `bits` (8 or 4; routers stay fp32), the head to int8 (its own copy when the
    embedding is tied) and the embedding table to int8 rows. A layer whose input size does not divide into
    int4 groups is refused, naming it, before anything changes."""
    _check(model, bits, group)
    for blk in model.layers:
        _swap_block(blk, bits, group)
    _swap_ends(model)
    return_freed_memory()  # after the swaps: nothing holds the fp32 modules any more
    return model


def load_quantized(cfg, tensors, bits: int, group: int = GROUP):
    """A quantized `Transformer` built straight from (name, fp32 tensor) pairs in any order (a loader's
    stream): each layer is quantized as soon as its last tensor arrives and the table when it arrives, so
    loading never holds the fp32 model (the same weights as `quantize_model` on the loaded model).
    -> (model, missing names, unexpected names); a tensor whose shape differs from the config's raises
    ValueError naming it."""
    from heron.models.lm.model import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    _check(model, bits, group)
    params = dict(model.named_parameters())  # a tied head is the table: listed once, as embed.weight
    waiting = {i: {n for n in params if n.startswith(f"layers.{i}.")} for i in range(len(model.layers))}
    unexpected = []
    for name, t in tensors:
        if name not in params or (cfg.tie_embeddings and name == "lm_head.weight"):
            unexpected.append(name)
            continue
        if tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"tensor {name} is {tuple(t.shape)}; the config needs {tuple(params[name].shape)}")
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, nn.Parameter(t, requires_grad=False))
        params[name] = None  # arrived
        if name == "embed.weight":
            if cfg.tie_embeddings:  # the head's own int8 copy of the table
                model.lm_head = WeightOnlyLinear.from_linear(_as_linear(t), 8)
            model.embed = QuantEmbedding.from_embedding(model.embed)
        elif name == "lm_head.weight":
            model.lm_head = WeightOnlyLinear.from_linear(model.lm_head, 8)
        elif name.startswith("layers."):
            i = int(name.split(".")[1])
            waiting[i].discard(name)
            if not waiting[i]:
                _swap_block(model.layers[i], bits, group)
        del t
    missing = [n for n, p in params.items() if p is not None]
    return_freed_memory()
    return model, missing, unexpected


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free linear holding `weight` (no copy, no initialisation)."""
    with torch.device("meta"):
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


def _check(model: nn.Module, bits: int, group: int) -> None:
    """Refuse bad bits, a quantized model, and int4 groups that do not divide a layer's input (shapes only:
    works on a model on the meta device)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if any(isinstance(m, (WeightOnlyLinear, QuantEmbedding, QuantStack)) for m in model.modules()):
        raise ValueError("this model is already quantized")
    if bits == 4:
        for i, blk in enumerate(model.layers):
            linears, stacks = _targets(blk)
            sizes = [(name, m.in_features) for name, m in linears] + [(name, int(getattr(m, name.rpartition(".")[2]).shape[-1]))
                                                                       for name, m in stacks]
            bad = [(name, k) for name, k in sizes if k % group]
            if bad:
                raise ValueError(f"int4 groups of {group} do not divide the input of layers.{i}.{bad[0][0]} "
                                 f"({bad[0][1]}); use bits=8")


def _targets(blk: nn.Module):
    """A block's linears (routers stay fp32: a rounded router logit can change which experts run) and its MoE
    expert stacks, as (relative name, module) pairs."""
    linears = [(name, m) for name, m in blk.named_modules() if isinstance(m, nn.Linear) and not name.endswith("router")]
    stacks = [(f"{name}.{w}" if name else w, m) for name, m in blk.named_modules()
              for w in ("w_gate", "w_up", "w_down") if isinstance(getattr(m, w, None), nn.Parameter)]
    return linears, stacks


def _swap_block(blk: nn.Module, bits: int, group: int) -> None:
    linears, stacks = _targets(blk)
    for name, m in linears:
        parent, _, attr = name.rpartition(".")
        setattr(blk.get_submodule(parent), attr, WeightOnlyLinear.from_linear(m, bits, group))
    for name, moe in stacks:
        attr = name.rpartition(".")[2]
        stack = QuantStack(getattr(moe, attr).detach(), bits, group).to(getattr(moe, attr).device)
        delattr(moe, attr)
        setattr(moe, attr, stack)


def _swap_ends(model: nn.Module) -> None:
    model.lm_head = WeightOnlyLinear.from_linear(model.lm_head, 8)  # a copy even when tied to the table
    model.embed = QuantEmbedding.from_embedding(model.embed)


def return_freed_memory() -> None:
    """Give the memory of the dropped fp32 weights back to the operating system (glibc keeps freed heap
    memory otherwise: SmolLM2 int8 measured 1071 -> 438 MB resident after this). No-op without glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each tensor once, ties counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
