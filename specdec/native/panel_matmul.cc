// y[M, N] = x[M, K] @ W[K, N], W stored as column panels P[N / 16, K, 16]
// (P[p, k, c] = W[k, 16 p + c]; specdec/models/panels.py). An XLA FFI handler for the CPU.
//
// A panel is 16 columns of W, read front to back: at each k its 16 values (one or two vectors)
// are multiplied by R values x[:, k] into R accumulator rows held in vector registers. Up to 8 rows
// are one block (a verify pass: W is read once, in one sequential stream per panel). More rows
// (a batch of verify passes, a prefill) go through the same panel in blocks of kBlock rows while
// it stays in the cache, so W is still read from memory once. The panels are split over XLA's
// intra-op threads and the calling thread.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 16;
using specdec::vec8;

// A panel row (kPanel floats) is one 16-float vector where compiled for AVX-512, else two 8-float
// vectors (AVX2: GCC splits a 16-float vector type badly there).
#ifdef __AVX512F__
typedef float vec __attribute__((vector_size(64)));
#else
using vec = vec8;
#endif
constexpr int kLanes = sizeof(vec) / sizeof(float), kVectors = kPanel / kLanes;

// Rows per block beyond 8: their kVectors accumulators each, one panel row and one broadcast fit
// the vector registers (16 with AVX2, 32 with AVX-512).
#ifdef __AVX512F__
constexpr int kBlock = 8;
#else
constexpr int kBlock = 6;
#endif

// Panel rows ahead of the one read that a block of more than one row asks the memory for. A row
// then carries 2-16 vector FMAs, and the out-of-order window alone reaches too few rows ahead to
// keep the memory busy: on the AVX-512 VM this cut the 5-row products' pass by a fifth
// (docs/benchmarks.md, "Wider vectors and a prefetch in the product"). One-row blocks are left to
// the hardware's prefetcher.
constexpr int64_t kAhead = 64;

// Rows x[0:R] times panel wp [K, 16] -> y[0:R, 0:16] (row strides K and N).
template <int R>
void block(const float* x, const float* wp, float* y, int64_t K, int64_t N) {
  vec acc[R][kVectors] = {};
  for (int64_t k = 0; k < K; ++k, wp += kPanel) {
    if (R > 1) __builtin_prefetch(wp + kAhead * kPanel, 0, 0);
    vec w[kVectors];
    for (int v = 0; v < kVectors; ++v) std::memcpy(&w[v], wp + v * kLanes, sizeof(vec));
    for (int m = 0; m < R; ++m) {
      const float s = x[m * K + k];
      for (int v = 0; v < kVectors; ++v) acc[m][v] += s * w[v];
    }
  }
  for (int m = 0; m < R; ++m)
    for (int v = 0; v < kVectors; ++v) std::memcpy(y + m * N + v * kLanes, &acc[m][v], sizeof(vec));
}

using Block = void (*)(const float*, const float*, float*, int64_t, int64_t);
constexpr Block kBlocks[] = {block<1>, block<2>, block<3>, block<4>, block<5>, block<6>, block<7>, block<8>};

// Panels [first, last) for all M rows: one block when M <= 8, else blocks of kBlock rows.
void share(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t first,
           int64_t last) {
  const int64_t rows = M <= 8 ? M : kBlock;
  for (int64_t p = first; p < last; ++p) {
    for (int64_t m = 0; m < M; m += rows) {
      const int64_t r = std::min(rows, M - m);
      kBlocks[r - 1](x + m * K, w + p * K * kPanel, y + m * N + p * kPanel, K, N);
    }
  }
}

ffi::Error PanelMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || wd[2] != kPanel || wd[1] != xd[1] || xd[0] < 1)
    return ffi::Error::InvalidArgument("panel_matmul: x [M, K], panels [N / 16, K, 16]");
  const float *xs = x.typed_data(), *ws = w.typed_data();
  float* ys = y->typed_data();
  const int64_t M = xd[0], K = xd[1], P = wd[0], N = wd[0] * kPanel;
  const int64_t parts = std::min<int64_t>(P, 4 * std::max<int64_t>(1, pool.num_threads()));
  specdec::ParallelFor(pool, parts, [=](int64_t i) {
    share(xs, ws, ys, M, K, N, P * i / parts, P * (i + 1) / parts);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(specdec_panel_matmul, PanelMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
