"""SmolLM2-135M-Instruct decoding on this CPU: heron's backends side by side, each in its own process.

    .venv/bin/python scripts/bench_smollm2.py --out runs/bench-smollm2      # writes only under --out

Backends: heron's onnxruntime bundle exported from the GGUF's own blocks with --compute int8x2 and int8
(onnx:fp32 on request: ~3 tokens/s, onnxruntime's fp32 path for 4/8-bit blocks is slow; onnx:int8x2-grown: the
same graph with states that grow by a copy per step instead of shared buffers extended in place; onnx:int8-1row /
onnx:int8-2row: the int8 graph with one-token calls at one row / padded with a scratch token to two (what heron
chooses itself at load: one row where its steps then equal its blocks, OnnxLM.one_row_exact; two rows was every
int8 graph's default before session 27); onnx:COMPUTE-nopad: a graph whose attention is not padded to two query
rows, as before session 27 (run padded with a scratch token where its one-row steps would not equal its blocks),
onnx:COMPUTE-nopad1row: that graph at one row per step anyway (plain decoding only); onnx:COMPUTE-fast: one-row
steps, attention included, as `heron lm generate --model smollm2 --fast-steps` builds them (the -nopad graph with
OnnxLM.exact_steps False: plain decoding only); onnx:COMPUTE-fullhead /
onnx:COMPUTE-ranked: a graph whose 8-bit head scores every
word / only the 32 words a 4-bit copy of it ranks first (heron.export.gguf_onnx.HEAD_RANK: int8 ranks by default,
int8x2 does not); onnx:COMPUTE-exactoffsets / onnx:COMPUTE-folded: Q4_1's block offsets as an exact fp32 term
/ folded into the MatMulNBits calls as two 4-bit levels (heron.export.gguf_onnx.OFFSET_LEVELS: int8 folds by
default); onnx:COMPUTE-padded / onnx:COMPUTE-paddedfast: a graph whose attention is padded to two query rows
(exact steps; -paddedfast: its one-row steps), every graph's attention before rows attention became the default in
session 36), native: heron's C decoder on the file's own blocks (heron.runtime.native, int16 activations;
native:int8: with int8 activations),
heron's torch fp32 path (the GGUF dequantized), and `transformers` on the same file when it
is installed, llama.cpp (llama-cpp-python, on the same GGUF file and the same token ids) once
scripts/peers/lm_peers.sh has built its side venv, and ONNX Runtime GenAI (its own int4 CPU model, built by
its builder from the same weights) once scripts/peers/genai_peers.sh has built it. Each backend runs in a process of its
own, kept on the last N cores for N threads where there are more (`pinned`: taskset). Per backend and thread count
(1 and 2): decode tokens/s (128 greedy steps after a chat
prompt, min and median of 3, on each of three prompts: a code request, a chat question and a 404-token text to
summarize; end tokens do not stop the timing loop), prefill tokens/s of a 400-token
prompt, peak RSS of the process, and greedy agreement with heron's torch fp32 path: how many of 8 chat
prompts keep the same first 32 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUESTIONS = ["Write a Python function that reverses a string.", "What is the capital of France?",
             "Name three primary colours.", "Explain recursion in one sentence.", "What is 12 times 12?",
             "Say hello in Spanish.", "Give a synonym for 'happy'.", "What does CPU stand for?"]
# decode tokens/s on issue 24's three prompts (decode_prompts): a code request, a chat question, a text to summarize
CODE_PROMPT = "Write a Python function that checks whether a number is prime, with a docstring."
CHAT_PROMPT = "Explain what a hash table is in a few sentences."
SUMMARY_PARAGRAPHS = 12
NEW_TOKENS, MATCH_TOKENS, PREFILL_TOKENS, REPEATS = 128, 32, 400, 3
PPL_TOKENS, PPL_CHUNK = 1024, 128
COMPUTES = ("int8x2", "int8", "fp32")
ROWS = {"1row": 1, "2row": 2}  # onnx:int8-1row / -2row: the int8 bundle with its one-token calls at this many rows
# onnx:COMPUTE-nopad1row: the -nopad graph with its one-token calls at one row whatever one_row_exact says (attention's
# one-row path: plain decoding only, its steps need not equal its blocks; what the padding costs as contexts grow)
NOPAD_ONE_ROW = "nopad1row"
# onnx:COMPUTE-fast: one-row steps (plain decoding only), as `heron lm generate --model smollm2 --fast-steps` builds
# them: the graph with attention's one-row path (the -nopad bundle) run with exact_steps=False
FAST = "fast"
HEADS = {"fullhead": 0, "ranked": 32}  # onnx:COMPUTE-fullhead / -ranked: the words its 8-bit head scores (rank)
OFFSETS = {"exactoffsets": 0, "folded": 2}  # onnx:COMPUTE-exactoffsets / -folded: Q4_1's offsets as an fp32 term / folded
# onnx:COMPUTE-padded / -paddedfast: the graph with padded attention (heron.export.gguf_onnx ATTENTIONS), run with exact
# steps / one-row steps (exact_steps False)
PADDED, PADDED_FAST = "padded", "paddedfast"
RUNS = Path(__file__).resolve().parents[1] / "runs"


def peer_paths(folder: Path) -> dict[str, Path]:
    """Where the peers' side builds live under `folder` (scripts/peers/*.sh with PEERS_DIR=folder): llama.cpp's
    venv (lm_peers.sh), ONNX Runtime GenAI's venv and its int4 model of SmolLM2 (genai_peers.sh)."""
    return {"llama.cpp": folder / "lm-peers-venv" / "bin" / "python", "genai": folder / "genai-venv" / "bin" / "python",
            "genai_model": folder / "smol-genai"}


_DEFAULT_PEERS = peer_paths(RUNS)  # the default build, which the probes read
GENAI_PYTHON, GENAI_MODEL = _DEFAULT_PEERS["genai"], _DEFAULT_PEERS["genai_model"]


COMMAND_ENV = "HERON_BENCH_COMMAND"  # the command a caller ran, for the table (heron lm bench --peers sets it)


def command_line() -> str:
    """What the table says was run: the caller's command where it gave one (COMMAND_ENV), else this script's own."""
    return os.environ.get(COMMAND_ENV) or " ".join([Path(sys.executable).name, *sys.argv])


def pinned(threads: int) -> list[str]:
    """The command prefix that keeps a backend's process on `threads` CPUs of this process's own (the last ones), so
    that every backend and peer runs on the same cores and the OS does not move it mid-run; [] where taskset is
    missing or there are no more CPUs than threads."""
    import shutil
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not shutil.which("taskset") or len(cpus) <= threads:
        return []
    return ["taskset", "-c", ",".join(map(str, cpus[-threads:]))]


def _held_out_text() -> str:
    """Docstrings of a Python standard-library module: English and code the model was not tuned on here."""
    import ast
    import inspect
    import textwrap
    tree = ast.parse(inspect.getsource(textwrap))
    docs = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))]
    return "\n\n".join(d for d in docs if d)


def decode_prompts() -> dict[str, str]:
    """Issue 24's three prompts by name: the code request, the chat question, and the first SUMMARY_PARAGRAPHS
    paragraphs of configparser's module docstring to summarize (English prose: 404 tokens with SmolLM2's template)."""
    import configparser
    text = "\n\n".join(configparser.__doc__.strip().split("\n\n")[:SUMMARY_PARAGRAPHS])
    return {"code": CODE_PROMPT, "chat": CHAT_PROMPT, "summary": f"Summarize this text in a few sentences:\n\n{text}"}


def _long_text() -> str:
    import inspect
    import json.decoder
    return inspect.getsource(json.decoder)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: reset by exec, unlike getrusage's ru_maxrss, which keeps
    the parent's high-water mark across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(backend: str, threads: int, bundles: Path) -> dict:
    """One backend in this process: -> its figures (called in a child process per backend)."""
    import numpy as np

    import heron
    from heron.runtime.decoding import fresh
    if backend == "transformers":
        return run_transformers(threads)
    if backend.startswith("onnx:"):
        compute, _, variant = backend.split(":")[1].partition("-")
        folder = (compute if variant in ROWS else f"{compute}-nopad" if variant in (NOPAD_ONE_ROW, FAST)
                  else f"{compute}-{PADDED}" if variant == PADDED_FAST else backend.split(":")[1])
        lm = heron.load_lm(bundles / folder, threads=threads, exact_steps=variant not in (FAST, PADDED_FAST))
        if variant in ROWS or variant == NOPAD_ONE_ROW:
            lm.backend.min_rows = ROWS.get(variant, 1)
    elif backend in ("native", "native:int8"):  # heron's C decoder on the file's own blocks (heron.runtime.native)
        lm = heron.load_lm("smollm2", threads=threads, engine="native", prompt_cache=False,
                           compute="int8" if backend == "native:int8" else None)
    else:  # torch fp32 on the dequantized file: the reference ("smollm2" alone now loads the onnx int8x2 graph)
        lm = heron.load_lm("smollm2", threads=threads, engine="torch")
    b = lm.backend

    def greedy(ids: list[int], n: int) -> tuple[list[int], float]:
        fresh(b, len(ids) + n)  # the cache sized up front, as heron lm generate sizes it (no regrowth mid-decode)
        logits = b.forward(ids, last=1)
        out, t0 = [int(np.argmax(logits[-1]))], time.perf_counter()
        for _ in range(n - 1):
            out.append(int(np.argmax(b.forward([out[-1]], last=1)[-1])))
        return out, (n - 1) / (time.perf_counter() - t0)

    speeds = {}
    for name, q in decode_prompts().items():
        prompt = lm.encode(lm.chat_prompt([{"role": "user", "content": q}]))
        speeds[name] = [greedy(prompt, NEW_TOKENS)[1] for _ in range(REPEATS)]
    long_ids = lm.encode(_long_text())[:PREFILL_TOKENS]
    prefill = []
    for _ in range(REPEATS):
        b.reset()
        t0 = time.perf_counter()
        b.forward(long_ids, last=1)  # a prompt's prefill needs its last position's logits only
        prefill.append(len(long_ids) / (time.perf_counter() - t0))
    answers = [greedy(lm.encode(lm.chat_prompt([{"role": "user", "content": q}])), MATCH_TOKENS)[0] for q in QUESTIONS]
    rss = peak_rss_mb()  # before the perplexity pass, which asks for every position's logits
    ids = lm.encode(_held_out_text())[:PPL_TOKENS]
    b.reset()
    nll = 0.0
    for i in range(0, len(ids) - 1, PPL_CHUNK):  # logits of a chunk predict its next tokens
        block = ids[i:i + PPL_CHUNK]
        logits = b.forward(block).astype(np.float64)
        targets = ids[i + 1:i + 1 + len(block)]
        logits = logits[:len(targets)]
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll += float((lse - logits[np.arange(len(targets)), targets]).sum())
    return {"decode_tok_s": speeds, "prefill_tok_s": prefill, "answers": answers, "peak_rss_mb": rss,
            "ppl": float(np.exp(nll / (len(ids) - 1))),
            "huge_pages_mb": getattr(b, "huge_pages_bytes", 0) / 2 ** 20}  # heron.runtime.pages (onnx backends)


def run_transformers(threads: int) -> dict:
    import torch
    import transformers

    from heron.paths import named_lm_path
    torch.set_num_threads(threads)
    path = named_lm_path("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              torch_dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    def ids_of(q):
        x = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True, add_generation_prompt=True,
                                    return_tensors="pt")
        return x if torch.is_tensor(x) else x["input_ids"]

    @torch.no_grad()
    def greedy(ids, n):
        out = model(ids, use_cache=True, logits_to_keep=1)
        past, nxt = out.past_key_values, [int(out.logits[0, -1].argmax())]
        t0 = time.perf_counter()
        for _ in range(n - 1):
            out = model(torch.tensor([[nxt[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt.append(int(out.logits[0, -1].argmax()))
        return nxt, (n - 1) / (time.perf_counter() - t0)

    speeds = {name: [greedy(ids_of(q), NEW_TOKENS)[1] for _ in range(REPEATS)] for name, q in decode_prompts().items()}
    long_ids = torch.tensor([tok(_long_text())["input_ids"][:PREFILL_TOKENS]])
    prefill = []
    with torch.no_grad():
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            model(long_ids, use_cache=True, logits_to_keep=1)
            prefill.append(long_ids.shape[1] / (time.perf_counter() - t0))
    answers = [greedy(ids_of(q), MATCH_TOKENS)[0] for q in QUESTIONS]
    return {"decode_tok_s": speeds, "prefill_tok_s": prefill, "answers": answers,
            "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the exported bundles and results.json")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    ap.add_argument("--backends", default="onnx:int8x2,onnx:int8,onnx:int8-1row,torch,transformers,llama.cpp,ort-genai",
                    help="comma-separated backends")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the backends this many times in turn (speed figures pool every round)")
    ap.add_argument("--peers-dir", default=str(RUNS), help="where scripts/peers/*.sh built the peers (their PEERS_DIR)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one backend
    args = ap.parse_args()
    peers = peer_paths(Path(args.peers_dir))
    out = Path(args.out)
    if args.one:
        print(json.dumps(run_one(args.one, args.threads[0], out)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    from heron.export.gguf_onnx import export_gguf_bundle
    from heron.paths import named_lm_path
    backends = args.backends.split(",")
    for b in backends:  # onnx:COMPUTE, onnx:COMPUTE-grown: the states grow by a copy per step (the old graphs),
        variant = b.split(":", 1)[1] if b.startswith("onnx:") else None  # onnx:int8-1row / -2row: rows per call
        compute, _, cache = (variant or "").partition("-")  # onnx:COMPUTE-nopad: attention not padded
        if variant and (compute not in COMPUTES or cache not in ("", "grown", "nopad", NOPAD_ONE_ROW, FAST, *HEADS,
                                                                 *OFFSETS, *ROWS, PADDED, PADDED_FAST)
                        or (cache in ROWS and compute != "int8")):
            raise SystemExit(f"unknown backend {b}: onnx:{{{','.join(COMPUTES)}}}[-grown|-nopad|-nopad1row|-fast|"
                             "-fullhead|-ranked|-exactoffsets|-folded|-padded|-paddedfast], onnx:int8-1row|-2row")
        nopad = cache in ("nopad", NOPAD_ONE_ROW, FAST)
        padded = cache in (PADDED, PADDED_FAST)
        folder = out / (compute if cache in ROWS else f"{compute}-nopad" if nopad
                        else f"{compute}-{PADDED}" if padded else variant or "")
        if variant and not (folder / "manifest.json").is_file():
            export_gguf_bundle(named_lm_path("smollm2"), folder, compute=compute, shared_cache=cache != "grown",
                               pad_attention=not nopad, rank=HEADS.get(cache),
                               offsets=OFFSETS.get(cache), attention="padded" if padded else None)
    if {"llama.cpp", "ort-genai"} & set(backends):  # the same token ids for the peers: heron's tokenizer and template
        import heron
        lm = heron.load_lm(out / "int8x2") if (out / "int8x2" / "manifest.json").is_file() else heron.load_lm("smollm2")
        chat = lambda q: lm.encode(lm.chat_prompt([{"role": "user", "content": q}]))  # noqa: E731
        (out / "prompts.json").write_text(json.dumps({
            "decode": {name: chat(q) for name, q in decode_prompts().items()},
            "long": lm.encode(_long_text())[:PREFILL_TOKENS],
            "questions": [chat(q) for q in QUESTIONS], "new_tokens": NEW_TOKENS, "match_tokens": MATCH_TOKENS,
            "repeats": REPEATS}))
    results: dict[str, dict] = {}
    # rounds alternate the backends, so that a drift of this machine's speed hits each alike
    for threads, _, name in [(t, r, n) for t in args.threads for r in range(args.rounds) for n in backends]:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "--out", str(out), "--threads", str(threads), "--one", name]
        if name == "llama.cpp":
            if not peers["llama.cpp"].is_file():
                results[f"{name}@{threads}"] = {"error": "not built: run scripts/peers/lm_peers.sh"}
                continue
            cmd = [str(peers["llama.cpp"]), str(Path(__file__).parent / "peers" / "lm_peers.py"),
                   str(named_lm_path("smollm2")), str(out / "prompts.json"), str(threads)]
        if name == "ort-genai":
            if not (peers["genai_model"] / "genai_config.json").is_file():
                results[f"{name}@{threads}"] = {"error": "not built: run scripts/peers/genai_peers.sh"}
                continue
            cmd = [str(peers["genai"]), str(Path(__file__).parent / "peers" / "genai_peers.py"),
                   str(peers["genai_model"]), str(out / "prompts.json"), str(threads)]
        p = subprocess.run(pinned(threads) + cmd, capture_output=True, text=True, env=env)
        if p.returncode:
            results[f"{name}@{threads}"] = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "?"}
            print(f"{name} @ {threads} thread(s): {results[f'{name}@{threads}']['error']}", flush=True)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(name, threads, {k: v for k, v in r.items() if k != "answers"}, flush=True)
        if f"{name}@{threads}" in results:  # a later round: more speed samples, the rest as measured first
            results[f"{name}@{threads}"]["prefill_tok_s"] += r["prefill_tok_s"]
            for prompt, speeds in r["decode_tok_s"].items():
                results[f"{name}@{threads}"]["decode_tok_s"][prompt] += speeds
        else:
            results[f"{name}@{threads}"] = r
    ref = next((r["answers"] for k, r in results.items() if k.startswith("torch@") and "answers" in r), None)
    from heron.runtime.metrics import machine
    names = list(decode_prompts())
    lines = [f"{machine()}; {time.strftime('%Y-%m-%d')}; greedy; decode = {NEW_TOKENS} tokens after each chat prompt "
             f"({', '.join(names)}: a code request, a {len(CHAT_PROMPT)}-character question, {SUMMARY_PARAGRAPHS} "
             f"paragraphs to summarize), min / median of {REPEATS} x {args.rounds} round(s); prefill = "
             f"{PREFILL_TOKENS}-token prompt, median; match = prompts of {len(QUESTIONS)} whose first {MATCH_TOKENS} "
             "tokens equal heron torch fp32's", "", f"command: `{command_line()}`", "",
             "| backend | threads | " + " | ".join(f"decode tok/s {n} min / median" for n in names)
             + " | prefill tok/s | peak RSS MB | match | perplexity |",
             "|---|---|" + "---|" * len(names) + "---|---|---|---|"]
    for key, r in results.items():
        name, threads = key.rsplit("@", 1)
        if "error" in r:
            lines.append(f"| {name} | {threads} | {r['error']} |" + " |" * (len(names) + 3))
            continue
        match = sum(a == b for a, b in zip(r["answers"], ref)) if ref else "?"
        ppl = f"{r['ppl']:.3f}" if "ppl" in r else "-"
        decode = " | ".join(f"{min(r['decode_tok_s'][n]):.1f} / {statistics.median(r['decode_tok_s'][n]):.1f}"
                            for n in names)
        lines.append(f"| {name} | {threads} | {decode} | {statistics.median(r['prefill_tok_s']):.0f} "
                     f"| {r['peak_rss_mb']:.0f} | {match}/{len(QUESTIONS)} | {ppl} |")
    huge = [f"{key} {r['huge_pages_mb']:.0f}" for key, r in results.items() if r.get("huge_pages_mb")]
    if huge:
        lines += ["", f"heron's weights in huge pages (MB; heron.runtime.pages): {', '.join(huge)}"]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
