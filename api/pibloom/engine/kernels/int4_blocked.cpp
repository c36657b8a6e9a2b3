// A 4-bit weight matmul for a few rows over weights in the layout inductor's AMX GEMM re-blocks them
// into, for `pibloom.engine.int4_blocked`: the one-row decode graph then reads the very weights the
// many-row graph holds, instead of a second copy in torch's own int4 layout.
//
// Layout: `w` is [N/32, K, 16] bytes; byte j of block b at input column k holds output column
// 32b + j in its low nibble and 32b + 16 + j in its high one. `sz` is [K/G, N, 2] (scale, zero) as
// torch's int4 kernel takes them: weight = (q - 8) * scale + zero.
//
// It computes what torch's own int4 kernel computes, in the same order, so its results are the same
// bit for bit: each weight de-quantized in float as (q - 8) * scale + zero (the level through a
// 16-entry table lookup), each column's sum accumulated over k in float, one input column after the
// other, then rounded to bfloat16. Two blocks of 32 columns at a time give four independent sums a
// row. Rows are computed independently and the columns are shared out to the threads, so a row's
// result does not depend on the rows around it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/library.h>

#include <vector>

namespace {

constexpr int64_t kPrefetch = 64;  // input columns ahead

inline __m512 bf16_to_float(const at::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// `Rows` rows of x against `Blocks` adjacent blocks of 32 output columns, from block `first`.
template <int Rows, int Blocks>
void blocks(const float* x, const uint8_t* w, const at::BFloat16* sz, at::BFloat16* out, int64_t K, int64_t N,
            int64_t G, int64_t first) {
  // Level q as the float q - 8: the lookup reads each lane's low 4 bits only.
  const __m512 centred = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  __m512 low[Blocks][Rows], high[Blocks][Rows];
  __m512 s_low[Blocks], z_low[Blocks], s_high[Blocks], z_high[Blocks];
  for (int b = 0; b < Blocks; ++b)
    for (int r = 0; r < Rows; ++r) low[b][r] = high[b][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    if (k % G == 0) {
      for (int b = 0; b < Blocks; ++b) {  // this group's scales and zeros: 32 interleaved pairs a block
        const at::BFloat16* pairs = sz + ((k / G) * N + (first + b) * 32) * 2;
        if (k + G < K) {  // the next group's, two cache lines a block, a row of `sz` further on
          _mm_prefetch(reinterpret_cast<const char*>(pairs + N * 2), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(pairs + N * 2 + 32), _MM_HINT_T0);
        }
        const __m512 p0 = bf16_to_float(pairs), p1 = bf16_to_float(pairs + 16);
        const __m512 p2 = bf16_to_float(pairs + 32), p3 = bf16_to_float(pairs + 48);
        s_low[b] = _mm512_permutex2var_ps(p0, even, p1);
        z_low[b] = _mm512_permutex2var_ps(p0, odd, p1);
        s_high[b] = _mm512_permutex2var_ps(p2, even, p3);
        z_high[b] = _mm512_permutex2var_ps(p2, odd, p3);
      }
    }
    __m512 a[Rows];
    for (int r = 0; r < Rows; ++r) a[r] = _mm512_set1_ps(x[r * K + k]);
    for (int b = 0; b < Blocks; ++b) {
      const uint8_t* bytes = w + ((first + b) * K + k) * 16;
      // Weights come from memory, not cache, in a served step: ask for them 1 KB ahead, as torch's
      // kernel does (without it a one-row step took 7.8 against 6.0-6.5 ms cold, measured).
      if (k + kPrefetch < K) _mm_prefetch(reinterpret_cast<const char*>(bytes + kPrefetch * 16), _MM_HINT_T0);
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
      const __m512 lo = _mm512_fmadd_ps(_mm512_permutexvar_ps(v, centred), s_low[b], z_low[b]);
      const __m512 hi = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), centred), s_high[b], z_high[b]);
      for (int r = 0; r < Rows; ++r) {
        low[b][r] = _mm512_fmadd_ps(a[r], lo, low[b][r]);
        high[b][r] = _mm512_fmadd_ps(a[r], hi, high[b][r]);
      }
    }
  }
  for (int b = 0; b < Blocks; ++b)
    for (int r = 0; r < Rows; ++r) {
      at::BFloat16* o = out + r * N + (first + b) * 32;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), (__m256i)_mm512_cvtneps_pbh(low[b][r]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16), (__m256i)_mm512_cvtneps_pbh(high[b][r]));
    }
}

template <int Blocks>
void rows_of(const float* x, const uint8_t* w, const at::BFloat16* sz, at::BFloat16* out, int64_t M, int64_t K,
             int64_t N, int64_t G, int64_t first) {
  int64_t r = 0;
  for (; r + 2 <= M; r += 2) blocks<2, Blocks>(x + r * K, w, sz, out + r * N, K, N, G, first);
  for (; r < M; ++r) blocks<1, Blocks>(x + r * K, w, sz, out + r * N, K, N, G, first);
}

at::Tensor int4_blocked_mm(const at::Tensor& input, const at::Tensor& w, const at::Tensor& sz, int64_t group) {
  TORCH_CHECK(input.dim() == 2 && input.scalar_type() == at::kBFloat16, "int4_blocked_mm: x is [M, K] bfloat16");
  const at::Tensor x = input.contiguous();
  TORCH_CHECK(sz.dim() == 3 && sz.size(2) == 2 && sz.scalar_type() == at::kBFloat16 && sz.is_contiguous(),
              "int4_blocked_mm: scales and zeros are [K/group, N, 2] bfloat16");
  const int64_t M = x.size(0), K = x.size(1), N = sz.size(1);
  TORCH_CHECK(N % 32 == 0 && K % group == 0 && sz.size(0) == K / group, "int4_blocked_mm: shapes do not agree");
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() && w.numel() == N * K / 2,
              "int4_blocked_mm: w is N*K/2 bytes");
  std::vector<float> xf(M * K);
  const at::BFloat16* xin = x.data_ptr<at::BFloat16>();
  for (int64_t i = 0; i < M * K; ++i) xf[i] = static_cast<float>(xin[i]);
  at::Tensor out = at::empty({M, N}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const at::BFloat16* szp = sz.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t count = N / 32;
  at::parallel_for(0, (count + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      if (2 * pair + 1 < count) rows_of<2>(xf.data(), wp, szp, op, M, K, N, group, 2 * pair);
      else rows_of<1>(xf.data(), wp, szp, op, M, K, N, group, 2 * pair);
    }
  });
  return out;
}

// The output's shape for tracing (torch.export, when the package builder exports the one-row graph).
at::Tensor int4_blocked_mm_meta(const at::Tensor& x, const at::Tensor& w, const at::Tensor& sz, int64_t group) {
  return at::empty({x.size(0), sz.size(1)}, x.options().device(at::kMeta));
}

}  // namespace

// The operator as a C function an AOTInductor package calls directly (inductor's
// `aot_inductor.custom_ops_to_c_shims`), rather than through its proxy executor, which boxes every
// call's arguments: 120 calls a one-row step of the embedded model.
extern "C" AOTITorchError aoti_torch_cpu_int4_blocked_mm(AtenTensorHandle x, AtenTensorHandle w, AtenTensorHandle sz,
                                                        int64_t group, AtenTensorHandle* out) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    using torch::aot_inductor::tensor_handle_to_tensor_pointer;
    at::Tensor result = int4_blocked_mm(*tensor_handle_to_tensor_pointer(x), *tensor_handle_to_tensor_pointer(w),
                                        *tensor_handle_to_tensor_pointer(sz), group);
    *out = torch::aot_inductor::new_tensor_handle(std::move(result));
  });
}

TORCH_LIBRARY_FRAGMENT(pibloom_kernels, m) { m.def("int4_blocked_mm(Tensor x, Tensor w, Tensor sz, int group) -> Tensor"); }

TORCH_LIBRARY_IMPL(pibloom_kernels, CPU, m) { m.impl("int4_blocked_mm", &int4_blocked_mm); }

TORCH_LIBRARY_IMPL(pibloom_kernels, Meta, m) { m.impl("int4_blocked_mm", &int4_blocked_mm_meta); }
