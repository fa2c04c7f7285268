// SGD on an fp32 weight from its bf16 gradient, writing the weight's bf16 copy in the same pass.
//
// In bf16 training the products read every weight matrix in bf16 and make its gradient in bf16.
// Done plainly, the gradient is cast to fp32, the norm and the optimizer read that, and the next
// window casts the updated weight to bf16 again: five passes over each matrix besides the
// products. Here the norm reads the bf16 gradient (sum_of_squares) and the step reads it and the
// weight once, writing the weight and its copy (step). The update is torch's fused SGD's without
// momentum or weight decay, rounding for rounding: g = grad / divisor; w = fma(g, -lr, w) (torch
// 2.13's CPU wheel compiled its loop into one fused multiply-add; tests/nn/test_bf16_copies.py
// checks the match against the torch it runs with).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace {

constexpr int64_t kChunk = 4096;  // elements a thread takes at once (its partial sum's span)

#ifdef LSTMKIT_AVX512
// Rounds to nearest even in integer steps, as PyTorch's .to(torch.bfloat16) does: unlike
// AVX512-BF16's conversion (simd.h's store16), it keeps denormals, so a copy the step wrote is
// the cast a resumed run makes, bit for bit.
inline void store16_cast(uint16_t* p, __m512 v, __mmask16 m) {
  __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  bits = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), bits,
                                 _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(bits));
}
#endif

// Kept out of parallel_for's lambda: inside it g++ vectorised such loops far worse (dropout.cpp).
void step_range(float* w, const uint16_t* g, uint16_t* copy, float neg_lr, float divisor,
                int64_t begin, int64_t end) {
  int64_t i = begin;
#ifdef LSTMKIT_AVX512
  const __m512 vdiv = _mm512_set1_ps(divisor), vlr = _mm512_set1_ps(neg_lr);
  for (; i < end; i += 16) {
    const __mmask16 m = tail_mask(end - i);
    const __m512 grad = _mm512_div_ps(load16(g + i, m), vdiv);
    const __m512 updated = _mm512_fmadd_ps(grad, vlr, load16(w + i, m));
    store16(w + i, updated, m);
    store16_cast(copy + i, updated, m);
  }
#endif
  for (; i < end; ++i) {
    const float updated = std::fma(bf16_to_float(g[i]) / divisor, neg_lr, w[i]);
    w[i] = updated;
    copy[i] = float_to_bf16(updated);
  }
}

double chunk_sum_of_squares(const uint16_t* g, int64_t begin, int64_t end) {
  int64_t i = begin;
  double total = 0.0;
#ifdef LSTMKIT_AVX512
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; i + 32 <= end; i += 32) {
    const __m512 a = load16(g + i, 0xFFFF), b = load16(g + i + 16, 0xFFFF);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
    acc1 = _mm512_fmadd_ps(b, b, acc1);
  }
  total = static_cast<double>(_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)));
#endif
  for (; i < end; ++i) {
    const double v = bf16_to_float(g[i]);
    total += v * v;
  }
  return total;
}

void check_pair(const at::Tensor& weight, const at::Tensor& grad, const char* what) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat &&
                  weight.is_contiguous(), what, ": the weight must be a contiguous float32 CPU "
              "tensor");
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kBFloat16 &&
                  grad.is_contiguous() && grad.numel() == weight.numel(),
              what, ": the gradient must be a contiguous bfloat16 CPU tensor of the weight's size");
}

// weight -= lr * grad / divisor (fp32, from the bf16 grad); copy = weight in bf16.
void step(at::Tensor weight, at::Tensor grad, at::Tensor copy, double lr, double divisor) {
  check_pair(weight, grad, "sgd_bf16.step");
  TORCH_CHECK(copy.scalar_type() == at::kBFloat16 && copy.is_contiguous() &&
                  copy.numel() == weight.numel(),
              "sgd_bf16.step: the copy must be a contiguous bfloat16 tensor of the weight's size");
  float* w = weight.data_ptr<float>();
  const auto* g = reinterpret_cast<const uint16_t*>(grad.data_ptr());
  auto* c = reinterpret_cast<uint16_t*>(copy.data_ptr());
  const int64_t n = weight.numel();
  const float neg_lr = static_cast<float>(-lr), div = static_cast<float>(divisor);
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 4, [=](int64_t begin, int64_t end) {
    step_range(w, g, c, neg_lr, div, begin * kChunk, std::min(end * kChunk, n));
  });
}

// The sum of the gradient's squares: fp32 lanes within a chunk, chunks added in double.
double sum_of_squares(at::Tensor grad) {
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kBFloat16 &&
                  grad.is_contiguous(), "sgd_bf16.sum_of_squares: a contiguous bfloat16 CPU "
              "tensor only");
  const auto* g = reinterpret_cast<const uint16_t*>(grad.data_ptr());
  const int64_t n = grad.numel(), chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  double* out = partial.data();
  at::parallel_for(0, chunks, 4, [=](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      out[k] = chunk_sum_of_squares(g, k * kChunk, std::min((k + 1) * kChunk, n));
    }
  });
  double total = 0.0;
  for (double v : partial) total += v;  // in chunk order: the same sum on any thread count
  return total;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "weight -= lr * grad / divisor from a bf16 grad; copy = bf16(weight)");
  m.def("sum_of_squares", &sum_of_squares, "sum of a bf16 tensor's squares (float64)");
}
