"""Language-model backends for decoding: the interface and the onnxruntime implementation.

A backend owns a KV cache and returns next-token logits for a block of tokens appended to it:

    logits = backend.forward([t1, t2, t3])   # (3, V) float32; the cache grows by 3
    logits = backend.forward(block, last=1)  # (1, V): logits of the block's last position only
    backend.trim(2)                          # drop the last 2 positions (rejected draft tokens)
    state = backend.snapshot(); backend.restore(state)   # cheap branch points (Mirror-SD rollouts)
    backend.reserve(n)                       # optional: room for n positions up front (no regrowth)

Graphs with a `past_length` input (SmolLM2's, from heron.export.gguf_onnx) keep their states in fixed
buffers that onnxruntime extends in place: no copy of the cache per step; their snapshots are rewind
points only (`branchable` is False). Graphs without it return grown states, never written in place.

The onnxruntime backend is heron's "NPU" path: any execution provider the installed onnxruntime offers
(CPU, CoreML, QNN, ...) can run the draft. numpy + onnxruntime only; no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from heron.runtime.manifest import LM_WEIGHTS, FileEntry, LMManifest

DEFAULT_DRAFT = Path(__file__).resolve().parent / "assets" / "lm-draft"  # the shipped draft bundle


@dataclass
class Token:
    """One generated token, as streaming generation yields it."""
    id: int
    text: str = ""              # the new text this token completes ("" inside a multi-byte character)
    position: int = 0           # index in the whole sequence (prompt included)
    from_draft: bool = False    # proposed by a draft (or MTP/Mirror branch) and accepted by the target


class LMBackend(Protocol):
    name: str
    vocab_size: int
    max_len: int

    @property
    def length(self) -> int: ...
    def forward(self, tokens: Sequence[int], last: int | None = None) -> np.ndarray: ...
    def trim(self, n: int) -> None: ...
    def reset(self) -> None: ...
    def snapshot(self): ...
    def restore(self, state) -> None: ...


PROVIDERS = {"cpu": "CPUExecutionProvider", "coreml": "CoreMLExecutionProvider", "qnn": "QNNExecutionProvider",
             "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider", "xnnpack": "XnnpackExecutionProvider"}


def provider_name(device: str) -> str:
    """A short device name (cpu, coreml, qnn, cuda, ...) or a full onnxruntime provider name -> the provider."""
    return PROVIDERS.get(device.lower(), device)


def available_providers() -> list[str]:
    import onnxruntime as ort
    return ort.get_available_providers()


LAST_INPUT = "last"  # optional graph input (1,) int64: the head runs on the block's last n positions only
# optional graph input (1,) int64: the states are fixed-size buffers with this many valid positions, extended
# in place (each new state bound to its input's buffer); without it the states grow by T every call
PAST_INPUT = "past_length"
# optional graph input (1,) int64 of a graph that pads attention (heron.export.gguf_onnx.ATTENTION_ROWS): the query
# rows attention sees at least. The runtime feeds the manifest's source.attention_rows (2) where one-token steps
# must compute what verify blocks compute (OnnxLM.exact_steps, the default: speculation then returns plain
# decoding's tokens exactly), 1 for one-row steps (faster plain decoding; rounding of their own)
ROWS_INPUT = "attention_rows"
# a graph whose attention writes key and value rows past a call's end (manifest source "attention_spill": that many
# positions per token of the call; heron.export.gguf_onnx's rows attention, where a token's query heads that share a
# key head are rows of one head): the runtime keeps that room past every call and gives such a graph blocks of at
# most ROWS_CHUNK tokens (a longer prompt goes in several calls), so the room stays within spill * ROWS_CHUNK
ROWS_CHUNK = 64
MAX_SPILL = 16
SPILL_PROP = "heron.attention_spill"  # the graph's own metadata entry for its spill (the manifest must agree)
# optional graph output (1, n, D): the head's input at the positions whose logits were asked for (`last`); a
# draft head that proposes from the target's own features reads it (OnnxLM.hidden_at)
HIDDEN_OUTPUT = "hidden"
# optional graph output (1, n, k D): the residual streams after k middle layers at the same positions (the layers
# are the manifest's source.feature_layers); a draft head that fuses them reads it (OnnxLM.streams_at)
FEATURES_OUTPUT = "features"
# verifying one more draft token in one call, in plain steps, by the GGUF graph's compute (heron lm export
# --compute) and the rows a call gives its kernels (MIN_ROWS, below): machine B, logits at every position of blocks
# of 2-8 tokens (BENCHMARKS.md, "Where a SmolLM2 step goes"; int8 with two rows: "One kernel for steps and
# blocks", past the draft token that rides free); machine C measured ~0.5 for int8x2 less steadily. Prompt lookup
# and the draft head size their windows with it.
VERIFY_COSTS = {("int8x2", 1): 0.34, ("int8", 1): 0.25, ("int8", 2): 0.16}
# the fewest token rows every call gives the graph, by its compute, for graphs that do not pad attention
# themselves: onnxruntime's GroupQueryAttention rounds a one-token call differently from a block (up to 0.6 logits
# apart on SmolLM2's int8 graph), so such an int8 graph pads a one-token call with a scratch token (its row is
# computed through every layer, then dropped and trimmed) and asks the head for at least two rows: a plain step
# then computes what a verify block computes, and speculation returns plain decoding's tokens exactly (greedy).
# Graphs exported since session 27 pad attention alone (manifest source "attention_rows": 2, heron.export.gguf_onnx)
# and run one-token calls as one row wherever this CPU's kernels then give steps the bits of blocks
# (OnnxLM.one_row_exact, checked at load); elsewhere they fall back to MIN_ROWS.
MIN_ROWS = {"int8": 2}
PAD_TOKEN = 0  # the scratch token a padded call appends; its position is trimmed before anything reads it


def state_names(n_layers: int) -> tuple[list[str], list[str]]:
    """The KV-cache state inputs of an LM graph (key and value per layer) and their outputs."""
    ins = [f"cached_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    return ins, ["new_" + n for n in ins]


def lm_manifest(cfg, *, name: str, eot_id: int | None, source: dict | None, files: dict[str, FileEntry],
                active_experts: int | None = None, end_ids=None, default_weights: str | None = None,
                chat_template: str | None = None) -> LMManifest:
    """The manifest of a heron LM bundle (shapes, state names, eot id, provenance, the file table):
    what export writes and in-memory bundles carry."""
    ins, outs = state_names(cfg.n_layers)
    return LMManifest(name=name, n_layers=cfg.n_layers, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                      vocab_size=cfg.vocab_size, max_seq_len=cfg.max_seq_len, files=files, state_inputs=tuple(ins),
                      state_outputs=tuple(outs), n_experts=cfg.n_experts, active_experts=active_experts,
                      eot_id=eot_id, end_ids=tuple(end_ids) if end_ids is not None else None,
                      default_weights=default_weights, chat_template=chat_template, source=source or {})


class OnnxLM:
    """A heron LM exported by `heron lm export` run with onnxruntime."""

    branchable = True  # snapshots are independent (state arrays are never written in place)
    # the prompt cache (decoding.start_cache), on graphs that keep_prefix; heron.load_lm turns it on (prompt_cache)
    reuse_prefix = False

    def __init__(self, folder: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int = 1, int8: bool = False, weights: str | None = None, sha256: str | None = None,
                 min_rows: int | None = None, exact_steps: bool = True, huge_pages: bool = True):
        """weights: fp32, int8 or int4 (a listed variant); "auto": int8 where listed, else the default;
        None: the manifest's default_weights, else fp32 (int8=True is weights="int8").
        sha256: the identity (manifest.sha256) the bundle must have; the shipped draft's is pinned.
        min_rows: the fewest token rows every call gives the graph (1 or 2; None: 1 where the graph pads attention
        and one_row_exact holds, else MIN_ROWS by the graph's compute): 2 makes single steps compute what blocks
        compute on any graph, 1 is the faster one-row call. exact_steps: see the property (False: one-row steps,
        min_rows 1). huge_pages: the weights in huge pages where the system allows (heron.runtime.pages; each step
        reads them all); `huge_pages_bytes` says how many bytes."""

        from heron.runtime.bundle import BundleError, check_identity, expected_identity, read_manifest, verify_files
        from heron.runtime.sessions import open_session
        folder = Path(folder)
        expected, what = expected_identity(folder, DEFAULT_DRAFT, "lm-draft", sha256)
        raw, self.identity = read_manifest(folder, "language-model")
        check_identity(folder, self.identity, expected, what)
        where = str(folder / "manifest.json")
        self.manifest = LMManifest.from_dict(raw, where)
        verify_files(folder, self.manifest.files, where)  # before any field of it is used
        default = self.manifest.default_weights or "fp32"
        weights = weights or ("int8" if int8 else default)
        # weight variants (LM_WEIGHTS): fp32 / int8 from `heron lm export`; int4 from a GGUF file's own blocks
        if weights == "auto":  # int8 where the manifest lists it
            weights = "int8" if self.manifest.has(LM_WEIGHTS["int8"]) else default
        if weights not in LM_WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(LM_WEIGHTS)}, got {weights!r}")
        name = LM_WEIGHTS[weights]
        if not self.manifest.has(name):
            listed = [w for w, f in LM_WEIGHTS.items() if self.manifest.has(f)]
            raise BundleError(f"{folder}: the manifest lists no {name} (this bundle has {', '.join(listed) or 'none'}; "
                              "int8 variants come from heron lm export --int8, int4 from a GGUF file)")
        self.weights, self.threads = weights, threads
        self.folder, self.source_file = folder, None
        self._tokenizer_source: object = folder / "tokenizer.json"
        self._setup(open_session(folder / name, threads, _check_providers(providers), huge_pages=huge_pages),
                    providers, where, min_rows, exact_steps)

    @classmethod
    def from_memory(cls, graph, manifest: LMManifest, tokenizer=None, providers: Sequence[str] = ("CPUExecutionProvider",),
                    threads: int = 1, min_rows: int | None = None, source_file: str | Path | None = None,
                    exact_steps: bool = True, huge_pages: bool = True) -> "OnnxLM":
        """A bundle built in memory (heron.export.gguf_onnx.bundle_in_memory: a GGUF file's own blocks, made
        in seconds at load): nothing is written to disk. `graph`: its bytes, or a heron.runtime.sessions.MemoryFile
        holding them (far less memory while onnxruntime loads it; closed once loaded). `tokenizer`: a
        tokenizers.Tokenizer. source_file: the GGUF file it was built from (a draft head reads its output rows
        there)."""
        from heron.runtime.sessions import open_session

        where = f"{manifest.name} (built in memory)"
        self = cls.__new__(cls)
        try:
            self.manifest, self.identity, self.folder = LMManifest.from_dict(manifest.to_dict(), where), "", None
            session = open_session(getattr(graph, "path", graph), threads, _check_providers(providers),
                                   huge_pages=huge_pages, where=where)
        finally:  # a memory file is read once
            if hasattr(graph, "close"):
                graph.close()
        self.source_file = Path(source_file) if source_file is not None else None
        self.weights, self.threads = manifest.default_weights or "int4", threads
        self._tokenizer_source = tokenizer
        self._setup(session, providers, where, min_rows, exact_steps)
        return self

    def _setup(self, session, providers: Sequence[str], where: str, min_rows: int | None = None,
               exact_steps: bool = True) -> None:
        self.session = session
        self._ids: list[int] = []  # the token at each position of shared buffers (cached_tokens)
        self.huge_pages_bytes = getattr(session, "heron_huge_pages", 0)
        m = self.manifest
        self.name = f"onnxruntime[{','.join(p.replace('ExecutionProvider', '') for p in providers)}]"
        self.vocab_size, self.max_len = m.vocab_size, m.max_seq_len
        self.eot_id = m.eot_id
        self.end_ids = m.stop_ids  # generation stops at any of them
        # verifying one more draft token, in plain steps (prompt lookup sizes its windows with it); GGUF graphs
        # by their compute, measured on machine B (scripts/probe_smollm2_costs.py); others: the engine's default
        self._compute, self._verify_cost = str(m.source.get("compute")), None
        self._min_rows = MIN_ROWS.get(self._compute, 1)
        self.state_in, self.state_out = list(m.state_inputs), list(m.state_outputs)
        self._check_graph(where)
        # the query rows the graph pads attention to (heron.export.gguf_onnx; _SharedCache keeps room for the
        # padded row's key and value past a one-token call)
        rows = m.source.get("attention_rows", 1)
        if isinstance(rows, bool) or rows not in (1, 2):
            from heron.runtime.bundle import BundleError
            raise BundleError(f"{where}: source.attention_rows must be 1 or 2, got {rows!r}")
        if self._has_rows and rows != 2:  # the exporter gives that input to the graphs that pad to two rows only
            from heron.runtime.bundle import BundleError
            raise BundleError(f"{where}: the graph takes {ROWS_INPUT} (it pads attention to two query rows), and "
                              f"the manifest's source.attention_rows says {rows!r}")
        self.attention_rows = rows if self._shared else 1
        # the room a graph writes into past each call is the graph's own word (its metadata, inside the verified
        # file); a manifest that states it must agree
        spill, own = m.source.get("attention_spill"), self._graph_spill(where)
        if spill is None:
            spill = own
        if isinstance(spill, bool) or not isinstance(spill, int) or not 0 <= spill <= MAX_SPILL:
            from heron.runtime.bundle import BundleError
            raise BundleError(f"{where}: source.attention_spill must be an integer in 0..{MAX_SPILL}, got {spill!r}")
        if spill and (not self._shared or self._has_rows):
            from heron.runtime.bundle import BundleError
            raise BundleError(f"{where}: source.attention_spill is for graphs with shared state buffers that do not "
                              f"pad attention ({PAST_INPUT} without {ROWS_INPUT})")
        if own != spill:
            from heron.runtime.bundle import BundleError
            raise BundleError(f"{where}: source.attention_spill says {spill}, the graph's metadata {own}")
        self.spill = spill  # positions written past a call's end per token (ROWS_CHUNK)
        self._output_names = [o.name for o in session.get_outputs()]
        self._empty = np.zeros((1, m.n_kv_heads, 0, m.head_dim), np.float32)
        self._cache = _SharedCache(session, self.state_in, self.state_out, m, self._has_hidden,
                                   self._has_streams, spill) if self._shared else None
        if self._shared:  # rewinds only: a branch's positions are overwritten by the next one
            self.branchable = False
        if not _is_bool(exact_steps):
            raise ValueError(f"exact_steps must be True or False, got {exact_steps!r}")
        self._exact, self._exact_min_rows = True, None
        self._feed_rows(self.attention_rows)
        self.reset()
        if not exact_steps:
            self.exact_steps = False
        if min_rows is not None:
            self.min_rows = min_rows
        elif exact_steps and (self.attention_rows > 1 or self.spill):  # one-row calls where exact here, else MIN_ROWS
            self._min_rows = self._exact_min_rows = self._exact_rows()

    def _graph_spill(self, where: str) -> int:
        """The graph's own SPILL_PROP metadata (0 where it has none)."""
        value = self.session.get_modelmeta().custom_metadata_map.get(SPILL_PROP, "0")
        if not value.isdigit() or int(value) > MAX_SPILL:
            from heron.runtime.bundle import BundleError
            raise BundleError(f"{where}: the graph's {SPILL_PROP} must be an integer in 0..{MAX_SPILL}, got {value[:20]!r}")
        return int(value)

    def _exact_rows(self) -> int:
        """min_rows for exact steps: one row where this CPU's kernels then give steps the bits of blocks (the load
        check, one_row_exact, on a graph that pads attention or runs it as rows), else MIN_ROWS by the graph's
        compute."""
        return 1 if (self.attention_rows > 1 or self.spill) and self.one_row_exact() else MIN_ROWS.get(self._compute, 1)

    def _feed_rows(self, rows: int) -> None:
        """Feed ROWS_INPUT = rows from now on (graphs that have it)."""
        if self._cache is not None and self._has_rows:
            self._cache.set_rows(rows)

    @property
    def exact_steps(self) -> bool:
        """Whether one-token calls compute, bit for bit, what a verify block computes at the same positions (True,
        the default: a graph that pads attention is fed its attention_rows, and one_row_exact decides min_rows at
        load), so that speculative decoding returns exactly the tokens plain decoding returns. False: one-token
        calls run attention's one-row kernels (ROWS_INPUT 1, min_rows 1): plain decoding is faster (SmolLM2's int8
        graph: BENCHMARKS.md "One-row steps"), its tokens the same model's up to rounding, which can part from a
        speculative run's at a near-tie (heron refuses speculative methods on such a target). Graphs without
        ROWS_INPUT just take min_rows 1."""
        return self._exact

    @exact_steps.setter
    def exact_steps(self, exact: bool) -> None:
        if not _is_bool(exact):
            raise ValueError(f"exact_steps must be True or False, got {exact!r}")
        self._exact = bool(exact)
        if not exact:
            self._feed_rows(1)
            self._min_rows = 1
            return
        self._feed_rows(self.attention_rows)
        if self._exact_min_rows is None:
            self._exact_min_rows = self._exact_rows()
        self._min_rows = self._exact_min_rows

    def one_row_exact(self) -> bool:
        """Whether this graph's one-token calls compute, bit for bit, what the same positions compute inside a
        block, on this CPU's kernels: three single steps against one 3-token block after a 2-token context (a
        few calls; the cache is left empty). A graph that pads attention passes on CPUs whose int8 matrix
        kernels give a row the same bits in calls of any size (machine B); elsewhere it is run padded."""
        if self.max_len < 6:
            return False
        ids = [(7919 * i + 11) % self.vocab_size for i in range(5)]
        saved, self._min_rows = self._min_rows, 1
        try:
            self.reset()
            self.forward(ids[:2], last=1)
            steps = np.stack([self.forward([t], last=1)[0] for t in ids[2:]])
            self.reset()
            self.forward(ids[:2], last=1)
            return bool(np.array_equal(steps, self.forward(ids[2:], last=3)))
        finally:
            self._min_rows = saved
            self.reset()

    def _check_graph(self, where: str) -> None:
        """The manifest's shapes must be the graph's own (an edited n_kv_heads fails here, not mid-decode)."""
        from heron.runtime.bundle import BundleError
        m = self.manifest
        ins = {i.name: i.shape for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        self._has_last = LAST_INPUT in ins  # optional: logits for the last n positions only
        self._shared = PAST_INPUT in ins  # optional: fixed-size state buffers extended in place
        self._has_rows = ROWS_INPUT in ins  # optional: attention's query rows, fed every call (exact_steps)
        self._has_hidden = HIDDEN_OUTPUT in outs  # optional: the head's input, kept for hidden_at
        self._has_streams = self._has_hidden and FEATURES_OUTPUT in outs  # optional: kept for streams_at
        if self._shared and not self._has_last:
            raise BundleError(f"{where}: a graph with a {PAST_INPUT} input must have a {LAST_INPUT} input too")
        if self._has_rows and not self._shared:  # padded attention writes its extra row into the buffers' spare room
            raise BundleError(f"{where}: a graph with an {ROWS_INPUT} input must have a {PAST_INPUT} input too")
        if ([n for n in ins if n not in (LAST_INPUT, PAST_INPUT, ROWS_INPUT)] != ["tokens", *self.state_in]
                or [n for n in outs if n not in (HIDDEN_OUTPUT, FEATURES_OUTPUT)] != ["logits", *self.state_out]):
            raise BundleError(f"{where}: the state names are not the graph's ({list(ins)[:3]}...)")
        for name in self.state_in:
            shape = ins[name]
            want = [1, m.n_kv_heads, None, m.head_dim]
            if len(shape) != 4 or any(isinstance(d, int) and w is not None and d != w for d, w in zip(shape, want)):
                raise BundleError(f"{where}: {name} has the shape {shape} in the graph; the manifest says "
                                  f"[1, {m.n_kv_heads}, *, {m.head_dim}]")
        if self._has_streams:  # the layers are provenance in the manifest: checked before anything trusts them
            layers = m.source.get("feature_layers")
            width, dim = outs[FEATURES_OUTPUT][-1], outs[HIDDEN_OUTPUT][-1]
            if (not isinstance(layers, list) or not layers or len(set(map(repr, layers))) != len(layers)
                    or any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < m.n_layers for j in layers)
                    or (isinstance(width, int) and isinstance(dim, int) and width != len(layers) * dim)):
                raise BundleError(f"{where}: the graph returns the streams of middle layers, and the manifest's "
                                  f"source.feature_layers ({layers!r}) does not say which")
        v = outs["logits"][-1]
        if isinstance(v, int) and v != m.vocab_size:
            raise BundleError(f"{where}: the graph's logits have {v} entries; the manifest says vocab_size {m.vocab_size}")

    def tokenizer(self):
        """The bundle's tokenizer (verified with the rest of the bundle)."""
        from heron.runtime.bundle import BundleError
        if self.folder is None:  # built in memory, with its tokenizer
            return self._tokenizer_source
        if not self.manifest.has("tokenizer.json"):  # an unlisted file is unverified: never read it
            raise BundleError(f"{self.folder}: the manifest lists no tokenizer.json, so this bundle cannot "
                              "turn text into tokens")
        tok = load_tokenizer(self.folder / "tokenizer.json")
        if tok.get_vocab_size() > self.vocab_size:
            raise ValueError(f"{self.folder}: the tokenizer has {tok.get_vocab_size()} tokens, the model {self.vocab_size}")
        return tok

    @property
    def length(self) -> int:
        return self._cache.length if self._shared else self._state[0].shape[2]

    @property
    def min_rows(self) -> int:
        """The fewest token rows each call gives the graph (MIN_ROWS, one_row_exact); 2 pads one-token calls."""
        return self._min_rows

    @min_rows.setter
    def min_rows(self, rows: int) -> None:
        if isinstance(rows, bool) or rows not in (1, 2):
            raise ValueError(f"min_rows must be 1 or 2, got {rows!r}")
        self._min_rows = rows

    @property
    def verify_cost(self) -> float | None:
        """Verifying one more draft token, in plain steps (VERIFY_COSTS; None: not measured for this graph);
        settable (a benchmark's A/B of window pricing), None returns to the table."""
        if self._verify_cost is not None:
            return self._verify_cost
        return VERIFY_COSTS.get((self._compute, self._min_rows))

    @verify_cost.setter
    def verify_cost(self, cost: float | None) -> None:
        self._verify_cost = cost

    @property
    def free_draft_tokens(self) -> int:
        """Draft tokens a verify call carries at no extra cost: a padded one-token call computes min_rows rows
        anyway, so a window of min_rows - 1 tokens costs what a plain step costs."""
        return self._min_rows - 1

    @property
    def has_hidden(self) -> bool:
        """Whether the graph returns the head's input (`hidden`), so that hidden_at can answer."""
        return self._has_hidden

    def hidden_at(self, position: int) -> np.ndarray | None:
        """The head's input (D,) at a cached position whose logits the last call returned; None where that
        call did not compute it (or the graph has no hidden output, or the position was trimmed)."""
        if self._hidden is None or not 0 <= position < self.length:
            return None
        i = position - self._hidden_start
        return self._hidden[i] if 0 <= i < len(self._hidden) else None

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """The layers whose residual streams the graph returns beside `hidden` (() where it returns none)."""
        return tuple(self.manifest.source["feature_layers"]) if self._has_streams else ()

    def streams_at(self, position: int) -> np.ndarray | None:
        """The residual streams after the feature_layers (k D,) at a position hidden_at can answer; else None."""
        if self._streams is None or self.hidden_at(position) is None:
            return None
        return self._streams[position - self._hidden_start]

    @property
    def keeps_prefix(self) -> bool:
        """Whether a generation can keep cached positions from the one before (decoding.start_cache): a graph with
        shared state buffers (rewound, never forked) whose steps compute what its blocks compute (exact_steps), so
        a kept position holds what computing the prompt whole would give it."""
        return self._shared and self._exact

    def cached_tokens(self) -> list[int]:
        """The tokens whose keys and values the cache holds, position by position, where it keeps_prefix; else []."""
        return self._ids[:self.length] if self.keeps_prefix else []

    def reset(self) -> None:
        self._hidden, self._hidden_start, self._streams = None, 0, None
        if self._shared:
            self._cache.length = 0  # the buffers stay: their old positions are never read
        else:
            self._state = [self._empty] * len(self.state_in)

    def reserve(self, positions: int) -> None:
        """Size the state buffers for `positions` in all (a prompt plus the tokens to generate), so that
        decoding never regrows them; graphs without shared buffers need nothing."""
        if self._shared:
            self._cache.reserve(min(int(positions), self.max_len))

    def forward(self, tokens: Sequence[int], last: int | None = None) -> np.ndarray:
        """-> logits (T, V) of the block, or of its `last` positions only (a graph with a "last" input
        then skips the head for the others: SmolLM2's head is a third of a step)."""
        if len(tokens) == 0:
            raise ValueError("empty token block")
        if self.length + len(tokens) > self.max_len:
            raise ValueError(f"{self.length + len(tokens)} positions exceed the context of {self.max_len}")
        n = len(tokens) if last is None else min(int(last), len(tokens))
        if n < 1:
            raise ValueError(f"last must be >= 1, got {last}")
        if self.spill and len(tokens) > ROWS_CHUNK:
            return self._forward_chunks(tokens, n)
        return self._forward_block(tokens, n)

    def _forward_chunks(self, tokens: Sequence[int], n: int) -> np.ndarray:
        """forward() of a block longer than ROWS_CHUNK on a graph that spills: calls of ROWS_CHUNK tokens, each asked
        for the rows it holds among the block's last n (at least one), the hidden states and streams joined."""
        before = self.length
        start = before + len(tokens) - n
        logits, hidden, streams = [], [], []
        try:
            for i in range(0, len(tokens), ROWS_CHUNK):
                piece = tokens[i:i + ROWS_CHUNK]
                need = n - (len(tokens) - i - len(piece))  # this call's rows among the last n
                out = self._forward_block(piece, max(1, min(need, len(piece))))
                if need > 0:
                    logits.append(out[-need:])
                    hidden.append(self._hidden[-need:] if self._hidden is not None else None)
                    streams.append(self._streams[-need:] if self._streams is not None else None)
        except BaseException:  # a call that fails part way: the cache holds what it held before the block
            self.trim(self.length - before)
            self._hidden, self._streams = None, None
            raise
        join = lambda parts: None if parts[0] is None else np.concatenate(parts)  # noqa: E731
        self._hidden, self._hidden_start, self._streams = join(hidden), start, join(streams)
        return np.concatenate(logits)

    def _forward_block(self, tokens: Sequence[int], n: int) -> np.ndarray:
        """forward() of one call: the logits of the block's last n positions."""
        start = self.length + len(tokens) - n  # the first position whose logits (and hidden state) come back
        # min_rows: pad a short block with scratch tokens (where the context has room) and ask for enough rows
        pad = max(0, min(self._min_rows - len(tokens), self.max_len - self.length - len(tokens)))
        rows = min(max(n, self._min_rows), len(tokens) + pad)
        ids = np.asarray([list(tokens) + [PAD_TOKEN] * pad], dtype=np.int64)
        if self._shared:
            del self._ids[self.length:]  # positions past the cache's length were trimmed
            logits, hidden, streams = self._cache.run(ids, rows)
            self._ids.extend(ids[0].tolist())
        else:
            feed = {"tokens": ids, **dict(zip(self.state_in, self._state))}
            if self._has_last:
                feed[LAST_INPUT] = np.array([rows], np.int64)
            out = dict(zip(self._output_names, self.session.run(None, feed)))
            self._state = [out[name] for name in self.state_out]
            logits = out["logits"][0][-rows:]
            hidden = out[HIDDEN_OUTPUT][0][-rows:] if self._has_hidden else None
            streams = out[FEATURES_OUTPUT][0][-rows:] if self._has_streams else None
        if pad or rows > n:  # drop the scratch rows and the rows nobody asked for
            end = rows - pad
            logits = logits[end - n:end]
            hidden = hidden[end - n:end] if hidden is not None else None
            streams = streams[end - n:end] if streams is not None else None
            if pad:
                self.trim(pad)
        self._hidden, self._hidden_start, self._streams = hidden, start, streams
        return logits

    def trim(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot trim {n} positions from a cache holding {self.length}")
        if self._shared:
            self._cache.length -= n  # positions past the length are overwritten, never read
        else:
            keep = self.length - n
            self._state = [s[:, :, :keep] for s in self._state]  # views: trimming copies nothing

    def snapshot(self):
        if self._shared:
            return self._cache.length  # a rewind point (shared buffers are written in place)
        return list(self._state)  # the arrays are never written in place, so references suffice

    def restore(self, state) -> None:
        if self._shared:
            if not isinstance(state, int) or not 0 <= state <= self._cache.length:
                raise ValueError("a shared-buffer cache can only be rewound to one of its own snapshots")
            self._cache.length = state
        else:
            self._state = list(state)


class _SharedCache:
    """The state buffers of a graph with a `past_length` input: (1, G, capacity, S) per key and value,
    bound as both input and output of the session, so that GroupQueryAttention writes each block's keys
    and values in place (no copy of the cache per step, no new arrays). The capacity grows in steps of
    STEP positions (or to a reserved size) up to the model's context; growing copies the valid prefix. SPARE
    positions past a call's end stay free: a graph that pads attention writes its padded row's key and value
    there (heron.export.gguf_onnx), then the next call writes its own; a graph that spills (rows attention) writes
    `spill` positions per token of the call there, so a call of T tokens keeps spill * T free (T <= ROWS_CHUNK)."""

    STEP, SPARE = 256, 1

    def __init__(self, session, state_in: list[str], state_out: list[str], manifest: LMManifest, hidden: bool = False,
                 streams: bool = False, spill: int = 0):
        import onnxruntime as ort

        self._ort, self.session = ort, session
        self.state_in, self.state_out = state_in, state_out
        self.kv_heads, self.head_dim, self.max_len = manifest.n_kv_heads, manifest.head_dim, manifest.max_seq_len
        self.length, self.capacity, self.hidden, self.streams = 0, 0, hidden, streams
        self.spill = spill
        self.rows: np.ndarray | None = None  # ROWS_INPUT's value (OnnxLM.exact_steps); None: the graph has none
        self.arrays: list[np.ndarray] = []  # the buffers' memory, which onnxruntime writes through `binding`
        self.binding = session.io_binding()
        # the outputs as onnxruntime's own vector: IOBinding.get_outputs would wrap every bound state buffer in a
        # Python OrtValue each call, to read the first one to three
        raw = getattr(self.binding, "_iobinding", None)
        self._outputs = raw.get_outputs if raw is not None and hasattr(raw, "get_outputs") else self.binding.get_outputs

    def set_rows(self, rows: int) -> None:
        """ROWS_INPUT's value, bound once (now, and again whenever reserve rebinds), not on every call."""
        self.rows = np.array([rows], np.int64)
        if self.capacity:
            self.binding.bind_cpu_input(ROWS_INPUT, self.rows)

    def reserve(self, positions: int) -> None:
        if positions <= self.capacity:
            return
        capacity = min(self.max_len + self.room(ROWS_CHUNK), max(positions, 2 * self.capacity, self.STEP))
        # one array per state: a block of all of them (>= 4 MiB) would get huge pages from numpy, which made the first
        # decode that grows the cache slower (each 2 MiB page faulted in and zeroed whole) and kept all of it resident
        arrays = [np.zeros((1, self.kv_heads, capacity, self.head_dim), np.float32) for _ in self.state_in]
        for new, old in zip(arrays, self.arrays):  # the valid prefix moves over
            new[:, :, :self.length] = old[:, :, :self.length]
        self.arrays, self.capacity = arrays, capacity
        b = self.binding
        b.clear_binding_inputs(), b.clear_binding_outputs()
        if self.rows is not None:
            b.bind_cpu_input(ROWS_INPUT, self.rows)
        b.bind_output("logits")  # first: read back, with the hidden state (and streams) where the graph has it
        if self.hidden:
            b.bind_output(HIDDEN_OUTPUT)
        if self.streams:
            b.bind_output(FEATURES_OUTPUT)
        for name_in, name_out, a in zip(self.state_in, self.state_out, arrays):
            buf = self._ort.OrtValue.ortvalue_from_numpy(a)  # shares a's memory
            b.bind_ortvalue_input(name_in, buf)
            b.bind_ortvalue_output(name_out, buf)  # the same buffer: extended in place

    def room(self, tokens: int) -> int:
        """Free positions a call of `tokens` tokens needs past its end."""
        return max(self.SPARE, self.spill * tokens)

    def run(self, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """ids (1, T) -> the logits (n, V) of the block's last n positions, their hidden states (n, D) and
        streams (n, k D) (None where the graph has no such output); the cache holds T more."""
        T = ids.shape[1]
        self.reserve(self.length + T + self.room(T))
        b = self.binding
        b.bind_cpu_input("tokens", ids)
        b.bind_cpu_input(PAST_INPUT, np.array([self.length], np.int64))
        b.bind_cpu_input(LAST_INPUT, np.array([n], np.int64))
        b.bind_output("logits")  # unallocated each call: its shape follows n
        if self.hidden:
            b.bind_output(HIDDEN_OUTPUT)
        if self.streams:
            b.bind_output(FEATURES_OUTPUT)
        self.session.run_with_iobinding(b)
        self.length += T
        outs = self._outputs()
        return (outs[0].numpy()[0], outs[1].numpy()[0] if self.hidden else None,
                outs[2].numpy()[0] if self.streams else None)


def _check_providers(providers: Sequence[str]) -> list[str]:
    import onnxruntime as ort

    unknown = [p for p in providers if p not in ort.get_available_providers()]
    if unknown:
        raise ValueError(f"onnxruntime here offers {ort.get_available_providers()}, not {unknown}")
    return list(providers)


def load_tokenizer(path: str | Path):
    """The bundle's tokenizer (the `tokenizers` package)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError("LM generation needs the 'tokenizers' package: pip install tokenizers") from e
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception for malformed files
        raise ValueError(f"{path} is not a readable tokenizer: {str(e)[:200]}") from None


class Detokenizer:
    """Turns a growing id list into text increments in O(1) per token, never splitting a UTF-8 character.

    Only a short window is decoded each time (mlx-lm's and TGI's incremental scheme): the text of
    ids[prefix:] minus that of ids[prefix:read], where `read` is the end of what was already emitted
    and `prefix` a few tokens before it (a token's text can depend on its left neighbour). An
    incomplete multi-byte character (a trailing U+FFFD) is held back until the token that completes it.
    """

    CONTEXT = 4  # tokens of left context decoded with each new one

    def __init__(self, decode, prompt_ids: list[int]):
        self.decode = decode
        self.ids = list(prompt_ids)[-self.CONTEXT:]
        self.prefix, self.read = 0, len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.decode is None:
            return ""
        before = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if len(text) <= len(before) or text.endswith("\ufffd"):  # nothing new yet, or half a character
            return ""
        new = text[len(before):]
        keep = max(0, len(self.ids) - self.CONTEXT)  # drop what no later token needs: memory stays O(1) too
        self.ids = self.ids[keep:]
        self.prefix, self.read = 0, len(self.ids)
        return new


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))
