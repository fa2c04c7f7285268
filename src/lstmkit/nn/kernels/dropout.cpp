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
#include <cstring>

#include "simd.h"

namespace {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

constexpr int64_t kBlock = 2048;  // elements per block: its hashes (4 KB) stay in L1
constexpr int64_t kGrain = 8;  // blocks per thread at least: fewer are not worth a thread

inline float to_float(double v) { return static_cast<float>(v); }
inline void from_float(double* p, float v) { *p = v; }

// Blocks [begin, end): first a block's hashes (a loop the compiler vectorizes), then its
// elements, element i taking 16-bit lane i of the block's hashes, i.e. bits 16 * (i % 4) of
// hash i / 4 (x86 is little-endian), so this loop vectorizes too. A function of its own rather
// than the body of parallel_for's lambda: inside the lambda g++ left both loops ~8x slower.
template <typename scalar_t>
void mask_blocks(const scalar_t* in, scalar_t* out, int64_t n, uint64_t seed,
                 uint32_t threshold, float scale, int64_t begin, int64_t end) {
  alignas(64) uint64_t hashes[kBlock / 4];
  alignas(64) uint16_t lanes[kBlock];
  for (int64_t block = begin; block < end; ++block) {
    const int64_t first = block * kBlock;
    const int64_t count = std::min(kBlock, n - first);
    const uint64_t group0 = static_cast<uint64_t>(first / 4);
    for (int64_t g = 0; g < (count + 3) / 4; ++g) {
      hashes[g] = splitmix64(seed ^ ((group0 + g) * 0xD1B54A32D192ED03ULL));
    }
    std::memcpy(lanes, hashes, sizeof hashes);
    const scalar_t* src = in + first;
    scalar_t* dst = out + first;
    for (int64_t i = 0; i < count; ++i) {
      const float kept = lanes[i] >= threshold ? scale : 0.0f;
      from_float(dst + i, to_float(src[i]) * kept);
    }
  }
}

template <typename scalar_t>
void apply_mask(const scalar_t* in, scalar_t* out, int64_t n, uint64_t seed, uint32_t threshold,
                float scale) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrain, [=](int64_t begin, int64_t end) {
    mask_blocks(in, out, n, seed, threshold, scale, begin, end);
  });
}

torch::Tensor hash_dropout(torch::Tensor x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu(), "hash_dropout: CPU tensors only");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "hash_dropout: p must be in [0, 1)");
  auto input = x.contiguous();
  auto out = torch::empty_like(input);
  const uint32_t threshold = static_cast<uint32_t>(p * 65536.0 + 0.5);
  const float scale = threshold >= 65536 ? 0.0f : 65536.0f / static_cast<float>(65536 - threshold);
  const auto n = input.numel();
  const auto key = static_cast<uint64_t>(seed);
  switch (input.scalar_type()) {  // bf16 as its bits, for simd.h's conversions
    case at::kFloat:
      apply_mask(input.data_ptr<float>(), out.data_ptr<float>(), n, key, threshold, scale);
      break;
    case at::kDouble:
      apply_mask(input.data_ptr<double>(), out.data_ptr<double>(), n, key, threshold, scale);
      break;
    case at::kBFloat16:
      apply_mask(reinterpret_cast<const uint16_t*>(input.data_ptr()),
                 reinterpret_cast<uint16_t*>(out.data_ptr()), n, key, threshold, scale);
      break;
    default:
      TORCH_CHECK(false, "hash_dropout: float, double or bfloat16 tensors only, not ",
                  input.scalar_type());
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hash_dropout", &hash_dropout, "x * keep(seed, i) / keep rate, the mask regenerated");
}
