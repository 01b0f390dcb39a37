// CPU forward of deconv_crop_sum (float32, float64).
//
// Output-stationary (each task owns whole output rows: no atomics) and polyphase: with
// X = q*sw + p, full-output column X receives x[q - j] * w[j*sw + p] for the kernel blocks
// j < Jw = ceil(kw / sw).  For output row Y the contributing input rows come from the gather form
// (fcn::inputs_touching, tap ky = Y - iy*sh).  Along the row, by column stride:
//  - sw in {8, 16, 32} (FCN's upsampling): a block of sw outputs is one short vector, accumulated
//    in registers over (input row, j) and stored once with the skip added, for up to four rows
//    that read the same input rows at once;
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
  bool gather = false;  // every stride through forward_rows_gather (real taps only)
};

// How many of the rows r, r+1, .. (at most MAX, below end and within the plane of H rows, r being
// its row y) are reached by the same input rows as row r: the rows one pass may compute together.
template <int MAX>
FCN_ALWAYS_INLINE int rows_sharing_inputs(const Span<I>* rows_in, I y, I H, I r, I end) {
  int k = 1;
  while (k < MAX && r + k < end && y + k < H && rows_in[y + k].begin == rows_in[y].begin &&
         rows_in[y + k].end == rows_in[y].end)
    ++k;
  return k;
}

// Output rows [begin, end) (row = (n, co, y)) with column stride SW, vectorised: block q (full-
// output columns q*SW ..) is one short vector, accumulated in registers over (input row, tap
// block j) and stored once with the skip added.  With GROUPED (AVX-512: registers for it), up to
// four rows go together when they are consecutive rows of one plane reached by the same input
// rows (runs of SW rows for FCN's two-block kernels): each x value broadcast then feeds them all,
// and the rows share their setup (the input-row and kernel-row pointers).
template <typename T, int SW, bool GROUPED>
FCN_ALWAYS_INLINE void forward_rows_vec(const ForwardArgs<T>& a, I begin, I end) {
  using V = typename Block<T, SW>::type;
  // Blocks per register group: 256 bytes of accumulators (8 AVX2 registers), at least one block;
  // with four rows, half as many blocks.
  constexpr int G = SW * int(sizeof(T)) >= 256 ? 1 : 256 / (SW * int(sizeof(T)));
  const Geometry& g = *a.g;
  const I J = a.Jw, wrow = a.Jw * SW, wplane = a.Jh * g.sh * wrow;
  const I ow = g.ow, W = g.W, H = g.H;  // locals: stores through o must not force reloads of *a.g
  // Blocks q cover the crop; interior ones [qa, qb) have all J inputs q-J+1..q and lie wholly in
  // the crop, the others clip their input range and their store.
  const I q_begin = floordiv<I>(g.ow, SW), q_end = floordiv<I>(g.ow + g.W - 1, SW) + 1;
  const I qa = clamp_to<I>(std::max<I>(J - 1, floordiv<I>(g.ow + SW - 1, SW)), q_begin, q_end);
  const I qb = clamp_to<I>(std::min<I>(g.Wi, floordiv<I>(g.ow + g.W, SW)), qa, q_end);
  std::vector<const T*> xs(g.cin_g * ((g.kh + g.sh - 1) / g.sh) + 1), ws(xs.size());
  RowIndex at(begin, H, g.C_out);
  for (I r = begin; r < end;) {
    const I y = at.inner, co = at.mid, n = at.outer;
    const Span<I> rows_in = a.rows_in[y];
    const int sharing = GROUPED ? rows_sharing_inputs<4>(a.rows_in, y, H, r, end) : 1;
    const int rows_here = sharing == 4 ? 4 : sharing >= 2 ? 2 : 1;
    T* __restrict__ o = a.out + r * W;
    const T* __restrict__ s = a.skip == nullptr
        ? nullptr
        : a.skip + n * a.ss0 + co * a.ss1 + (y + a.sk_h) * a.ss2 + a.sk_w;
    // Gather form, vertically: the input rows reaching full-output row Y and their kernel rows
    // (row Y+k of the pass: k kernel rows further down).
    const I Y = y + g.oh;
    const I grp = co / g.cout_g, cog = co % g.cout_g;
    I nt = 0;
    for (I j = 0; j < g.cin_g; ++j) {
      const I ci = grp * g.cin_g + j;
      for (I iy = rows_in.begin; iy < rows_in.end; ++iy, ++nt) {
        xs[nt] = a.x + ((n * g.C_in + ci) * g.Hi + iy) * g.Wi;
        ws[nt] = a.wpad + (ci * g.cout_g + cog) * wplane + (Y - iy * g.sh) * wrow;
      }
    }
    // Edge blocks of row k of the pass: inputs clipped to [0, Wi), store clipped to the crop.
    auto edge_block = [&](I q, I k) FCN_LAMBDA_INLINE {
      V acc = V{};
      const I j0 = std::max<I>(0, q - g.Wi + 1), j1 = std::min<I>(J, q + 1);
      for (I t = 0; t < nt; ++t)
        for (I j = j0; j < j1; ++j) acc += xs[t][q - j] * load_vec<V>(ws[t] + k * wrow + j * SW);
      const I base = q * SW - ow;
      T* ok = o + k * W;
      const T* sk = s == nullptr ? nullptr : s + k * a.ss2;
      for (I p = std::max<I>(0, -base); p < std::min<I>(SW, W - base); ++p)
        ok[base + p] = acc[p] + (sk != nullptr ? sk[base + p] : T(0));
    };
    // Interior: m blocks of R rows in registers, stored once with the skip added.
    auto interior = [&](I q, auto group, auto rows) FCN_LAMBDA_INLINE {
      constexpr int m = decltype(group)::value, R = decltype(rows)::value;
      V acc[R][m];
      for (int k = 0; k < R; ++k)
        for (int c = 0; c < m; ++c) acc[k][c] = V{};
      for (I t = 0; t < nt; ++t) {
        const T* __restrict__ xr = xs[t] + q;
        const T* __restrict__ wr = ws[t];
        for (I j = 0; j < J; ++j) {
          V wv[R];
          for (int k = 0; k < R; ++k) wv[k] = load_vec<V>(wr + k * wrow + j * SW);
          for (int c = 0; c < m; ++c) {
            const V xv = V{} + xr[c - j];
            for (int k = 0; k < R; ++k) acc[k][c] += xv * wv[k];
          }
        }
      }
      for (int k = 0; k < R; ++k) {
        T* dst = o + k * W + q * SW - ow;
        if (s != nullptr) {
          const T* src = s + k * a.ss2 + q * SW - ow;
          for (int c = 0; c < m; ++c) store_vec(dst + c * SW, acc[k][c] + load_vec<V>(src + c * SW));
        } else {
          for (int c = 0; c < m; ++c) store_vec(dst + c * SW, acc[k][c]);
        }
      }
    };
    auto row_pass = [&](auto rows) FCN_LAMBDA_INLINE {
      constexpr int R = decltype(rows)::value;
      for (I k = 0; k < R; ++k) {
        for (I q = q_begin; q < qa; ++q) edge_block(q, k);
        for (I q = qb; q < q_end; ++q) edge_block(q, k);
      }
      constexpr int GR = R == 4 ? (G >= 2 ? G / 2 : 1) : G;
      I q = qa;
      for (; q + GR <= qb; q += GR) interior(q, std::integral_constant<int, GR>{}, rows);
      if constexpr (GR >= 4)
        for (; q + GR / 2 <= qb; q += GR / 2) interior(q, std::integral_constant<int, GR / 2>{}, rows);
      for (; q < qb; ++q) interior(q, std::integral_constant<int, 1>{}, rows);
    };
    if constexpr (GROUPED) {
      if (rows_here == 4) row_pass(std::integral_constant<int, 4>{});
      else if (rows_here == 2) row_pass(std::integral_constant<int, 2>{});
      else row_pass(std::integral_constant<int, 1>{});
    } else {
      row_pass(std::integral_constant<int, 1>{});
    }
    r += rows_here;
    for (int k = 0; k < rows_here; ++k) at.next();
  }
}

// Output rows [begin, end) with column stride SW in {1, 2, 4}: vectors run along the input
// columns, L = 8 block indices q per chunk, one accumulator per phase p; the phases are then
// interleaved into 8*SW consecutive outputs.  x is read from xpad (Jw-1 zero columns on the left,
// Jw-1+8 on the right) so no load needs a bounds test.  A row's chunks tile [q_begin, q_end), the
// last one moved back to end at q_end (it rewrites a few outputs with bitwise equal values), so
// only rows narrower than a chunk or crops at odd offsets store element by element.  J is Jw as
// a constant (FCN's 4-tap stride-2 kernels: J = 2), or 0 to read it at run time; with a constant
// J, two rows go together when they are consecutive rows of one plane reached by the same input
// rows (full-output rows 2m and 2m+1 of a 4-tap stride-2 kernel): each x load then feeds both.
template <typename T, int ISA, int SW, int J>
FCN_ALWAYS_INLINE void forward_rows_interleave(const ForwardArgs<T>& a, I begin, I end) {
  using V = typename Lanes<T>::V;
  constexpr int L = 8, OUT = L * SW;
  const Geometry& g = *a.g;
  const I Jw = J > 0 ? J : a.Jw, wrow = Jw * SW, wplane = a.Jh * g.sh * wrow;
  // Locals: stores through the output must not force reloads of *a.g.
  const I ow = g.ow, W = g.W, H = g.H, Wp = a.Wp, Hi = g.Hi, sh = g.sh;
  const I C_in = g.C_in, cin_g = g.cin_g, cout_g = g.cout_g;
  const I q_begin = floordiv<I>(ow, SW), q_end = floordiv<I>(ow + W - 1, SW) + 1;
  const I nch = (q_end - q_begin + L - 1) / L, q_last = std::max<I>(q_begin, q_end - L);
  const Span<I>* rows_in = a.rows_in;
  RowIndex at(begin, H, g.C_out);
  for (I r = begin; r < end;) {
    const I y = at.inner, co = at.mid, n = at.outer;
    const Span<I> rin = rows_in[y];
    const bool pair = J > 0 && rows_sharing_inputs<2>(rows_in, y, H, r, end) == 2;
    T* __restrict__ o = a.out + r * W;
    const T* __restrict__ s = a.skip == nullptr
        ? nullptr
        : a.skip + n * a.ss0 + co * a.ss1 + (y + a.sk_h) * a.ss2 + a.sk_w;
    const I grp = cout_g == 1 ? co : co / cout_g, cog = cout_g == 1 ? 0 : co % cout_g;
    const T* __restrict__ x_n = a.xpad + (n * C_in + grp * cin_g) * Hi * Wp + (Jw - 1);
    const T* __restrict__ w_row = a.wpad + (grp * cin_g * cout_g + cog) * wplane + (y + g.oh) * wrow;
    // R rows (1 or 2), chunks c0 .. c0+m-1 of each, in registers.
    auto chunks = [&](I c0, auto group, auto rows) FCN_LAMBDA_INLINE {
      constexpr int m = decltype(group)::value, R = decltype(rows)::value;
      I qs[m];
      for (int c = 0; c < m; ++c) qs[c] = std::min<I>(q_begin + (c0 + c) * L, q_last);
      V acc[R][m][SW];
#pragma GCC unroll 16
      for (int k = 0; k < R; ++k)
#pragma GCC unroll 16
        for (int c = 0; c < m; ++c)
#pragma GCC unroll 16
          for (int p = 0; p < SW; ++p) acc[k][c][p] = V{};
      for (I j_in = 0; j_in < cin_g; ++j_in) {
        const T* __restrict__ xp = x_n + j_in * Hi * Wp;
        const T* __restrict__ wp = w_row + j_in * cout_g * wplane;
        for (I iy = rin.begin; iy < rin.end; ++iy) {
          const T* __restrict__ xr = xp + iy * Wp;
          const T* __restrict__ wr = wp - iy * sh * wrow;  // kernel row y + oh - iy*sh (+1: the pair's)
          for (I j = 0; j < Jw; ++j) {
#pragma GCC unroll 16
            for (int c = 0; c < m; ++c) {
              const V xv = load_vec<V>(xr + qs[c] - j);
#pragma GCC unroll 16
              for (int k = 0; k < R; ++k)
#pragma GCC unroll 16
                for (int p = 0; p < SW; ++p) acc[k][c][p] += xv * wr[k * wrow + j * SW + p];
            }
          }
        }
      }
#pragma GCC unroll 16
      for (int k = 0; k < R; ++k) {
        T* __restrict__ ok = o + k * W;
        const T* __restrict__ sk = s == nullptr ? nullptr : s + k * a.ss2;
#pragma GCC unroll 16
        for (int c = 0; c < m; ++c) {
          interleave<T, SW>(acc[k][c]);
          const I base = qs[c] * SW - ow;  // output column of the chunk's first value
          if (__builtin_expect(base >= 0 && base + OUT <= W, 1)) {
#pragma GCC unroll 16
            for (int p = 0; p < SW; ++p) {
              V v = acc[k][c][p];
              if (sk != nullptr) v += load_vec<V>(sk + base + p * L);
              store_vec(ok + base + p * L, v);
            }
          } else {
            T part[OUT];
            for (int p = 0; p < SW; ++p) store_vec(part + p * L, acc[k][c][p]);
            for (I e = std::max<I>(0, -base); e < std::min<I>(OUT, W - base); ++e)
              ok[base + e] = part[e] + (sk != nullptr ? sk[base + e] : T(0));
          }
        }
      }
    };
    constexpr int G1 = chunks_per_group<V, ISA>(SW), G2 = chunks_per_group<V, ISA>(2 * SW);
    if (pair) {
      if constexpr (J > 0)
        chunk_groups<G2>(nch, [&](I c0, auto m) FCN_LAMBDA_INLINE { chunks(c0, m, std::integral_constant<int, 2>{}); });
      r += 2;
      at.next();
      at.next();
    } else {
      chunk_groups<G1>(nch, [&](I c0, auto m) FCN_LAMBDA_INLINE { chunks(c0, m, std::integral_constant<int, 1>{}); });
      r += 1;
      at.next();
    }
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

template <typename T, int ISA>
FCN_ALWAYS_INLINE void forward_range_body(const ForwardArgs<T>& a, I begin, I end) {
  if (a.gather) return forward_rows_gather<T>(a, begin, end);
  switch (a.g->sw) {
    case 1: return forward_rows_interleave<T, ISA, 1, 0>(a, begin, end);
    case 2:
      if constexpr (ISA >= 1 && std::is_same_v<T, float>)
        if (a.Jw == 2) return forward_rows_interleave<T, ISA, 2, 2>(a, begin, end);
      return forward_rows_interleave<T, ISA, 2, 0>(a, begin, end);
    case 4: return forward_rows_interleave<T, ISA, 4, 0>(a, begin, end);
    case 8: return forward_rows_vec<T, 8, ISA == 2>(a, begin, end);
    case 16: return forward_rows_vec<T, 16, ISA == 2>(a, begin, end);
    case 32: return forward_rows_vec<T, 32, ISA == 2>(a, begin, end);
    default: return forward_rows_gather<T>(a, begin, end);
  }
}

FCN_ISA_DISPATCHED(forward_range, ForwardArgs, forward_range_body)

template <typename T>
void forward_typed(const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                    at::Tensor& out) {
  const I Jh = (g.kh + g.sh - 1) / g.sh, Jw = (g.kw + g.sw - 1) / g.sw;
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const bool pads_w = !(Jh * g.sh == g.kh && Jw * g.sw == g.kw);
  // The vector paths multiply padding: zero weights past the kernel (with x) and, interleaved,
  // zero columns past the input (with w). The reference forms no such product, so where a factor
  // is infinite or NaN (0 * inf = NaN) only the per-element gather, over real taps, agrees with it.
  Path path = path_for(g.sw);
  if (path != Path::kGather &&
      ((pads_w && !at::isfinite(xc).all().item<bool>()) ||
       (path == Path::kInterleave && !at::isfinite(wc).all().item<bool>())))
    path = Path::kGather;
  const at::Tensor wpad = pads_w
      ? at::constant_pad_nd(wc, {0, Jw * g.sw - g.kw, 0, Jh * g.sh - g.kh}).contiguous()
      : wc;
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
                   nullptr, 0, 0, 0, 0, 0, out.mutable_data_ptr<T>(), path == Path::kGather};
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
