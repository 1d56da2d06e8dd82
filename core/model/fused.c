/* Fused float32 CPU kernels of the training step; built and loaded by core/fused.py. */
#include <math.h>
#include <stdint.h>

/* x = w * (h * r), r = 1 / sqrt(mean(h^2) + eps), per row of D */
void rms_fwd(const float *h, const float *w, float *x, float *r, int64_t L, int64_t D, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < L; i++) {
        const float *hi = h + i * D; float *xi = x + i * D; float s = 0.f;
#pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < D; j++) s += hi[j] * hi[j];
        float rr = 1.f / sqrtf(s / (float)D + eps);
        r[i] = rr;
#pragma omp simd
        for (int64_t j = 0; j < D; j++) xi[j] = w[j] * (hi[j] * rr);
    }
}

/* dh = dres + (d/dh of w * (h * r)) applied to dy */
void rms_bwd(const float *dy, const float *h, const float *r, const float *w, const float *dres, float *dh,
             int64_t L, int64_t D) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < L; i++) {
        const float *dyi = dy + i * D, *hi = h + i * D, *di = dres + i * D; float *o = dh + i * D;
        float rr = r[i], c = 0.f;
#pragma omp simd reduction(+:c)
        for (int64_t j = 0; j < D; j++) c += dyi[j] * w[j] * hi[j];
        c *= rr * rr * rr / (float)D;
#pragma omp simd
        for (int64_t j = 0; j < D; j++) o[j] = di[j] + rr * dyi[j] * w[j] - c * hi[j];
    }
}

/* rotary over (L, H, d) with row/head strides; y = x * cos + rotate_half(x) * sin (back = 0), or its
   transpose, the backward (back = 1); y may be x */
void rope(const float *x, int64_t ls, int64_t hs, float *y, int64_t yls, int64_t yhs,
          const float *cs, const float *sn, int64_t L, int64_t H, int64_t d, int back) {
    int64_t m = d / 2;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < L; i++) {
        const float *c = cs + i * d, *s = sn + i * d;
        for (int64_t k = 0; k < H; k++) {
            const float *a = x + i * ls + k * hs; float *b = y + i * yls + k * yhs;
            if (back) {
#pragma omp simd
                for (int64_t j = 0; j < m; j++) {
                    float lo = a[j], hi = a[j + m];
                    b[j] = lo * c[j] + hi * s[j + m]; b[j + m] = hi * c[j + m] - lo * s[j];
                }
            } else {
#pragma omp simd
                for (int64_t j = 0; j < m; j++) {
                    float lo = a[j], hi = a[j + m];
                    b[j] = lo * c[j] - hi * s[j]; b[j + m] = hi * c[j + m] + lo * s[j + m];
                }
            }
        }
    }
}

/* a = silu(g) * u over (L, F) rows; g and u rows of stride gs */
void swiglu_fwd(const float *g, const float *u, int64_t gs, float *a, int64_t L, int64_t F) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < L; i++) {
        const float *gi = g + i * gs, *ui = u + i * gs; float *ai = a + i * F;
#pragma omp simd
        for (int64_t j = 0; j < F; j++) { float v = gi[j]; ai[j] = v / (1.f + expf(-v)) * ui[j]; }
    }
}

/* dg and du rows of stride ds (side by side in one buffer) */
void swiglu_bwd(const float *da, const float *g, const float *u, int64_t gs, float *dg, float *du, int64_t ds,
                int64_t L, int64_t F) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < L; i++) {
        const float *dai = da + i * F, *gi = g + i * gs, *ui = u + i * gs; float *dgi = dg + i * ds, *dui = du + i * ds;
#pragma omp simd
        for (int64_t j = 0; j < F; j++) {
            float v = gi[j], sg = 1.f / (1.f + expf(-v)), t = dai[j];
            dui[j] = t * v * sg;
            dgi[j] = t * ui[j] * sg * (1.f + v * (1.f - sg));
        }
    }
}

/* cross-entropy of each row of logits (M, V) against its target: loss[i] = logsumexp - logit[target];
   with grad, the row is overwritten by (softmax - onehot) * scale, the loss's gradient at the logits */
void xent(float *z, const int64_t *t, float *loss, int64_t M, int64_t V, float scale, int grad) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; i++) {
        float *zi = z + i * V, mx = -INFINITY, s = 0.f;
#pragma omp simd reduction(max:mx)
        for (int64_t j = 0; j < V; j++) mx = zi[j] > mx ? zi[j] : mx;
#pragma omp simd reduction(+:s)
        for (int64_t j = 0; j < V; j++) s += expf(zi[j] - mx);
        float lse = mx + logf(s);
        loss[i] = lse - zi[t[i]];
        if (grad) {
#pragma omp simd
            for (int64_t j = 0; j < V; j++) zi[j] = expf(zi[j] - lse) * scale;
            zi[t[i]] -= scale;
        }
    }
}

/* bfloat16 (the top half of a float32) widened to float32: exact; PyTorch's own widening copy runs
   ~6x slower on 2 cores (the bf16 matmul outputs of core/model/packed.py) */
void bf16_to_f32(const uint16_t *src, float *dst, int64_t n) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) {
        union { uint32_t u; float f; } v;
        v.u = (uint32_t)src[i] << 16;
        dst[i] = v.f;
    }
}

/* a = silu(g) * u in float32 from bfloat16 g | u (rows of 2F: the joined gate/up matmul's output),
   rounded to bfloat16 (to nearest even, as PyTorch rounds) for the down projection's bf16 matmul */
void swiglu_bf16(const uint16_t *gu, uint16_t *a, int64_t L, int64_t F) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < L; i++) {
        const uint16_t *gi = gu + i * 2 * F, *ui = gi + F; uint16_t *ai = a + i * F;
#pragma omp simd
        for (int64_t j = 0; j < F; j++) {
            union { uint32_t u; float f; } g, u, r;
            g.u = (uint32_t)gi[j] << 16; u.u = (uint32_t)ui[j] << 16;
            r.f = g.f / (1.f + expf(-g.f)) * u.f;
            ai[j] = (r.u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : (uint16_t)((r.u + 0x7fffu + ((r.u >> 16) & 1u)) >> 16);
        }
    }
}

/* logsumexp of each row of logits (M, V) in float32, and the row's (first) largest entry; the logits
   are float32 (lse_f32) or bfloat16, read as the float32 they are the top half of (lse_bf16): a
   log-likelihood's normaliser read straight off the LM head's output, without a temporary
   logits-sized tensor (core/generate/loglik.head_logprobs) */
#define LSE_ROW(LOAD)                                                                   \
    _Pragma("omp parallel for schedule(static)")                                       \
    for (int64_t i = 0; i < M; i++) {                                                  \
        float mx = -INFINITY, s = 0.f;                                                 \
        _Pragma("omp simd reduction(max:mx)")                                          \
        for (int64_t j = 0; j < V; j++) { float x = LOAD(i * V + j); mx = x > mx ? x : mx; } \
        _Pragma("omp simd reduction(+:s)")                                             \
        for (int64_t j = 0; j < V; j++) s += expf(LOAD(i * V + j) - mx);               \
        out[i] = mx + logf(s);                                                         \
        int64_t k = 0;                                                                 \
        while (k < V - 1 && LOAD(i * V + k) != mx) k++;                                \
        arg[i] = k;                                                                    \
    }

static inline float bf16_at(const uint16_t *z, int64_t i) {
    union { uint32_t u; float f; } v; v.u = (uint32_t)z[i] << 16; return v.f;
}

void lse_f32(const float *z, float *out, int64_t *arg, int64_t M, int64_t V) {
#define LOAD_F32(i) z[i]
    LSE_ROW(LOAD_F32)
}

void lse_bf16(const uint16_t *z, float *out, int64_t *arg, int64_t M, int64_t V) {
#define LOAD_BF16(i) bf16_at(z, i)
    LSE_ROW(LOAD_BF16)
}
