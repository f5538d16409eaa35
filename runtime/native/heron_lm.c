/* heron's native decoder: a Llama-family forward pass straight on a GGUF file's blocks.
 *
 * Linears read the file's Q4_1 / Q4_0 / Q8_0 blocks as they are (no copy, no re-quantization). Each
 * activation row is rounded per block of 32 to int16 (scale absmax / 32767): the integer dot products
 * then err by ~1e-5 of a block's largest value, 256x less than int8 rounding, so greedy decoding keeps
 * what an fp32 computation on the same blocks keeps. Norms, RoPE (llama.cpp's interleaved pairs, the
 * file's Q/K rows as stored), attention and the residual stream are fp32.
 *
 * A call appends T tokens at positions pos .. pos + T - 1 to the caller's KV cache (fp32,
 * [layer][kv head][capacity][head dim]) and writes logits for the last n_out of them. A block of T
 * tokens reads each weight block once for all T rows (verify blocks cost little more than a step).
 * The same code path computes a token alone or inside a block, row by row in the same order: a step
 * and a block give the same bits (speculation stays exact).
 *
 * x86-64 with AVX2 + FMA + F16C: vector kernels (AVX-512 VNNI where compiled for it); elsewhere the
 * portable C below, same arithmetic. Threads: OpenMP over a linear's output rows.
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

#define HL_ABI 1
#define QK 32
#define TILE 4 /* token rows a weight block is unpacked for at once */

enum { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8 };

typedef struct {
  const uint8_t* data;
  int32_t type, n, k; /* n output rows of k inputs, ggml order */
} hl_linear;

typedef struct {
  int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab;
  float eps;
  hl_linear emb, head;
  const float* out_norm;
  const hl_linear* layers; /* n_layers * 7: q, k, v, o, gate, up, down */
  const float* const* norms; /* n_layers * 2: attention, ffn */
  const float* rope_cos; /* (max positions, head_dim / 2) */
  const float* rope_sin;
  int32_t rope_len;
  int32_t threads;
} hl_model;

int hl_abi(void) { return HL_ABI; }

int hl_simd(void) {
#if defined(HL_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
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

static uint16_t rd16(const uint8_t* p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* ---- activations: int16 per block of 32 ------------------------------------------------------- */
static void quant_rows(const float* x, int T, int K, int16_t* xq, float* xs, float* xsum) {
  const int nb = K / QK;
  for (int t = 0; t < T; t++)
    for (int b = 0; b < nb; b++) {
      const float* p = x + (size_t)t * K + QK * b;
      float amax = 0.f, s = 0.f;
      for (int i = 0; i < QK; i++) { float a = fabsf(p[i]); if (a > amax) amax = a; s += p[i]; }
      float sc = amax / 32767.f, inv = amax > 0.f ? 32767.f / amax : 0.f;
      int16_t* q = xq + (size_t)t * K + QK * b;
      for (int i = 0; i < QK; i++) q[i] = (int16_t)lrintf(p[i] * inv);
      xs[t * nb + b] = sc;
      xsum[t * nb + b] = s;
    }
}

/* ---- one block's weights as int16 pairs, its scale and offset --------------------------------- */
static int block_bytes(int type) { return type == T_Q4_1 ? 20 : type == T_Q4_0 ? 18 : 34; }

#ifdef HL_AVX2
static inline void unpack(const uint8_t* blk, int type, __m256i* w0, __m256i* w1, float* d, float* m) {
  if (type == T_Q8_0) {
    *d = _cvtsh_ss(rd16(blk)); *m = 0.f;
    *w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(blk + 2)));
    *w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(blk + 18)));
    return;
  }
  const __m128i mask = _mm_set1_epi8(0x0F);
  const uint8_t* qs = blk + (type == T_Q4_1 ? 4 : 2);
  __m128i v = _mm_loadu_si128((const __m128i*)qs);
  __m256i lo = _mm256_cvtepu8_epi16(_mm_and_si128(v, mask));
  __m256i hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), mask));
  *d = _cvtsh_ss(rd16(blk));
  if (type == T_Q4_1) { *m = _cvtsh_ss(rd16(blk + 2)); *w0 = lo; *w1 = hi; }
  else { /* Q4_0: q - 8 */
    const __m256i eight = _mm256_set1_epi16(8);
    *m = 0.f; *w0 = _mm256_sub_epi16(lo, eight); *w1 = _mm256_sub_epi16(hi, eight);
  }
}

static inline float hsum8(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

/* rows n0..n1 of y (T x N, row stride N) = W x for T <= TILE token rows */
static void lin_tile(const hl_linear* w, int n0, int n1, int T, const int16_t* xq, const float* xs, const float* xsum,
                     float* y, int ldy) {
  const int K = w->k, nb = K / QK, bb = block_bytes(w->type);
  for (int n = n0; n < n1; n++) {
    const uint8_t* row = w->data + (size_t)n * nb * bb;
    __m256 acc[TILE];
    float accm[TILE];
    for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); accm[t] = 0.f; }
    for (int b = 0; b < nb; b++) {
      __m256i w0, w1; float d, m;
      unpack(row + (size_t)b * bb, w->type, &w0, &w1, &d, &m);
      for (int t = 0; t < T; t++) {
        const int16_t* xb = xq + (size_t)t * K + QK * b;
        __m256i p = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i*)xb)),
                                     _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i*)(xb + 16))));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xs[t * nb + b]), acc[t]);
        accm[t] += m * xsum[t * nb + b];
      }
    }
    for (int t = 0; t < T; t++) y[(size_t)t * ldy + n] = hsum8(acc[t]) + accm[t];
  }
}
#else
static void lin_tile(const hl_linear* w, int n0, int n1, int T, const int16_t* xq, const float* xs, const float* xsum,
                     float* y, int ldy) {
  const int K = w->k, nb = K / QK, bb = block_bytes(w->type);
  for (int n = n0; n < n1; n++) {
    const uint8_t* row = w->data + (size_t)n * nb * bb;
    float acc[TILE] = {0}, accm[TILE] = {0};
    for (int b = 0; b < nb; b++) {
      const uint8_t* blk = row + (size_t)b * bb;
      int16_t q[QK]; float d = f16_to_f32(rd16(blk)), m = 0.f;
      if (w->type == T_Q8_0) for (int i = 0; i < QK; i++) q[i] = (int8_t)blk[2 + i];
      else {
        const uint8_t* qs = blk + (w->type == T_Q4_1 ? 4 : 2);
        int off = w->type == T_Q4_1 ? 0 : 8;
        if (w->type == T_Q4_1) m = f16_to_f32(rd16(blk + 2));
        for (int i = 0; i < 16; i++) { q[i] = (qs[i] & 15) - off; q[i + 16] = (qs[i] >> 4) - off; }
      }
      for (int t = 0; t < T; t++) {
        const int16_t* xb = xq + (size_t)t * K + QK * b;
        int32_t s = 0;
        for (int i = 0; i < QK; i++) s += (int32_t)q[i] * xb[i];
        acc[t] += (float)s * (d * xs[t * nb + b]);
        accm[t] += m * xsum[t * nb + b];
      }
    }
    for (int t = 0; t < T; t++) y[(size_t)t * ldy + n] = acc[t] + accm[t];
  }
}
#endif

/* y (T x N) = x (T x K) W^T; x already rounded (xq, xs, xsum) */
static void linear(const hl_linear* w, int T, const int16_t* xq, const float* xs, const float* xsum, float* y,
                   int threads) {
  const int nb = w->k / QK;
  for (int t0 = 0; t0 < T; t0 += TILE) {
    int tt = T - t0 < TILE ? T - t0 : TILE;
    const int16_t* q = xq + (size_t)t0 * w->k;
    const float *s = xs + t0 * nb, *sm = xsum + t0 * nb;
    float* yy = y + (size_t)t0 * w->n;
#ifdef _OPENMP
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
      {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int chunk = (w->n + nt - 1) / nt, a = id * chunk, e = a + chunk < w->n ? a + chunk : w->n;
        if (a < e) lin_tile(w, a, e, tt, q, s, sm, yy, w->n);
      }
      continue;
    }
#endif
    lin_tile(w, 0, w->n, tt, q, s, sm, yy, w->n);
  }
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

static void embed_row(const hl_linear* e, int tok, float* out) {
  const int nb = e->k / QK, bb = block_bytes(e->type);
  if (e->type == T_F32) { memcpy(out, e->data + (size_t)tok * e->k * 4, (size_t)e->k * 4); return; }
  const uint8_t* row = e->data + (size_t)tok * nb * bb;
  for (int b = 0; b < nb; b++) {
    const uint8_t* blk = row + (size_t)b * bb;
    float d = f16_to_f32(rd16(blk));
    float* o = out + QK * b;
    if (e->type == T_Q8_0) for (int i = 0; i < QK; i++) o[i] = d * (int8_t)blk[2 + i];
    else {
      const uint8_t* qs = blk + (e->type == T_Q4_1 ? 4 : 2);
      float m = e->type == T_Q4_1 ? f16_to_f32(rd16(blk + 2)) : -8.f * d;
      for (int i = 0; i < 16; i++) { o[i] = d * (qs[i] & 15) + m; o[i + 16] = d * (qs[i] >> 4) + m; }
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

static float dot(const float* a, const float* b, int n) {
#ifdef HL_AVX2
  if (n % 16 == 0) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    return hsum8(_mm256_add_ps(s0, s1));
  }
#endif
  float s = 0.f;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static void axpy(float a, const float* x, float* y, int n) {
#ifdef HL_AVX2
  if (n % 8 == 0) {
    __m256 av = _mm256_set1_ps(a);
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    return;
  }
#endif
  for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* the scratch hl_forward needs for T tokens, in floats */
size_t hl_scratch_floats(const hl_model* m, int T) {
  size_t D = m->dim, F = m->ffn_dim, Q = (size_t)m->n_heads * m->head_dim, KV = (size_t)m->n_kv_heads * m->head_dim;
  size_t W = D > F ? D : F, Q2 = Q > W ? Q : W;
  return (size_t)T * (2 * D + 2 * Q + 2 * KV + 2 * F) + ((size_t)T * Q2 + 1) / 2 + 1 + 2 * (size_t)T * (Q2 / QK);
}

/* Append T tokens at pos; logits of the last n_out into out (n_out x vocab). kcache/vcache: fp32
 * [n_layers][n_kv_heads][cap][head_dim]. scores: >= n_heads * (pos + T) floats. Returns 0, or a negative code. */
int hl_forward(const hl_model* m, const int32_t* tokens, int T, int pos, float* kcache, float* vcache, int cap,
               float* scratch, float* scores, int n_out, float* out) {
  const int D = m->dim, H = m->n_heads, G = m->n_kv_heads, S = m->head_dim, F = m->ffn_dim;
  const int R = H / G, Q = H * S, KV = G * S, W0 = D > F ? D : F, W = Q > W0 ? Q : W0;
  if (T <= 0 || pos < 0 || pos + T > cap || pos + T > m->rope_len || n_out < 0 || n_out > T) return -1;
  for (int t = 0; t < T; t++) if (tokens[t] < 0 || tokens[t] >= m->emb.n) return -2;
  float* x = scratch;
  float* h = x + (size_t)T * D;
  float* q = h + (size_t)T * D;
  float* k = q + (size_t)T * Q;
  float* v = k + (size_t)T * KV;
  float* att = v + (size_t)T * KV;
  float* g = att + (size_t)T * Q;
  float* u = g + (size_t)T * F;
  int16_t* xq = (int16_t*)(u + (size_t)T * F);
  float* xs = (float*)(u + (size_t)T * F) + ((size_t)T * W + 1) / 2;
  float* xsum = xs + (size_t)T * (W / QK);
  const float scale = 1.f / sqrtf((float)S);

  for (int t = 0; t < T; t++) embed_row(&m->emb, tokens[t], x + (size_t)t * D);
  for (int l = 0; l < m->n_layers; l++) {
    const hl_linear* L = m->layers + 7 * l;
    float* kc = kcache + (size_t)l * G * cap * S;
    float* vc = vcache + (size_t)l * G * cap * S;
    rmsnorm(x, m->norms[2 * l], T, D, m->eps, h);
    quant_rows(h, T, D, xq, xs, xsum);
    linear(&L[0], T, xq, xs, xsum, q, m->threads);
    linear(&L[1], T, xq, xs, xsum, k, m->threads);
    linear(&L[2], T, xq, xs, xsum, v, m->threads);
    for (int t = 0; t < T; t++) {
      int p = pos + t;
      const float *cs = m->rope_cos + (size_t)p * (S / 2), *sn = m->rope_sin + (size_t)p * (S / 2);
      rope(q + (size_t)t * Q, H, S, cs, sn);
      rope(k + (size_t)t * KV, G, S, cs, sn);
      for (int j = 0; j < G; j++) {
        memcpy(kc + ((size_t)j * cap + p) * S, k + (size_t)t * KV + j * S, S * sizeof(float));
        memcpy(vc + ((size_t)j * cap + p) * S, v + (size_t)t * KV + j * S, S * sizeof(float));
      }
    }
    for (int t = 0; t < T; t++) {
      int n = pos + t + 1; /* keys this token sees */
      for (int hd = 0; hd < H; hd++) {
        const float* qh = q + (size_t)t * Q + hd * S;
        const float* kh = kc + (size_t)(hd / R) * cap * S;
        const float* vh = vc + (size_t)(hd / R) * cap * S;
        float* sc = scores + (size_t)hd * n;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) { sc[j] = dot(qh, kh + (size_t)j * S, S) * scale; if (sc[j] > mx) mx = sc[j]; }
        double sum = 0.0;
        for (int j = 0; j < n; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
        float inv = (float)(1.0 / sum);
        float* o = att + (size_t)t * Q + hd * S;
        memset(o, 0, S * sizeof(float));
        for (int j = 0; j < n; j++) axpy(sc[j] * inv, vh + (size_t)j * S, o, S);
      }
    }
    quant_rows(att, T, Q, xq, xs, xsum);
    linear(&L[3], T, xq, xs, xsum, h, m->threads);
    for (size_t i = 0; i < (size_t)T * D; i++) x[i] += h[i];
    rmsnorm(x, m->norms[2 * l + 1], T, D, m->eps, h);
    quant_rows(h, T, D, xq, xs, xsum);
    linear(&L[4], T, xq, xs, xsum, g, m->threads);
    linear(&L[5], T, xq, xs, xsum, u, m->threads);
    for (size_t i = 0; i < (size_t)T * F; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
    quant_rows(g, T, F, xq, xs, xsum);
    linear(&L[6], T, xq, xs, xsum, h, m->threads);
    for (size_t i = 0; i < (size_t)T * D; i++) x[i] += h[i];
  }
  if (n_out == 0) return 0;
  float* last = x + (size_t)(T - n_out) * D;
  rmsnorm(last, m->out_norm, n_out, D, m->eps, h);
  quant_rows(h, n_out, D, xq, xs, xsum);
  linear(&m->head, n_out, xq, xs, xsum, out, m->threads);
  return 0;
}
