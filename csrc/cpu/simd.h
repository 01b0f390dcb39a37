// Vector helpers and run-time instruction-set dispatch for the CPU kernels.
//
// The hot loops are written once, as always-inline templates over GCC vector types, and compiled
// three times: baseline x86-64, AVX2+FMA and AVX-512 (function target attributes), the variant
// picked per call from the CPU's features.  The build needs no -march flag and runs anywhere.
// Everything such a loop calls must be inlined into it: an out-of-line helper would be baseline
// (SSE) code, and mixing it with AVX code costs transition stalls.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FCN_X86_DISPATCH 1
#define FCN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FCN_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define FCN_X86_DISPATCH 0
#define FCN_TARGET_AVX2
#define FCN_TARGET_AVX512
#endif
#define FCN_ALWAYS_INLINE inline __attribute__((always_inline))
#define FCN_LAMBDA_INLINE __attribute__((always_inline))

namespace fcn {
namespace cpu {

// 2: AVX-512, 1: AVX2+FMA, 0: baseline.  FCN_CPU_ISA=baseline|avx2 caps it (tests use it to run
// every variant on one machine).
inline int cpu_level() {
  static const int level = [] {
    int l = 0;
#if FCN_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) l = 1;
    if (l == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      l = 2;
#endif
    if (const char* cap = std::getenv("FCN_CPU_ISA")) {
      const std::string c(cap);
      l = std::min(l, c == "baseline" ? 0 : c == "avx2" ? 1 : 2);
    }
    return l;
  }();
  return level;
}

// NAME<T>(args, begin, end) runs BODY<T, ISA>(args, begin, end) compiled for the best instruction
// set, ISA its cpu_level(): a body may keep its costliest specialisations (long unrolled register
// blocks, which the baseline's eight SSE registers would only spill) to ISA >= 1.
#define FCN_ISA_DISPATCHED(NAME, ARGS, BODY)                                                   \
  void NAME##_base(const ARGS<float>& a, int64_t b, int64_t e) { BODY<float, 0>(a, b, e); }    \
  void NAME##_base(const ARGS<double>& a, int64_t b, int64_t e) { BODY<double, 0>(a, b, e); }  \
  FCN_TARGET_AVX2 void NAME##_avx2(const ARGS<float>& a, int64_t b, int64_t e) {               \
    BODY<float, 1>(a, b, e);                                                                   \
  }                                                                                            \
  FCN_TARGET_AVX2 void NAME##_avx2(const ARGS<double>& a, int64_t b, int64_t e) {              \
    BODY<double, 1>(a, b, e);                                                                  \
  }                                                                                            \
  FCN_TARGET_AVX512 void NAME##_avx512(const ARGS<float>& a, int64_t b, int64_t e) {           \
    BODY<float, 2>(a, b, e);                                                                   \
  }                                                                                            \
  FCN_TARGET_AVX512 void NAME##_avx512(const ARGS<double>& a, int64_t b, int64_t e) {          \
    BODY<double, 2>(a, b, e);                                                                  \
  }                                                                                            \
  template <typename T>                                                                        \
  void NAME(const ARGS<T>& a, int64_t b, int64_t e) {                                          \
    switch (cpu_level()) {                                                                     \
      case 2: return NAME##_avx512(a, b, e);                                                   \
      case 1: return NAME##_avx2(a, b, e);                                                     \
      default: return NAME##_base(a, b, e);                                                    \
    }                                                                                          \
  }

// Walks flat row indices r = (outer * n_mid + mid) * n_inner + inner without a division per row.
struct RowIndex {
  int64_t inner, mid, outer, n_inner, n_mid;
  RowIndex(int64_t r, int64_t n_inner_, int64_t n_mid_)
      : inner(r % n_inner_), mid(r / n_inner_ % n_mid_), outer(r / (n_inner_ * n_mid_)),
        n_inner(n_inner_), n_mid(n_mid_) {}
  FCN_ALWAYS_INLINE void next() {
    if (++inner == n_inner) {
      inner = 0;
      if (++mid == n_mid) {
        mid = 0;
        ++outer;
      }
    }
  }
};

// Chunks per register group for a loop keeping `per_chunk` accumulators of V per chunk, under
// ISA (cpu_level): about 12 registers of accumulators (x86-64 has 16 vector registers; a V of
// eight lanes takes two or four of SSE's, two of AVX2's for double), 1 to 4 chunks.
template <typename V, int ISA>
constexpr int chunks_per_group(int per_chunk) {
  return std::clamp(12 / (per_chunk * (int(sizeof(V)) / (ISA == 0 ? 16 : 32))), 1, 4);
}

// Calls fn(c0, m) for consecutive groups of m <= GMAX chunks covering [0, nch), m a compile-time
// constant: groups as even as possible, so no row ends with a lone chunk whose FMA chains stall.
template <int GMAX, typename Fn>
FCN_ALWAYS_INLINE void chunk_groups(int64_t nch, Fn&& fn) {
  static_assert(GMAX >= 1 && GMAX <= 4, "chunk_groups: 1 to 4 chunks per group");
  for (int64_t c0 = 0; c0 < nch;) {
    const int64_t left = nch - c0;
    const int64_t m = left <= GMAX ? left : left < 2 * GMAX ? (left + 1) / 2 : GMAX;
    switch (m) {
      case 1: fn(c0, std::integral_constant<int, 1>{}); break;
      case 2: if constexpr (GMAX >= 2) fn(c0, std::integral_constant<int, 2>{}); break;
      case 3: if constexpr (GMAX >= 3) fn(c0, std::integral_constant<int, 3>{}); break;
      default: if constexpr (GMAX >= 4) fn(c0, std::integral_constant<int, 4>{}); break;
    }
    c0 += m;
  }
}

// SW consecutive values of T as one GCC vector (split into native registers by the compiler).
template <typename T, int SW>
struct Block {
  typedef T type __attribute__((vector_size(SW * sizeof(T))));
};

// Eight lanes of T and the matching shuffle-mask type.
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t M __attribute__((vector_size(32)));
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t M __attribute__((vector_size(64)));
};

template <typename V, typename T>
FCN_ALWAYS_INLINE V load_vec(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
FCN_ALWAYS_INLINE void store_vec(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename T, int N>
FCN_ALWAYS_INLINE T lane_sum(const typename Block<T, N>::type& v) {
  T s = T(0);
  for (int l = 0; l < N; ++l) s += v[l];
  return s;
}

// Lane sums of eight vectors of N >= 8 lanes, as one vector: out[k] = sum of v[k]'s lanes.
// Each vector is first folded to 8 lanes, then a pairwise (even + odd) shuffle-add tree.
template <typename T, int N>
FCN_ALWAYS_INLINE typename Lanes<T>::V lane_sums8(const typename Block<T, N>::type* v) {
  using V = typename Lanes<T>::V;
  using M = typename Lanes<T>::M;
  static_assert(N % 8 == 0, "lane_sums8 needs a multiple of 8 lanes");
  const M even = {0, 2, 4, 6, 8, 10, 12, 14}, odd = {1, 3, 5, 7, 9, 11, 13, 15};
  V f[8];
  for (int k = 0; k < 8; ++k) {
    T parts[N];
    std::memcpy(parts, &v[k], sizeof(parts));
    f[k] = load_vec<V>(parts);
    for (int c = 1; c < N / 8; ++c) f[k] += load_vec<V>(parts + 8 * c);
  }
  V s[4], t[2];
  for (int k = 0; k < 4; ++k)
    s[k] = __builtin_shuffle(f[2 * k], f[2 * k + 1], even) + __builtin_shuffle(f[2 * k], f[2 * k + 1], odd);
  for (int k = 0; k < 2; ++k)
    t[k] = __builtin_shuffle(s[2 * k], s[2 * k + 1], even) + __builtin_shuffle(s[2 * k], s[2 * k + 1], odd);
  return __builtin_shuffle(t[0], t[1], even) + __builtin_shuffle(t[0], t[1], odd);
}

// Interleaves SW vectors lane by lane: out[k*SW + p] = in[p][k] over the 8*SW values.
template <typename T, int SW>
FCN_ALWAYS_INLINE void interleave(typename Lanes<T>::V* v) {
  using V = typename Lanes<T>::V;
  using M = typename Lanes<T>::M;
  const M lo = {0, 8, 1, 9, 2, 10, 3, 11}, hi = {4, 12, 5, 13, 6, 14, 7, 15};
  if constexpr (SW == 2) {
    const V a = v[0], b = v[1];
    v[0] = __builtin_shuffle(a, b, lo);
    v[1] = __builtin_shuffle(a, b, hi);
  } else if constexpr (SW == 4) {
    const V b0 = __builtin_shuffle(v[0], v[2], lo), b1 = __builtin_shuffle(v[0], v[2], hi);
    const V c0 = __builtin_shuffle(v[1], v[3], lo), c1 = __builtin_shuffle(v[1], v[3], hi);
    v[0] = __builtin_shuffle(b0, c0, lo);
    v[1] = __builtin_shuffle(b0, c0, hi);
    v[2] = __builtin_shuffle(b1, c1, lo);
    v[3] = __builtin_shuffle(b1, c1, hi);
  }
}

// The inverse: out[p][k] = in[k*SW + p], eight lanes per output.
template <typename T, int SW>
FCN_ALWAYS_INLINE void deinterleave(typename Lanes<T>::V* v) {
  using V = typename Lanes<T>::V;
  using M = typename Lanes<T>::M;
  const M even = {0, 2, 4, 6, 8, 10, 12, 14}, odd = {1, 3, 5, 7, 9, 11, 13, 15};
  if constexpr (SW == 2) {
    const V a = v[0], b = v[1];
    v[0] = __builtin_shuffle(a, b, even);
    v[1] = __builtin_shuffle(a, b, odd);
  } else if constexpr (SW == 4) {
    const V e0 = __builtin_shuffle(v[0], v[1], even), o0 = __builtin_shuffle(v[0], v[1], odd);
    const V e1 = __builtin_shuffle(v[2], v[3], even), o1 = __builtin_shuffle(v[2], v[3], odd);
    v[0] = __builtin_shuffle(e0, e1, even);
    v[2] = __builtin_shuffle(e0, e1, odd);
    v[1] = __builtin_shuffle(o0, o1, even);
    v[3] = __builtin_shuffle(o0, o1, odd);
  }
}

}  // namespace cpu
}  // namespace fcn
