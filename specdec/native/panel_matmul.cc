// y[M, N] = x[M, K] @ W[K, N] for M <= 8, W stored as column panels P[N / 16, K, 16]
// (P[p, k, c] = W[k, 16 p + c]; specdec/models/panels.py). An XLA FFI handler for the CPU.
//
// A panel is 16 columns of W, read front to back: at each k its 16 values (two 8-float vectors)
// are multiplied by the M values x[:, k] into 2 M accumulators held in vector registers, so W is
// read once from memory whatever M is, in one sequential stream per panel. The panels are split
// over XLA's intra-op threads (the calling thread takes the first share).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 16;
typedef float vec8 __attribute__((vector_size(32)));  // AVX registers where compiled for them

template <int M>
void panels(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t first, int64_t last) {
  for (int64_t p = first; p < last; ++p) {
    vec8 acc[M][2];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = vec8{};
    const float* wp = w + p * K * kPanel;
    for (int64_t k = 0; k < K; ++k, wp += kPanel) {
      vec8 lo, hi;
      std::memcpy(&lo, wp, sizeof lo);
      std::memcpy(&hi, wp + 8, sizeof hi);
      for (int m = 0; m < M; ++m) {
        const float s = x[m * K + k];
        acc[m][0] += s * lo;
        acc[m][1] += s * hi;
      }
    }
    for (int m = 0; m < M; ++m) {
      std::memcpy(y + m * N + p * kPanel, &acc[m][0], sizeof(vec8));
      std::memcpy(y + m * N + p * kPanel + 8, &acc[m][1], sizeof(vec8));
    }
  }
}

using Share = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t);
constexpr Share kShares[] = {panels<1>, panels<2>, panels<3>, panels<4>,
                             panels<5>, panels<6>, panels<7>, panels<8>};

ffi::Error PanelMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || wd[2] != kPanel || wd[1] != xd[1] || xd[0] < 1 || xd[0] > 8)
    return ffi::Error::InvalidArgument("panel_matmul: x [M <= 8, K], panels [N / 16, K, 16]");
  const int64_t M = xd[0], K = xd[1], P = wd[0], N = P * kPanel;
  const Share share = kShares[M - 1];
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), P));
  std::atomic<int64_t> pending{parts - 1};
  for (int64_t i = 1; i < parts; ++i) {
    pool.Schedule([=, &pending] {
      share(xp, wp, yp, K, N, P * i / parts, P * (i + 1) / parts);
      pending.fetch_sub(1, std::memory_order_release);
    });
  }
  share(xp, wp, yp, K, N, 0, P / parts);
  while (pending.load(std::memory_order_acquire) != 0) {
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(specdec_panel_matmul, PanelMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
