// One LSTM layer's time loop, forward and backward, with the gate math fused into the
// per-step recurrent product.
//
// Forward, per step t and per block of NB hidden units (blocks shared out over threads):
//   C[B, 4*NB] = h_{t-1} @ W_hh^T restricted to the block's i, f, g, o rows  (one brgemm call,
//   fp32 accumulation even for bf16 operands), then while C is in L1:
//   i, f, o = sigmoid(C + xproj_t + bias), g = tanh(...), c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
// Backward, per step t (reverse) and per block of NB hidden units:
//   dh = d out_t + dgates_{t+1} @ W_hh restricted to the block's columns (one brgemm call), then
//   the gate gradients of the block's units: dgates_t (pre-activation), dc_{t-1}, the bias sums.
// The weights are repacked once per call into per-block panels (VNNI pairs for bf16), the
// layout oneDNN's brgemm micro-kernel (at::native::cpublas::brgemm) reads fastest; padded units
// are zero columns. Everything else (the input projection of the whole window, the weight
// gradients, d input) is one large product each, done by the caller with at::mm.
//
// Dtypes: T is the compute dtype of the products: float, or bf16 (stored as uint16_t bits).
// xproj, h (all steps), dgates and d out are T; c, the gate activations, bias, the final state
// and the bias gradient are fp32. Gate math is fp32 throughout: AVX-512 (+ AVX512-BF16
// conversions), AVX2+FMA, or scalar code for other CPUs.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace {

inline float sigmoid1(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// ---------------------------------------------------------------------------------------------
// Per-row gate math over units [j0, j0 + n) of one block. Layouts (PyTorch gate order i f g o):
//   C: the block's product row, [4][NB] (gate-major within the block); may be null (backward)
//   rows of xproj / gates / dgates / bias / db: [4H], gate k of unit j at k*H + j
//   rows of c, h, dc: [H] (h rows may have a padded stride; the caller passes row pointers)

struct FwdRow {
  const float* C;      // [4][NB]
  int64_t NB;
  const float* bias;   // [4H]
  const float* cprev;  // [H]
  float* cnew;         // [H]
  float* hn;           // [H] or null: fp32 h (the final step)
  float* gates;        // [4H] or null: the activations, for backward
};

struct BwdRow {
  const float* C;      // [NB] or null: dh from the recurrent product
  const float* dhn;    // [H] or null: grad of the final h
  float* dc;           // [H] in: dc_t, out: dc_{t-1}
  const float* gates;  // [4H]
  const float* ct;     // [H]
  const float* cprev;  // [H]
  float* db;           // [4H] bias gradient, accumulated
};

template <typename T>
inline void fwd_scalar(const FwdRow& r, const T* xp, T* hout, int64_t H, int64_t j0, int64_t u0,
                       int64_t n) {
  for (int64_t u = u0; u < n; ++u) {
    const int64_t j = j0 + u;
    float p[4];
    for (int k = 0; k < 4; ++k) p[k] = r.C[k * r.NB + u] + to_float(xp[k * H + j]) + r.bias[k * H + j];
    const float i = sigmoid1(p[0]), f = sigmoid1(p[1]), g = std::tanh(p[2]), o = sigmoid1(p[3]);
    const float c = f * r.cprev[j] + i * g;
    const float h = o * std::tanh(c);
    r.cnew[j] = c;
    from_float(hout + j, h);
    if (r.hn) r.hn[j] = h;
    if (r.gates) {
      r.gates[j] = i;
      r.gates[H + j] = f;
      r.gates[2 * H + j] = g;
      r.gates[3 * H + j] = o;
    }
  }
}

template <typename T>
inline void bwd_scalar(const BwdRow& r, const T* dout, T* dg, int64_t H, int64_t j0, int64_t u0,
                       int64_t n) {
  for (int64_t u = u0; u < n; ++u) {
    const int64_t j = j0 + u;
    float dh = r.C ? r.C[u] : 0.0f;
    if (dout) dh += to_float(dout[j]);
    if (r.dhn) dh += r.dhn[j];
    const float i = r.gates[j], f = r.gates[H + j], g = r.gates[2 * H + j], o = r.gates[3 * H + j];
    const float tc = std::tanh(r.ct[j]);
    const float dct = r.dc[j] + dh * o * (1.0f - tc * tc);
    const float d[4] = {dct * g * i * (1.0f - i), dct * r.cprev[j] * f * (1.0f - f),
                        dct * i * (1.0f - g * g), dh * tc * o * (1.0f - o)};
    r.dc[j] = dct * f;
    for (int k = 0; k < 4; ++k) {
      from_float(dg + k * H + j, d[k]);
      r.db[k * H + j] += d[k];
    }
  }
}

#ifdef LSTMKIT_AVX512

inline __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
// tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}); abs error ~1e-7 near 0.
inline __m512 tanh16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 sign = _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x80000000)));
  const __m512 ax = _mm512_castsi512_ps(
      _mm512_andnot_si512(_mm512_set1_epi32(0x80000000), _mm512_castps_si512(x)));
  const __m512 e = exp16(_mm512_mul_ps(ax, _mm512_set1_ps(-2.0f)));
  const __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_castps_si512(sign)));
}


template <typename T>
inline void fwd_units(const FwdRow& r, const T* xp, T* hout, int64_t H, int64_t j0, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t u = 0; u < n; u += 16) {
    const __mmask16 m = tail_mask(n - u);
    const int64_t j = j0 + u;
    __m512 p[4];
    for (int k = 0; k < 4; ++k) {
      p[k] = _mm512_add_ps(_mm512_loadu_ps(r.C + k * r.NB + u),
                           _mm512_add_ps(load16(xp + k * H + j, m), load16(r.bias + k * H + j, m)));
    }
    const __m512 i = sigmoid16(p[0]), f = sigmoid16(p[1]), g = tanh16(p[2]), o = sigmoid16(p[3]);
    const __m512 c = _mm512_fmadd_ps(f, load16(r.cprev + j, m), _mm512_mul_ps(i, g));
    const __m512 h = _mm512_mul_ps(o, tanh16(c));
    store16(r.cnew + j, c, m);
    store16(hout + j, h, m);
    if (r.hn) store16(r.hn + j, h, m);
    if (r.gates) {
      store16(r.gates + j, i, m);
      store16(r.gates + H + j, f, m);
      store16(r.gates + 2 * H + j, g, m);
      store16(r.gates + 3 * H + j, o, m);
    }
  }
  (void)one;
}

template <typename T>
inline void bwd_units(const BwdRow& r, const T* dout, T* dg, int64_t H, int64_t j0, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t u = 0; u < n; u += 16) {
    const __mmask16 m = tail_mask(n - u);
    const int64_t j = j0 + u;
    __m512 dh = r.C ? _mm512_loadu_ps(r.C + u) : _mm512_setzero_ps();
    if (dout) dh = _mm512_add_ps(dh, load16(dout + j, m));
    if (r.dhn) dh = _mm512_add_ps(dh, load16(r.dhn + j, m));
    const __m512 i = load16(r.gates + j, m), f = load16(r.gates + H + j, m);
    const __m512 g = load16(r.gates + 2 * H + j, m), o = load16(r.gates + 3 * H + j, m);
    const __m512 tc = tanh16(load16(r.ct + j, m));
    const __m512 dct = _mm512_fmadd_ps(_mm512_mul_ps(dh, o), _mm512_fnmadd_ps(tc, tc, one),
                                       load16(r.dc + j, m));
    __m512 d[4];
    d[0] = _mm512_mul_ps(_mm512_mul_ps(dct, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
    d[1] = _mm512_mul_ps(_mm512_mul_ps(dct, load16(r.cprev + j, m)),
                         _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
    d[2] = _mm512_mul_ps(_mm512_mul_ps(dct, i), _mm512_fnmadd_ps(g, g, one));
    d[3] = _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
    store16(r.dc + j, _mm512_mul_ps(dct, f), m);
    for (int k = 0; k < 4; ++k) {
      store16(dg + k * H + j, d[k], m);
      store16(r.db + k * H + j, _mm512_add_ps(load16(r.db + k * H + j, m), d[k]), m);
    }
  }
}

#elif defined(LSTMKIT_AVX2)  // 8 lanes and a scalar tail

inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
inline __m256 tanh8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 signbit = _mm256_set1_ps(-0.0f);
  const __m256 sign = _mm256_and_ps(x, signbit);
  const __m256 e = exp8(_mm256_mul_ps(_mm256_andnot_ps(signbit, x), _mm256_set1_ps(-2.0f)));
  return _mm256_or_ps(_mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e)), sign);
}

template <typename T>
inline void fwd_units(const FwdRow& r, const T* xp, T* hout, int64_t H, int64_t j0, int64_t n) {
  int64_t u = 0;
  for (; u + 8 <= n; u += 8) {
    const int64_t j = j0 + u;
    __m256 p[4];
    for (int k = 0; k < 4; ++k) {
      p[k] = _mm256_add_ps(_mm256_loadu_ps(r.C + k * r.NB + u),
                           _mm256_add_ps(load8(xp + k * H + j), load8(r.bias + k * H + j)));
    }
    const __m256 i = sigmoid8(p[0]), f = sigmoid8(p[1]), g = tanh8(p[2]), o = sigmoid8(p[3]);
    const __m256 c = _mm256_fmadd_ps(f, load8(r.cprev + j), _mm256_mul_ps(i, g));
    const __m256 h = _mm256_mul_ps(o, tanh8(c));
    store8(r.cnew + j, c);
    store8(hout + j, h);
    if (r.hn) store8(r.hn + j, h);
    if (r.gates) {
      store8(r.gates + j, i);
      store8(r.gates + H + j, f);
      store8(r.gates + 2 * H + j, g);
      store8(r.gates + 3 * H + j, o);
    }
  }
  fwd_scalar(r, xp, hout, H, j0, u, n);
}

template <typename T>
inline void bwd_units(const BwdRow& r, const T* dout, T* dg, int64_t H, int64_t j0, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t u = 0;
  for (; u + 8 <= n; u += 8) {
    const int64_t j = j0 + u;
    __m256 dh = r.C ? _mm256_loadu_ps(r.C + u) : _mm256_setzero_ps();
    if (dout) dh = _mm256_add_ps(dh, load8(dout + j));
    if (r.dhn) dh = _mm256_add_ps(dh, load8(r.dhn + j));
    const __m256 i = load8(r.gates + j), f = load8(r.gates + H + j);
    const __m256 g = load8(r.gates + 2 * H + j), o = load8(r.gates + 3 * H + j);
    const __m256 tc = tanh8(load8(r.ct + j));
    const __m256 dct = _mm256_fmadd_ps(_mm256_mul_ps(dh, o), _mm256_fnmadd_ps(tc, tc, one),
                                       load8(r.dc + j));
    __m256 d[4];
    d[0] = _mm256_mul_ps(_mm256_mul_ps(dct, g), _mm256_mul_ps(i, _mm256_sub_ps(one, i)));
    d[1] = _mm256_mul_ps(_mm256_mul_ps(dct, load8(r.cprev + j)),
                         _mm256_mul_ps(f, _mm256_sub_ps(one, f)));
    d[2] = _mm256_mul_ps(_mm256_mul_ps(dct, i), _mm256_fnmadd_ps(g, g, one));
    d[3] = _mm256_mul_ps(_mm256_mul_ps(dh, tc), _mm256_mul_ps(o, _mm256_sub_ps(one, o)));
    store8(r.dc + j, _mm256_mul_ps(dct, f));
    for (int k = 0; k < 4; ++k) {
      store8(dg + k * H + j, d[k]);
      store8(r.db + k * H + j, _mm256_add_ps(load8(r.db + k * H + j), d[k]));
    }
  }
  bwd_scalar(r, dout, dg, H, j0, u, n);
}

#else  // portable fallback

template <typename T>
inline void fwd_units(const FwdRow& r, const T* xp, T* hout, int64_t H, int64_t j0, int64_t n) {
  fwd_scalar(r, xp, hout, H, j0, 0, n);
}
template <typename T>
inline void bwd_units(const BwdRow& r, const T* dout, T* dg, int64_t H, int64_t j0, int64_t n) {
  bwd_scalar(r, dout, dg, H, j0, 0, n);
}

#endif

// ---------------------------------------------------------------------------------------------
// The products: oneDNN's brgemm micro-kernel, C[M, N] (+)= A[M, K] B[K, N] with fp32 C.
// bf16 B is in VNNI pairs: element (k, n) at ((k / 2) * ldb + n) * 2 + k % 2.

constexpr bool kVnni16 = true;

inline void brgemm(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                   const float* A, const float* B, float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, false, A, B, C, false);
}
inline void brgemm(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                   const uint16_t* A, const uint16_t* B, float* C) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, false,
                              reinterpret_cast<const at::BFloat16*>(A),
                              reinterpret_cast<const at::BFloat16*>(B), C, kVnni16);
}
inline void brgemm_done(const float*) {}
inline void brgemm_done(const uint16_t*) { at::native::cpublas::brgemm_release(true); }

template <typename T>
inline int64_t k_padded(int64_t K) {
  return std::is_same_v<T, uint16_t> ? (K + 1) / 2 * 2 : K;
}

inline uint16_t convert(float v, uint16_t*) { return float_to_bf16(v); }
inline uint16_t convert(uint16_t v, uint16_t*) { return v; }
inline float convert(float v, float*) { return v; }

// Two consecutive k's of a bf16 panel (k even, k + 1) as the one 32-bit word they share.
template <typename S>
inline uint32_t bf16_pair(S k_even, S k_odd) {
  return convert(k_even, static_cast<uint16_t*>(nullptr)) |
         static_cast<uint32_t>(convert(k_odd, static_cast<uint16_t*>(nullptr))) << 16;
}

// Forward panels: block nb is B[k, kk * NB + u] = W[kk * H + nb * NB + u, k], K = Kp rows
// (zero beyond H), N = 4 NB columns (zero beyond unit H). A transpose: W's rows are read along
// k and written down the panel's columns n, in bf16 a pair of k's per 32-bit word. Panel rows
// lie N words (1 KB at NB = 64) apart, so a column's writes fall in a few L1 sets: a tile of
// kTile k's at a time keeps the lines being written few enough to stay in L1.
// Each panel is packed by a function of its own, not in parallel_for's lambda: there g++
// compiled loops like these (kernels/dropout.cpp's) several times slower.
constexpr int64_t kTile = 32;

template <typename T, typename S>
void pack_forward_panel(const S* W, T* pan, int64_t H, int64_t NB, int64_t nb) {
  const int64_t N = 4 * NB;
  for (int64_t k0 = 0; k0 < H; k0 += kTile) {
    const int64_t k1 = std::min(H, k0 + kTile);
    for (int64_t kk = 0; kk < 4; ++kk) {
      for (int64_t u = 0; u < NB && nb * NB + u < H; ++u) {
        const S* row = W + (kk * H + nb * NB + u) * H;
        const int64_t n = kk * NB + u;
        if constexpr (std::is_same_v<T, uint16_t>) {
          uint32_t* out = reinterpret_cast<uint32_t*>(pan) + (k0 / 2) * N + n;
          int64_t k = k0;
          for (; k + 1 < k1; k += 2, out += N) *out = bf16_pair(row[k], row[k + 1]);
          if (k < k1) *out = convert(row[k], pan);  // odd H: k = H is the zero padding
        } else {
          for (int64_t k = k0; k < k1; ++k) pan[k * N + n] = convert(row[k], pan);
        }
      }
    }
  }
}

template <typename T, typename S>
at::Tensor pack_forward(const S* W, int64_t H, int64_t NB, int64_t nblk, int64_t Kp,
                        at::TensorOptions opts) {
  const int64_t panel = Kp * 4 * NB;
  at::Tensor out = at::zeros({nblk * panel}, opts);
  T* P = reinterpret_cast<T*>(out.data_ptr());
  at::parallel_for(0, nblk, 1, [=](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; ++nb) pack_forward_panel(W, P + nb * panel, H, NB, nb);
  });
  return out;
}

// Backward panels: block nb is B[k, u] = W[k, nb * NB + u] for k < 4H (even), N = NB columns.
template <typename T, typename S>
void pack_backward_panel(const S* W, T* pan, int64_t H, int64_t NB, int64_t nb) {
  const int64_t K = 4 * H, width = std::min(NB, H - nb * NB);
  if constexpr (std::is_same_v<T, uint16_t>) {
    uint32_t* out = reinterpret_cast<uint32_t*>(pan);
    for (int64_t k = 0; k < K; k += 2, out += NB) {
      const S* even = W + k * H + nb * NB;
      const S* odd = even + H;
      for (int64_t u = 0; u < width; ++u) out[u] = bf16_pair(even[u], odd[u]);
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const S* row = W + k * H + nb * NB;
      for (int64_t u = 0; u < width; ++u) pan[k * NB + u] = convert(row[u], pan);
    }
  }
}

template <typename T, typename S>
at::Tensor pack_backward(const S* W, int64_t H, int64_t NB, int64_t nblk,
                         at::TensorOptions opts) {
  const int64_t panel = 4 * H * NB;
  at::Tensor out = at::zeros({nblk * panel}, opts);
  T* P = reinterpret_cast<T*>(out.data_ptr());
  at::parallel_for(0, nblk, 1, [=](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; ++nb) pack_backward_panel(W, P + nb * panel, H, NB, nb);
  });
  return out;
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// The weight (fp32 or bf16) packed for compute dtype T, converting on the way.
template <typename T>
at::Tensor packed_weight(const at::Tensor& w, bool backward, int64_t NB) {
  const int64_t H = w.size(1), nblk = (H + NB - 1) / NB;
  const auto opts = w.options().dtype(std::is_same_v<T, float> ? at::kFloat : at::kBFloat16);
  if (w.scalar_type() == at::kFloat) {
    const float* W = w.data_ptr<float>();
    return backward ? pack_backward<T>(W, H, NB, nblk, opts)
                    : pack_forward<T>(W, H, NB, nblk, k_padded<T>(H), opts);
  }
  TORCH_CHECK((std::is_same_v<T, uint16_t>), "a bf16 weight needs the bf16 compute dtype");
  const uint16_t* W = ptr<uint16_t>(w);
  return backward ? pack_backward<T>(W, H, NB, nblk, opts)
                  : pack_forward<T>(W, H, NB, nblk, k_padded<T>(H), opts);
}

// xproj [T, B, 4H] (x W_ih^T, no bias), bias fp32 [4H], w_hh [4H, H], h0/c0 fp32 [B, H].
// Returns hs [T + 1, B, Hk] (T dtype; hs[0] = h0; columns past H are zero), h_n fp32,
// c_n fp32, and when save: cs fp32 [T + 1, B, H] (cs[0] = c0), gates fp32 [T, B, 4H].
template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& xproj, const at::Tensor& bias,
                                     const at::Tensor& w_hh, const at::Tensor& h0,
                                     const at::Tensor& c0, bool save, int64_t NB,
                                     const at::Tensor& kept) {
  const int64_t Tn = xproj.size(0), B = xproj.size(1), H = w_hh.size(1);
  const int64_t Kp = k_padded<T>(H), nblk = (H + NB - 1) / NB, N = 4 * NB;
  TORCH_CHECK(!kept.defined() || (kept.scalar_type() == xproj.scalar_type() &&
                                  kept.is_contiguous() && kept.numel() == nblk * Kp * N),
              "packed must be pack_forward's panels of w_hh in the compute dtype");
  at::Tensor packed = kept.defined() ? kept : packed_weight<T>(w_hh, false, NB);
  const auto f32 = h0.options().dtype(at::kFloat);
  at::Tensor hs = at::empty({Tn + 1, B, Kp}, xproj.options());
  if (Kp > H) hs.narrow(2, H, Kp - H).zero_();
  hs.select(0, 0).narrow(1, 0, H).copy_(h0);
  at::Tensor cs = at::empty({save ? Tn + 1 : 2, B, H}, f32);
  cs.select(0, 0).copy_(c0);
  at::Tensor gates = save ? at::empty({Tn, B, 4 * H}, f32) : at::Tensor();
  at::Tensor hn = at::empty({B, H}, f32);
  at::Tensor cn;

  const T* P = ptr<T>(packed);
  const T* X = ptr<T>(xproj);
  T* Hs = ptr<T>(hs);
  float* Cs = cs.data_ptr<float>();
  float* G = save ? gates.data_ptr<float>() : nullptr;
  const float* bi = bias.data_ptr<float>();
  const int threads = at::get_num_threads();
  std::vector<float> scratch(static_cast<size_t>(threads) * B * N);

  for (int64_t t = 0; t < Tn; ++t) {
    const float* cprev = Cs + (save ? t : t % 2) * B * H;
    float* cnew = Cs + (save ? t + 1 : (t + 1) % 2) * B * H;
    const T* hprev = Hs + t * B * Kp;
    T* hnext = Hs + (t + 1) * B * Kp;
    float* hn_out = t == Tn - 1 ? hn.data_ptr<float>() : nullptr;
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      float* C = scratch.data() + static_cast<size_t>(at::get_thread_num()) * B * N;
      for (int64_t nb = b0; nb < b1; ++nb) {
        brgemm(B, N, Kp, Kp, N, N, hprev, P + nb * Kp * N, C);
        const int64_t j0 = nb * NB, n = std::min(NB, H - j0);
        for (int64_t b = 0; b < B; ++b) {
          FwdRow r{C + b * N, NB, bi, cprev + b * H, cnew + b * H,
                   hn_out ? hn_out + b * H : nullptr,
                   G ? G + (t * B + b) * 4 * H : nullptr};
          fwd_units(r, X + (t * B + b) * 4 * H, hnext + b * Kp, H, j0, n);
        }
      }
      brgemm_done(P);
    });
  }
  if (Tn == 0) {
    hn.copy_(h0);
  }
  cn = cs.select(0, save ? Tn : Tn % 2).clone();
  return {hs, hn, cn, save ? cs : at::Tensor(), save ? gates : at::Tensor()};
}

// dout [T, B, H] (T dtype, or undefined), dhn/dcn fp32 [B, H] (or undefined), gates/cs from
// forward, w_hh [4H, H]. Returns dgates [T, B, 4H] (T dtype), db fp32 [4H], dh0, dc0 fp32.
template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dout, const at::Tensor& dhn,
                                      const at::Tensor& dcn, const at::Tensor& gates,
                                      const at::Tensor& cs, const at::Tensor& w_hh, int64_t NB) {
  const int64_t Tn = gates.size(0), B = gates.size(1), H = w_hh.size(1), K = 4 * H;
  const int64_t nblk = (H + NB - 1) / NB;
  const auto f32 = cs.options();
  at::Tensor packed = packed_weight<T>(w_hh, true, NB);
  at::Tensor dgates = at::empty({Tn, B, K}, packed.options());
  at::Tensor db = at::zeros({K}, f32);
  at::Tensor dc = dcn.defined() ? dcn.clone() : at::zeros({B, H}, f32);
  at::Tensor dh0 = at::empty({B, H}, f32);

  const T* P = ptr<T>(packed);
  T* DG = ptr<T>(dgates);
  const T* DO = dout.defined() ? ptr<T>(dout) : nullptr;
  const float* DHN = dhn.defined() ? dhn.data_ptr<float>() : nullptr;
  const float* G = gates.data_ptr<float>();
  const float* Cs = cs.data_ptr<float>();
  float* DC = dc.data_ptr<float>();
  float* DB = db.data_ptr<float>();
  const int threads = at::get_num_threads();
  std::vector<float> scratch(static_cast<size_t>(threads) * B * NB);

  for (int64_t t = Tn - 1; t >= 0; --t) {
    const bool last = t == Tn - 1;
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      float* C = scratch.data() + static_cast<size_t>(at::get_thread_num()) * B * NB;
      for (int64_t nb = b0; nb < b1; ++nb) {
        if (!last) brgemm(B, NB, K, K, NB, NB, DG + (t + 1) * B * K, P + nb * K * NB, C);
        const int64_t j0 = nb * NB, n = std::min(NB, H - j0);
        for (int64_t b = 0; b < B; ++b) {
          BwdRow r{last ? nullptr : C + b * NB, last && DHN ? DHN + b * H : nullptr,
                   DC + b * H, G + (t * B + b) * K, Cs + ((t + 1) * B + b) * H,
                   Cs + (t * B + b) * H, DB};
          bwd_units(r, DO ? DO + (t * B + b) * H : static_cast<const T*>(nullptr),
                    DG + (t * B + b) * K, H, j0, n);
        }
      }
      if (!last) brgemm_done(P);
    });
  }
  // dh0 = dgates_0 @ W_hh (or dhn itself for an empty window)
  if (Tn == 0) {
    if (DHN) dh0.copy_(dhn); else dh0.zero_();
  } else {
    float* DH0 = dh0.data_ptr<float>();
    at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
      float* C = scratch.data() + static_cast<size_t>(at::get_thread_num()) * B * NB;
      for (int64_t nb = b0; nb < b1; ++nb) {
        brgemm(B, NB, K, K, NB, NB, DG, P + nb * K * NB, C);
        const int64_t j0 = nb * NB, n = std::min(NB, H - j0);
        for (int64_t b = 0; b < B; ++b) std::memcpy(DH0 + b * H + j0, C + b * NB, n * sizeof(float));
      }
      brgemm_done(P);
    });
  }
  return {dgates, db, dh0, dc};
}

void check_common(const at::Tensor& w_hh, int64_t NB) {
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1) && w_hh.is_contiguous(),
              "w_hh must be a contiguous [4H, H] matrix");
  TORCH_CHECK(w_hh.scalar_type() == at::kFloat || w_hh.scalar_type() == at::kBFloat16,
              "w_hh must be float32 or bfloat16");
  TORCH_CHECK(NB > 0 && NB % 16 == 0, "block must be a positive multiple of 16");
}

// The forward panels of w_hh for compute dtype bf16 or fp32: what `forward` packs per call,
// for a caller that runs many calls on unchanged weights (evaluation, sampling) to keep.
at::Tensor lstm_pack_forward(at::Tensor w_hh, bool bf16, int64_t NB) {
  check_common(w_hh, NB);
  return bf16 ? packed_weight<uint16_t>(w_hh, false, NB) : packed_weight<float>(w_hh, false, NB);
}

// packed: lstm_pack_forward(w_hh, compute is bf16, NB) of this w_hh, or none (packed here).
std::vector<at::Tensor> lstm_forward(at::Tensor xproj, at::Tensor bias, at::Tensor w_hh,
                                     at::Tensor h0, at::Tensor c0, bool save, int64_t NB,
                                     c10::optional<at::Tensor> packed) {
  check_common(w_hh, NB);
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(xproj.dim() == 3 && xproj.size(2) == 4 * H && xproj.is_contiguous() &&
                  (xproj.scalar_type() == at::kFloat || xproj.scalar_type() == at::kBFloat16),
              "xproj must be contiguous float32 or bfloat16 [T, B, 4H] (the compute dtype)");
  const int64_t B = xproj.size(1);
  for (const at::Tensor* s : {&h0, &c0}) {
    TORCH_CHECK(s->scalar_type() == at::kFloat && s->is_contiguous() && s->dim() == 2 &&
                    s->size(0) == B && s->size(1) == H,
                "h0 and c0 must be contiguous float32 [B, H]");
  }
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == 4 * H,
              "bias must be contiguous float32 [4H]");
  const at::Tensor kept = packed.has_value() ? *packed : at::Tensor();
  if (xproj.scalar_type() == at::kFloat) {
    return forward_impl<float>(xproj, bias, w_hh, h0, c0, save, NB, kept);
  }
  return forward_impl<uint16_t>(xproj, bias, w_hh, h0, c0, save, NB, kept);
}

std::vector<at::Tensor> lstm_backward(c10::optional<at::Tensor> dout,
                                      c10::optional<at::Tensor> dhn,
                                      c10::optional<at::Tensor> dcn, at::Tensor gates,
                                      at::Tensor cs, at::Tensor w_hh, bool bf16, int64_t NB) {
  check_common(w_hh, NB);
  const auto compute = bf16 ? at::kBFloat16 : at::kFloat;
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(gates.dim() == 3 && gates.size(2) == 4 * H && gates.is_contiguous() &&
                  gates.scalar_type() == at::kFloat, "gates must be float32 [T, B, 4H]");
  const int64_t Tn = gates.size(0), B = gates.size(1);
  TORCH_CHECK(cs.is_contiguous() && cs.scalar_type() == at::kFloat && cs.dim() == 3 &&
                  cs.size(0) == Tn + 1 && cs.size(1) == B && cs.size(2) == H,
              "cs must be float32 [T + 1, B, H]");
  at::Tensor d_out = dout.has_value() ? *dout : at::Tensor();
  at::Tensor d_hn = dhn.has_value() ? *dhn : at::Tensor();
  at::Tensor d_cn = dcn.has_value() ? *dcn : at::Tensor();
  if (d_out.defined()) {
    TORCH_CHECK(d_out.is_contiguous() && d_out.scalar_type() == compute &&
                    d_out.dim() == 3 && d_out.size(0) == Tn && d_out.size(1) == B &&
                    d_out.size(2) == H, "dout must be contiguous [T, B, H] in the compute dtype");
  }
  for (const at::Tensor* s : {&d_hn, &d_cn}) {
    if (s->defined()) {
      TORCH_CHECK(s->scalar_type() == at::kFloat && s->is_contiguous() && s->dim() == 2 &&
                      s->size(0) == B && s->size(1) == H,
                  "dhn and dcn must be contiguous float32 [B, H]");
    }
  }
  if (!bf16) {
    return backward_impl<float>(d_out, d_hn, d_cn, gates, cs, w_hh, NB);
  }
  return backward_impl<uint16_t>(d_out, d_hn, d_cn, gates, cs, w_hh, NB);
}

std::string isa() {
#if defined(LSTMKIT_AVX512)
#ifdef __AVX512BF16__
  return "avx512+bf16";
#else
  return "avx512";
#endif
#elif defined(LSTMKIT_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lstm_forward,
        "One LSTM layer's forward time loop: (hs, h_n, c_n, cs, gates)");
  m.def("pack_forward", &lstm_pack_forward,
        "w_hh's forward panels, for forward calls on unchanged weights");
  m.def("backward", &lstm_backward,
        "One LSTM layer's backward time loop: (dgates, dbias, dh0, dc0)");
  m.def("isa", &isa, "The instruction set the gate math was compiled for");
}
