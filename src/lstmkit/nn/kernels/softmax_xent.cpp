// Softmax cross-entropy over rows of logits, one cache-friendly pass per row, in place.
//
// Given logits [N, V] (fp32 or bf16, straight from the GEMM), bias [V] fp32 and targets [N],
// computes per row  nll = logsumexp(x) - x[target]  with x = logits + bias, in fp32.
// With want_grad it overwrites the logits with d nll / d x = softmax(x) - onehot(target)
// (rounded to the logits' dtype) and returns the bias gradient (the column sums, in fp32).
// PyTorch would need ~6 passes over [N, V] memory for this (add, max, sub, exp, sum, scatter,
// conversions); here each row (40 KB at V = 10k) is read twice and written once while it sits
// in L1/L2. AVX-512 (+ AVX512-BF16 when present), AVX2+FMA, and a scalar fallback for other CPUs.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

namespace {

#ifdef LSTMKIT_AVX512

// Returns the row's nll; with grad, overwrites row with softmax - onehot, adds softmax to gbias.
template <typename T>
float row_xent(T* row, const float* bias, int64_t V, int64_t target, float* scratch,
               float* gbias) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < V; j += 16) {
    __mmask16 m = tail_mask(V - j);
    __m512 x = _mm512_add_ps(load16(row + j, m), _mm512_maskz_loadu_ps(m, bias + j));
    vmax = _mm512_mask_max_ps(vmax, m, vmax, x);
  }
  const float mx = _mm512_reduce_max_ps(vmax);
  const __m512 vmx = _mm512_set1_ps(mx);
  const float x_target = to_float(row[target]) + bias[target];
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < V; j += 16) {
    __mmask16 m = tail_mask(V - j);
    __m512 x = _mm512_add_ps(load16(row + j, m), _mm512_maskz_loadu_ps(m, bias + j));
    __m512 e = exp16(_mm512_sub_ps(x, vmx));
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
    if (gbias) _mm512_mask_storeu_ps(scratch + j, m, e);
  }
  const float sum = _mm512_reduce_add_ps(vsum);
  if (gbias) {
    const __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (int64_t j = 0; j < V; j += 16) {
      __mmask16 m = tail_mask(V - j);
      __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, scratch + j), inv);
      store16(row + j, p, m);
      _mm512_mask_storeu_ps(gbias + j, m,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m, gbias + j), p));
    }
    from_float(row + target, scratch[target] / sum - 1.0f);
  }
  return std::log(sum) + mx - x_target;
}

#elif defined(LSTMKIT_AVX2)  // AVX2 CPUs (Zen 2/3, Haswell..): 8 lanes, a scalar tail

inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <typename T>
float row_xent(T* row, const float* bias, int64_t V, int64_t target, float* scratch,
               float* gbias) {
  const int64_t bulk = V - V % 8;
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < bulk; j += 8)
    vmax = _mm256_max_ps(vmax, _mm256_add_ps(load8(row + j), _mm256_loadu_ps(bias + j)));
  float mx = hmax8(vmax);
  for (int64_t j = bulk; j < V; ++j) mx = std::max(mx, to_float(row[j]) + bias[j]);
  const __m256 vmx = _mm256_set1_ps(mx);
  const float x_target = to_float(row[target]) + bias[target];
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < bulk; j += 8) {
    __m256 x = _mm256_add_ps(load8(row + j), _mm256_loadu_ps(bias + j));
    __m256 e = exp8(_mm256_sub_ps(x, vmx));
    vsum = _mm256_add_ps(vsum, e);
    if (gbias) _mm256_storeu_ps(scratch + j, e);
  }
  float sum = hsum8(vsum);
  for (int64_t j = bulk; j < V; ++j) {
    scratch[j] = std::exp(to_float(row[j]) + bias[j] - mx);
    sum += scratch[j];
  }
  if (gbias) {
    const float inv = 1.0f / sum;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int64_t j = 0; j < bulk; j += 8) {
      __m256 p = _mm256_mul_ps(_mm256_loadu_ps(scratch + j), vinv);
      store8(row + j, p);
      _mm256_storeu_ps(gbias + j, _mm256_add_ps(_mm256_loadu_ps(gbias + j), p));
    }
    for (int64_t j = bulk; j < V; ++j) {
      float p = scratch[j] * inv;
      from_float(row + j, p);
      gbias[j] += p;
    }
    from_float(row + target, scratch[target] / sum - 1.0f);
  }
  return std::log(sum) + mx - x_target;
}

#else  // portable fallback: the same three passes in scalar code

template <typename T>
float row_xent(T* row, const float* bias, int64_t V, int64_t target, float* scratch,
               float* gbias) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < V; ++j) mx = std::max(mx, to_float(row[j]) + bias[j]);
  const float x_target = to_float(row[target]) + bias[target];
  float sum = 0.0f;
  for (int64_t j = 0; j < V; ++j) {
    float e = std::exp(to_float(row[j]) + bias[j] - mx);
    sum += e;
    scratch[j] = e;
  }
  if (gbias) {
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < V; ++j) {
      float p = scratch[j] * inv;
      from_float(row + j, p);
      gbias[j] += p;
    }
    from_float(row + target, scratch[target] / sum - 1.0f);
  }
  return std::log(sum) + mx - x_target;
}

#endif

template <typename T>
void rows_xent(T* logits, const float* bias, const int64_t* targets, int64_t N, int64_t V,
               float* nll, float* gbias_per_thread) {
  at::parallel_for(0, N, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(V);
    float* gbias = gbias_per_thread ? gbias_per_thread + at::get_thread_num() * V : nullptr;
    for (int64_t i = begin; i < end; ++i) {
      nll[i] = row_xent(logits + i * V, bias, V, targets[i], scratch.data(), gbias);
      if (gbias) gbias[targets[i]] -= 1.0f;
    }
  });
}

#ifdef LSTMKIT_AVX512

// The same in the transposed layout: logits^T [V, N] bf16, column n holding row n's logits.
// At the shapes of training (N = batch x steps in the hundreds, V = 10k) bf16 products with
// the [V, N] layout ran the logits and the weight gradient about 2x faster than with [N, V]
// (the library's products with a transposed left operand were the slow ones); this kernel is
// what makes that layout usable. Columns go in groups of 16: a group's V rows (320 KB of bf16
// at V = 10k) and their exp (640 KB of fp32 scratch) stay in L2 through three passes: max,
// exp and its sum, softmax - onehot written back. Returns nll per column in `nll`; adds the
// group's softmax to gbias[v].
constexpr int64_t kColumns = 16;

void column_group_xent(uint16_t* lt, const float* bias, const int64_t* targets, int64_t V,
                       int64_t N, int64_t n0, float* nll, float* gbias, float* scratch) {
  const int64_t width = std::min(kColumns, N - n0);
  const __mmask16 m = tail_mask(width);
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t v = 0; v < V; ++v) {
    __m512 x = _mm512_add_ps(load16(lt + v * N + n0, m), _mm512_set1_ps(bias[v]));
    vmax = _mm512_mask_max_ps(vmax, m, vmax, x);
  }
  // Four running sums over rows v % 4 (unrolled, so they stay in registers): shorter
  // dependency chains, and less rounding error than one sum over all V.
  auto exp_at = [&](int64_t v) {
    __m512 x = _mm512_add_ps(load16(lt + v * N + n0, m), _mm512_set1_ps(bias[v]));
    __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(x, vmax)));
    _mm512_storeu_ps(scratch + v * kColumns, e);
    return e;
  };
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t v = 0;
  for (; v + 4 <= V; v += 4) {
    s0 = _mm512_add_ps(s0, exp_at(v));
    s1 = _mm512_add_ps(s1, exp_at(v + 1));
    s2 = _mm512_add_ps(s2, exp_at(v + 2));
    s3 = _mm512_add_ps(s3, exp_at(v + 3));
  }
  for (; v < V; ++v) s0 = _mm512_add_ps(s0, exp_at(v));
  const __m512 vsum = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
  alignas(64) float mx[kColumns], sum[kColumns];
  _mm512_store_ps(mx, vmax);
  _mm512_store_ps(sum, vsum);
  for (int64_t c = 0; c < width; ++c) {  // before the column is overwritten
    const int64_t t = targets[n0 + c];
    nll[n0 + c] = std::log(sum[c]) + mx[c] - (to_float(lt[t * N + n0 + c]) + bias[t]);
  }
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), vsum);
  for (int64_t v = 0; v < V; ++v) {
    __m512 p = _mm512_maskz_mul_ps(m, _mm512_loadu_ps(scratch + v * kColumns), inv);
    store16(lt + v * N + n0, p, m);
    gbias[v] += _mm512_reduce_add_ps(p);
  }
  for (int64_t c = 0; c < width; ++c) {
    const int64_t t = targets[n0 + c];
    from_float(lt + t * N + n0 + c, scratch[t * kColumns + c] / sum[c] - 1.0f);
    gbias[t] -= 1.0f;
  }
}

void column_groups_xent(uint16_t* lt, const float* bias, const int64_t* targets, int64_t V,
                        int64_t N, float* nll, float* gbias_per_thread) {
  const int64_t groups = (N + kColumns - 1) / kColumns;
  at::parallel_for(0, groups, 1, [=](int64_t begin, int64_t end) {
    float* gbias = gbias_per_thread + at::get_thread_num() * V;
    std::vector<float> scratch(static_cast<size_t>(V) * kColumns);
    for (int64_t g = begin; g < end; ++g)
      column_group_xent(lt, bias, targets, V, N, g * kColumns, nll, gbias, scratch.data());
  });
}

#endif

// bias fp32 [V], targets int64 [N], each in [0, V).
void check_bias_and_targets(const at::Tensor& bias, const at::Tensor& targets, int64_t V,
                            int64_t N) {
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous(), "bias must be float32");
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.is_contiguous(),
              "targets must be int64");
  TORCH_CHECK(bias.numel() == V && targets.numel() == N, "shape mismatch");
  if (N > 0) {
    TORCH_CHECK(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < V,
                "target out of range [0, ", V, ")");
  }
}

// softmax_xent_ on logits^T [V, N] (bf16), always with the gradient; AVX-512 builds only
// (`has_columns`): bf16 products are native on no CPU without it.
std::vector<at::Tensor> softmax_xent_columns_(at::Tensor lt, at::Tensor bias,
                                              at::Tensor targets) {
  TORCH_CHECK(lt.dim() == 2 && lt.is_contiguous() && lt.device().is_cpu() &&
                  lt.scalar_type() == at::kBFloat16,
              "logits^T must be a contiguous 2-D bfloat16 CPU tensor");
  const int64_t V = lt.size(0), N = lt.size(1);
  check_bias_and_targets(bias, targets, V, N);
  at::Tensor nll = at::empty({N}, bias.options());
  at::Tensor partial = at::zeros({at::get_num_threads(), V}, bias.options());
#ifdef LSTMKIT_AVX512
  column_groups_xent(reinterpret_cast<uint16_t*>(lt.data_ptr<at::BFloat16>()),
                     bias.data_ptr<float>(), targets.data_ptr<int64_t>(), V, N,
                     nll.data_ptr<float>(), partial.data_ptr<float>());
#else
  TORCH_CHECK(false, "softmax_xent_columns_ needs an AVX-512 build");
#endif
  return {nll, partial.sum(0)};
}

// Returns (nll per row [N] fp32, bias gradient [V] fp32 or an empty tensor).
std::vector<at::Tensor> softmax_xent_(at::Tensor logits, at::Tensor bias, at::Tensor targets,
                                      bool want_grad) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.device().is_cpu(),
              "logits must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
              "logits must be float32 or bfloat16");
  const int64_t N = logits.size(0), V = logits.size(1);
  check_bias_and_targets(bias, targets, V, N);
  at::Tensor nll = at::empty({N}, logits.options().dtype(at::kFloat));
  at::Tensor partial;
  if (want_grad) partial = at::zeros({at::get_num_threads(), V}, bias.options());
  float* gb = want_grad ? partial.data_ptr<float>() : nullptr;
  if (logits.scalar_type() == at::kFloat) {
    rows_xent(logits.data_ptr<float>(), bias.data_ptr<float>(), targets.data_ptr<int64_t>(), N,
              V, nll.data_ptr<float>(), gb);
  } else {
    rows_xent(reinterpret_cast<uint16_t*>(logits.data_ptr<at::BFloat16>()),
              bias.data_ptr<float>(), targets.data_ptr<int64_t>(), N, V,
              nll.data_ptr<float>(), gb);
  }
  return {nll, want_grad ? partial.sum(0) : at::Tensor()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_xent_", &softmax_xent_,
        "Per-row softmax cross-entropy; with want_grad, logits become softmax - onehot.");
  m.def("softmax_xent_columns_", &softmax_xent_columns_,
        "softmax_xent_ with the gradient on logits^T [V, N] in bf16 (AVX-512 builds).");
#ifdef LSTMKIT_AVX512
  m.attr("has_columns") = true;
#else
  m.attr("has_columns") = false;
#endif
}
