// Parts [0, parts) of one kernel call, run on the calling thread and XLA's intra-op threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace specdec {

typedef float vec8 __attribute__((vector_size(32)));  // AVX registers where compiled for them

// Parts are handed out from a shared counter to whichever threads come. Shared, so that a pool
// task that starts after the call is done finds no part left and returns without touching `run`
// (XLA may run independent kernels at once on the same pool: no thread waits for a task that has
// not started).
struct Parts {
  std::function<void(int64_t)> run;
  int64_t parts = 0;
  std::atomic<int64_t> next{0}, done{0};

  void Run() {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < parts;) {
      run(i);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// run(i) for every i in [0, parts), returning when all have run.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t parts, std::function<void(int64_t)> run) {
  auto work = std::make_shared<Parts>();
  work->run = std::move(run);
  work->parts = parts;
  const int64_t threads = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), parts);
  for (int64_t i = 1; i < threads; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();
  // Parts still running were taken by threads that have started: they finish.
  while (work->done.load(std::memory_order_acquire) != parts) {
  }
}

}  // namespace specdec
