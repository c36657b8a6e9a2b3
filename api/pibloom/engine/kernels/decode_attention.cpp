// One decode step's attention (one query per row) over a slot cache's keys and values, for
// `pibloom.engine.attention_kernel`. Per row and key head, the queries of that head's group are
// scored together, so each key and value is read once rather than once per query head; the keys
// are scored sixteen columns at a time, transposed in registers so that a vector holds sixteen
// columns and no horizontal sum is needed. Accumulation is in float, as in torch's fused attention.
//
// Built per head size and group (PIBLOOM_HEAD_SIZE, PIBLOOM_GROUP), in float32 and bfloat16.
//
// A row's columns before its first unmasked one (its left padding) are neither read nor summed,
// and every sum runs from that column on, in chunks cut from it (`kChunk`): a row gets
// bit-identical results alone and padded in a batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr float kMasked = -std::numeric_limits<float>::infinity();
// Built for one model's attention shape at a time (`-D` flags), so a build compiles in seconds.
constexpr int kHeadSize = PIBLOOM_HEAD_SIZE;
constexpr int kGroup = PIBLOOM_GROUP;  // query heads per key head

template <typename T>
inline Vec load_float(const T* src) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(src);
  } else {
    Vec out;
    at::vec::load_to_float<T>(src, out);
    return out;
  }
}

inline float lane_sum(const Vec& x) {
  alignas(64) float lanes[kW];
  x.store(lanes);
  float sum = 0.f;
  for (int64_t i = 0; i < kW; ++i) sum += lanes[i];
  return sum;
}

inline float lane_max(const Vec& x) {
  alignas(64) float lanes[kW];
  x.store(lanes);
  float most = lanes[0];
  for (int64_t i = 1; i < kW; ++i) most = std::max(most, lanes[i]);
  return most;
}

// Columns per task. A row's columns are cut into chunks of this many from its first column, each
// attended on its own and the chunks then combined in order: a single row's work spreads over the
// thread team, and the cut, hence every sum, is the same whatever else is in the batch.
constexpr int64_t kChunk = 64;

template <typename T, int D, int G>
void attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias, float scale,
            at::Tensor& out) {
  static_assert(D % kW == 0, "head size a multiple of the vector width");
  constexpr int NV = D / kW;
  const int64_t rows = q.size(0), kv_heads = k.size(1), columns = k.size(2);
  const int64_t chunks = std::max<int64_t>(1, (columns + kChunk - 1) / kChunk);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const float* bp = bias.data_ptr<float>();
  T* op = out.data_ptr<T>();
  const int64_t k0 = k.stride(0), k1 = k.stride(1), k2 = k.stride(2);
  const int64_t v0 = v.stride(0), v1 = v.stride(1), v2 = v.stride(2);
  const int64_t q0 = q.stride(0), q1 = q.stride(1), b0 = bias.stride(0);
  std::vector<int64_t> first(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const float* b = bp + r * b0;
    int64_t c = 0;
    while (c < columns && b[c] == kMasked) ++c;
    first[r] = c;
  }
  // Per chunk and query: the running maximum, the sum of exponentials under it, and the weighted
  // values (not yet divided by the sum).
  const int64_t tasks = rows * kv_heads * chunks;
  // Uninitialised: every task writes its own before the second pass reads them.
  std::unique_ptr<float[]> top(new float[tasks * G]), total(new float[tasks * G]), partial(new float[tasks * G * D]);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float scores[G][kChunk];
    alignas(64) float qf[G][D];
    alignas(64) T tile[kW * kW];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / (kv_heads * chunks), h = task / chunks % kv_heads, ch = task % chunks;
      const int64_t start = first[r] + ch * kChunk;
      float* task_top = top.get() + task * G;
      if (start >= columns) {
        std::fill(task_top, task_top + G, kMasked);
        continue;
      }
      const int64_t n_cols = std::min(kChunk, columns - start);
      for (int g = 0; g < G; ++g) {
        const T* src = qp + r * q0 + (h * G + g) * q1;
        for (int d = 0; d < D; ++d) qf[g][d] = static_cast<float>(src[d]) * scale;
      }
      const T* kb = kp + r * k0 + h * k1 + start * k2;
      const float* bb = bp + r * b0 + start;
      Vec most[G];
      for (int g = 0; g < G; ++g) most[g] = Vec(kMasked);
      for (int64_t c = 0; c < n_cols; c += kW) {
        const int64_t n = std::min<int64_t>(kW, n_cols - c);
        Vec s[G];
        for (int g = 0; g < G; ++g) s[g] = Vec(0.f);
        for (int dt = 0; dt < D; dt += kW) {
          if (n == kW) {
            at::vec::transpose_mxn<T, kW, kW>(kb + c * k2 + dt, k2, tile, kW);
          } else {
            std::fill(tile, tile + kW * kW, T(0));
            at::vec::transpose_mxn<T>(kb + c * k2 + dt, k2, tile, kW, n, kW);
          }
          for (int d = 0; d < kW; ++d) {
            const Vec kd = load_float(tile + d * kW);
            for (int g = 0; g < G; ++g) s[g] = at::vec::fmadd(Vec(qf[g][dt + d]), kd, s[g]);
          }
        }
        const Vec bv = n == kW ? Vec::loadu(bb + c) : Vec::set(Vec(kMasked), Vec::loadu(bb + c, n), n);
        for (int g = 0; g < G; ++g) {
          const Vec x = s[g] + bv;
          most[g] = at::vec::maximum(most[g], x);
          x.store(scores[g] + c, n);
        }
      }
      float* task_total = total.get() + task * G;
      for (int g = 0; g < G; ++g) {
        const float m = lane_max(most[g]);
        task_top[g] = m;
        if (m == kMasked) {  // every column of the chunk masked: it adds nothing
          task_total[g] = 0.f;
          continue;
        }
        const Vec vm(m);
        Vec sum(0.f);
        int64_t c = 0;
        for (; c + kW <= n_cols; c += kW) {
          const Vec e = (Vec::loadu(scores[g] + c) - vm).exp_u20();
          e.store(scores[g] + c);
          sum = sum + e;
        }
        float tail = lane_sum(sum);
        for (; c < n_cols; ++c) {
          scores[g][c] = std::exp(scores[g][c] - m);
          tail += scores[g][c];
        }
        task_total[g] = tail;
      }
      Vec acc[G][NV];
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < NV; ++i) acc[g][i] = Vec(0.f);
      const T* vb = vp + r * v0 + h * v1 + start * v2;
      for (int64_t c = 0; c < n_cols; ++c) {
        if (bb[c] == kMasked) continue;  // weight 0: not read
        for (int i = 0; i < NV; ++i) {
          const Vec x = load_float(vb + c * v2 + i * kW);
          for (int g = 0; g < G; ++g) acc[g][i] = at::vec::fmadd(Vec(scores[g][c]), x, acc[g][i]);
        }
      }
      float* task_partial = partial.get() + task * G * D;
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < NV; ++i) acc[g][i].store(task_partial + g * D + i * kW);
    }
  });
  // Each row and key head: its chunks combined in order, rescaled to the largest maximum.
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t rh = begin; rh < end; ++rh) {
      const int64_t base = rh * chunks;
      T* dst = op + rh * G * D;
      for (int g = 0; g < G; ++g) {
        float m = kMasked;
        for (int64_t ch = 0; ch < chunks; ++ch) m = std::max(m, top[(base + ch) * G + g]);
        Vec acc[NV];
        for (int i = 0; i < NV; ++i) acc[i] = Vec(0.f);
        float sum = 0.f;
        for (int64_t ch = 0; ch < chunks && m != kMasked; ++ch) {
          const float chunk_top = top[(base + ch) * G + g];
          if (chunk_top == kMasked) continue;
          const float weight = std::exp(chunk_top - m);
          sum += total[(base + ch) * G + g] * weight;
          const float* p = partial.get() + ((base + ch) * G + g) * D;
          for (int i = 0; i < NV; ++i) acc[i] = at::vec::fmadd(Vec(weight), Vec::loadu(p + i * kW), acc[i]);
        }
        alignas(64) float o[D];
        const float inv = sum > 0.f ? 1.f / sum : 0.f;  // nothing to attend to: zeros (never asked)
        for (int i = 0; i < NV; ++i) (acc[i] * Vec(inv)).store(o + i * kW);
        for (int d = 0; d < D; ++d) dst[g * D + d] = static_cast<T>(o[d]);
      }
    }
  });
}

// q [rows, heads, head size]; k, v [rows, key heads, columns, head size] (any strides but the last);
// bias [rows, columns] float, 0 or -inf. Returns [rows, heads, head size] in q's dtype.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                            double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4 && bias.dim() == 2,
              "decode_attention: q [rows, heads, size], k and v [rows, key heads, columns, size], bias [rows, columns]");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(2) &&
                  bias.size(0) == q.size(0) && bias.size(1) == k.size(2) && q.size(1) % k.size(1) == 0,
              "decode_attention: mismatched shapes");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && bias.stride(1) == 1,
              "decode_attention: the last dimension must be contiguous");
  TORCH_CHECK(bias.scalar_type() == at::kFloat, "decode_attention: a float bias");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "decode_attention: q, k and v of one dtype");
  TORCH_CHECK(q.size(2) == kHeadSize && q.size(1) / k.size(1) == kGroup, "decode_attention: built for head size ",
              kHeadSize, " and ", kGroup, " queries per key head");
  auto out = at::empty(q.sizes(), q.options());
  const float s = static_cast<float>(scale);
  switch (q.scalar_type()) {
    case at::kFloat: attend<float, kHeadSize, kGroup>(q, k, v, bias, s, out); break;
    case at::kBFloat16: attend<at::BFloat16, kHeadSize, kGroup>(q, k, v, bias, s, out); break;
    default: TORCH_CHECK(false, "decode_attention: float or bfloat16, not ", q.scalar_type());
  }
  return out;
}

}  // namespace

// One operator per head size and group, so that a process can load the builds of several models.
#define PIBLOOM_NAME2(size, group) "decode_attention_" #size "_" #group
#define PIBLOOM_NAME(size, group) PIBLOOM_NAME2(size, group)

TORCH_LIBRARY_FRAGMENT(pibloom_kernels, m) {
  m.def(PIBLOOM_NAME(PIBLOOM_HEAD_SIZE, PIBLOOM_GROUP) "(Tensor q, Tensor k, Tensor v, Tensor bias, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(pibloom_kernels, CPU, m) { m.impl(PIBLOOM_NAME(PIBLOOM_HEAD_SIZE, PIBLOOM_GROUP), &decode_attention); }
