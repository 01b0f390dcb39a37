// CPU forward of deconv_crop_sum (float32, float64).
//
// Output-stationary (each task owns whole output rows: no atomics) and polyphase: with
// X = q*sw + p, full-output column X receives x[q - j] * w[j*sw + p] for the kernel blocks
// j < Jw = ceil(kw / sw).  For output row Y the contributing input rows come from the gather form
// (fcn::inputs_touching, tap ky = Y - iy*sh).  Along the row, by column stride:
//  - sw in {8, 16, 32} (FCN's upsampling): a block of sw outputs is one short vector, accumulated
//    in registers over (input row, j) and stored once with the skip added;
//  - sw in {1, 2, 4} (FCN's 2x layers): vectors run along the input columns, one accumulator per
//    phase p, interleaved into consecutive outputs on the way out;
//  - other strides: the shared per-element gather fcn::forward_point.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace fcn {
namespace cpu {
namespace {

using I = int64_t;

// Everything the forward loops read.
template <typename T>
struct ForwardArgs {
  const Geometry* g;
  const T* x;     // N x C_in x Hi x Wi, contiguous
  const T* w;     // C_in x cout_g x kh x kw, contiguous (for forward_point)
  const T* wpad;  // the same zero-padded to Jh*sh x Jw*sw taps
  I Jh, Jw;       // kernel blocks: ceil(kh / sh), ceil(kw / sw)
  const T* xpad;  // interleave path: x with Jw-1 zero columns left, Jw-1+8 right
  I Wp;           // its width
  const Span<I>* rows_in;  // per output row y: the input rows reaching it (inputs_touching)
  const T* skip;  // nullptr: no skip
  I ss0, ss1, ss2, sk_h, sk_w;  // skip strides (unit column stride) and offset
  T* out;
};

// Output rows [begin, end) (row = (n, co, y)) with column stride SW, vectorised.
template <typename T, int SW>
FCN_ALWAYS_INLINE void forward_rows_vec(const ForwardArgs<T>& a, I begin, I end) {
  using V = typename Block<T, SW>::type;
  // Blocks per register group: 256 bytes of accumulators (8 AVX2 registers), at least one block.
  constexpr int G = SW * int(sizeof(T)) >= 256 ? 1 : 256 / (SW * int(sizeof(T)));
  const Geometry& g = *a.g;
  const I J = a.Jw, wrow = a.Jw * SW, wplane = a.Jh * g.sh * wrow;
  const I ow = g.ow;  // a local: stores through o must not force reloads of *a.g
  // Blocks q cover the crop; interior ones [qa, qb) have all J inputs q-J+1..q and lie wholly in
  // the crop, the others clip their input range and their store.
  const I q_begin = floordiv<I>(g.ow, SW), q_end = floordiv<I>(g.ow + g.W - 1, SW) + 1;
  const I qa = clamp_to<I>(std::max<I>(J - 1, floordiv<I>(g.ow + SW - 1, SW)), q_begin, q_end);
  const I qb = clamp_to<I>(std::min<I>(g.Wi, floordiv<I>(g.ow + g.W, SW)), qa, q_end);
  std::vector<const T*> xs(g.cin_g * ((g.kh + g.sh - 1) / g.sh) + 1), ws(xs.size());
  RowIndex at(begin, g.H, g.C_out);
  for (I r = begin; r < end; ++r, at.next()) {
    const I y = at.inner, co = at.mid, n = at.outer;
    T* __restrict__ o = a.out + r * g.W;
    const T* __restrict__ s = a.skip == nullptr
        ? nullptr
        : a.skip + n * a.ss0 + co * a.ss1 + (y + a.sk_h) * a.ss2 + a.sk_w;
    // Gather form, vertically: the input rows reaching full-output row Y and their kernel rows.
    const I Y = y + g.oh;
    const Span<I> rows_in = a.rows_in[y];
    const I grp = co / g.cout_g, cog = co % g.cout_g;
    I nt = 0;
    for (I j = 0; j < g.cin_g; ++j) {
      const I ci = grp * g.cin_g + j;
      for (I iy = rows_in.begin; iy < rows_in.end; ++iy, ++nt) {
        xs[nt] = a.x + ((n * g.C_in + ci) * g.Hi + iy) * g.Wi;
        ws[nt] = a.wpad + (ci * g.cout_g + cog) * wplane + (Y - iy * g.sh) * wrow;
      }
    }
    // Edge blocks: inputs clipped to [0, Wi), store clipped to the crop.
    auto edge_block = [&](I q) FCN_LAMBDA_INLINE {
      V acc = V{};
      const I j0 = std::max<I>(0, q - g.Wi + 1), j1 = std::min<I>(J, q + 1);
      for (I t = 0; t < nt; ++t)
        for (I j = j0; j < j1; ++j) acc += xs[t][q - j] * load_vec<V>(ws[t] + j * SW);
      const I base = q * SW - g.ow;
      for (I p = std::max<I>(0, -base); p < std::min<I>(SW, g.W - base); ++p)
        o[base + p] = acc[p] + (s != nullptr ? s[base + p] : T(0));
    };
    for (I q = q_begin; q < qa; ++q) edge_block(q);
    for (I q = qb; q < q_end; ++q) edge_block(q);
    // Interior: G blocks at a time in registers, stored once with the skip added.
    auto interior = [&](I q, auto group) FCN_LAMBDA_INLINE {
      constexpr int n = decltype(group)::value;
      V acc[n];
      for (int k = 0; k < n; ++k) acc[k] = V{};
      for (I t = 0; t < nt; ++t) {
        const T* __restrict__ xr = xs[t] + q;
        const T* __restrict__ wr = ws[t];
        for (I j = 0; j < J; ++j) {
          const V wv = load_vec<V>(wr + j * SW);
          for (int k = 0; k < n; ++k) acc[k] += xr[k - j] * wv;
        }
      }
      T* dst = o + q * SW - ow;
      if (s != nullptr) {
        const T* src = s + q * SW - ow;
        for (int k = 0; k < n; ++k) store_vec(dst + k * SW, acc[k] + load_vec<V>(src + k * SW));
      } else {
        for (int k = 0; k < n; ++k) store_vec(dst + k * SW, acc[k]);
      }
    };
    I q = qa;
    for (; q + G <= qb; q += G) interior(q, std::integral_constant<int, G>{});
    if constexpr (G >= 4)
      for (; q + G / 2 <= qb; q += G / 2) interior(q, std::integral_constant<int, G / 2>{});
    for (; q < qb; ++q) interior(q, std::integral_constant<int, 1>{});
  }
}

// Output rows [begin, end) with column stride SW in {1, 2, 4}: vectors run along the input
// columns, 8 block indices q at a time, one accumulator per phase p; the phases are then
// interleaved into 8*SW consecutive outputs.  x is read from xpad (Jw-1 zero columns on the left,
// Jw-1+8 on the right) so no load needs a bounds test.
template <typename T, int SW>
FCN_ALWAYS_INLINE void forward_rows_interleave(const ForwardArgs<T>& a, I begin, I end) {
  using V = typename Lanes<T>::V;
  constexpr int L = 8, OUT = L * SW, G = SW == 4 ? 2 : 4;
  const Geometry& g = *a.g;
  const I Jw = a.Jw, wrow = a.Jw * SW, wplane = a.Jh * g.sh * wrow;
  const I ow = g.ow, W = g.W;  // locals: stores through o must not force reloads of *a.g
  const I q_begin = floordiv<I>(g.ow, SW), q_end = floordiv<I>(g.ow + g.W - 1, SW) + 1;
  std::vector<const T*> xs(g.cin_g * ((g.kh + g.sh - 1) / g.sh) + 1), ws(xs.size());
  RowIndex at(begin, g.H, g.C_out);
  for (I r = begin; r < end; ++r, at.next()) {
    const I y = at.inner, co = at.mid, n = at.outer;
    T* __restrict__ o = a.out + r * g.W;
    const T* __restrict__ s = a.skip == nullptr
        ? nullptr
        : a.skip + n * a.ss0 + co * a.ss1 + (y + a.sk_h) * a.ss2 + a.sk_w;
    const I Y = y + g.oh;
    const Span<I> rows_in = a.rows_in[y];
    const I grp = co / g.cout_g, cog = co % g.cout_g;
    I nt = 0;
    for (I j = 0; j < g.cin_g; ++j) {
      const I ci = grp * g.cin_g + j;
      for (I iy = rows_in.begin; iy < rows_in.end; ++iy, ++nt) {
        xs[nt] = a.xpad + ((n * g.C_in + ci) * g.Hi + iy) * a.Wp + (Jw - 1);
        ws[nt] = a.wpad + (ci * g.cout_g + cog) * wplane + (Y - iy * g.sh) * wrow;
      }
    }
    // Groups of G chunks of L block indices: G*SW independent accumulators hide FMA latency.
    auto chunks = [&](I q, auto group) FCN_LAMBDA_INLINE {
      constexpr int n = decltype(group)::value;
      V acc[n][SW];
      for (int c = 0; c < n; ++c)
        for (int p = 0; p < SW; ++p) acc[c][p] = V{};
      for (I t = 0; t < nt; ++t) {
        const T* __restrict__ xr = xs[t] + q;
        const T* __restrict__ wr = ws[t];
        for (I j = 0; j < Jw; ++j) {
          for (int c = 0; c < n; ++c) {
            const V xv = load_vec<V>(xr + c * L - j);
            for (int p = 0; p < SW; ++p) acc[c][p] += xv * wr[j * SW + p];
          }
        }
      }
      for (int c = 0; c < n; ++c) {
        interleave<T, SW>(acc[c]);
        const I base = (q + c * L) * SW - ow;  // output column of the chunk's first value
        if (base >= 0 && base + OUT <= W) {
          for (int p = 0; p < SW; ++p) {
            V v = acc[c][p];
            if (s != nullptr) v += load_vec<V>(s + base + p * L);
            store_vec(o + base + p * L, v);
          }
        } else {
          // Element reads (not one wide memcpy) so the loads forward from the vector stores.
          for (I k = std::max<I>(0, -base); k < std::min<I>(OUT, W - base); ++k)
            o[base + k] = acc[c][k / L][k % L] + (s != nullptr ? s[base + k] : T(0));
        }
      }
    };
    I q = q_begin;
    for (; q + G * L <= q_end; q += G * L) chunks(q, std::integral_constant<int, G>{});
    if constexpr (G >= 4)
      for (; q + 2 * L <= q_end; q += 2 * L) chunks(q, std::integral_constant<int, 2>{});
    for (; q < q_end; q += L) chunks(q, std::integral_constant<int, 1>{});
  }
}

// Output rows [begin, end), any stride: every element through the shared gather forward_point.
template <typename T>
FCN_ALWAYS_INLINE void forward_rows_gather(const ForwardArgs<T>& a, I begin, I end) {
  using acc_t = at::opmath_type<T>;
  const Geometry& g = *a.g;
  RowIndex at(begin, g.H, g.C_out);
  for (I r = begin; r < end; ++r, at.next()) {
    const I y = at.inner, co = at.mid, n = at.outer;
    T* o = a.out + r * g.W;
    const T* s = a.skip == nullptr
        ? nullptr
        : a.skip + n * a.ss0 + co * a.ss1 + (y + a.sk_h) * a.ss2 + a.sk_w;
    const T* x_n = a.x + n * g.C_in * g.Hi * g.Wi;
    for (I u = 0; u < g.W; ++u) {
      const acc_t v = forward_point<acc_t, T, I>(x_n, a.w, g, co, y, u);
      o[u] = static_cast<T>(s == nullptr ? v : v + static_cast<acc_t>(s[u]));
    }
  }
}

// Which forward path a column stride takes.
enum class Path { kInterleave, kBlocks, kGather };
Path path_for(I sw) {
  if (sw == 1 || sw == 2 || sw == 4) return Path::kInterleave;
  return (sw == 8 || sw == 16 || sw == 32) ? Path::kBlocks : Path::kGather;
}

template <typename T>
FCN_ALWAYS_INLINE void forward_range_body(const ForwardArgs<T>& a, I begin, I end) {
  switch (a.g->sw) {
    case 1: return forward_rows_interleave<T, 1>(a, begin, end);
    case 2: return forward_rows_interleave<T, 2>(a, begin, end);
    case 4: return forward_rows_interleave<T, 4>(a, begin, end);
    case 8: return forward_rows_vec<T, 8>(a, begin, end);
    case 16: return forward_rows_vec<T, 16>(a, begin, end);
    case 32: return forward_rows_vec<T, 32>(a, begin, end);
    default: return forward_rows_gather<T>(a, begin, end);
  }
}

FCN_ISA_DISPATCHED(forward_range, ForwardArgs, forward_range_body)

template <typename T>
void forward_typed(const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                    at::Tensor& out) {
  const I Jh = (g.kh + g.sh - 1) / g.sh, Jw = (g.kw + g.sw - 1) / g.sw;
  const Path path = path_for(g.sw);
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const at::Tensor wpad = (Jh * g.sh == g.kh && Jw * g.sw == g.kw)
      ? wc
      : at::constant_pad_nd(wc, {0, Jw * g.sw - g.kw, 0, Jh * g.sh - g.kh}).contiguous();
  // Interleave path: x rows with Jw-1 zero columns on the left and Jw-1+8 on the right (a plain
  // loop: for FCN's small 2x layers an ATen pad call costs more than the copy).
  std::vector<T> xpad;
  I Wp = g.Wi;
  if (path == Path::kInterleave) {
    Wp = g.Wi + 2 * (Jw - 1) + 8;
    xpad.assign(g.N * g.C_in * g.Hi * Wp, T(0));
    const T* src = xc.const_data_ptr<T>();
    for (I r = 0; r < g.N * g.C_in * g.Hi; ++r)
      std::copy(src + r * g.Wi, src + (r + 1) * g.Wi, xpad.data() + r * Wp + (Jw - 1));
  }
  std::vector<Span<I>> rows_in(g.H);
  for (I y = 0; y < g.H; ++y) rows_in[y] = inputs_touching<I>(y + g.oh, y + g.oh + 1, g.sh, g.kh, g.Hi);
  at::Tensor skip_c;
  ForwardArgs<T> a{&g, xc.const_data_ptr<T>(), wc.const_data_ptr<T>(), wpad.const_data_ptr<T>(),
                   Jh, Jw, xpad.data(), Wp, rows_in.data(),
                   nullptr, 0, 0, 0, 0, 0, out.mutable_data_ptr<T>()};
  if (skip.has_value()) {
    skip_c = skip->stride(3) == 1 ? *skip : skip->contiguous();
    a.skip = skip_c.const_data_ptr<T>();
    a.ss0 = skip_c.stride(0);
    a.ss1 = skip_c.stride(1);
    a.ss2 = skip_c.stride(2);
    a.sk_h = skip_offset[0];
    a.sk_w = skip_offset[1];
  }
  const I work = g.W * g.cin_g * Jh * Jw;
  at::parallel_for(0, g.N * g.C_out * g.H, grain_for(work), [&](I b, I e) { forward_range<T>(a, b, e); });
}

}  // namespace

void forward(const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
             const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset, at::Tensor& out) {
  if (x.scalar_type() == at::kDouble)
    forward_typed<double>(g, x, weight, skip, skip_offset, out);
  else
    forward_typed<float>(g, x, weight, skip, skip_offset, out);
}

}  // namespace cpu
}  // namespace fcn
