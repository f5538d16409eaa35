"""A draft head on the target's own features, run with onnxruntime: from the target's hidden state at the
position that chose the last token, and that token, it proposes the next ones without running the target
(heron.models.lm.draft_head trains it; heron.export.draft_head writes the bundle). The target verifies every
window in one call, so the output is the target's own (greedy: the same tokens; sampling: the same
distribution).

A bundle is head.onnx plus a manifest naming the target it was trained for (its GGUF file's sha256) and the
N words it proposes among (the target's ids); the head only ever proposes those, verification stays exact.
The head's output layer is the target's own embedding rows of those words (int8 blocks of 32): a bundle with
`rows` in its manifest does not store them (head.onnx marks them external) and takes them from the target at
load (its graph file, or the GGUF file it was built from in memory), checked against the sha256 recorded at
export; that keeps SmolLM2's head at 7.2 MB instead of 11.9.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from heron.runtime.decoding import (Acceptance, DecodeStats, DraftSeeds, GenerationOptions, LookupDrafter,
                                    RoundPrices, best_window, confidence_window, draw, drafted, free_draft_tokens,
                                    probs, round_prices, verify_cost, verify_costs, window_prices)
from heron.runtime.manifest import BundleError, FileEntry, document_fields, files_dict, read_files, sha256_bytes
from heron.runtime.native.head import HEAD_BITS

HEAD_FORMAT = "heron-draft-head/1"
HEAD_FILE = "head.onnx"
# the shipped head, for SmolLM2-135M-Instruct (Q4_1 GGUF); its identity is pinned (heron.runtime.pinned)
DEFAULT_HEAD = Path(__file__).resolve().parent / "assets" / "draft-head-smollm2"
MAX_WORDS = 1 << 17
# per-position acceptance assumed before any round (weighted as decoding.PRIOR_WEIGHT tries), and the decay of older
# rounds: the window is cut to the length that pays for its verification (best_window), as prompt lookup does
HEAD_PRIOR, HEAD_DECAY = 0.6, 0.9
# the target's int8 embedding blocks (heron.export.gguf_onnx): (V, D/32, 32) uint8 (q + 128) and (V, D/32) scales
TARGET_ROWS = ("token_embd.q", "token_embd.scales")
ROWS_FROM = "target"
ROW_KEYS = ("packed", "scales", "scales_flat")  # manifest `rows`: the head.onnx initializers the rows fill
ENGINES = ("auto", "native", "onnxruntime")
HEAD_NORM_EPS = 1e-5  # heron.models.lm.draft_head.DraftHeadConfig.norm_eps: every exported head's norms


@dataclass(frozen=True)
class DraftHeadManifest:
    name: str
    dim: int                    # D: the target's hidden size (the head's input)
    n_words: int                # N: the words the head proposes among
    vocab_size: int             # the target's vocabulary
    words: tuple[int, ...]      # the target's ids of the head's N output rows
    target: dict                # what it was trained for: {"gguf": file name, "gguf_sha256": ...}
    files: dict[str, FileEntry]
    training: dict = field(default_factory=dict)  # the training report (held-out agreement, commands)
    # {} : head.onnx holds its output rows; else {"from": "target", "packed" / "scales" / "scales_flat": the
    # head.onnx initializers they fill, "sha256": rows_sha256 of the target's rows at export}
    rows: dict = field(default_factory=dict)
    # the target's middle layers whose residual streams the head fuses at its first step (head.onnx's `streams`
    # input, k D wide); () : the head reads the final feature only
    stream_layers: tuple[int, ...] = ()
    format: str = HEAD_FORMAT

    TOP = ("format", "name", "dim", "n_words", "vocab_size", "words", "target", "training", "rows", "stream_layers",
           "files")

    @classmethod
    def from_dict(cls, m: Any, where: str) -> "DraftHeadManifest":
        f = document_fields(m, where, cls.TOP)
        f.str("format", (HEAD_FORMAT,))
        name = f.str("name")
        dim, n = f.int("dim", 1, 1 << 16), f.int("n_words", 1, MAX_WORDS)
        vocab = f.int("vocab_size", 2, 1_000_000)
        words = tuple(f.int_list("words", 0, vocab - 1, max_len=MAX_WORDS))
        if len(words) != n or len(set(words)) != n:
            f.fail("words", f"must list {n} distinct word ids (n_words)")
        target = f.obj("target")
        f.str(("target", "gguf_sha256"))
        files = read_files(f)
        if set(files) != {HEAD_FILE} or files[HEAD_FILE].path != HEAD_FILE:
            f.fail("files", f"must list {HEAD_FILE} alone, at its own name")
        layers = tuple(f.int_list("stream_layers", 0, 1 << 12, max_len=16)) if "stream_layers" in m else ()
        if len(set(layers)) != len(layers):
            f.fail("stream_layers", "must be distinct layers")
        rows = f.obj("rows", optional=True) or {}
        if rows:
            f.only("rows", ("from", "sha256", *ROW_KEYS))
            f.str(("rows", "from"), (ROWS_FROM,))
            if not re.fullmatch(r"[0-9a-f]{64}", f.str(("rows", "sha256"))):
                f.fail("rows.sha256", "must be 64 hex digits")
            if len({f.str(("rows", k)) for k in ROW_KEYS}) != len(ROW_KEYS):
                f.fail("rows", f"must name three different initializers ({', '.join(ROW_KEYS)})")
        return cls(name, dim, n, vocab, words, dict(target), files, dict(f.obj("training")), dict(rows), layers)

    def to_dict(self) -> dict:
        return {"format": self.format, "name": self.name, "dim": self.dim, "n_words": self.n_words,
                "vocab_size": self.vocab_size, "words": list(self.words), "target": dict(self.target),
                "training": dict(self.training), **({"rows": dict(self.rows)} if self.rows else {}),
                **({"stream_layers": list(self.stream_layers)} if self.stream_layers else {}),
                "files": files_dict(self.files)}


def write_head_manifest(root: str | Path, manifest: DraftHeadManifest) -> str:
    from heron.runtime.bundle import write_manifest
    return write_manifest(root, manifest)


def rows_sha256(packed: np.ndarray, scales: np.ndarray) -> str:
    """The identity of a head's output rows: int8 blocks (N, D/32, 32) uint8 and their scales (N, D/32)."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(packed, np.uint8).tobytes())
    h.update(np.ascontiguousarray(scales, "<f4").tobytes())
    return h.hexdigest()


def target_rows(backend, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The target's int8 embedding blocks of `words`: packed (N, D/32, 32) uint8, scales (N, D/32) float32, read
    from its graph file (a bundle folder) or from the GGUF file it was built from in memory."""
    from heron.runtime.gguf import GGUFFile, q8_0_blocks
    from heron.runtime.manifest import LM_WEIGHTS
    from heron.runtime.onnx_file import read_initializers

    folder, source = getattr(backend, "folder", None), getattr(backend, "source_file", None)
    if folder is not None:
        t = read_initializers(Path(folder) / LM_WEIGHTS[backend.weights], TARGET_ROWS)
        packed, scales = t[TARGET_ROWS[0]], t[TARGET_ROWS[1]]
        if packed.ndim != 3 or scales.shape != packed.shape[:2] or len(packed) != backend.vocab_size:
            raise BundleError(f"{folder}: its {TARGET_ROWS[0]} is not a table of int8 blocks, one row per word")
        return packed[words], scales[words]
    if source is not None:
        gguf = GGUFFile(source)
        info = gguf.tensors.get("token_embd.weight")
        if info is None or info.type_name != "Q8_0":
            raise ValueError(f"{source}: the draft head's rows are the target's Q8_0 embedding blocks; this file's "
                             f"token_embd.weight is {info.type_name if info else 'missing'}")
        n, k = info.shape
        raw = np.asarray(gguf.raw("token_embd.weight")).reshape(n, -1)[words]
        return q8_0_blocks(raw, len(words), k)
    raise ValueError("this draft head takes its output rows from its target's file: load the target from a bundle "
                     "folder or a GGUF file")


class DraftHead:
    """A verified draft-head bundle and what runs it: step(hidden, token) -> (logits over its words, its own
    feature); greedy(hidden, token, g) -> g chained first choices. target: the backend it drafts for; checked here
    (check_target) when given, and required by a bundle whose output rows come from the target. sha256: the
    identity (manifest.sha256) the bundle must have; the shipped head's is pinned.

    engine: "onnxruntime" (head.onnx in a session of `threads`), "native" (its weights in heron's native library,
    run in the native target's own OpenMP team: the target's threads, no session between its steps; a head that
    fuses middle-layer streams has no native form), or "auto": native for a native target where it can, else
    onnxruntime. Both compute the graph's head; the native one rounds activations as the native decoder does
    (int16 per block, fp16 block scales), so their logits differ by a rounding's worth (the drafts may, the
    output never: the target verifies every word).

    bits: the native head's input projection and blocks as head.onnx stores them (8: int8 blocks) or re-rounded at
    load to 4-bit blocks (4: heron.runtime.native.head.round_q4_1; its output rows stay 8-bit): fewer bytes a step,
    first choices a little apart from the 8-bit head's (BENCHMARKS.md "A 4-bit draft head"). The native engine
    only."""

    def __init__(self, folder: str | Path = DEFAULT_HEAD, threads: int = 1, target=None, sha256: str | None = None,
                 engine: str = "auto", bits: int = 8):
        from heron.runtime.bundle import check_identity, expected_identity, read_manifest, verify_files
        from heron.runtime.onnx_file import external_initializers
        from heron.runtime.sessions import open_session

        folder = Path(folder)
        expected, what = expected_identity(folder, DEFAULT_HEAD, "draft-head-smollm2", sha256)
        raw, self.identity = read_manifest(folder, "draft-head")
        check_identity(folder, self.identity, expected, what)
        where = str(folder / "manifest.json")
        self.manifest = m = DraftHeadManifest.from_dict(raw, where)
        self.folder = folder
        verify_files(folder, m.files, where)
        graph = (folder / HEAD_FILE).read_bytes()  # the session reads these bytes: the ones checked here
        if sha256_bytes(graph) != m.files[HEAD_FILE].sha256:
            raise BundleError(f"{folder / HEAD_FILE}: changed while it was read")
        if target is not None:
            self.check_target(target)
        words = np.asarray(m.words, np.int64)
        outside = external_initializers(graph, str(folder / HEAD_FILE))
        initializers = None
        if m.rows:
            if target is None:
                raise ValueError(f"the draft head {folder} takes its output rows from its target: load it with the "
                                 "target (DraftHead(folder, target=backend))")
            if set(outside) != {m.rows[k] for k in ROW_KEYS}:
                raise BundleError(f"{where}: {HEAD_FILE}'s external initializers {sorted(outside)} are not the rows "
                                  "the manifest names")
            packed, scales = target_rows(target, words)
            if rows_sha256(packed, scales) != m.rows["sha256"]:
                raise BundleError(f"{folder}: the target's embedding rows are not the ones this head was exported "
                                  "with (another model or an edited file)")
            initializers = {m.rows["packed"]: packed, m.rows["scales"]: scales,
                            m.rows["scales_flat"]: scales.reshape(-1)}
        elif outside:
            raise BundleError(f"{where}: {HEAD_FILE} keeps initializers outside the file ({sorted(outside)[:3]}) "
                              "and the manifest names no source for them")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if bits not in HEAD_BITS or isinstance(bits, bool):
            raise ValueError(f"bits must be one of {', '.join(map(str, HEAD_BITS))}, got {bits!r}")
        self.words = words
        self.native, self.session = None, None
        native_target = getattr(target, "name", None) == "native" and hasattr(target, "_lib")
        if bits != 8 and (engine == "onnxruntime" or not native_target):
            raise ValueError(f"a {bits}-bit head runs in the native library, beside a native target "
                             "(load_lm(..., engine='native'))")
        if engine == "native" or (engine == "auto" and native_target and not m.stream_layers):
            if not native_target or m.stream_layers:
                raise ValueError("the native head runs beside a native target (load_lm(..., engine='native')) and "
                                 "reads the final feature only" + (" (this head fuses middle-layer streams)"
                                                                     if m.stream_layers else ""))
            try:
                self.native = _native_head(graph, where, m, target, initializers, bits)
                self.engine = "native"
                return
            except BundleError:
                if engine == "native" or bits != 8:
                    raise  # auto: the graph's weights have no native form (e.g. a scale fp16 cannot hold): onnxruntime
        self.engine = "onnxruntime"
        self.session = open_session(graph, threads, ["CPUExecutionProvider"], initializers=initializers)
        ins = {i.name: i.shape for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        k = len(m.stream_layers)
        if list(ins) != ["hidden", "token", *(["streams"] if k else [])] or list(outs) != ["logits", "feature"] \
                or ins["hidden"][-1] != m.dim or outs["logits"][-1] != m.n_words \
                or (k and ins["streams"][-1] != k * m.dim):
            raise BundleError(f"{where}: {HEAD_FILE} is not a draft head of dim {m.dim} over {m.n_words} words"
                              + (f" fusing {k} streams" if k else ""))
        self._no_streams = np.zeros((1, k * m.dim), np.float32) if k else None

    @property
    def stream_layers(self) -> tuple[int, ...]:
        """The target's middle layers whose streams the head fuses at its first step (() : none)."""
        return self.manifest.stream_layers

    def step(self, hidden: np.ndarray, token: int, streams: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """hidden (D,), the word that followed it -> logits (N,) over self.words, the head's feature (D,).
        streams (k D,): the target's middle layers at hidden's position, for a head that fuses them (its first
        step; None, or a chained step from its own feature: zeros, which the fusion maps to nothing)."""
        if self.native is not None:
            return self.native.step(hidden, token)
        feed = {"hidden": np.asarray(hidden, np.float32)[None], "token": np.array([token], np.int64)}
        if self._no_streams is not None:
            feed["streams"] = self._no_streams if streams is None else np.asarray(streams, np.float32)[None]
        logits, feature = self.session.run(None, feed)
        return logits[0], feature[0]

    def greedy(self, hidden: np.ndarray, token: int, g: int, streams: np.ndarray | None = None,
               prices: np.ndarray | None = None) -> list[int]:
        """Up to g words chained from hidden and token, each the head's first choice (the target's ids): a greedy
        window; g of them, or with prices (g,) (decoding.window_prices) as many as decoding.confidence_window keeps
        from the head's own probabilities. The native head runs the steps in one call."""
        if self.native is not None:
            return self.words[self.native.greedy(hidden, token, g, prices)].tolist()
        window = []

        def first_choice_probs():
            nonlocal hidden, token, streams
            for _ in range(g):
                logits, hidden = self.step(hidden, token, streams)
                streams = None  # chained steps start from the head's own feature
                k = int(np.argmax(logits))
                token = int(self.words[k])
                window.append(token)
                yield 1.0 / float(np.exp(logits.astype(np.float64) - logits[k]).sum())

        if prices is None:
            for _ in first_choice_probs():
                pass
            return window
        return window[:confidence_window(first_choice_probs(), prices)]

    def check_target(self, backend) -> None:
        """The head reads this target's features: same GGUF file (sha256: a bundle's manifest.source, a native
        target's own `source`), and a backend that returns its hidden states (has_hidden)."""
        src = getattr(getattr(backend, "manifest", None), "source", None) or getattr(backend, "source", None) or {}
        want = self.manifest.target.get("gguf_sha256")
        if src.get("gguf_sha256") != want:
            raise ValueError(f"the draft head {self.folder} was trained for {self.manifest.target.get('gguf')} "
                             f"(sha256 {want[:12]}...); this model is {src.get('gguf') or 'another model'}")
        if getattr(backend, "vocab_size", self.manifest.vocab_size) != self.manifest.vocab_size:
            raise ValueError(f"the draft head {self.folder} was exported for a vocabulary of {self.manifest.vocab_size} "
                             f"words; this model has {backend.vocab_size}")
        if not getattr(backend, "has_hidden", False):
            raise ValueError("the draft head needs the target's hidden states: a graph with a `hidden` output "
                             "(re-export it with this heron: heron lm export smollm2 --out DIR)")
        if self.stream_layers and tuple(getattr(backend, "feature_layers", ())) != self.stream_layers:
            raise ValueError(f"the draft head {self.folder} fuses the streams of the target's layers "
                             f"{list(self.stream_layers)}; this graph returns {list(getattr(backend, 'feature_layers', ()))}"
                             " (re-export it with this heron: heron lm export smollm2 --out DIR)")


def _native_head(graph: bytes, where: str, m: DraftHeadManifest, target, rows: dict | None, bits: int = 8):
    """head.onnx's weights (heron.export.draft_head's initializers) as a native head in the target's library. rows:
    the output rows supplied from the target (the external initializers), or None (stored in the graph). bits:
    NativeHead's."""
    from heron.runtime.native.head import NativeHead
    from heron.runtime.onnx_file import initializer_names, initializers_in

    names = initializer_names(graph, where)
    n_blocks = 0
    while f"blocks.{n_blocks}.norm" in names:
        n_blocks += 1
    linears = ["proj"] + [f"blocks.{i}.{k}" for i in range(n_blocks) for k in ("gate", "up", "down")]
    want = [f"{n}.{p}" for n in linears for p in ("q", "scales")] + [f"blocks.{i}.norm" for i in range(n_blocks)]
    want += ["emb_norm", "bias", "oov", "row_of_word"] + ([] if rows else ["words.q", "words.scales_2d"])
    try:
        t = initializers_in(graph, want, where)
        if rows:
            packed, scales = rows[m.rows["packed"]], rows[m.rows["scales"]]
        else:
            packed, scales = t["words.q"], t["words.scales_2d"]
        head = NativeHead(target._lib, {n: (t[f"{n}.q"], t[f"{n}.scales"]) for n in linears}, (packed, scales),
                          t, t["row_of_word"], n_blocks, HEAD_NORM_EPS, threads=target.threads, bits=bits)
    except (ValueError, KeyError) as e:
        raise BundleError(f"{where}: {HEAD_FILE} has no native form here ({e})") from None
    if (head.dim, head.n_words, head.vocab_size) != (m.dim, m.n_words, m.vocab_size):
        raise BundleError(f"{where}: {HEAD_FILE}'s weights are not a head of dim {m.dim} over {m.n_words} words")
    return head


class HeadDrafter:
    """The head as a Drafter: up to g words proposed from the target's hidden state at len(seq) - 2 (the
    position whose logits chose seq[-1]), chained through the head's own features; ([], None) when the target
    has not computed that state (before the first target call). adaptive: the window is cut to the length that pays
    for its verification: greedy, from the head's own probability of each word it drafts (confident=True:
    decoding.confidence_window, each window sized for the text at hand; in the native library, inside the head's
    one call), else from the acceptance seen so far (best_window: one price per token, since the head's later words
    cost head steps and hold less than copied text, replayed and measured in session 43); both price a drafted word
    at HEAD_STEP_COST and its verification at the target's `cost` per word past its `free` draft tokens, or by its
    table `costs` where it has one and the window follows the head's probabilities. lookup: a prompt-lookup drafter
    asked first: where the context repeats itself (code edits, quotes) its free windows go first, the head drafts
    everywhere else."""

    def __init__(self, target, head: DraftHead, opts: GenerationOptions, seeds: DraftSeeds,
                 stats: DecodeStats | None = None, adaptive: bool = True, cost: float = 0.5,
                 lookup: LookupDrafter | None = None, free: int = 0, costs=None, confident: bool = False,
                 prices: RoundPrices | None = None):
        self.target, self.head, self.opts, self.seeds, self.stats = target, head, opts, seeds, stats
        self.adaptive, self.cost, self.lookup, self.free, self.costs = adaptive, cost, lookup, free, costs
        self.confident = confident
        # windows priced by timing their rounds (greedy, adaptive: decoding.RoundPrices), per source
        self.prices = prices if adaptive and opts.temperature == 0 else None
        self.accepted = Acceptance(HEAD_PRIOR, HEAD_DECAY)
        self.vocab_size = target.vocab_size
        self._source: str | None = None  # the last window's: "lookup", "head" or None (a plain step)
        self._id_order = np.argsort(head.words, kind="stable")  # the head's rows in the order of their word ids

    def observe(self, proposed: int, accepted: int) -> None:
        if self._source == "lookup":
            self.lookup.observe(proposed, accepted)
            return
        self.accepted.observe(proposed, accepted)

    def timed(self, proposed: int, seconds: float) -> None:
        """After a round: it took `seconds` with a window of `proposed` words (0: a plain step)."""
        self.prices.record(self._source if proposed else None, proposed, seconds)

    def _prices(self, g: int, table: bool):
        """What head windows of 1..g words add to a plain step, in plain steps: HEAD_STEP_COST a word to propose
        and the target's price to verify (its table where `table`, else one price per word), or, where rounds are
        timed, what they measured (RoundPrices: the head's steps and the Python between as they run)."""
        prior = window_prices(g, self.cost, self.free, HEAD_STEP_COST, self.costs if table else None)
        return prior if self.prices is None else self.prices.prices("head", prior).astype(np.float32)

    def propose(self, seq: list[int], g: int) -> tuple[list[int], np.ndarray | None]:
        self._source = None
        if self.lookup is not None:
            window, qs = self.lookup.propose(seq, g)
            if window:
                self._source = "lookup"
                return window, qs
        if self.prices is not None and self.prices.wants_plain():  # a plain step to time, in place of a head window
            return [], None
        hidden = self.target.hidden_at(len(seq) - 2)
        if hidden is None:
            return [], None
        greedy = self.opts.temperature == 0  # its first choices, a deterministic draft: no distributions kept
        prices = None
        if self.adaptive and greedy and self.confident:
            prices = self._prices(g, True)
        elif self.adaptive:
            first, later = self.accepted.rates()
            if self.prices is None:
                g = best_window(g, first, self.cost, self.free, HEAD_STEP_COST, later=later)
            else:
                g = best_window(g, first, later=later, costs=tuple(float(c) for c in self._prices(g, False)))
            if g == 0:  # not worth it now: drift back towards the prior so drafting can resume
                self.accepted.recover(HEAD_DECAY)
                return [], None
        t0 = time.perf_counter()
        rng = None if greedy else self.seeds.at(len(seq))  # a window's draws depend on where it starts only
        streams = self.target.streams_at(len(seq) - 2) if self.head.stream_layers else None
        steps = g
        if greedy:
            window, qs = self.head.greedy(hidden, seq[-1], g, streams, prices), []
            steps = greedy_steps(len(window), g, prices)
        else:
            window, qs = self._sampled(hidden, seq[-1], g, streams, rng)
        if self.stats is not None:
            self.stats.draft_calls += steps
            self.stats.draft_time_s += time.perf_counter() - t0
        if not window:
            return [], None
        self._source = "head"
        return window, (None if greedy else qs)

    def _sampled(self, hidden, token: int, g: int, streams, rng) -> tuple[list[int], np.ndarray]:
        """g words chained from hidden, each drawn from the head's distribution at the options' temperature and top-p
        -> (the words, their distributions (g, V) over the target's vocabulary). Drawn over the head's own words in
        the order of their ids: the draws (a uniform's inverse CDF; up to rounding) and the top-p cut of the whole
        vocabulary, whose other words have probability 0, at a sixth of the work."""
        window, order = [], self._id_order
        ids = self.head.words[order]
        qs = np.zeros((g, self.vocab_size))
        for i in range(g):
            logits, hidden = self.head.step(hidden, token, streams)
            streams = None  # chained steps start from the head's own feature
            q = probs(logits[order], *self.opts.sampling)
            token = int(ids[draw(q, rng)])
            qs[i, ids] = q
            window.append(token)
        return window, qs


def greedy_steps(kept: int, g: int, prices) -> int:
    """The head steps a greedy window of up to g words ran to keep `kept`: g without prices; with them the step that
    ended the window ran too."""
    return g if prices is None else min(kept + 1, g)


def head_generate(target, head: DraftHead, prompt: Sequence[int], opts: GenerationOptions, gamma: int,
                  stats: DecodeStats | None = None, detok=None, adaptive: bool = True, lookup: bool = True,
                  confident: bool | None = None):
    """Speculative decoding with the draft head (and prompt lookup first, lookup=True): the engine's one verify
    loop (decoding.drafted). confident: greedy windows sized by the head's own probabilities (HeadDrafter); None:
    CONFIDENT_WINDOWS."""
    head.check_target(target)  # the same check DraftHead(folder, target=...) made, for a head loaded without one
    stats = stats if stats is not None else DecodeStats(method="head")
    cost, free, costs = verify_cost(target), free_draft_tokens(target), verify_costs(target)
    prices = round_prices(target, opts)  # greedy: windows priced by timing their rounds (None: the table's prices)
    first = LookupDrafter(target.vocab_size, stats, adaptive, cost, free, costs, prices) if lookup else None
    drafter = HeadDrafter(target, head, opts, DraftSeeds(opts.seed), stats, adaptive, cost, first, free, costs,
                          CONFIDENT_WINDOWS if confident is None else confident, prices)
    yield from drafted(target, drafter, prompt, opts, gamma, stats, detok)


# greedy windows sized by the head's own probabilities (decoding.confidence_window; session 45) rather than by the
# acceptance of the rounds before: more words per target call (1.68 against 1.58 on the 8 chat questions), but each
# window costs the head step that ends it, and in use the two measured within the VM's noise of each other (chat
# questions -6% and -1%, the single chat +5%, the summary +6%, the code edit -4%: BENCHMARKS.md "Prompt lookup's later
# words from their own prior, six-word suffixes first"); off by default, an A/B row of scripts/bench_smollm2_spec.py
CONFIDENT_WINDOWS = False
# the head's own step in target steps (SmolLM2 int8x2, machine B; scripts/bench_smollm2_spec.py measures it)
HEAD_STEP_COST = 0.05
