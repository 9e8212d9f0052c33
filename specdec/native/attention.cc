// Grouped-query attention over the KV cache (specdec/models/cache.py's layout): an XLA FFI handler
// for the CPU.
//
//   q        [N, R, Dh]  N = B Hkv: row b's kv head h is n = b Hkv + h; its R = T G queries, query
//                        r at position t = r / G; scaled by 1 / sqrt(Dh)
//   visible  [B, T, S]   whether position t of row b sees slot s
//   blocks   keys [N, Dh, S_i] and values [N, S_i, Dh], i = 0, 1, ...: the slots of block i are
//            visible's S_i columns after those of the blocks before it (the cache, then new
//            entries not written to it yet); S = sum_i S_i
//   out      [N, R, Dh]  out[n, r] = sum_s softmax_s(q[n, r] . keys[n, :, s]) values[n, s], over
//                        the slots s visible to r
//
// Slots after the last one a row's positions see in a block are not read: a cache of S slots
// holding L tokens costs L. The visible slots of each (row, kv head) are cut into spans, run on
// XLA's intra-op threads; a span keeps, for each query, the running maximum m of its scores,
// l = sum of e^(score - m) and o = sum of e^(score - m) values (flash attention's online
// softmax), and the spans are merged at the end: out = sum_i e^(m_i - M) o_i / sum_i e^(m_i - M)
// l_i, M = max_i m_i.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using specdec::vec8;
typedef int32_t ivec8 __attribute__((vector_size(32)));

constexpr int64_t kTile = 64;  // slots scored at once: 8 vectors of accumulators per query
constexpr int64_t kMaxHeadDim = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

vec8 Load(const float* p) {
  vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void Store(float* p, vec8 v) { std::memcpy(p, &v, sizeof v); }

vec8 Select(ivec8 mask, vec8 a, vec8 b) { return (vec8)(((ivec8)a & mask) | ((ivec8)b & ~mask)); }

// e^x for x <= 0, eight at a time, as Cephes' expf: x = n ln 2 + f with n an integer and
// |f| <= ln 2 / 2, e^f by its degree-7 Taylor-like polynomial, 2^n written into the exponent
// bits. Relative error below 2e-7; x below -87 (e^x under the smallest normal float) gives 0.
vec8 Exp(vec8 x) {
  const ivec8 kept = x > -87.0f;
  x = Select(kept, x, vec8{} - 87.0f);
  const vec8 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const vec8 f = x - n * 0.693359375f - n * -2.12194440e-4f;  // ln 2 in two parts: f exact
  vec8 p = f * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  const ivec8 scale = (__builtin_convertvector(n, ivec8) + 127) << 23;  // 2^n
  return (vec8)((ivec8)(p * (vec8)scale) & kept);
}

float Sum(vec8 v) {
  float s = 0;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

struct Block {
  const float *keys, *values;
  int64_t S, offset;  // its slots, and the column of visible where they start
};

struct Problem {
  const float* q;
  const bool* visible;
  int64_t R, Dh, T, G, H, width;  // H: kv heads per row; width: visible's S
};

// Slots [begin, end) of block k for (row, kv head) n's R queries. Query r's running o [Dh], m and l
// are state[r (Dh + 2) + (0 .. Dh-1, Dh, Dh + 1)]. D8 = Dh / 8 when fixed at compile time (its
// value vectors then stay in registers), else 0.
template <int D8>
void RunSpan(const Problem& p, const Block& k, int64_t n, int64_t begin, int64_t end, float* state) {
  const int64_t Dh = p.Dh, S = k.S, d8 = D8 ? D8 : Dh / 8;
  const float* keys = k.keys + n * Dh * S;
  const float* values = k.values + n * S * Dh;
  const bool* visible = p.visible + (n / p.H) * p.T * p.width + k.offset;
  for (int64_t r = 0; r < p.R; ++r) {
    float* st = state + r * (Dh + 2);
    std::fill(st, st + Dh, 0.0f);
    st[Dh] = kNegInf;
    st[Dh + 1] = 0.0f;
  }
  // The tile's keys copied out, [Dh, kTile] contiguous (zero past slot S): in the cache, one
  // slot's keys are S floats apart, and at S a multiple of 1,024 a tile's 64 key rows all fall in
  // the same few sets of the L1 cache, which evicted them between the queries that read them.
  std::vector<float> tile(Dh * kTile);
  std::vector<ivec8> seen(p.T * 8);  // per position, the tile's slots it sees: 8 masks of 8 lanes
  alignas(32) float scores[kTile];
  for (int64_t s0 = begin; s0 < end; s0 += kTile) {
    const int64_t width = std::min(kTile, end - s0);
    const int64_t copied = std::min(kTile, S - s0);
    for (int64_t d = 0; d < Dh; ++d) {
      std::memcpy(&tile[d * kTile], keys + d * S + s0, copied * sizeof(float));
      std::fill(&tile[d * kTile] + copied, &tile[d * kTile] + kTile, 0.0f);
    }
    for (int64_t t = 0; t < p.T; ++t) {
      const bool* row = visible + t * p.width + s0;
      for (int i = 0; i < 8; ++i) {
        ivec8 lane;
        for (int j = 0; j < 8; ++j) lane[j] = 8 * i + j < width && row[8 * i + j] ? -1 : 0;
        seen[t * 8 + i] = lane;
      }
    }
    for (int64_t r = 0; r < p.R; ++r) {
      // scores of the tile's slots: q[r] . keys[:, s], 64 slots in 8 vector accumulators
      const float* qr = p.q + (n * p.R + r) * Dh;
      vec8 acc[8] = {};
      for (int64_t d = 0; d < Dh; ++d) {
        const float qd = qr[d];
        for (int i = 0; i < 8; ++i) acc[i] += qd * Load(&tile[d * kTile + 8 * i]);
      }
      const ivec8* mask = &seen[(r / p.G) * 8];
      vec8 most = vec8{} + kNegInf;
      for (int i = 0; i < 8; ++i) {
        acc[i] = Select(mask[i], acc[i], vec8{} + kNegInf);
        most = Select(acc[i] > most, acc[i], most);
        Store(scores + 8 * i, acc[i]);
      }
      float top = kNegInf;
      for (int j = 0; j < 8; ++j) top = std::max(top, most[j]);
      if (top == kNegInf) continue;
      // the online softmax: rescale the running sums to the new maximum, add the tile's terms
      float* st = state + r * (Dh + 2);
      const float m = std::max(st[Dh], top), rescale = std::exp(st[Dh] - m);
      vec8 sum = {};
      for (int i = 0; i < 8; ++i) {
        const vec8 e = Exp(Load(scores + 8 * i) - m);
        Store(scores + 8 * i, e);
        sum += e;
      }
      st[Dh] = m;
      st[Dh + 1] = st[Dh + 1] * rescale + Sum(sum);
      vec8 o[D8 ? D8 : kMaxHeadDim / 8];
      for (int64_t i = 0; i < d8; ++i) o[i] = Load(st + 8 * i) * rescale;
      for (int64_t j = 0; j < width; ++j) {
        const float w = scores[j];
        if (w == 0.0f) continue;
        const float* v = values + (s0 + j) * Dh;
        for (int64_t i = 0; i < d8; ++i) o[i] += w * Load(v + 8 * i);
      }
      for (int64_t i = 0; i < d8; ++i) Store(st + 8 * i, o[i]);
    }
  }
}

using SpanFn = void (*)(const Problem&, const Block&, int64_t, int64_t, int64_t, float*);

SpanFn SpanFor(int64_t Dh) {
  switch (Dh) {
    case 32: return RunSpan<4>;
    case 64: return RunSpan<8>;
    case 128: return RunSpan<16>;
    default: return RunSpan<0>;
  }
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::PRED> visible,
                     ffi::RemainingArgs kv, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), md = visible.dimensions();
  if (qd.size() != 3 || md.size() != 3 || kv.size() < 2 || kv.size() % 2 != 0)
    return ffi::Error::InvalidArgument("attention: q [N, R, Dh], visible [B, T, S], then keys and values of blocks");
  const int64_t N = qd[0], R = qd[1], Dh = qd[2], B = md[0], T = md[1];
  if (B < 1 || N % B != 0 || T < 1 || R % T != 0 || Dh % 8 != 0 || Dh > kMaxHeadDim)
    return ffi::Error::InvalidArgument("attention: q [B Hkv, T G, Dh] and visible [B, T, S] disagree (or Dh is not a multiple of 8 up to 256)");
  const Problem p{q.typed_data(), visible.typed_data(), R, Dh, T, R / T, N / B, md[2]};
  std::vector<Block> blocks;
  for (size_t i = 0, offset = 0; i < kv.size(); i += 2) {
    const auto keys = kv.get<ffi::Buffer<ffi::F32>>(i), values = kv.get<ffi::Buffer<ffi::F32>>(i + 1);
    if (!keys.has_value() || !values.has_value()) return ffi::Error::InvalidArgument("attention: blocks are float32");
    const auto kd = keys->dimensions(), vd = values->dimensions();
    if (kd.size() != 3 || vd.size() != 3 || kd[0] != N || kd[1] != Dh || vd[0] != N || vd[1] != kd[2] || vd[2] != Dh)
      return ffi::Error::InvalidArgument("attention: a block's keys [N, Dh, S_i] and values [N, S_i, Dh] disagree with q");
    blocks.push_back({keys->typed_data(), values->typed_data(), kd[2], static_cast<int64_t>(offset)});
    offset += kd[2];
  }
  if (blocks.back().offset + blocks.back().S != p.width)
    return ffi::Error::InvalidArgument("attention: visible's S is not the blocks' slots together");

  // The slots row b's positions see in block k end at ends[b][k]: spans cover [0, ends[b][k]).
  const int64_t K = blocks.size();
  std::vector<int64_t> ends(B * K, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      int64_t& end = ends[b * K + k];
      for (int64_t t = 0; t < T; ++t) {
        const bool* seen = p.visible + (b * T + t) * p.width + blocks[k].offset;
        int64_t s = blocks[k].S;
        while (s > end && !seen[s - 1]) --s;
        end = std::max(end, s);
      }
    }
  }
  int64_t total = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) total += ends[(n / p.H) * K + k];
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t per_part = (total + 4 * threads - 1) / (4 * threads);  // about 4 spans per thread
  const int64_t span = std::max<int64_t>(2 * kTile, (per_part + kTile - 1) / kTile * kTile);
  struct Span {
    int64_t n, k, begin, end;
  };
  std::vector<Span> spans;
  std::vector<int64_t> first(N + 1, 0);  // spans of n: [first[n], first[n + 1])
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t end = ends[(n / p.H) * K + k];
      for (int64_t s = 0; s < end; s += span) spans.push_back({n, k, s, std::min(s + span, end)});
    }
    first[n + 1] = spans.size();
  }
  const int64_t size = R * (Dh + 2);
  std::vector<float> state(spans.size() * size);
  const SpanFn run = SpanFor(Dh);
  specdec::ParallelFor(pool, spans.size(), [&](int64_t i) {
    run(p, blocks[spans[i].k], spans[i].n, spans[i].begin, spans[i].end, &state[i * size]);
  });

  float* o = out->typed_data();
  std::fill(o, o + N * R * Dh, 0.0f);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      float top = kNegInf, l = 0.0f;
      for (int64_t i = first[n]; i < first[n + 1]; ++i) top = std::max(top, state[i * size + r * (Dh + 2) + Dh]);
      if (top == kNegInf) continue;  // a query that sees no slot: zeros
      float* y = o + (n * R + r) * Dh;
      for (int64_t i = first[n]; i < first[n + 1]; ++i) {
        const float* st = &state[i * size + r * (Dh + 2)];
        if (st[Dh] == kNegInf) continue;
        const float w = std::exp(st[Dh] - top);
        l += w * st[Dh + 1];
        for (int64_t d = 0; d < Dh; ++d) y[d] += w * st[d];
      }
      for (int64_t d = 0; d < Dh; ++d) y[d] /= l;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(specdec_attention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>());
