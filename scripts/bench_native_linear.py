"""heron_lm.c's linear kernel alone, at git revisions side by side: multiply-adds per second for calls of T tokens
(issues 24 / 25: what a verify block's extra rows cost, without a model's other work or a VM's noise in between).

    taskset -c 1 .venv/bin/python scripts/bench_native_linear.py 7073fe4 work --rounds 3

Each revision's heron_lm.c (`work`: this tree's) is compiled into a small C harness (runs/bench-native-linear/) that
calls its `linear_part` on one thread for T = 1, 2, 3, 4, 5, 8, 9, 16 token rows (the best of --repeats calls each) on
three weight matrices of SmolLM2-135M's shapes, random blocks: an FFN's 1536 x 576 Q4_1 rows (0.4 MB: read from the
L2 cache, the kernel's arithmetic), its 49152 x 576 Q8_0 output head and a 24576 x 1536 Q4_1 stack of FFN rows
(28 and 20 MB: read from memory, as a decode step reads them). Rounds alternate the revisions; the median of the
rounds is printed per revision, as GMAC/s (and microseconds per call). --march x86-64-v3 builds AVX2 without VNNI.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench-native-linear"
TOKENS = (1, 2, 3, 4, 5, 8, 9, 16)
MATRICES = (("ffn 1536x576 Q4 (L2)", 4, 1536, 576), ("head 49152x576 Q8 (memory)", 8, 49152, 576),
            ("ffn x16 24576x1536 Q4 (memory)", 4, 24576, 1536))

HARNESS = r"""
#include "heron_lm.c"
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char** argv) {
  const int q8 = atoi(argv[1]) == 8, N = atoi(argv[2]), K = atoi(argv[3]), reps = atoi(argv[4]);
  const int nb = K / QK, rows = (N + 15) / 16 * 16, TM = 16;
  const size_t gb = q8 ? 256 : 128, nblk = (size_t)rows / 8 * nb;
  uint8_t* qs = aligned_alloc(64, nblk * gb);
  uint16_t* d = aligned_alloc(64, nblk * 16);
  uint16_t* m = aligned_alloc(64, nblk * 16);
  srand(1);
  for (size_t i = 0; i < nblk * gb; i++) qs[i] = (uint8_t)rand();
  for (size_t i = 0; i < nblk * 8; i++) { d[i] = f32_to_f16(0.01f * (1 + rand() % 7)); m[i] = f32_to_f16(-0.08f); }
  hl_linear w = {qs, d, q8 ? NULL : m, q8 ? W_Q8 : W_Q4, N, K};
  float* x = malloc(sizeof(float) * TM * K);
  for (int i = 0; i < TM * K; i++) x[i] = (rand() % 2000 - 1000) * 0.001f;
  int16_t* xq = malloc(sizeof(int16_t) * TM * K);
  float *xs = malloc(sizeof(float) * TM * nb), *xsum = malloc(sizeof(float) * TM * nb), *y = malloc(sizeof(float) * TM * N);
  quant_rows(x, TM, K, xq, xs, xsum);
  for (int k = 5; k < argc; k++) { /* the token counts to time */
    const int T = atoi(argv[k]);
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
      double t = now();
      linear_part(&w, T, xq, xs, xsum, y, 1, 0);
      t = now() - t;
      if (t < best) best = t;
    }
    printf("%d %.9f %.6f\n", T, best, y[0]);
  }
  return 0;
}
"""


def build(rev: str, march: str) -> Path:
    folder = OUT / f"{rev}-{march}"
    folder.mkdir(parents=True, exist_ok=True)
    src = (ROOT / "runtime/native/heron_lm.c").read_bytes() if rev == "work" else subprocess.run(
        ["git", "show", f"{rev}:runtime/native/heron_lm.c"], cwd=ROOT, capture_output=True, check=True).stdout
    (folder / "heron_lm.c").write_bytes(src)
    (folder / "harness.c").write_text(HARNESS)
    exe = folder / "harness"
    subprocess.run(["cc", "-O3", f"-march={march}", "-std=c11", "-fopenmp", "-w", str(folder / "harness.c"), "-o",
                    str(exe), "-lm"], check=True)
    return exe


def run(exe: Path, q8: int, n: int, k: int, repeats: int) -> dict:
    out = subprocess.run([str(exe), str(q8), str(n), str(k), str(repeats), *map(str, TOKENS)], capture_output=True,
                         text=True, check=True).stdout
    res = {}
    for line in out.split("\n"):
        if line.strip():
            T, s, _ = line.split()
            res[int(T)] = (float(s),)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revs", nargs="+", help="git revisions (`work`: this tree's heron_lm.c)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=100, help="calls per T; the best is kept")
    ap.add_argument("--march", default="native")
    a = ap.parse_args()
    exes = {rev: build(rev, a.march) for rev in a.revs}
    got = {(rev, name): [] for rev in a.revs for name, *_ in MATRICES}
    for rnd in range(a.rounds):
        for name, q8, n, k in MATRICES:
            for rev in a.revs:
                got[rev, name].append(run(exes[rev], q8, n, k, a.repeats if n < 10000 else max(5, a.repeats // 10)))
        print(f"round {rnd + 1} done", file=sys.stderr, flush=True)
    print(f"heron_lm.c's linear_part, 1 thread, -march={a.march}; GMAC/s (us per call), median of {a.rounds} rounds")
    for name, q8, n, k in MATRICES:
        print(f"{name}:")
        for rev in a.revs:
            cells = []
            for T in TOKENS:
                s = statistics.median(r[T][0] for r in got[rev, name])
                cells.append(f"T={T} {n * k * T / s / 1e9:.1f} ({s * 1e6:.0f})")
            print(f"  {rev:>10}: " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
