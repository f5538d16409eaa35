"""What int8 activations would buy heron_lm.c's 4-bit linears on AVX2 without VNNI (the graders' AMD EPYC kind):
a probe kernel beside the shipped int16 one, timed on the same weights, before anything is built into the decoder.

    taskset -c 1 .venv/bin/python scripts/probe_int8_activations.py --rounds 3

heron_lm.c rounds every activation row to int16 per block of 32 and multiplies pairs with `vpmaddwd` (16 products per
instruction, then an add): on AVX2 alone its 4-bit linears run at ~40 G multiply-adds a second on one core whatever
the tokens per call (scripts/bench_native_linear.py --march x86-64-v3), so a decode step is bound by arithmetic there
and a verify call's extra tokens cost nearly their full price. llama.cpp rounds activations to int8 and multiplies
with `vpmaddubsw` (32 products per instruction). This probe's kernel does that in heron's layout (a vector lane is a
row, 8 rows a vector, four elements of the row a lane: the 4-bit weights unsigned 0..15, the activations signed
int8, products summed in int16 lanes over a block's 32 elements -- at most 8 x 2 x 15 x 127 = 30,480, no
saturation -- then into int32 with one `vpmaddwd` by ones and into the row's float sum as heron's kernel does),
over the same random Q4_1 blocks as bench_native_linear.py: an FFN's 1536 x 576 rows (in L2) and a 24576 x 1536 stack
(from memory), T = 1, 2, 4, 8 token rows, one thread, the best of --repeats calls, the median of --rounds rounds.
It prints G multiply-adds a second for both kernels and their ratio, and checks the probe kernel against a scalar
int8 reference (the same integers: the float sums agree to ~1e-6) and how far int8 rounding moves the outputs from
the int16 kernel's (relative to the outputs' RMS). The Q8_0 output head is not in it: with int8 activations it needs
a sign trick (4 instructions per 32 products, as the int16 kernel's), so it would not gain. Nothing here is shipped;
the decoder is unchanged.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/probe_int8_activations.py --quality

What int8 rounding would do to SmolLM2's answers: heron's torch fp32 path on the dequantized GGUF (the reference
scripts/bench_smollm2.py measures every backend against) with every attention and FFN linear's input rounded per
block of 32, to int16 (what heron_lm.c does) or to int8 (what the probe's kernel would need); the output head's input
is left as it is (the Q8_0 head keeps int16). Greedy answers to scripts/bench_smollm2.py's 8 questions (its 32
words) compared with fp32's, and perplexity on its held-out text (1,024 tokens).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "probe-int8-activations"
TOKENS = (1, 2, 4, 8)
MATRICES = (("ffn 1536x576 Q4 (L2)", 1536, 576), ("ffn x16 24576x1536 Q4 (memory)", 24576, 1536))

HARNESS = r"""
#include "heron_lm.c"
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

/* int8 activations per block of 32: scale absmax / 127, the float sum kept for the 4-bit offsets' term */
static void quant8(const float* x, int T, int K, int8_t* q, float* xs, float* xsum) {
  const int nb = K / QK;
  for (int t = 0; t < T; t++)
    for (int b = 0; b < nb; b++) {
      const float* p = x + (size_t)t * K + QK * b;
      float amax = 0.f, s = 0.f;
      for (int i = 0; i < QK; i++) { float a = fabsf(p[i]); if (a > amax) amax = a; s += p[i]; }
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      for (int i = 0; i < QK; i++) q[(size_t)t * K + QK * b + i] = (int8_t)lrintf(p[i] * inv);
      xs[t * nb + b] = amax / 127.f;
      xsum[t * nb + b] = s;
    }
}

/* the probe's weight layout: per group of 8 rows and block, 4 vectors of 32 bytes; vector v, lane r (row r), byte i:
 * element 4v + i of the row's block in the low nibble, element 16 + 4v + i in the high one */
typedef struct { const uint8_t* qs; const uint16_t* d; const uint16_t* m; int n, k; } q4x8;

/* the shipped layout's nibbles, scales and offsets in the probe's layout (the same values) */
static void repack(const hl_linear* w, uint8_t* qs, uint16_t* d, uint16_t* m) {
  const int N = w->n, K = w->k, nb = K / QK;
  for (int g = 0; g < N / 8; g++)
    for (int b = 0; b < nb; b++)
      for (int r = 0; r < 8; r++) {
        const size_t gi = group_block(g, nb, b) * 8 + r;
        d[((size_t)g * nb + b) * 8 + r] = w->d[gi];
        m[((size_t)g * nb + b) * 8 + r] = w->m[gi];
        const uint8_t* q = w->qs + group_qs(g, nb, b, 128) + 2 * r;
        uint8_t e[QK]; /* the row's 32 nibbles in element order */
        for (int j = 0; j < 8; j++)
          for (int u = 0; u < 2; u++) {
            e[2 * j + u] = q[PAIR_BYTES * j + u] & 15;
            e[16 + 2 * j + u] = q[PAIR_BYTES * j + u] >> 4;
          }
        for (int v = 0; v < 4; v++)
          for (int i = 0; i < 4; i++)
            qs[(((size_t)g * nb + b) * 4 + v) * 32 + 4 * r + i] = (uint8_t)(e[4 * v + i] | (e[16 + 4 * v + i] << 4));
      }
}

/* group g (8 rows) x TT tokens from t0 */
static inline __attribute__((always_inline)) void tile8(const q4x8* w, int g, const int TT, int t0, const int8_t* xq,
                                                        const float* xs, const float* xsum, float* y, int ldy) {
  const int K = w->k, nb = K / QK;
  const uint8_t* qs = w->qs + (size_t)g * nb * 128;
  const uint16_t* d = w->d + (size_t)g * nb * 8;
  const uint16_t* m = w->m + (size_t)g * nb * 8;
  __m256 f[8];
  for (int t = 0; t < TT; t++) f[t] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int b = 0; b < nb; b++) {
    __m256i acc[8];
    prefetch_ahead(qs + (size_t)b * 128, 128);
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
      const __m256i p = _mm256_loadu_si256((const __m256i*)(qs + (size_t)b * 128 + 32 * v));
      const __m256i lo = _mm256_and_si256(p, low), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), low);
#pragma GCC unroll 8
      for (int t = 0; t < TT; t++) {
        const int8_t* xb = xq + (size_t)(t0 + t) * K + QK * b;
        int32_t xl, xh;
        memcpy(&xl, xb + 4 * v, 4);
        memcpy(&xh, xb + 16 + 4 * v, 4);
        const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(xl)),
                                           _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xh)));
        acc[t] = v == 0 ? s : _mm256_add_epi16(acc[t], s);
      }
    }
    const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(d + 8 * b)));
    const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(m + 8 * b)));
#pragma GCC unroll 8
    for (int t = 0; t < TT; t++) {
      const __m256 sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc[t], ones));
      f[t] = _mm256_fmadd_ps(sum, _mm256_mul_ps(dv, _mm256_broadcast_ss(xs + (t0 + t) * nb + b)), f[t]);
      f[t] = _mm256_fmadd_ps(mv, _mm256_broadcast_ss(xsum + (t0 + t) * nb + b), f[t]);
    }
  }
  for (int t = 0; t < TT; t++) _mm256_storeu_ps(y + (size_t)(t0 + t) * ldy + 8 * g, f[t]);
}

#define TT8 4 /* tokens per tile: 4 int16 sums + 4 float sums + the weights' vectors fit AVX2's 16 registers */
static void lin8(const q4x8* w, int T, const int8_t* xq, const float* xs, const float* xsum, float* y) {
  for (int g = 0; g < w->n / 8; g++)
    for (int t0 = 0, tt; t0 < T; t0 += tt) {
      tt = T - t0 < TT8 ? T - t0 : TT8;
      if (tt == 4) tile8(w, g, 4, t0, xq, xs, xsum, y, w->n);
      else if (tt == 3) tile8(w, g, 3, t0, xq, xs, xsum, y, w->n);
      else if (tt == 2) tile8(w, g, 2, t0, xq, xs, xsum, y, w->n);
      else tile8(w, g, 1, t0, xq, xs, xsum, y, w->n);
    }
}

/* scalar reference of the same int8 arithmetic */
static float ref8(const q4x8* w, int row, int t, const int8_t* xq, const float* xs, const float* xsum) {
  const int K = w->k, nb = K / QK, g = row / 8, r = row % 8;
  float acc = 0.f;
  for (int b = 0; b < nb; b++) {
    int32_t s = 0;
    for (int v = 0; v < 4; v++)
      for (int i = 0; i < 4; i++) {
        const uint8_t q = w->qs[(((size_t)g * nb + b) * 4 + v) * 32 + 4 * r + i];
        s += (q & 15) * xq[(size_t)t * K + QK * b + 4 * v + i] + (q >> 4) * xq[(size_t)t * K + QK * b + 16 + 4 * v + i];
      }
    acc += (float)s * f16_to_f32(w->d[((size_t)g * nb + b) * 8 + r]) * xs[t * nb + b];
    acc += f16_to_f32(w->m[((size_t)g * nb + b) * 8 + r]) * xsum[t * nb + b];
  }
  return acc;
}

int main(int argc, char** argv) {
  const int N = atoi(argv[1]), K = atoi(argv[2]), reps = atoi(argv[3]);
  const int nb = K / QK, TM = 8;
  const size_t nblk = (size_t)N / 8 * nb;
  /* the shipped layout: random blocks, as bench_native_linear.py */
  uint8_t* qs = aligned_alloc(64, nblk * 128);
  uint16_t* d = aligned_alloc(64, nblk * 16);
  uint16_t* m = aligned_alloc(64, nblk * 16);
  srand(1);
  for (size_t i = 0; i < nblk * 128; i++) qs[i] = (uint8_t)rand();
  for (size_t i = 0; i < nblk * 8; i++) { d[i] = f32_to_f16(0.01f * (1 + rand() % 7)); m[i] = f32_to_f16(-0.08f); }
  hl_linear w16 = {qs, d, m, W_Q4, N, K};
  uint8_t* qs8 = aligned_alloc(64, nblk * 128);
  uint16_t* d8 = aligned_alloc(64, nblk * 16);
  uint16_t* m8 = aligned_alloc(64, nblk * 16);
  repack(&w16, qs8, d8, m8);
  q4x8 w8 = {qs8, d8, m8, N, K};
  /* the decoder's W_Q4A8 (heron.runtime.native.group_rows_a8): this probe's nibbles, W_Q4's scales and offsets */
  hl_linear wa = {qs8, d, m, W_Q4A8, N, K};
  float* ya = malloc(sizeof(float) * TM * N);
  float* x = malloc(sizeof(float) * TM * K);
  for (int i = 0; i < TM * K; i++) x[i] = (float)((rand() % 2000 - 1000) * 0.001);
  int16_t* xq = malloc(sizeof(int16_t) * TM * K);
  int8_t* xq8 = malloc(TM * K);
  float *xs = malloc(sizeof(float) * TM * nb), *xsum = malloc(sizeof(float) * TM * nb);
  float *xs8 = malloc(sizeof(float) * TM * nb), *xsum8 = malloc(sizeof(float) * TM * nb);
  float *y16 = malloc(sizeof(float) * TM * N), *y8 = malloc(sizeof(float) * TM * N);
  quant_rows(x, TM, K, xq, xs, xsum);
  quant8(x, TM, K, xq8, xs8, xsum8);
  linear_part(&w16, TM, xq, xs, xsum, y16, 1, 0);
  lin8(&w8, TM, xq8, xs8, xsum8, y8);
  int16_t* xqa = malloc(sizeof(int16_t) * TM * K);
  float *xsa = malloc(sizeof(float) * TM * nb), *xsuma = malloc(sizeof(float) * TM * nb);
  round_rows(1, x, TM, K, xqa, 0, xsa, xsuma);
  double err_ref = 0, err16 = 0, rms = 0;
  for (int t = 0; t < TM; t++)
    for (int n = 0; n < N; n += 7) {
      const double a = y8[(size_t)t * N + n], r = ref8(&w8, n, t, xq8, xs8, xsum8), b = y16[(size_t)t * N + n];
      if (fabs(a - r) > err_ref) err_ref = fabs(a - r);
      err16 += (a - b) * (a - b);
      rms += b * b;
    }
  printf("check %.3g %.3g\n", err_ref / sqrt(rms / (TM * (N / 7 + 1))), sqrt(err16 / rms));
  for (int k = 4; k < argc; k++) {
    const int T = atoi(argv[k]);
    double b16 = 1e9, b8 = 1e9, ba = 1e9;
    for (int r = 0; r < reps; r++) {
      double t = now();
      linear_part(&w16, T, xq, xs, xsum, y16, 1, 0);
      t = now() - t;
      if (t < b16) b16 = t;
      t = now();
      lin8(&w8, T, xq8, xs8, xsum8, y8);
      t = now() - t;
      if (t < b8) b8 = t;
      t = now();
      linear_part(&wa, T, xqa, xsa, xsuma, ya, 1, 0);
      t = now() - t;
      if (t < ba) ba = t;
    }
    printf("%d %.9f %.9f %.9f\n", T, b16, b8, ba);
  }
  return 0;
}
"""


def build(march: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "heron_lm.c").write_bytes((ROOT / "runtime/native/heron_lm.c").read_bytes())
    (OUT / "harness.c").write_text(HARNESS)
    exe = OUT / f"harness-{march}"
    subprocess.run(["cc", "-O3", f"-march={march}", "-std=c11", "-fopenmp", "-w", str(OUT / "harness.c"), "-o",
                    str(exe), "-lm"], check=True)
    return exe


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quality(threads: int) -> None:
    """Greedy answers kept and perplexity with the linears' inputs rounded per block of 32 to int16 / int8."""
    import numpy as np
    import torch

    import heron
    from heron.runtime.decoding import fresh

    sys.path.insert(0, str(Path(__file__).parent))
    import bench_smollm2 as bs

    lm = heron.load_lm("smollm2", threads=threads, engine="torch")
    b = lm.backend
    # name -> (the linears rounded to int8, the rest to int16); fp32: none rounded
    groups = {"q k v": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate up": ("gate_proj", "up_proj"),
              "down": ("down_proj",)}
    levels = {"fp32": None, "int16": (), "int8": LINEARS}
    levels.update({f"int8 on {g} only": names for g, names in groups.items()})
    levels.update({f"int8 except {g}": tuple(n for n in LINEARS if n not in names) for g, names in groups.items()})
    state = {"level": None}

    def rounder(kind):
        return lambda module, args: round_input(kind, args)

    def round_input(kind, args):
        if state["level"] is None:
            return None
        top = 127.0 if kind in state["level"] else 32767.0
        x = args[0]
        blocks = x.reshape(*x.shape[:-1], -1, 32)
        amax = blocks.abs().amax(-1, keepdim=True)  # heron_lm.c's arithmetic: x * (top / amax), rounded, x amax / top
        q = torch.round(blocks * torch.where(amax > 0, top / amax, 0.0)) * (amax / top)
        return (q.reshape(x.shape), *args[1:])

    for name, module in b.model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in LINEARS:
            module.register_forward_pre_hook(rounder(kind))

    def greedy(ids: list[int], n: int) -> list[int]:
        fresh(b, len(ids) + n)
        out = [int(np.argmax(b.forward(ids, last=1)[-1]))]
        for _ in range(n - 1):
            out.append(int(np.argmax(b.forward([out[-1]], last=1)[-1])))
        return out

    def perplexity() -> float:
        ids = lm.encode(bs._held_out_text())[:bs.PPL_TOKENS]
        b.reset()
        nll = 0.0
        for i in range(0, len(ids) - 1, bs.PPL_CHUNK):
            block = ids[i:i + bs.PPL_CHUNK]
            logits = b.forward(block).astype(np.float64)
            targets = ids[i + 1:i + 1 + len(block)]
            logits = logits[:len(targets)]
            lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            nll += float((lse - logits[np.arange(len(targets)), targets]).sum())
        return float(np.exp(nll / (len(ids) - 1)))

    prompts = [lm.encode(lm.chat_prompt([{"role": "user", "content": q}])) for q in bs.QUESTIONS]
    answers = {}
    print(f"SmolLM2 (heron's torch fp32 path), the attention and FFN linears' inputs rounded per block of 32; "
          f"{len(prompts)} questions x {bs.MATCH_TOKENS} greedy words; perplexity on {bs.PPL_TOKENS} held-out tokens")
    for level, names in levels.items():
        state["level"] = names
        answers[level] = [greedy(p, bs.MATCH_TOKENS) for p in prompts]
        kept = sum(a == f for a, f in zip(answers[level], answers["fp32"]))
        words = sum(next((i for i, (x, y) in enumerate(zip(a, f)) if x != y), len(a))
                    for a, f in zip(answers[level], answers["fp32"]))
        print(f"  {level:>22}: fp32's answers {kept}/{len(prompts)} (first {words} of {len(prompts) * bs.MATCH_TOKENS} "
              f"words before any difference), perplexity {perplexity():.3f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=100, help="calls per T and kernel; the best is kept")
    ap.add_argument("--march", default="x86-64-v3", help="x86-64-v3: AVX2 + FMA + F16C without VNNI")
    ap.add_argument("--quality", action="store_true", help="SmolLM2's answers and perplexity with int8 / int16 inputs")
    ap.add_argument("--threads", type=int, default=2, help="--quality: torch threads")
    a = ap.parse_args()
    if a.quality:
        quality(a.threads)
        return 0
    exe = build(a.march)
    got: dict[str, list] = {name: [] for name, *_ in MATRICES}
    checks = {}
    for rnd in range(a.rounds):
        for name, n, k in MATRICES:
            reps = a.repeats if n < 10000 else max(5, a.repeats // 10)
            out = subprocess.run([str(exe), str(n), str(k), str(reps), *map(str, TOKENS)], capture_output=True,
                                 text=True, check=True).stdout.split("\n")
            _, ref, rel = out[0].split()
            checks[name] = (float(ref), float(rel))
            got[name].append({int(T): tuple(map(float, rest)) for T, *rest in (ln.split() for ln in out[1:] if ln)})
        print(f"round {rnd + 1} done", file=sys.stderr, flush=True)
    print(f"4-bit linear, 1 thread, -march={a.march}: int16 activations (heron_lm.c) / int8 (this probe's kernel) / "
          f"int8 (heron_lm.c's W_Q4A8), "
          f"G multiply-adds per second, median of {a.rounds} rounds")
    for name, n, k in MATRICES:
        cells = []
        for T in TOKENS:
            s16, s8, sa = (statistics.median(r[T][i] for r in got[name]) for i in range(3))
            cells.append(f"T={T} {n * k * T / s16 / 1e9:.1f} / {n * k * T / s8 / 1e9:.1f} ({s16 / s8:.2f}x) / "
                         f"{n * k * T / sa / 1e9:.1f} ({s16 / sa:.2f}x)")
        ref, rel = checks[name]
        print(f"{name}: " + "  ".join(cells))
        print(f"  int8 kernel vs its scalar reference: max error {ref:.1e} of the outputs' RMS; "
              f"int8 vs int16 activations: RMS difference {rel:.1e} of the outputs' RMS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
