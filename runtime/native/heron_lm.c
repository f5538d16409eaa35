/* heron's native decoder: a Llama-family forward pass straight on a GGUF file's blocks.
 *
 * Linears read the file's Q4_1 / Q4_0 / Q8_0 blocks (split into value, scale and offset arrays at load and
 * interleaved eight rows at a time: the same bytes, nothing quantized again). Each activation row is rounded per
 * block of 32 to int16 (scale absmax / 32767): the integer dot products then err by ~1e-5 of a block's largest
 * value, 256x less than int8 rounding, so greedy decoding keeps what an fp32 computation on the same blocks keeps.
 * Norms, RoPE (llama.cpp's interleaved pairs, the file's Q/K rows as stored), attention and the residual stream are
 * fp32; the KV cache holds keys and values in fp16 (half the bytes: past a few hundred positions attention is bound
 * by reading the cache; SmolLM2 keeps fp32's answers).
 *
 * A call appends T tokens at positions pos .. pos + T - 1 to the caller's KV cache (fp16,
 * [layer][kv head][capacity][head dim]) and writes logits for the last n_out of them. A block of T tokens reads each
 * weight once per call; its integer and float arithmetic grows with T, tile by tile (SmolLM2 on a VNNI CPU at two
 * threads: a call of 4 tokens, one tile, ~1.3 plain steps, of 5 ~1.8; heron.runtime.native.NativeLM.VERIFY_TABLES).
 * The same code path computes a token alone or inside a block, each row's sums in the same order: a step and a block
 * give the same bits (speculation stays exact).
 *
 * x86-64 with AVX2 + FMA + F16C: vector kernels (VNNI's fused multiply-add where the CPU has it: the
 * same integers); elsewhere the portable C below, the same arithmetic with float sums in another order.
 * Threads: one OpenMP team per call; linears split by units of sixteen output rows, attention by runs of heads.
 * No Python here: heron.runtime.native loads it with ctypes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define HL_AVX2 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define HL_ABI 13
#define QK 32

/* A linear's blocks, split by heron.runtime.native at load into values, scales and offsets (the same bytes as
 * the file's blocks) and interleaved in groups of 8 rows, so that one vector lane is one row: a block's 8 rows'
 * scales come in one load, and no sum is ever reduced across lanes. Groups go in units of two (16 rows, the last
 * unit padded with zero rows), side by side pair by pair: the kernels read both groups of a unit at once from one
 * sequential stream (AVX-512's in one 512-bit vector). Q4_0 arrives as Q4_1 with offset -8 d (exact in fp16). */
enum { W_Q4 = 4, W_Q4A8 = 5, W_Q8 = 8 }; /* W_Q4A8: 4-bit blocks that read int8 activations (below) */
#define UNIT 16 /* rows per unit: two groups of 8 */

typedef struct {
  /* nibbles (units, k / 32, 8 j, 2 groups, 8 rows, 2): row r's byte 2j + u of the block (element 2j + u low,
   * 16 + 2j + u high); or int8 (units, k / 32, 16 i, 2 groups, 8 rows, 2): row r's element 2i + u. A unit's block
   * is 32-byte chunks, one per pair (j or i), each the unit's 16 rows side by side (one 512-bit vector's lanes) */
  const uint8_t* qs;
  const uint16_t* d;  /* (units, k / 32, 2 groups, 8 rows) fp16 scales */
  const uint16_t* m;  /* (units, k / 32, 2 groups, 8 rows) fp16 offsets (W_Q4), else NULL */
  int32_t type, n, k; /* n output rows of k inputs */
} hl_linear;

/* group g's (8 rows) block b, counted in group-blocks from the linear's start (x 8 for its scales) */
static inline size_t group_block(int g, int nb, int b) { return ((size_t)(g >> 1) * nb + b) * 2 + (g & 1); }
/* byte offset of group g's block b, pair 0 (gb bytes per group and block; pair c at + PAIR_BYTES c) */
#define PAIR_BYTES 32
static inline size_t group_qs(int g, int nb, int b, int gb) {
  return ((size_t)(g >> 1) * nb + b) * 2 * gb + 16 * (g & 1);
}

typedef struct {
  int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab;
  float eps;
  hl_linear emb, head; /* the token embedding's blocks; the output head's (the same when tied) */
  const float* out_norm;
  const hl_linear* layers; /* n_layers * 7: q, k, v, o, gate, up, down */
  const float* const* norms; /* n_layers * 2: attention, ffn */
  const float* rope_cos; /* (max positions, head_dim / 2) */
  const float* rope_sin;
  int32_t rope_len;
  int32_t threads;
  int32_t act8; /* the layers' linears are W_Q4A8: their inputs rounded to int8 (quant_rows8) */
} hl_model;

int hl_abi(void) { return HL_ABI; }

int hl_simd(void) {
#if defined(HL_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
  return 3;
#elif defined(HL_AVX2) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
  return 2;
#elif defined(HL_AVX2)
  return 1;
#else
  return 0;
#endif
}

static float f16_to_f32(uint16_t h) {
#ifdef HL_AVX2
  return _cvtsh_ss(h);
#else
  uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
  if (e == 0) {
    if (m == 0) u = s;
    else { /* subnormal */
      e = 127 - 15 + 1;
      while (!(m & 0x400)) { m <<= 1; e--; }
      u = s | (e << 23) | ((m & 0x3ff) << 13);
    }
  } else if (e == 31) u = s | 0x7f800000u | (m << 13);
  else u = s | ((e + 127 - 15) << 23) | (m << 13);
  float f; memcpy(&f, &u, 4); return f;
#endif
}

static uint16_t f32_to_f16(float f) {
#ifdef HL_AVX2
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  const uint32_t s = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return (uint16_t)(s | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u)); /* inf, nan */
  if (a >= 0x477ff000u) return (uint16_t)(s | 0x7c00u); /* rounds past 65504: inf */
  if (a < 0x38800000u) { /* subnormal or zero: a / 2^-24 rounded to nearest even */
    if (a < 0x33000000u) return (uint16_t)s;
    const uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126 - (a >> 23); /* |f| = m 2^(e - 150); units of 2^-24 */
    const uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    return (uint16_t)(s | (q + (rem > half || (rem == half && (q & 1u)))));
  }
  const uint32_t q = (a >> 13) - (112u << 10), rem = a & 0x1fffu;
  return (uint16_t)(s | (q + (rem > 0x1000u || (rem == 0x1000u && (q & 1u)))));
#endif
}

/* ---- activations: int16 per block of 32 ------------------------------------------------------- */
static void quant_rows(const float* x, int T, int K, int16_t* xq, float* xs, float* xsum) {
  const int nb = K / QK;
  for (int t = 0; t < T; t++)
    for (int b = 0; b < nb; b++) {
      const float* p = x + (size_t)t * K + QK * b;
      int16_t* q = xq + (size_t)t * K + QK * b;
      float amax = 0.f, s = 0.f;
      for (int i = 0; i < QK; i++) { float a = fabsf(p[i]); if (a > amax) amax = a; s += p[i]; }
      float inv = amax > 0.f ? 32767.f / amax : 0.f;
#ifdef HL_AVX2
      const __m256 iv = _mm256_set1_ps(inv);
      for (int i = 0; i < QK; i += 16) { /* round to nearest even, as lrintf */
        __m256i a0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + i), iv));
        __m256i a1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + i + 8), iv));
        _mm256_storeu_si256((__m256i*)(q + i), _mm256_permute4x64_epi64(_mm256_packs_epi32(a0, a1), 0xD8));
      }
#else
      for (int i = 0; i < QK; i++) q[i] = (int16_t)lrintf(p[i] * inv);
#endif
      xs[t * nb + b] = amax / 32767.f;
      xsum[t * nb + b] = s;
    }
}

/* ---- int8 activations per block of 32 (hl_model.act8) ---------------------------------------------------------
 * A model loaded with int8 activations rounds the inputs of its layers' 4-bit linears (W_Q4A8) to int8 per block of
 * 32 (scale absmax / 127; llama.cpp's Q8 activations): its kernels multiply four nibbles by four int8 values per
 * 32-bit lane (AVX2's vpmaddubsw: 32 products per instruction against vpmaddwd's 16; VNNI's vpdpbusd), ~1.8x the
 * int16 kernels' arithmetic on AVX2 (scripts/probe_int8_activations.py). The offsets' term takes the sum of the
 * rounded values, not of the exact ones: Q4_1's weights are d n + m with n in 0..15 and m ~ -8 d, and only with the
 * same values in both terms do the rounding errors meet centred weights (llama.cpp's Q8_1 sums likewise). The dot
 * products err by ~0.4% of the outputs' RMS instead of ~1e-5: greedy answers part from fp32's sooner. The
 * output head's input stays int16. The rounding, the integer sums and the order of the float terms are the same for
 * every kernel, so a step and a block, one thread and two, give the same bits here too. */
static void quant_rows8(const float* x, int T, int K, int8_t* xq, float* xs, float* xsum) {
  const int nb = K / QK;
  for (int t = 0; t < T; t++)
    for (int b = 0; b < nb; b++) {
      const float* p = x + (size_t)t * K + QK * b;
      int8_t* q = xq + (size_t)t * K + QK * b;
      float amax = 0.f;
      for (int i = 0; i < QK; i++) { float a = fabsf(p[i]); if (a > amax) amax = a; }
      float inv = amax > 0.f ? 127.f / amax : 0.f;
#ifdef HL_AVX2
      const __m256 iv = _mm256_set1_ps(inv);
      __m256i a0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), iv));
      __m256i a1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + 8), iv));
      __m256i a2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + 16), iv));
      __m256i a3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + 24), iv));
      __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a3));
      _mm256_storeu_si256((__m256i*)q, _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
      for (int i = 0; i < QK; i++) q[i] = (int8_t)lrintf(p[i] * inv);
#endif
      int32_t s = 0; /* the rounded values' sum: the 4-bit offsets' term m sum(x) from what the products used */
      for (int i = 0; i < QK; i++) s += q[i];
      xs[t * nb + b] = amax / 127.f;
      xsum[t * nb + b] = (float)s * (amax / 127.f);
    }
}

/* rows of x rounded into the activation buffer at element `at`: int8 (act8) or int16 */
static inline void round_rows(int act8, const float* x, int T, int K, int16_t* xq, size_t at, float* xs, float* xsum) {
  if (act8) quant_rows8(x, T, K, (int8_t*)xq + at, xs, xsum);
  else quant_rows(x, T, K, xq + at, xs, xsum);
}

#ifdef HL_AVX2
static inline float hsum8(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

/* int32 partial sums of 8 rows += those rows' weights for one pair of elements (w: 8 rows x 2 int16) times one
 * token's pair (x2: 2 int16, broadcast) */
static inline __m256i pair_dot(__m256i acc, __m256i w, const int16_t* x2) {
  int32_t v;
  memcpy(&v, x2, 4);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, w, _mm256_set1_epi32(v)); /* multiply-add in one */
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, w, _mm256_set1_epi32(v));
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, _mm256_set1_epi32(v)));
#endif
}

/* Software prefetch: each block of a tile asks for the bytes HL_PF ahead in its linear's stream of units. The
 * hardware's prefetcher alone left the kernels waiting on memory, most where a call is bound by arithmetic too (a
 * verify block) or by memory alone (a decode step) (scripts/bench_native_linear.py; 2-16 KB ahead did alike on Zen 4).
 * -DHL_PF=0 turns it off. */
#ifndef HL_PF
#define HL_PF 4096
#endif
/* the bytes HL_PF past p .. p + bytes */
static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t* p, int bytes) {
#if HL_PF
#pragma GCC unroll 8
  for (int c = 0; c < bytes; c += 64) _mm_prefetch((const char*)p + HL_PF + c, _MM_HINT_T0);
#else
  (void)p, (void)bytes;
#endif
}

/* Register tiles: a unit's RR = 2 groups of 8 rows x TT tokens, each with NA int32 partial sums in flight. VNNI's
 * multiply-add has a latency of several cycles and issues more than one a cycle, so a tile keeps about eight
 * independent sums; two groups at once share each token's broadcast pair (half the loads per product). AVX-512VL's
 * 32 registers hold tiles of 2 x 4 tokens, AVX2's 16 of 2 x 2 (scripts/bench_native_linear.py); with AVX-512BW a
 * 512-bit vector holds both groups, and tiles of up to 9 tokens (lin_tile16). Integer sums are exact in any order,
 * so the tile's shape changes no bit. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define HL_ZMM 1 /* lin_tile16 (scripts/bench_native_linear.py: faster than lin_tile's at every T on Zen 4) */
#define TT_MAX 9
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define TT_MAX 4 /* tokens per tile */
#define CHAINS(RR, TT) ((RR) * (TT) >= 8 ? 1 : (RR) * (TT) >= 4 ? 2 : 4)
#else
#define TT_MAX 2
#define CHAINS(RR, TT) ((RR) * (TT) >= 4 ? 1 : 2)
#endif

#ifdef HL_ZMM
/* lin_tile's sums with 512-bit vectors: lane i is the unit's row i (a pair's 32 bytes hold its 16 rows), so a tile
 * of TT tokens keeps TT sums, and 32 registers hold tiles of up to 9 tokens: a verify call of up to 8 draft tokens
 * reads and widens each weight once. Each lane's float terms come in lin_tile's order: the same bits. */
static inline __attribute__((always_inline)) void lin_tile16(const hl_linear* w, int u, const int TT, const int q8,
                                                             int t0, const int16_t* xq, const float* xs,
                                                             const float* xsum, float* y, int ldy) {
  const int K = w->k, nb = K / QK, gb = q8 ? 256 : 128, NA = TT >= 4 ? 1 : TT >= 2 ? 2 : 4;
  const int16_t* xt[TT_MAX];
#pragma GCC unroll 16
  for (int t = 0; t < TT; t++) xt[t] = xq + (size_t)(t0 + t) * K;
  const uint8_t* qs = w->qs + group_qs(2 * u, nb, 0, gb);
  const uint16_t* d = w->d + group_block(2 * u, nb, 0) * 8;
  const uint16_t* m = q8 ? NULL : w->m + group_block(2 * u, nb, 0) * 8;
  __m512 f[TT_MAX];
#pragma GCC unroll 16
  for (int t = 0; t < TT; t++) f[t] = _mm512_setzero_ps();
  for (int b = 0; b < nb; b++) {
    __m512i acc[TT_MAX][4];
#pragma GCC unroll 16
    for (int t = 0; t < TT; t++)
#pragma GCC unroll 16
      for (int a = 0; a < NA; a++) acc[t][a] = _mm512_setzero_si512();
    const uint8_t* q = qs + (size_t)2 * b * gb;
    prefetch_ahead(q, 2 * gb);
    if (q8) {
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++) {
        const __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(q + PAIR_BYTES * i)));
#pragma GCC unroll 16
        for (int t = 0; t < TT; t++) {
          int32_t x2;
          memcpy(&x2, xt[t] + QK * b + 2 * i, 4);
          acc[t][i % NA] = _mm512_dpwssd_epi32(acc[t][i % NA], v, _mm512_set1_epi32(x2));
        }
      }
    } else {
#pragma GCC unroll 8
      for (int j = 0; j < 8; j++) {
        const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(q + PAIR_BYTES * j)));
        const __m512i lo = _mm512_and_si512(v, _mm512_set1_epi16(0x0F)), hi = _mm512_srli_epi16(v, 4);
#pragma GCC unroll 16
        for (int t = 0; t < TT; t++) {
          int32_t xl, xh;
          memcpy(&xl, xt[t] + QK * b + 2 * j, 4);
          memcpy(&xh, xt[t] + QK * b + 16 + 2 * j, 4);
          acc[t][(2 * j) % NA] = _mm512_dpwssd_epi32(acc[t][(2 * j) % NA], lo, _mm512_set1_epi32(xl));
          acc[t][(2 * j + 1) % NA] = _mm512_dpwssd_epi32(acc[t][(2 * j + 1) % NA], hi, _mm512_set1_epi32(xh));
        }
      }
    }
    const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(d + 16 * b)));
#pragma GCC unroll 16
    for (int t = 0; t < TT; t++) {
      __m512i sum = acc[t][0];
#pragma GCC unroll 16
      for (int a = 1; a < NA; a++) sum = _mm512_add_epi32(sum, acc[t][a]);
      f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dv, _mm512_set1_ps(xs[(t0 + t) * nb + b])), f[t]);
    }
    if (!q8) {
      const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(m + 16 * b)));
#pragma GCC unroll 16
      for (int t = 0; t < TT; t++) f[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(xsum[(t0 + t) * nb + b]), f[t]);
    }
  }
  const int rows = w->n - UNIT * u < UNIT ? w->n - UNIT * u : UNIT; /* the padding's rows are not written */
#pragma GCC unroll 16
  for (int t = 0; t < TT; t++)
    _mm512_mask_storeu_ps(y + (size_t)(t0 + t) * ldy + UNIT * u, (__mmask16)((1u << rows) - 1), f[t]);
}
#define LIN_TILE lin_tile16
#else
/* unit u (16 rows: RR = 2 groups of 8) of y = W x for TT token rows from t0 (constants: the accumulators stay in
 * registers). Each lane of a vector is one row: a block's 32 products go into int32 lanes (exact, in any order),
 * then into the row's float sum with one FMA for the eight rows (the rows' block scales times the token's), then
 * the offsets' term with another. The order of every float sum is the same for every TT, so one token alone and
 * inside a block gets the same bits. */
#define RR 2
static inline __attribute__((always_inline)) void lin_tile(const hl_linear* w, int u, const int TT, const int q8,
                                                           int t0, const int16_t* xq, const float* xs,
                                                           const float* xsum, float* y, int ldy) {
  const int K = w->k, nb = K / QK, gb = q8 ? 256 : 128, NA = CHAINS(RR, TT), g = 2 * u;
  const int16_t* xt[TT_MAX]; /* each token's row: one pointer per token keeps the addressing in registers */
  for (int t = 0; t < TT; t++) xt[t] = xq + (size_t)(t0 + t) * K;
  const uint8_t* qs[2];
  const uint16_t *d[2], *m[2];
  for (int r = 0; r < RR; r++) { /* block b of group g + r: + 2 b blocks */
    qs[r] = w->qs + group_qs(g + r, nb, 0, gb);
    d[r] = w->d + group_block(g + r, nb, 0) * 8;
    m[r] = q8 ? NULL : w->m + group_block(g + r, nb, 0) * 8; /* 4-bit linears always have offsets */
  }
  __m256 f[2][TT_MAX];
  for (int r = 0; r < RR; r++)
    for (int t = 0; t < TT; t++) f[r][t] = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++) {
    prefetch_ahead(qs[0] + (size_t)2 * b * gb, 2 * gb);
    __m256i acc[2][TT_MAX][4];
    for (int r = 0; r < RR; r++)
      for (int t = 0; t < TT; t++)
        for (int a = 0; a < NA; a++) acc[r][t][a] = _mm256_setzero_si256();
    if (q8) { /* 16 loads per group: pair i of the 8 rows, int8 -> int16 */
#pragma GCC unroll 16 /* unrolled whole: acc[..][i % NA] must name registers, not a stack array */
      for (int i = 0; i < 16; i++) {
        __m256i v[2];
        for (int r = 0; r < RR; r++)
          v[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(qs[r] + (size_t)2 * b * gb + PAIR_BYTES * i)));
        for (int t = 0; t < TT; t++)
          for (int r = 0; r < RR; r++) acc[r][t][i % NA] = pair_dot(acc[r][t][i % NA], v[r], xt[t] + QK * b + 2 * i);
      }
    } else { /* 8 loads per group: pair j's nibbles low, pair 8 + j's high */
#pragma GCC unroll 8
      for (int j = 0; j < 8; j++) {
        __m256i lo[2], hi[2];
        for (int r = 0; r < RR; r++) {
          __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(qs[r] + (size_t)2 * b * gb + PAIR_BYTES * j)));
          lo[r] = _mm256_and_si256(v, _mm256_set1_epi16(0x0F));
          hi[r] = _mm256_srli_epi16(v, 4);
        }
        for (int t = 0; t < TT; t++)
          for (int r = 0; r < RR; r++) {
            acc[r][t][(2 * j) % NA] = pair_dot(acc[r][t][(2 * j) % NA], lo[r], xt[t] + QK * b + 2 * j);
            acc[r][t][(2 * j + 1) % NA] = pair_dot(acc[r][t][(2 * j + 1) % NA], hi[r], xt[t] + QK * b + 16 + 2 * j);
          }
      }
    }
    for (int r = 0; r < RR; r++) {
      const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(d[r] + 16 * b)));
      for (int t = 0; t < TT; t++) {
        __m256i sum = acc[r][t][0];
        for (int a = 1; a < NA; a++) sum = _mm256_add_epi32(sum, acc[r][t][a]);
        f[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dv, _mm256_broadcast_ss(xs + (t0 + t) * nb + b)),
                                  f[r][t]);
      }
      if (!q8) {
        const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(m[r] + 16 * b)));
        for (int t = 0; t < TT; t++)
          f[r][t] = _mm256_fmadd_ps(mv, _mm256_broadcast_ss(xsum + (t0 + t) * nb + b), f[r][t]);
      }
    }
  }
  for (int r = 0; r < RR; r++) {
    const int rows = w->n - 8 * (g + r) < 8 ? w->n - 8 * (g + r) : 8; /* the padding's rows are not written */
    for (int t = 0; t < TT && rows > 0; t++) {
      float* o = y + (size_t)(t0 + t) * ldy + 8 * (g + r);
      if (rows == 8) _mm256_storeu_ps(o, f[r][t]);
      else {
        float tmp[8];
        _mm256_storeu_ps(tmp, f[r][t]);
        memcpy(o, tmp, rows * sizeof(float));
      }
    }
  }
}

#define LIN_TILE lin_tile
#endif

/* one tile: unit u, TT tokens from t0 (each TT its own code) */
static void tile(const hl_linear* w, int u, int TT, int t0, const int16_t* xq, const float* xs, const float* xsum,
                 float* y, int ldy) {
  const int q8 = w->type == W_Q8;
#define TILE_CASE(T)                                                                                                \
  if (TT == T) {                                                                                                   \
    if (q8) LIN_TILE(w, u, T, 1, t0, xq, xs, xsum, y, ldy);                                                        \
    else LIN_TILE(w, u, T, 0, t0, xq, xs, xsum, y, ldy);                                                           \
    return;                                                                                                        \
  }
  TILE_CASE(1) TILE_CASE(2)
#if TT_MAX > 2
  TILE_CASE(3) TILE_CASE(4)
#endif
#if TT_MAX > 4
  TILE_CASE(5) TILE_CASE(6) TILE_CASE(7) TILE_CASE(8) TILE_CASE(9)
#endif
#undef TILE_CASE
}

/* units u0..u1, each for every tile of up to TT_MAX tokens: a unit's weights are read from memory once per call,
 * however many tokens (a prompt's chunk, a verify block) */
static void lin_units(const hl_linear* w, int u0, int u1, int T, const int16_t* xq, const float* xs,
                      const float* xsum, float* y, int ldy) {
  for (int u = u0; u < u1; u++)
    for (int t0 = 0, tt; t0 < T; t0 += tt) {
      tt = T - t0 < TT_MAX ? T - t0 : TT_MAX;
      tile(w, u, tt, t0, xq, xs, xsum, y, ldy);
    }
}
#undef RR
#else
/* the same sums in portable C: per row, per block an exact int32 dot, then the float terms in the same order */
static void lin_units(const hl_linear* w, int u0, int u1, int T, const int16_t* xq, const float* xs,
                      const float* xsum, float* y, int ldy) {
  const int K = w->k, nb = K / QK, q8 = w->type == W_Q8, gb = q8 ? 256 : 128;
  for (int g = 2 * u0; g < 2 * u1; g++)
    for (int r = 0; r < 8 && 8 * g + r < w->n; r++)
      for (int t = 0; t < T; t++) {
        float acc = 0.f;
        for (int b = 0; b < nb; b++) {
          const uint8_t* q = w->qs + group_qs(g, nb, b, gb) + 2 * r;
          const int16_t* xb = xq + (size_t)t * K + QK * b;
          int32_t s = 0;
          if (q8)
            for (int i = 0; i < 16; i++)
              s += (int32_t)(int8_t)q[PAIR_BYTES * i] * xb[2 * i] + (int32_t)(int8_t)q[PAIR_BYTES * i + 1] * xb[2 * i + 1];
          else
            for (int j = 0; j < 8; j++)
              for (int u = 0; u < 2; u++) {
                const uint8_t byte = q[PAIR_BYTES * j + u];
                s += (int32_t)(byte & 15) * xb[2 * j + u] + (int32_t)(byte >> 4) * xb[16 + 2 * j + u];
              }
          const size_t gi = group_block(g, nb, b) * 8 + r;
          acc += (float)s * (f16_to_f32(w->d[gi]) * xs[t * nb + b]);
          if (w->m) acc += f16_to_f32(w->m[gi]) * xsum[t * nb + b];
        }
        y[(size_t)t * ldy + 8 * g + r] = acc;
      }
}
#endif

/* W_Q4A8's layout (heron.runtime.native.group_rows_a8): groups of 8 rows one after the other (units of two, the last
 * padded, as W_Q4's), a group's blocks in turn, a block in four 32-byte chunks v, row r's 4 bytes at + 4 r: the row's
 * block bytes 4v .. 4v + 3 as the file stores them (byte i: element i low, 16 + i high), so a 32-bit lane is one
 * row's four elements 4v + i (low nibbles) or 16 + 4v + i (high). Each group is one sequential stream (AVX2's tiles
 * take a group at a time: with a unit's two groups interleaved, a one-token call read its memory at half speed,
 * scripts/probe_int8_activations.py); AVX-512 joins a block's two groups in one vector. Scales and offsets as W_Q4's. Per row and block: the int32
 * sum s of its 32 products, then y += fma(s, d xs, m xsum): one add on the row's running sum per block (W_Q4's two
 * chained FMAs bound a one-token call of one group by their latency). */
#if defined(HL_ZMM)
#define TT8_MAX 9
/* unit u (16 rows, one 512-bit vector) x TT tokens from t0: VNNI's vpdpbusd, four products per lane */
static inline __attribute__((always_inline)) void a8_tile(const hl_linear* w, int u, const int TT, int t0,
                                                          const int8_t* xq, const float* xs, const float* xsum,
                                                          float* y, int ldy) {
  const int K = w->k, nb = K / QK, NA = TT >= 4 ? 1 : 2;
  const uint8_t* qs = w->qs + (size_t)u * nb * 256; /* group 2u; group 2u + 1 at + nb 128 */
  const uint16_t* d = w->d + (size_t)u * nb * 16;
  const uint16_t* m = w->m + (size_t)u * nb * 16;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 f[TT8_MAX];
#pragma GCC unroll 16
  for (int t = 0; t < TT; t++) f[t] = _mm512_setzero_ps();
  for (int b = 0; b < nb; b++) {
    const uint8_t *q = qs + (size_t)b * 128, *q1 = q + (size_t)nb * 128;
    prefetch_ahead(q, 128);
    prefetch_ahead(q1, 128);
    __m512i acc[TT8_MAX][2];
#pragma GCC unroll 16
    for (int t = 0; t < TT; t++)
#pragma GCC unroll 2
      for (int a = 0; a < NA; a++) acc[t][a] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
      const __m512i p = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(q + 32 * v))),
                                           _mm256_loadu_si256((const __m256i*)(q1 + 32 * v)), 1);
      const __m512i lo = _mm512_and_si512(p, low), hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
#pragma GCC unroll 16
      for (int t = 0; t < TT; t++) {
        const int8_t* xb = xq + (size_t)(t0 + t) * K + QK * b;
        int32_t xl, xh;
        memcpy(&xl, xb + 4 * v, 4);
        memcpy(&xh, xb + 16 + 4 * v, 4);
        acc[t][v % NA] = _mm512_dpbusd_epi32(acc[t][v % NA], lo, _mm512_set1_epi32(xl));
        acc[t][v % NA] = _mm512_dpbusd_epi32(acc[t][v % NA], hi, _mm512_set1_epi32(xh));
      }
    }
    const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(d + 16 * b)));
    const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(m + 16 * b)));
#pragma GCC unroll 16
    for (int t = 0; t < TT; t++) {
      const __m512i sum = NA == 1 ? acc[t][0] : _mm512_add_epi32(acc[t][0], acc[t][1]);
      const __m512 off = _mm512_mul_ps(mv, _mm512_set1_ps(xsum[(t0 + t) * nb + b]));
      f[t] = _mm512_add_ps(f[t], _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum),
                                                 _mm512_mul_ps(dv, _mm512_set1_ps(xs[(t0 + t) * nb + b])), off));
    }
  }
  const int rows = w->n - UNIT * u < UNIT ? w->n - UNIT * u : UNIT;
#pragma GCC unroll 16
  for (int t = 0; t < TT; t++)
    _mm512_mask_storeu_ps(y + (size_t)(t0 + t) * ldy + UNIT * u, (__mmask16)((1u << rows) - 1), f[t]);
}
#define A8_GROUPS 1 /* a tile is the whole unit */
#elif defined(HL_AVX2)
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define A8_VNNI(acc, w, x) _mm256_dpbusd_epi32(acc, w, x)
#elif defined(__AVXVNNI__)
#define A8_VNNI(acc, w, x) _mm256_dpbusd_avx_epi32(acc, w, x)
#endif
#define TT8_MAX 4 /* AVX2: 4 sums and 4 float sums of a group + the weights' vectors fit 16 registers */
/* group g (8 rows of unit g / 2) x TT tokens from t0. Without VNNI: vpmaddubsw's pair sums (at most 2 x 15 x 127)
 * summed in int16 lanes over the block (8 x 3810 = 30,480: no saturation), then into int32 by vpmaddwd with ones */
static inline __attribute__((always_inline)) void a8_tile(const hl_linear* w, int g, const int TT, int t0,
                                                          const int8_t* xq, const float* xs, const float* xsum,
                                                          float* y, int ldy) {
  const int K = w->k, nb = K / QK;
  const uint8_t* qs = w->qs + (size_t)g * nb * 128;
  const uint16_t* d = w->d + group_block(g, nb, 0) * 8;
  const uint16_t* m = w->m + group_block(g, nb, 0) * 8;
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 f[TT8_MAX];
  for (int t = 0; t < TT; t++) f[t] = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++) {
    const uint8_t* q = qs + (size_t)b * 128;
    prefetch_ahead(q, 128);
    __m256i acc[TT8_MAX];
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) acc[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
      const __m256i p = _mm256_loadu_si256((const __m256i*)(q + 32 * v));
      const __m256i lo = _mm256_and_si256(p, low), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), low);
#pragma GCC unroll 4
      for (int t = 0; t < TT; t++) {
        const int8_t* xb = xq + (size_t)(t0 + t) * K + QK * b;
        int32_t xl, xh;
        memcpy(&xl, xb + 4 * v, 4);
        memcpy(&xh, xb + 16 + 4 * v, 4);
#ifdef A8_VNNI
        acc[t] = A8_VNNI(A8_VNNI(acc[t], lo, _mm256_set1_epi32(xl)), hi, _mm256_set1_epi32(xh));
#else
        acc[t] = _mm256_add_epi16(acc[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(xl)),
                                                           _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xh))));
#endif
      }
    }
    const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(d + 16 * b)));
    const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(m + 16 * b)));
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
#ifdef A8_VNNI
      const __m256i sum = acc[t];
#else
      const __m256i sum = _mm256_madd_epi16(acc[t], _mm256_set1_epi16(1));
#endif
      const __m256 off = _mm256_mul_ps(mv, _mm256_broadcast_ss(xsum + (t0 + t) * nb + b));
      f[t] = _mm256_add_ps(f[t], _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum),
                                                 _mm256_mul_ps(dv, _mm256_broadcast_ss(xs + (t0 + t) * nb + b)), off));
    }
  }
  const int rows = w->n - 8 * g < 8 ? w->n - 8 * g : 8;
  for (int t = 0; t < TT && rows > 0; t++) {
    float* o = y + (size_t)(t0 + t) * ldy + 8 * g;
    if (rows == 8) _mm256_storeu_ps(o, f[t]);
    else {
      float tmp[8];
      _mm256_storeu_ps(tmp, f[t]);
      memcpy(o, tmp, rows * sizeof(float));
    }
  }
}
#define A8_GROUPS 2 /* a tile is one group of the unit */
#endif

#if defined(HL_AVX2)
static void a8_tiles(const hl_linear* w, int i, int TT, int t0, const int8_t* xq, const float* xs, const float* xsum,
                     float* y, int ldy) {
#define A8_CASE(T)                                                                                                  \
  if (TT == T) {                                                                                                   \
    a8_tile(w, i, T, t0, xq, xs, xsum, y, ldy);                                                                    \
    return;                                                                                                        \
  }
  A8_CASE(1) A8_CASE(2) A8_CASE(3) A8_CASE(4)
#if TT8_MAX > 4
  A8_CASE(5) A8_CASE(6) A8_CASE(7) A8_CASE(8) A8_CASE(9)
#endif
#undef A8_CASE
}

/* units u0..u1 of a W_Q4A8 linear for T tokens: each unit's (or group's) tiles of up to TT8_MAX tokens */
static void a8_units(const hl_linear* w, int u0, int u1, int T, const int8_t* xq, const float* xs, const float* xsum,
                     float* y, int ldy) {
  for (int i = A8_GROUPS * u0; i < A8_GROUPS * u1; i++)
    for (int t0 = 0, tt; t0 < T; t0 += tt) {
      tt = T - t0 < TT8_MAX ? T - t0 : TT8_MAX;
      a8_tiles(w, i, tt, t0, xq, xs, xsum, y, ldy);
    }
}
#else
/* the same sums in portable C */
static void a8_units(const hl_linear* w, int u0, int u1, int T, const int8_t* xq, const float* xs, const float* xsum,
                     float* y, int ldy) {
  const int K = w->k, nb = K / QK;
  for (int g = 2 * u0; g < 2 * u1; g++)
    for (int r = 0; r < 8 && 8 * g + r < w->n; r++)
      for (int t = 0; t < T; t++) {
        float acc = 0.f;
        for (int b = 0; b < nb; b++) {
          const uint8_t* q = w->qs + ((size_t)g * nb + b) * 128 + 4 * r;
          const int8_t* xb = xq + (size_t)t * K + QK * b;
          int32_t s = 0;
          for (int v = 0; v < 4; v++)
            for (int i = 0; i < 4; i++)
              s += (int32_t)(q[32 * v + i] & 15) * xb[4 * v + i] + (int32_t)(q[32 * v + i] >> 4) * xb[16 + 4 * v + i];
          const size_t gi = group_block(g, nb, b) * 8 + r;
          acc += fmaf((float)s, f16_to_f32(w->d[gi]) * xs[t * nb + b], f16_to_f32(w->m[gi]) * xsum[t * nb + b]);
        }
        y[(size_t)t * ldy + 8 * g + r] = acc;
      }
}
#endif

/* [*a, *b): thread id's share of n items split in nt contiguous parts */
static inline void share(size_t n, int nt, int id, size_t* a, size_t* b) {
  const size_t chunk = (n + nt - 1) / nt, s = (size_t)id * chunk;
  *a = s < n ? s : n;
  *b = s + chunk < n ? s + chunk : n;
}

/* thread id of nt's share of y (T x N) = x (T x K) W^T (x already rounded: xq, xs, xsum): whole units of 16 rows,
 * each row computed by one thread in the same order, so any split gives the same bits */
static void linear_part(const hl_linear* w, int T, const int16_t* xq, const float* xs, const float* xsum, float* y,
                        int nt, int id) {
  size_t a, e;
  share((size_t)(w->n + UNIT - 1) / UNIT, nt, id, &a, &e);
  if (a < e) {
    if (w->type == W_Q4A8) a8_units(w, (int)a, (int)e, T, (const int8_t*)xq, xs, xsum, y, w->n);
    else lin_units(w, (int)a, (int)e, T, xq, xs, xsum, y, w->n);
  }
}

/* y (T x w->n) = x (T x w->k) W^T, x rounded per block of 32 to int16 or (act8, W_Q4A8 only) int8 as a forward rounds
 * a linear's input; one thread. For tests and probes: a linear alone. Returns 0, or -1 (bad arguments / memory). */
int hl_linear_apply(const hl_linear* w, int T, const float* x, float* y, int act8) {
  if (T <= 0 || w->k % QK || (act8 != 0) != (w->type == W_Q4A8)) return -1;
  const size_t K = (size_t)w->k, nb = K / QK;
  int16_t* xq = malloc(sizeof(int16_t) * T * K);
  float *xs = malloc(sizeof(float) * T * nb), *xsum = malloc(sizeof(float) * T * nb);
  int rc = -1;
  if (xq && xs && xsum) {
    round_rows(act8, x, T, (int)K, xq, 0, xs, xsum);
    linear_part(w, T, xq, xs, xsum, y, 1, 0);
    rc = 0;
  }
  free(xq), free(xs), free(xsum);
  return rc;
}

/* every thread of the team waits here (nothing to wait for with one) */
static inline void sync_team(int nt) {
#ifdef _OPENMP
  if (nt > 1) {
#pragma omp barrier
  }
#else
  (void)nt;
#endif
}

static void rmsnorm(const float* x, const float* g, int T, int D, float eps, float* out) {
  for (int t = 0; t < T; t++) {
    const float* p = x + (size_t)t * D;
    double ss = 0.0;
    for (int i = 0; i < D; i++) ss += (double)p[i] * p[i];
    float sc = (float)(1.0 / sqrt(ss / D + eps));
    for (int i = 0; i < D; i++) out[(size_t)t * D + i] = p[i] * sc * g[i];
  }
}

/* row tok of a linear's blocks, dequantized (an embedding's row: e->k floats) */
static void embed_row(const hl_linear* e, int tok, float* out) {
  const int nb = e->k / QK, q8 = e->type == W_Q8, gb = q8 ? 256 : 128, g = tok / 8, r = tok % 8;
  for (int b = 0; b < nb; b++) {
    const uint8_t* q = e->qs + group_qs(g, nb, b, gb) + 2 * r;
    const size_t gi = group_block(g, nb, b) * 8 + r;
    float d = f16_to_f32(e->d[gi]), off = e->m ? f16_to_f32(e->m[gi]) : 0.f;
    float* o = out + QK * b;
    for (int i = 0; i < 16; i++) { /* element pair i: bytes 2r, 2r + 1 of the group's 16 bytes of pair i (j, low / high) */
      if (q8) { o[2 * i] = d * (int8_t)q[PAIR_BYTES * i]; o[2 * i + 1] = d * (int8_t)q[PAIR_BYTES * i + 1]; }
      else {
        const uint8_t* p = q + PAIR_BYTES * (i & 7);
        const int sh = i < 8 ? 0 : 4;
        o[2 * i] = d * ((p[0] >> sh) & 15) + off;
        o[2 * i + 1] = d * ((p[1] >> sh) & 15) + off;
      }
    }
  }
}

static void rope(float* v, int heads, int S, const float* cs, const float* sn) {
  for (int h = 0; h < heads; h++) {
    float* p = v + h * S;
    for (int i = 0; i < S / 2; i++) {
      float a = p[2 * i], b = p[2 * i + 1];
      p[2 * i] = a * cs[i] - b * sn[i];
      p[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  }
}

/* a . b with b in fp16 (a cached key) */
static float dot_h(const float* a, const uint16_t* b, int n) {
#ifdef HL_AVX2
  if (n % 8 == 0) {
    __m256 s0 = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8)
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(b + i))), s0);
    return hsum8(s0);
  }
#endif
  float s = 0.f;
  for (int i = 0; i < n; i++) s += a[i] * f16_to_f32(b[i]);
  return s;
}

/* n floats rounded to fp16 (a key or value row into the cache) */
static void to_f16(const float* x, uint16_t* y, int n) {
  int i = 0;
#ifdef HL_AVX2
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; i++) y[i] = f32_to_f16(x[i]);
}

#ifdef HL_AVX2
/* e^x for x <= 0 (a softmax's shifted scores), eight at a time: x = k ln 2 + r, e^r by its degree-6 Taylor polynomial
 * on |r| <= ln 2 / 2 (relative error ~2e-7, as expf's float), 2^k into the exponent; below -87, 0 */
static inline __m256 exp_neg(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.42860677e-6f), r); /* ln 2 in two parts */
  __m256 p = _mm256_set1_ps(1.f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_cmp_ps(x, lo, _CMP_GE_OQ));
}

/* g * sigmoid(g) * u, eight at a time: sigmoid from e = e^-|g| (1 / (1 + e) for g >= 0, e / (1 + e) below) */
static inline __m256 silu_mul8(__m256 g, __m256 u) {
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), g);
  const __m256 e = exp_neg(_mm256_sub_ps(_mm256_setzero_ps(), a));
  const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
  const __m256 sg = _mm256_blendv_ps(_mm256_mul_ps(e, r), r, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GE_OQ));
  return _mm256_mul_ps(_mm256_mul_ps(g, sg), u);
}

/* eight keys' dot products with one query (S floats, S % 8 == 0): eight accumulators, reduced together */
static inline __m256 dot8(const float* qh, const uint16_t* k, int S) {
  __m256 a[8];
  for (int u = 0; u < 8; u++) a[u] = _mm256_setzero_ps();
  for (int i = 0; i < S; i += 8) {
    const __m256 qv = _mm256_loadu_ps(qh + i);
    for (int u = 0; u < 8; u++)
      a[u] = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(k + (size_t)u * S + i))), a[u]);
  }
  __m256 b0 = _mm256_hadd_ps(a[0], a[1]), b1 = _mm256_hadd_ps(a[2], a[3]);
  __m256 b2 = _mm256_hadd_ps(a[4], a[5]), b3 = _mm256_hadd_ps(a[6], a[7]);
  b0 = _mm256_hadd_ps(b0, b1);
  b2 = _mm256_hadd_ps(b2, b3); /* lanes: keys 0-3 low half + high half, then 4-7 */
  return _mm256_add_ps(_mm256_permute2f128_ps(b0, b2, 0x20), _mm256_permute2f128_ps(b0, b2, 0x31));
}
#endif

#ifdef HL_AVX2
/* p[0..n) <- exp(p - max p), eight at a time (the tail through the same vector code); -> 1 / their sum */
static inline float softmax8(float* p, int n) {
  float mx = -INFINITY;
  int j;
  for (j = 0; j < n; j++) mx = p[j] > mx ? p[j] : mx;
  const __m256 mv = _mm256_set1_ps(mx);
  __m256 sum8 = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(p + j), mv));
    _mm256_storeu_ps(p + j, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = hsum8(sum8);
  for (; j < n; j++) {
    float tail[8] = {p[j] - mx, 0, 0, 0, 0, 0, 0, 0}, e[8];
    _mm256_storeu_ps(e, exp_neg(_mm256_loadu_ps(tail)));
    p[j] = e[0];
    sum += e[0];
  }
  return 1.f / sum;
}
#endif

/* one query head's attention over n cached positions: scores (n floats of scratch), softmax, the values' weighted
 * sum into o (S floats). The same arithmetic for a token alone or inside a block. */
static void attend(const float* qh, const uint16_t* kh, const uint16_t* vh, int n, int S, float scale, float* sc,
                   float* o) {
#ifdef HL_AVX2
  if (S % 8 == 0) {
    int j = 0;
    const __m256 sv = _mm256_set1_ps(scale);
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(sc + j, _mm256_mul_ps(dot8(qh, kh + (size_t)j * S, S), sv));
    for (; j < n; j++) sc[j] = dot_h(qh, kh + (size_t)j * S, S) * scale;
    const float inv = softmax8(sc, n);
    for (int c = 0; c < S; c += 64) { /* 64 columns at a time, summed in registers */
      const int w = S - c < 64 ? (S - c) / 8 : 8;
      __m256 acc[8];
      for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
      for (j = 0; j < n; j++) {
        const __m256 p = _mm256_set1_ps(sc[j] * inv);
        const uint16_t* v = vh + (size_t)j * S + c;
        for (int i = 0; i < w; i++)
          acc[i] = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(v + 8 * i))), acc[i]);
      }
      for (int i = 0; i < w; i++) _mm256_storeu_ps(o + c + 8 * i, acc[i]);
    }
    return;
  }
#endif
  float mx = -INFINITY;
  for (int j = 0; j < n; j++) { sc[j] = dot_h(qh, kh + (size_t)j * S, S) * scale; if (sc[j] > mx) mx = sc[j]; }
  double sum = 0.0;
  for (int j = 0; j < n; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
  float inv = (float)(1.0 / sum);
  memset(o, 0, S * sizeof(float));
  for (int j = 0; j < n; j++) {
    const float a = sc[j] * inv;
    const uint16_t* v = vh + (size_t)j * S;
    for (int i = 0; i < S; i++) o[i] += a * f16_to_f32(v[i]);
  }
}

#define MQ_MAX 3 /* queries sharing a key head that one pass serves (their accumulators fill AVX-512VL's registers) */
#if defined(HL_AVX2) && defined(__AVX512VL__)
/* attend() for C query heads that share a key head, at one token: each key and value row is read and converted
 * from fp16 once for all C. Every query's sums take attend()'s order, so each output is attend()'s bit for bit. */
static inline __attribute__((always_inline)) void attend_c(const int C, const float* const* qh, const uint16_t* kh,
                                                           const uint16_t* vh, int n, int S, float scale,
                                                           float* const* sc, float* const* o) {
  const __m256 sv = _mm256_set1_ps(scale);
  int j = 0;
  for (; j + 8 <= n; j += 8) { /* dot8 for C queries */
    __m256 a[MQ_MAX][8];
    for (int c = 0; c < C; c++)
      for (int u = 0; u < 8; u++) a[c][u] = _mm256_setzero_ps();
    const uint16_t* k = kh + (size_t)j * S;
    for (int i = 0; i < S; i += 8)
      for (int u = 0; u < 8; u++) {
        const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(k + (size_t)u * S + i)));
        for (int c = 0; c < C; c++) a[c][u] = _mm256_fmadd_ps(_mm256_loadu_ps(qh[c] + i), kv, a[c][u]);
      }
    for (int c = 0; c < C; c++) {
      __m256 b0 = _mm256_hadd_ps(a[c][0], a[c][1]), b1 = _mm256_hadd_ps(a[c][2], a[c][3]);
      __m256 b2 = _mm256_hadd_ps(a[c][4], a[c][5]), b3 = _mm256_hadd_ps(a[c][6], a[c][7]);
      b0 = _mm256_hadd_ps(b0, b1);
      b2 = _mm256_hadd_ps(b2, b3);
      const __m256 d = _mm256_add_ps(_mm256_permute2f128_ps(b0, b2, 0x20), _mm256_permute2f128_ps(b0, b2, 0x31));
      _mm256_storeu_ps(sc[c] + j, _mm256_mul_ps(d, sv));
    }
  }
  for (; j < n; j++)
    for (int c = 0; c < C; c++) sc[c][j] = dot_h(qh[c], kh + (size_t)j * S, S) * scale;
  float inv[MQ_MAX];
  for (int c = 0; c < C; c++) inv[c] = softmax8(sc[c], n); /* attend()'s softmax, per query */
  for (int col = 0; col < S; col += 64) { /* 64 columns at a time, summed in registers, for C queries */
    const int w = S - col < 64 ? (S - col) / 8 : 8;
    __m256 acc[MQ_MAX][8];
    for (int c = 0; c < C; c++)
      for (int i = 0; i < 8; i++) acc[c][i] = _mm256_setzero_ps();
    for (j = 0; j < n; j++) {
      const uint16_t* v = vh + (size_t)j * S + col;
      __m256 pc[MQ_MAX];
      for (int c = 0; c < C; c++) pc[c] = _mm256_set1_ps(sc[c][j] * inv[c]);
      for (int i = 0; i < w; i++) {
        const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(v + 8 * i)));
        for (int c = 0; c < C; c++) acc[c][i] = _mm256_fmadd_ps(pc[c], vv, acc[c][i]);
      }
    }
    for (int c = 0; c < C; c++)
      for (int i = 0; i < w; i++) _mm256_storeu_ps(o[c] + col + 8 * i, acc[c][i]);
  }
}
#endif

/* C (1 .. MQ_MAX) query heads that share a key head, at one token: attend() for each, in one pass where it can */
static void attend_heads(int C, const float* const* qh, const uint16_t* kh, const uint16_t* vh, int n, int S,
                         float scale, float* const* sc, float* const* o) {
#if defined(HL_AVX2) && defined(__AVX512VL__)
  if (S % 8 == 0 && C == 3) { attend_c(3, qh, kh, vh, n, S, scale, sc, o); return; }
  if (S % 8 == 0 && C == 2) { attend_c(2, qh, kh, vh, n, S, scale, sc, o); return; }
#endif
  for (int c = 0; c < C; c++) attend(qh[c], kh, vh, n, S, scale, sc[c], o[c]);
}

/* g[i] = silu(g[i]) * u[i] for i in [a, b); each element the same arithmetic wherever the range starts (the
 * vector path's tail goes through the same vector code), so any split between threads gives the same bits */
static void silu_mul(float* g, const float* u, size_t a, size_t b) {
#ifdef HL_AVX2
  size_t i = a;
  for (; i + 8 <= b; i += 8) _mm256_storeu_ps(g + i, silu_mul8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
  if (i < b) {
    float gt[8] = {0}, ut[8] = {0};
    memcpy(gt, g + i, (b - i) * sizeof(float));
    memcpy(ut, u + i, (b - i) * sizeof(float));
    _mm256_storeu_ps(gt, silu_mul8(_mm256_loadu_ps(gt), _mm256_loadu_ps(ut)));
    memcpy(g + i, gt, (b - i) * sizeof(float));
  }
#else
  for (size_t i = a; i < b; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
#endif
}

/* the scratch hl_forward needs for T tokens, in floats */
size_t hl_scratch_floats(const hl_model* m, int T) {
  size_t D = m->dim, F = m->ffn_dim, Q = (size_t)m->n_heads * m->head_dim, KV = (size_t)m->n_kv_heads * m->head_dim;
  size_t W = D > F ? D : F, Q2 = Q > W ? Q : W;
  return (size_t)T * (2 * D + 2 * Q + 2 * KV + 2 * F) + ((size_t)T * Q2 + 1) / 2 + 1 + 2 * (size_t)T * (Q2 / QK);
}

typedef struct { /* one call's buffers, shared by the team */
  float *x, *h, *q, *k, *v, *att, *g, *u, *xs, *xsum, *scores, *out, *hidden;
  uint16_t *kcache, *vcache; /* fp16 */
  int16_t* xq;
  const int32_t* tokens;
  int T, pos, cap, n_out;
} hl_call;

/* rows t0..t1 of x (T x K) normed (g: the norm's weights; NULL: taken as they are) and rounded into xq, xs, xsum */
static void norm_round(const float* x, const float* g, int K, float eps, float* h, size_t t0, size_t t1,
                       int16_t* xq, float* xs, float* xsum, int act8) {
  if (t0 >= t1) return;
  const int nb = K / QK, n = (int)(t1 - t0);
  if (g) {
    rmsnorm(x + t0 * K, g, n, K, eps, h + t0 * K);
    x = h;
  }
  round_rows(act8, x + t0 * K, n, K, xq, t0 * K, xs + t0 * nb, xsum + t0 * nb);
}

/* the forward as thread id of nt runs it: the linears split by rows, attention and the rounding of its outputs by
 * heads, SiLU and its rounding by blocks of 32, the residual adds, norms and RoPE by tokens; a barrier wherever a
 * thread reads what another wrote (nine per layer). Each value is computed by one thread with the same arithmetic for
 * any nt: one thread and two give the same bits. */
static void forward_team(const hl_model* m, const hl_call* c, int nt, int id) {
  const int D = m->dim, H = m->n_heads, G = m->n_kv_heads, S = m->head_dim, F = m->ffn_dim, T = c->T, pos = c->pos;
  const int R = H / G, Q = H * S, KV = G * S, cap = c->cap, a8 = m->act8;
  float *x = c->x, *h = c->h, *q = c->q, *k = c->k, *v = c->v, *att = c->att, *g = c->g, *u = c->u;
  int16_t* xq = c->xq;
  float *xs = c->xs, *xsum = c->xsum;
  const float scale = 1.f / sqrtf((float)S);
  size_t t0, t1, b0, b1, h0, h1;
  share(T, nt, id, &t0, &t1);
  share((size_t)T * (F / QK), nt, id, &b0, &b1); /* the FFN's hidden blocks of 32 (SiLU and its rounding) */
  share(H, nt, id, &h0, &h1);
  const int heads_in_blocks = S % QK == 0; /* a head's outputs are whole blocks: its thread rounds them */
  const size_t hb = (size_t)S / QK, qb = (size_t)Q / QK;

  for (size_t t = t0; t < t1; t++) embed_row(&m->emb, c->tokens[t], x + t * D);
  norm_round(x, m->norms[0], D, m->eps, h, t0, t1, xq, xs, xsum, a8);
  for (int l = 0; l < m->n_layers; l++) {
    const hl_linear* L = m->layers + 7 * l;
    uint16_t* kc = c->kcache + (size_t)l * G * cap * S;
    uint16_t* vc = c->vcache + (size_t)l * G * cap * S;
    sync_team(nt); /* the layer's input rows, normed and rounded */
    linear_part(&L[0], T, xq, xs, xsum, q, nt, id);
    linear_part(&L[1], T, xq, xs, xsum, k, nt, id);
    linear_part(&L[2], T, xq, xs, xsum, v, nt, id);
    sync_team(nt);
    for (size_t t = t0; t < t1; t++) {
      const size_t p = pos + t;
      const float *cs = m->rope_cos + p * (S / 2), *sn = m->rope_sin + p * (S / 2);
      rope(q + t * Q, H, S, cs, sn);
      rope(k + t * KV, G, S, cs, sn);
      for (int j = 0; j < G; j++) {
        to_f16(k + t * KV + j * S, kc + ((size_t)j * cap + p) * S, S);
        to_f16(v + t * KV + j * S, vc + ((size_t)j * cap + p) * S, S);
      }
    }
    sync_team(nt);
    /* a head's queries on one thread (its scores' scratch its own); heads in contiguous runs, so the query heads
     * that share a KV head mostly share a thread and its cache reads; then the thread rounds its heads' outputs */
    for (int a = (int)h0, e; a < (int)h1; a = e) { /* up to MQ_MAX of this thread's heads of one key head at once */
      e = (a / R + 1) * R < (int)h1 ? (a / R + 1) * R : (int)h1;
      e = e - a > MQ_MAX ? a + MQ_MAX : e;
      const uint16_t* kh = kc + (size_t)(a / R) * cap * S;
      const uint16_t* vh = vc + (size_t)(a / R) * cap * S;
      for (int t = 0; t < T; t++) {
        const float* qs[MQ_MAX];
        float *sc[MQ_MAX], *os[MQ_MAX];
        for (int hd = a; hd < e; hd++) {
          qs[hd - a] = q + (size_t)t * Q + hd * S;
          sc[hd - a] = c->scores + (size_t)hd * (pos + T);
          os[hd - a] = att + (size_t)t * Q + hd * S;
        }
        attend_heads(e - a, qs, kh, vh, pos + t + 1, S, scale, sc, os); /* pos + t + 1: the keys this token sees */
      }
    }
    if (heads_in_blocks && h0 < h1)
      for (size_t t = 0; t < (size_t)T; t++) {
        const size_t a = t * qb + h0 * hb, n = (h1 - h0) * hb;
        round_rows(a8, att + QK * a, 1, (int)(QK * n), xq, QK * a, xs + a, xsum + a);
      }
    sync_team(nt);
    if (!heads_in_blocks) {
      norm_round(att, NULL, Q, 0.f, NULL, t0, t1, xq, xs, xsum, a8);
      sync_team(nt);
    }
    linear_part(&L[3], T, xq, xs, xsum, h, nt, id);
    sync_team(nt);
    for (size_t t = t0; t < t1; t++) /* the residual, then its norm: rows by tokens */
      for (int i = 0; i < D; i++) x[t * D + i] += h[t * D + i];
    norm_round(x, m->norms[2 * l + 1], D, m->eps, h, t0, t1, xq, xs, xsum, a8);
    sync_team(nt);
    linear_part(&L[4], T, xq, xs, xsum, g, nt, id);
    linear_part(&L[5], T, xq, xs, xsum, u, nt, id);
    sync_team(nt);
    if (b0 < b1) { /* SiLU and the rounding of the same blocks */
      silu_mul(g, u, QK * b0, QK * b1);
      round_rows(a8, g + QK * b0, 1, (int)(QK * (b1 - b0)), xq, QK * b0, xs + b0, xsum + b0);
    }
    sync_team(nt);
    linear_part(&L[6], T, xq, xs, xsum, h, nt, id);
    sync_team(nt);
    for (size_t t = t0; t < t1; t++)
      for (int i = 0; i < D; i++) x[t * D + i] += h[t * D + i];
    if (l + 1 < m->n_layers) norm_round(x, m->norms[2 * l + 2], D, m->eps, h, t0, t1, xq, xs, xsum, a8);
  }
  sync_team(nt); /* the output norm's rows are split otherwise */
  const int n_out = c->n_out;
  if (n_out == 0) return;
  const size_t first = (size_t)(T - n_out);
  size_t o0, o1;
  share(n_out, nt, id, &o0, &o1);
  norm_round(x + first * D, m->out_norm, D, m->eps, h, o0, o1, xq, xs, xsum, 0); /* the head reads int16 */
  if (c->hidden && o0 < o1) memcpy(c->hidden + o0 * D, h + o0 * D, (o1 - o0) * D * sizeof(float));
  sync_team(nt);
  linear_part(&m->head, n_out, xq, xs, xsum, c->out, nt, id);
}

/* Append T tokens at pos; logits of the last n_out into out (n_out x vocab) and, where hidden is not NULL, their
 * final hidden states (after the output norm: the head's input, what a draft head reads) into hidden (n_out x dim).
 * kcache/vcache: fp16 [n_layers][n_kv_heads][cap][head_dim]. scores: >= n_heads * (pos + T) floats. With
 * m->threads > 1 one OpenMP team runs the whole call (barriers between its stages, no team per linear). Returns 0,
 * or a negative code. */
int hl_forward(const hl_model* m, const int32_t* tokens, int T, int pos, uint16_t* kcache, uint16_t* vcache, int cap,
               float* scratch, float* scores, int n_out, float* out, float* hidden) {
  const int D = m->dim, H = m->n_heads, G = m->n_kv_heads, S = m->head_dim, F = m->ffn_dim;
  const int Q = H * S, KV = G * S, W0 = D > F ? D : F, W = Q > W0 ? Q : W0;
  if (T <= 0 || pos < 0 || pos + T > cap || pos + T > m->rope_len || n_out < 0 || n_out > T) return -1;
  for (int t = 0; t < T; t++) if (tokens[t] < 0 || tokens[t] >= m->vocab) return -2;
  hl_call c;
  c.x = scratch;
  c.h = c.x + (size_t)T * D;
  c.q = c.h + (size_t)T * D;
  c.k = c.q + (size_t)T * Q;
  c.v = c.k + (size_t)T * KV;
  c.att = c.v + (size_t)T * KV;
  c.g = c.att + (size_t)T * Q;
  c.u = c.g + (size_t)T * F;
  c.xq = (int16_t*)(c.u + (size_t)T * F);
  c.xs = (float*)(c.u + (size_t)T * F) + ((size_t)T * W + 1) / 2;
  c.xsum = c.xs + (size_t)T * (W / QK);
  c.scores = scores;
  c.kcache = kcache;
  c.vcache = vcache;
  c.out = out;
  c.hidden = hidden;
  c.tokens = tokens;
  c.T = T;
  c.pos = pos;
  c.cap = cap;
  c.n_out = n_out;
#ifdef _OPENMP
  if (m->threads > 1) {
#pragma omp parallel num_threads(m->threads)
    forward_team(m, &c, omp_get_num_threads(), omp_get_thread_num());
    return 0;
  }
#endif
  forward_team(m, &c, 1, 0);
  return 0;
}

/* ---- a draft head on the target's features (heron.runtime.draft_head's architecture) ------------------------
 * f = h + proj [h ; rmsnorm(e(x))], then n_blocks pre-norm SwiGLU blocks f += down(silu(gate n) * up n), n =
 * rmsnorm(f); logits = words f + bias over the head's N words. e(x): the word's own row of `words` (the target's
 * int8 embedding rows of those words), or the learned `oov` row for a word outside them. Chained: the next step
 * starts from f and the word chosen. The linears are int8 blocks of 32 (W_Q8); activations rounded as the
 * decoder's. Run by one OpenMP team like hl_forward (the same split: any thread count gives the same bits). */
typedef struct {
  int32_t dim, ffn, n_blocks, n_words, vocab;
  float eps;
  hl_linear proj, words;       /* dim x 2 dim; n_words x dim */
  const hl_linear* blocks;     /* n_blocks * 3: gate, up, down */
  const float* const* norms;   /* n_blocks: each block's norm */
  const float *emb_norm, *bias, *oov;
  const int32_t* row_of_word;  /* vocab: the word's row among the head's words, or -1 */
  int32_t threads;
} hl_head;

size_t hl_head_scratch_floats(const hl_head* hd) {
  const size_t D = hd->dim, F = hd->ffn, N = hd->n_words, W = 2 * D > F ? 2 * D : F;
  return 4 * D + 2 * F + N + (W + 1) / 2 + 2 * (W / QK) + 16;
}

/* the probability of row `best` (the largest of lg[0..n)) in the softmax of lg */
static float top_prob(const float* lg, int n, int best) {
  const float mx = lg[best];
#ifdef HL_AVX2
  const __m256 mv = _mm256_set1_ps(mx);
  __m256 sum8 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) sum8 = _mm256_add_ps(sum8, exp_neg(_mm256_sub_ps(_mm256_loadu_ps(lg + i), mv)));
  double sum = hsum8(sum8);
  for (; i < n; i++) sum += expf(lg[i] - mx);
#else
  double sum = 0.0;
  for (int i = 0; i < n; i++) sum += expf(lg[i] - mx);
#endif
  return (float)(1.0 / sum);
}

/* the head's team-shared words past its buffers in scratch: [0] the word the next step starts from, [1] the words
 * kept so far (the window's length) */
static volatile int32_t* head_shared(const hl_head* hd, float* scratch) {
  const size_t D = hd->dim, F = hd->ffn, N = hd->n_words, W = 2 * D > F ? 2 * D : F;
  return (volatile int32_t*)(scratch + 4 * D + 2 * F + N + (W + 1) / 2 + 2 * (W / QK));
}

static void head_team(const hl_head* hd, const float* hidden, int token, int g, int32_t* rows_out, float* logits_out,
                      float* feature_out, float* scratch, const float* prices, float* probs_out, int nt, int id) {
  const int D = hd->dim, F = hd->ffn, N = hd->n_words, W = 2 * D > F ? 2 * D : F;
  float *cat = scratch, *f = cat + 2 * D, *h = f + D, *gb = h + D, *ub = gb + F, *lg = ub + F;
  int16_t* xq = (int16_t*)(lg + N);
  float *xs = lg + N + (W + 1) / 2, *xsum = xs + W / QK;
  volatile int32_t* row = head_shared(hd, scratch); /* right past xsum's W / QK floats */
  float gain = 1.f, chance = 1.f, best_rate = 1.f; /* thread 0's: expected words of the window so far, and per cost */
  size_t d0, d1, f0, f1, n0, n1;
  share(D, nt, id, &d0, &d1);
  share(F, nt, id, &f0, &f1);
  share((size_t)(N + UNIT - 1) / UNIT, nt, id, &n0, &n1); /* the output's units of 16 rows, as linear_part splits */
  n0 *= UNIT;
  n1 = UNIT * n1 < (size_t)N ? UNIT * n1 : (size_t)N;
  if (id == 0) {
    memcpy(f, hidden, D * sizeof(float));
    row[0] = token >= 0 && token < hd->vocab ? hd->row_of_word[token] : -1;
    row[1] = 0;
  }
  sync_team(nt);
  for (int s = 0; s < g && row[1] == s; s++) {
    if (id == 0) {
      const int r = row[0];
      if (r >= 0 && r < N) embed_row(&hd->words, r, cat + D);
      else memcpy(cat + D, hd->oov, D * sizeof(float));
      rmsnorm(cat + D, hd->emb_norm, 1, D, hd->eps, cat + D);
      memcpy(cat, f, D * sizeof(float));
      quant_rows(cat, 1, 2 * D, xq, xs, xsum);
    }
    sync_team(nt);
    linear_part(&hd->proj, 1, xq, xs, xsum, h, nt, id);
    sync_team(nt);
    for (size_t i = d0; i < d1; i++) f[i] += h[i];
    sync_team(nt);
    for (int b = 0; b < hd->n_blocks; b++) {
      const hl_linear* B = hd->blocks + 3 * b;
      if (id == 0) norm_round(f, hd->norms[b], D, hd->eps, cat, 0, 1, xq, xs, xsum, 0);
      sync_team(nt);
      linear_part(&B[0], 1, xq, xs, xsum, gb, nt, id);
      linear_part(&B[1], 1, xq, xs, xsum, ub, nt, id);
      sync_team(nt);
      silu_mul(gb, ub, f0, f1);
      sync_team(nt);
      if (id == 0) quant_rows(gb, 1, F, xq, xs, xsum);
      sync_team(nt);
      linear_part(&B[2], 1, xq, xs, xsum, h, nt, id);
      sync_team(nt);
      for (size_t i = d0; i < d1; i++) f[i] += h[i];
      sync_team(nt);
    }
    if (id == 0) quant_rows(f, 1, D, xq, xs, xsum);
    sync_team(nt);
    linear_part(&hd->words, 1, xq, xs, xsum, lg, nt, id);
    for (size_t i = n0; i < n1; i++) lg[i] += hd->bias[i];
    sync_team(nt);
    if (id == 0) {
      if (logits_out) memcpy(logits_out + (size_t)s * N, lg, N * sizeof(float));
      if (rows_out) { /* the first choice; ties to the lowest row, as numpy's argmax */
        int best = 0;
        for (int i = 1; i < N; i++) if (lg[i] > lg[best]) best = i;
        int keep = 1;
        if (prices || probs_out) {
          const float p = top_prob(lg, N, best);
          if (probs_out) probs_out[s] = p;
          if (prices) { /* kept while the window's expected words per cost grow (decoding.confidence_window) */
            chance *= p;
            gain += chance;
            const float rate = gain / (1.f + prices[s]);
            keep = rate > best_rate;
            if (keep) best_rate = rate;
          }
        }
        rows_out[s] = best;
        row[0] = best;
        row[1] = s + keep;
      } else {
        row[1] = s + 1;
      }
    }
    sync_team(nt);
  }
  if (id == 0 && feature_out) memcpy(feature_out, f, D * sizeof(float));
}

/* Up to g chained steps of the head from the target's hidden state (dim floats) and the word that followed it (a
 * target id). rows_out (g): each step's first choice (a row of the head's words), the next step's word; NULL: one
 * step (g = 1), its logits only (a sampled window draws its word outside). logits_out: g x n_words, or NULL.
 * feature_out: the last step's feature (dim), or NULL. probs_out (g), or NULL: each step's probability of its first
 * choice (the softmax over the head's words). prices (g), or NULL: what a window of s + 1 words costs past a plain
 * step (its head steps and its verification), in plain steps; the window stops before the first word whose step
 * does not raise its expected words per cost, (1 + p1 + p1 p2 + ...) / (1 + prices[s]), above the best so far (a
 * plain step's 1 to start): decoding.confidence_window's rule. Returns the words kept (g without prices; 0 to g with
 * them), or a negative code. */
int hl_head_run(const hl_head* hd, const float* hidden, int token, int g, int32_t* rows_out, float* logits_out,
                float* feature_out, float* scratch, const float* prices, float* probs_out) {
  if (g < 1 || (!rows_out && (g != 1 || prices || probs_out))) return -1;
#ifdef _OPENMP
  if (hd->threads > 1) {
#pragma omp parallel num_threads(hd->threads)
    head_team(hd, hidden, token, g, rows_out, logits_out, feature_out, scratch, prices, probs_out,
              omp_get_num_threads(), omp_get_thread_num());
  } else
#endif
    head_team(hd, hidden, token, g, rows_out, logits_out, feature_out, scratch, prices, probs_out, 1, 0);
  return head_shared(hd, scratch)[1];
}

/* ---- the sampler (heron.runtime.decoding.probs and draw): a row of logits -> the distribution a sampled token is
 * drawn from, and the draw. numpy's float64 softmax costs ~0.2 ms a SmolLM2 row and its draw ~0.2 ms, a tenth of a
 * step at two threads; here one pass computes the shifted exponentials (float, as attention's softmax; their sum in
 * double), top-p sorts only the likeliest words, and the draw is numpy's own arithmetic (the same running sums). */
typedef struct {
  float e;
  int32_t id;
} hl_cand;

/* falling probability, ties by id: decoding.nucleus's order (a stable sort of -p) */
static int cand_cmp(const void* a, const void* b) {
  const hl_cand *x = (const hl_cand*)a, *y = (const hl_cand*)b;
  if (x->e != y->e) return x->e > y->e ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

/* e[i] <- exp((x[i] - mx) * inv_t) (the likeliest word's 1 exactly) -> their sum, in double */
static double exp_shifted(const float* x, int n, float mx, float inv_t, float* e) {
  double sum = 0.0;
  int j = 0;
#ifdef HL_AVX2
  const __m256 mv = _mm256_set1_ps(mx), iv = _mm256_set1_ps(inv_t);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  for (; j + 8 <= n; j += 8) {
    const __m256 v = exp_neg(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv), iv));
    _mm256_storeu_ps(e + j, v);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  double lanes[4];
  _mm256_storeu_pd(lanes, _mm256_add_pd(s0, s1));
  sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  if (j < n) { /* the tail through the same vector code: equal logits, equal exponentials, wherever they are */
    float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ex[8];
    for (int i = j; i < n; i++) tail[i - j] = x[i];
    _mm256_storeu_ps(ex, exp_neg(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(tail), mv), iv)));
    for (int i = j; i < n; i++) sum += e[i] = ex[i - j];
  }
  return sum;
#endif
  for (; j < n; j++) {
    e[j] = expf((x[j] - mx) * inv_t);
    sum += e[j];
  }
  return sum;
}

/* the first index of x's largest value (numpy's argmax), or -1 where x holds a NaN */
static int first_max(const float* x, int n) {
  int i = 0;
  float mx = x[0];
#ifdef HL_AVX2
  if (n >= 8) {
    __m256 m8 = _mm256_loadu_ps(x), nan8 = _mm256_cmp_ps(m8, m8, _CMP_UNORD_Q);
    for (i = 8; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      m8 = _mm256_max_ps(m8, v);
      nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    if (_mm256_movemask_ps(nan8)) return -1;
    float lanes[8];
    _mm256_storeu_ps(lanes, m8);
    for (int j = 0; j < 8; j++) mx = lanes[j] > mx ? lanes[j] : mx;
    for (; i < n; i++) {
      if (isnan(x[i])) return -1;
      mx = x[i] > mx ? x[i] : mx;
    }
    const __m256 mv = _mm256_set1_ps(mx);
    for (i = 0; i + 8 <= n; i += 8) {
      const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), mv, _CMP_EQ_OQ));
      if (hit) return i + __builtin_ctz(hit);
    }
    for (; i < n; i++) if (x[i] == mx) return i;
    return 0;
  }
#endif
  int best = 0;
  for (i = 0; i < n; i++) {
    if (isnan(x[i])) return -1;
    if (x[i] > mx) mx = x[i], best = i;
  }
  return best;
}

/* cand <- the words whose e is at least thr, in id order -> their count */
static int gather_at_least(const float* e, int n, float thr, hl_cand* cand) {
  int m = 0, i = 0;
#ifdef HL_AVX2
  const __m256 tv = _mm256_set1_ps(thr);
  for (; i + 8 <= n; i += 8) {
    int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(e + i), tv, _CMP_GE_OQ));
    while (hit) {
      const int j = i + __builtin_ctz(hit);
      cand[m].e = e[j], cand[m++].id = j;
      hit &= hit - 1;
    }
  }
#endif
  for (; i < n; i++) if (e[i] >= thr) cand[m].e = e[i], cand[m++].id = i;
  return m;
}

/* p (n doubles) <- the distribution of logits x (n words) at temperature t > 0: softmax(x / t), then only the words
 * that top-k, top-p and min-p all keep, renormalized (decoding.nucleus): in order of falling probability, ties by id,
 * the shortest of three prefixes: the top_k likeliest (0 or >= n: all); each word whose predecessors hold less than
 * top_p in (0, 1] of the mass (of the top-k words' mass where top_k is set); each word at least min_p in [0, 1) times
 * as likely as the likeliest. Candidates are the words at least 1/64 as likely as the likeliest, widening 64x while
 * the prefix ends past them (every word left out is less likely than every candidate: the words a sort of all n
 * keeps). e: n floats of scratch; cand: n of scratch. *kept: the words with p > 0. Returns the id of a certain word
 * (its p exactly 1: a draw needs no uniform), -1 otherwise; -2 on bad arguments, -3 where x is not finite. */
int hl_probs(const float* x, int n, float t, float top_p, int top_k, float min_p, double* p, float* e,
             hl_cand* cand, int32_t* kept) {
  if (n < 1 || !(t > 0.f) || !(top_p > 0.f) || !(top_p <= 1.f) || top_k < 0 || !(min_p >= 0.f) || !(min_p < 1.f))
    return -2;
  const int best = first_max(x, n);
  if (best < 0 || !isfinite(x[best])) return -3; /* a NaN, an infinity on top, or nothing but -inf */
  const float mx = x[best];
  const double total = exp_shifted(x, n, mx, 1.f / t, e);
  if (!isfinite(total)) return -3;
  const int k_all = top_k > 0 && top_k < n ? top_k : n;
  if (top_p >= 1.f && k_all == n && min_p == 0.f) {
    const double inv = 1.0 / total;
    int nz = 0, i = 0;
#ifdef HL_AVX2
    const __m256d iv = _mm256_set1_pd(inv);
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(e + i);
      _mm256_storeu_pd(p + i, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), iv));
      _mm256_storeu_pd(p + i + 4, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), iv));
      nz += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_OQ)));
    }
#endif
    for (; i < n; i++) {
      p[i] = (double)e[i] * inv;
      nz += e[i] != 0.f;
    }
    *kept = nz;
    return p[best] == 1.0 ? best : -1;
  }
  int m = 0, k = 0;
  for (float thr = 1.f;;) { /* e of the likeliest is exactly 1 */
    thr /= 64.f;
    const int every = !(thr > 1e-12f);
    if (every) {
      m = 0;
      for (int i = 0; i < n; i++) cand[m].e = e[i], cand[m++].id = i;
    } else {
      m = gather_at_least(e, n, thr, cand);
      if (m < k_all && k_all < n) continue; /* top-k's words first: top-p reads their mass */
    }
    qsort(cand, (size_t)m, sizeof(hl_cand), cand_cmp);
    double whole = total; /* the mass top-p reads: all words', or the top-k words' */
    if (k_all < n) {
      whole = 0.0;
      for (int i = 0; i < k_all; i++) whole += cand[i].e;
    }
    double before = 0.0;
    const int cap = m < k_all ? m : k_all;
    for (k = 0; k < cap && before / whole < top_p; k++) before += cand[k].e;
    if (min_p > 0.f)
      while (k > 1 && cand[k - 1].e < min_p) k--; /* e is p / p_max */
    if (k < m || k == k_all || m == n) break;
  }
  double mass = 0.0;
  for (int i = 0; i < k; i++) mass += cand[i].e;
  memset(p, 0, (size_t)n * sizeof(double));
  for (int i = 0; i < k; i++) p[cand[i].id] = cand[i].e / mass;
  *kept = k;
  return p[cand[0].id] == 1.0 ? cand[0].id : -1;
}

/* whether p[i .. i + 4) are all 0 (runs of a nucleus' or a residual's zeros skipped four at a time) */
static inline int zeros4(const double* p, int i) {
#ifdef HL_AVX2
  return _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(p + i), _mm256_setzero_pd(), _CMP_NEQ_UQ)) == 0;
#else
  return p[i] == 0.0 && p[i + 1] == 0.0 && p[i + 2] == 0.0 && p[i + 3] == 0.0;
#endif
}

/* The id numpy's Generator.choice(n, p=p) draws from its uniform u in [0, 1): the first i whose running sum of p,
 * divided by the whole sum, exceeds u (numpy's cumsum: the same additions in the same order; a 0 adds nothing, so
 * runs of zeros are skipped). -1 where p holds no positive mass or is not finite. */
int hl_draw(const double* p, int n, double u) {
  double total = 0.0;
  int i = 0;
  for (; i + 4 <= n; i += 4)
    if (!zeros4(p, i)) total = (((total + p[i]) + p[i + 1]) + p[i + 2]) + p[i + 3];
  for (; i < n; i++) total += p[i];
  if (!(total > 0.0) || !isfinite(total)) return -1;
  double cum = 0.0;
  int last = -1;
  for (i = 0; i < n; i++) {
    if ((i & 3) == 0 && i + 4 <= n && zeros4(p, i)) {
      i += 3;
      continue;
    }
    if (p[i] != 0.0) {
      cum += p[i];
      last = i;
      if (cum / total > u) return i;
    }
  }
  return last;
}

/* The id of the first value of p that is exactly 1 (a certain word: numpy's draw returns it without a uniform), -1
 * where none is */
int hl_certain(const double* p, int n) {
  int i = 0;
#ifdef HL_AVX2
  const __m256d one = _mm256_set1_pd(1.0);
  for (; i + 4 <= n; i += 4) {
    const int hit = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(p + i), one, _CMP_EQ_OQ));
    if (hit) return i + __builtin_ctz(hit);
  }
#endif
  for (; i < n; i++) if (p[i] == 1.0) return i;
  return -1;
}
