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

#include <algorithm>
#include <cstdint>

namespace {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

constexpr int64_t kBlock = 2048;  // elements per block: its hashes (4 KB) stay in L1
constexpr int64_t kGrain = 8;  // blocks per thread at least: fewer are not worth a thread

// Block by block: first the block's hashes (a loop the compiler vectorizes), then the
// elements, each taking its 16 bits of its group's hash.
template <typename scalar_t>
void apply_mask(const scalar_t* in, scalar_t* out, int64_t n, uint64_t seed, uint32_t threshold,
                float scale) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrain, [&](int64_t begin, int64_t end) {
    alignas(64) uint64_t hashes[kBlock / 4];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock;
      const int64_t count = std::min(kBlock, n - first);
      const uint64_t group0 = static_cast<uint64_t>(first / 4);
      for (int64_t g = 0; g < (count + 3) / 4; ++g) {
        hashes[g] = splitmix64(seed ^ ((group0 + g) * 0xD1B54A32D192ED03ULL));
      }
      const scalar_t* src = in + first;
      scalar_t* dst = out + first;
      for (int64_t i = 0; i < count; ++i) {
        const auto lane = static_cast<uint32_t>((hashes[i >> 2] >> (16 * (i & 3))) & 0xFFFF);
        const float kept = lane >= threshold ? scale : 0.0f;
        dst[i] = static_cast<scalar_t>(static_cast<float>(src[i]) * kept);
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
