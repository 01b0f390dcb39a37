// CPU backward of deconv_crop_sum (float32, float64): gradients for x and for the weight.
//
// grad_x[iy][ix] = sum over output channels of the group and over the taps (ky, kx) landing inside
// the crop of grad[iy*sh + ky - oh][ix*sw + kx - ow] * w[ky][kx]: a strided correlation, computed
// per input row (no atomics).  In the polyphase form kx = j*sw + p the grad values of one j are
// contiguous, so, by column stride:
//  - sw in {8, 16, 32}: a vector over p per input column, reduced across lanes once at the end
//    (the row's end columns too, with the lanes outside the crop blended away);
//  - sw in {1, 2, 4}: vectors over 8 input columns' outputs as they lie, times the weight taps
//    repeated across lanes; the sw phases are separated once per 8 columns;
//  - other strides: the shared per-element fcn::grad_input_point;
//  - the row's end columns of sw in {1, 2, 4}: edge_column, the same sum over the row's taps.
// The weight gradient (FCN never trains its deconvolutions) uses fcn::grad_weight_row directly.
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

template <typename T>
struct BackArgs {
  const Geometry* g;
  const T* grad;  // N x C_out x H x W, contiguous
  const T* w;     // C_in x cout_g x kh x kw, contiguous
  const T* wpad;  // the same zero-padded to Jh*sh x Jw*sw taps, then 8 spare zeros (see below)
  I Jh, Jw;
  const Span<I>* ky;  // per input row iy: its kernel rows landing inside the crop (taps_inside)
  T* gx;              // N x C_in x Hi x Wi
};

// The (grad row, weight row) pairs reaching input row iy of channel ci: one per output channel of
// the group and kernel row ky inside the crop.  grad rows are offset by -ow (index by column X).
template <typename T>
FCN_ALWAYS_INLINE I row_taps(const BackArgs<T>& a, I n, I ci, I iy, std::vector<const T*>& gs,
                             std::vector<const T*>& ws) {
  const Geometry& g = *a.g;
  const I wrow = a.Jw * g.sw, wplane = a.Jh * g.sh * wrow;
  const Span<I> ky = a.ky[iy];
  const I grp = ci / g.cin_g;
  I nt = 0;
  for (I cog = 0; cog < g.cout_g; ++cog) {
    const I co = grp * g.cout_g + cog;
    for (I t = ky.begin; t < ky.end; ++t, ++nt) {
      gs[nt] = a.grad + ((n * g.C_out + co) * g.H + iy * g.sh + t - g.oh) * g.W - g.ow;
      ws[nt] = a.wpad + (ci * g.cout_g + cog) * wplane + t * wrow;
    }
  }
  return nt;
}

// Input columns [ia, ib) whose every tap block j < Jw reads inside the crop's columns.
FCN_ALWAYS_INLINE Span<I> interior_columns(const Geometry& g, I Jw) {
  const I ia = clamp_to<I>(floordiv<I>(g.ow + g.sw - 1, g.sw), 0, g.Wi);
  const I ib = clamp_to<I>(floordiv<I>(g.ow + g.W, g.sw) - Jw + 1, ia, g.Wi);
  return {ia, ib};
}

// One input column ix from the row's (grad row, weight row) pairs: the taps landing inside the
// crop, summed in grad_input_point's order.  The row ends of the small-stride path.
template <typename T>
FCN_ALWAYS_INLINE T edge_column(const Geometry& g, const std::vector<const T*>& gs,
                                const std::vector<const T*>& ws, I nt, I ix) {
  using acc_t = at::opmath_type<T>;
  const Span<I> kx = taps_inside<I>(ix, g.sw, g.kw, g.ow, g.ow + g.W);
  const I X0 = ix * g.sw;
  acc_t acc = acc_t(0);
  for (I t = 0; t < nt; ++t)
    for (I u = kx.begin; u < kx.end; ++u) acc += static_cast<acc_t>(gs[t][X0 + u]) * static_cast<acc_t>(ws[t][u]);
  return static_cast<T>(acc);
}

template <typename T>
FCN_ALWAYS_INLINE void point(const BackArgs<T>& a, I n, I ci, I iy, I ix, T* row) {
  using acc_t = at::opmath_type<T>;
  const Geometry& g = *a.g;
  row[ix] = static_cast<T>(grad_input_point<acc_t, T, I>(a.grad + n * g.C_out * g.H * g.W, a.w, g,
                                                        ci, iy, ix));
}

// Rows (n, ci, iy) [begin, end), column stride SW in {8, 16, 32}: per input column a vector over
// the SW phases, reduced across lanes once at the end.  Interior columns go eight at a time,
// reduced together.  J is Jw as a constant (FCN's kernels are two blocks wide): column ix's block
// j is column ix+1's block j-1, so each gradient block is loaded once and used J times; J = 0
// reads Jw at run time.  A column at the row's ends loads the same vectors with the lanes outside
// the crop blended to zero (not multiplied: an infinity there must not become NaN), when those
// loads stay inside the gradient tensor, and goes through the shared per-element gather otherwise
// (the first and last rows of the tensor, and below AVX-512).
template <typename T, int ISA, int SW, int J>
FCN_ALWAYS_INLINE void grad_rows_dot(const BackArgs<T>& a, I begin, I end) {
  using V = typename Block<T, SW>::type;
  using LaneInt = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;  // T's width: for blends
  using LaneId = typename Block<LaneInt, SW>::type;
  constexpr int G = 8;  // columns per register group, reduced together
  LaneId lane;
  for (int l = 0; l < SW; ++l) lane[l] = l;
  const Geometry& g = *a.g;
  const I Jw = J > 0 ? J : a.Jw, wrow = Jw * SW, wplane = a.Jh * g.sh * wrow;
  const I W = g.W, HW = g.H * g.W, Wi = g.Wi, ow = g.ow, cin_g = g.cin_g, cout_g = g.cout_g;
  const Span<I> in = interior_columns(g, Jw);
  const I grad_size = g.N * g.C_out * HW;
  RowIndex at(begin, g.Hi, g.C_in);
  for (I r = begin; r < end; ++r, at.next()) {
    const I iy = at.inner, ci = at.mid, n = at.outer;
    T* __restrict__ row = a.gx + r * Wi;
    const Span<I> ky = a.ky[iy];
    const I grp = cin_g == 1 ? ci : ci / cin_g;
    // Gradient row of output channel cog's kernel row 0 (indexed by full-output column), weights.
    const I g_off = ((n * g.C_out + grp * cout_g) * g.H + iy * g.sh - g.oh) * W - ow;
    const T* __restrict__ g_row = a.grad + g_off;
    const T* __restrict__ w_ci = a.wpad + ci * cout_g * wplane;
    const I next_row = g.sh * W;
    auto columns = [&](I ix, auto group) FCN_LAMBDA_INLINE {
      constexpr int m = decltype(group)::value;
      V acc[m];
      for (int k = 0; k < m; ++k) acc[k] = V{};
      for (I cog = 0; cog < cout_g; ++cog)
        for (I t = ky.begin; t < ky.end; ++t) {
          const T* __restrict__ gr = g_row + cog * HW + t * W + ix * SW;
          const T* __restrict__ wr = w_ci + cog * wplane + t * wrow;
          // The next input row reads sh rows further down: fetch them a row ahead (the hardware
          // prefetcher misses this pattern: kh rows read in turn, a few lines of each).
          for (int b = 0; b < (m + Jw - 1) * SW; b += 64 / int(sizeof(T)))
            __builtin_prefetch(gr + next_row + b, 0, 3);
          if constexpr (J > 0) {
            V wv[J], blk[m + J - 1];
            for (int j = 0; j < J; ++j) wv[j] = load_vec<V>(wr + j * SW);
            for (int b = 0; b < m + J - 1; ++b) blk[b] = load_vec<V>(gr + b * SW);
            for (int k = 0; k < m; ++k)
              for (int j = 0; j < J; ++j) acc[k] += blk[k + j] * wv[j];
          } else {
            for (I j = 0; j < Jw; ++j) {
              const V wv = load_vec<V>(wr + j * SW);
              for (int k = 0; k < m; ++k) acc[k] += load_vec<V>(gr + (k + j) * SW) * wv;
            }
          }
        }
      if constexpr (m == G)
        store_vec(row + ix, lane_sums8<T, SW>(acc));
      else
        row[ix] = lane_sum<T, SW>(acc[0]);
    };
    auto edge = [&](I ix) FCN_LAMBDA_INLINE {
      const I X0 = ix * SW;
      const I first = g_off + ky.begin * W + X0, last = g_off + (cout_g - 1) * HW + (ky.end - 1) * W + X0 + wrow;
      // Below AVX-512, GCC spills the blend of vectors wider than a register.
      if (ISA < 2 || ky.begin >= ky.end || first < 0 || last > grad_size) return point(a, n, ci, iy, ix, row);
      V acc = V{};
      for (I j = 0; j < Jw; ++j) {
        // Lanes l with ow <= X0 + j*SW + l < ow + W (bounds clamped to [0, SW]: they fit the lane type).
        const auto lo = LaneInt(clamp_to<I>(ow - X0 - j * SW, 0, SW));
        const auto hi = LaneInt(clamp_to<I>(ow + W - X0 - j * SW, 0, SW));
        const LaneId inside = (lane >= lo) & (lane < hi);
        for (I cog = 0; cog < cout_g; ++cog)
          for (I t = ky.begin; t < ky.end; ++t) {
            const V gv = load_vec<V>(g_row + cog * HW + t * W + X0 + j * SW);
            acc += V(LaneId(gv) & inside) * load_vec<V>(w_ci + cog * wplane + t * wrow + j * SW);
          }
      }
      row[ix] = lane_sum<T, SW>(acc);
    };
    // The interior first: it streams through the gradient rows, which the edges then find cached.
    I ix = in.begin;
    for (; ix + G <= in.end; ix += G) columns(ix, std::integral_constant<int, G>{});
    for (; ix < in.end; ++ix) columns(ix, std::integral_constant<int, 1>{});
    for (I e = 0; e < in.begin; ++e) edge(e);
    for (I e = in.end; e < Wi; ++e) edge(e);
  }
}

// Rows (n, ci, iy) [begin, end), column stride SW in {1, 2, 4}: 8 input columns per chunk.  The
// gradient is read as it lies (SW vectors hold a chunk's 8*SW outputs) and multiplied by the
// weight row's SW taps repeated across the lanes, so the inner loop has no shuffle; the phases
// are separated and summed once per chunk.  The chunks tile the interior columns, the last one
// moved back to end with them (rewriting a few columns with bitwise equal values), in register
// groups of up to 4.  J is Jw as a constant (the common two-block kernels), or 0 to read it.
template <typename T, int ISA, int SW, int J>
FCN_ALWAYS_INLINE void grad_rows_phased(const BackArgs<T>& a, I begin, I end) {
  using V = typename Lanes<T>::V;
  using M = typename Lanes<T>::M;
  constexpr int L = 8;
  const M repeat = {0, 1 % SW, 2 % SW, 3 % SW, 4 % SW, 5 % SW, 6 % SW, 7 % SW};  // lane l: tap l % SW
  const Geometry& g = *a.g;
  const I Jw = J > 0 ? J : a.Jw, wrow = Jw * SW, wplane = a.Jh * g.sh * wrow;
  const I W = g.W, Wi = g.Wi, HW = g.H * g.W, cin_g = g.cin_g, cout_g = g.cout_g;
  const Span<I> in = interior_columns(g, Jw);
  const I nch = in.end - in.begin >= L ? (in.end - in.begin + L - 1) / L : 0;
  const I ix_last = in.end - L;
  const I edge_from = nch > 0 ? in.end : in.begin;  // columns [edge_from, Wi) are edge columns
  const bool edges = in.begin > 0 || edge_from < Wi;
  std::vector<const T*> gs(edges ? cout_g * g.kh + 1 : 0), ws(gs.size());
  RowIndex at(begin, g.Hi, g.C_in);
  for (I r = begin; r < end; ++r, at.next()) {
    const I iy = at.inner, ci = at.mid, n = at.outer;
    T* __restrict__ row = a.gx + r * Wi;
    if (edges) {
      const I nt = row_taps(a, n, ci, iy, gs, ws);
      for (I ix = 0; ix < in.begin; ++ix) row[ix] = edge_column(g, gs, ws, nt, ix);
      for (I ix = edge_from; ix < Wi; ++ix) row[ix] = edge_column(g, gs, ws, nt, ix);
    }
    const Span<I> ky = a.ky[iy];
    const I grp = cin_g == 1 ? ci : ci / cin_g;
    // Gradient row of output channel cog's kernel row 0 (indexed by full-output column), weights.
    const T* __restrict__ g_row = a.grad + ((n * g.C_out + grp * cout_g) * g.H + iy * g.sh - g.oh) * W - g.ow;
    const T* __restrict__ w_ci = a.wpad + ci * cout_g * wplane;
    auto chunks = [&](I c0, auto group) FCN_LAMBDA_INLINE {
      constexpr int m = decltype(group)::value;
      I xs[m];
      for (int c = 0; c < m; ++c) xs[c] = std::min<I>(in.begin + (c0 + c) * L, ix_last);
      V acc[m][SW];
#pragma GCC unroll 16
      for (int c = 0; c < m; ++c)
#pragma GCC unroll 16
        for (int q = 0; q < SW; ++q) acc[c][q] = V{};
      for (I cog = 0; cog < cout_g; ++cog) {
        for (I t = ky.begin; t < ky.end; ++t) {
          const T* __restrict__ gr = g_row + cog * HW + t * W;
          const T* __restrict__ wr = w_ci + cog * wplane + t * wrow;
          for (I j = 0; j < Jw; ++j) {
            // acc[c][q] lane l: outputs (x + j)*SW + q*L + l over j, all of phase l % SW (SW | L).
            const V wv = __builtin_shuffle(load_vec<V>(wr + j * SW), repeat);
#pragma GCC unroll 16
            for (int c = 0; c < m; ++c)
#pragma GCC unroll 16
              for (int q = 0; q < SW; ++q) acc[c][q] += load_vec<V>(gr + (xs[c] + j) * SW + q * L) * wv;
          }
        }
      }
#pragma GCC unroll 16
      for (int c = 0; c < m; ++c) {
        deinterleave<T, SW>(acc[c]);  // acc[c][p][k]: column xs[c] + k, phase p
        for (int p = 1; p < SW; ++p) acc[c][0] += acc[c][p];
        store_vec(row + xs[c], acc[c][0]);
      }
    };
    chunk_groups<chunks_per_group<V, ISA>(SW)>(nch, chunks);
  }
}

template <typename T>
FCN_ALWAYS_INLINE void grad_rows_gather(const BackArgs<T>& a, I begin, I end) {
  const Geometry& g = *a.g;
  RowIndex at(begin, g.Hi, g.C_in);
  for (I r = begin; r < end; ++r, at.next()) {
    const I iy = at.inner, ci = at.mid, n = at.outer;
    for (I ix = 0; ix < g.Wi; ++ix) point(a, n, ci, iy, ix, a.gx + r * g.Wi);
  }
}

template <typename T, int ISA>
FCN_ALWAYS_INLINE void grad_rows_body(const BackArgs<T>& a, I begin, I end) {
  // Large strides: two-block kernels (FCN's) with their block count fixed, under AVX-512 (below it
  // the loaded blocks and accumulators would not fit in the registers).
  auto dot = [&](auto sw) FCN_LAMBDA_INLINE {
    constexpr int SW = decltype(sw)::value;
    if constexpr (ISA == 2)
      if (a.Jw == 2) return grad_rows_dot<T, ISA, SW, 2>(a, begin, end);
    return grad_rows_dot<T, ISA, SW, 0>(a, begin, end);
  };
  switch (a.g->sw) {
    case 1: return grad_rows_phased<T, ISA, 1, 0>(a, begin, end);
    case 2:
      if constexpr (ISA >= 1 && std::is_same_v<T, float>)
        if (a.Jw == 2) return grad_rows_phased<T, ISA, 2, 2>(a, begin, end);
      return grad_rows_phased<T, ISA, 2, 0>(a, begin, end);
    case 4: return grad_rows_phased<T, ISA, 4, 0>(a, begin, end);
    case 8: return dot(std::integral_constant<int, 8>{});
    case 16: return dot(std::integral_constant<int, 16>{});
    case 32: return dot(std::integral_constant<int, 32>{});
    default: return grad_rows_gather<T>(a, begin, end);
  }
}

FCN_ISA_DISPATCHED(grad_rows, BackArgs, grad_rows_body)

template <typename T>
void grad_input_typed(const Geometry& g, const at::Tensor& grad, const at::Tensor& weight, at::Tensor& gx) {
  const I Jh = (g.kh + g.sh - 1) / g.sh, Jw = (g.kw + g.sw - 1) / g.sw;
  const at::Tensor gc = grad.contiguous(), wc = weight.contiguous();
  // The weight zero-padded to Jh*sh x Jw*sw taps, and 8 spare zeros after it: the small-stride
  // path loads 8 values from the start of any weight row.  A plain loop: FCN's weights are tiny
  // and an ATen pad call costs more than the copy.
  const I wrow = Jw * g.sw, wplane = Jh * g.sh * wrow;
  std::vector<T> wpad(g.C_in * g.cout_g * wplane + 8, T(0));
  const T* src = wc.const_data_ptr<T>();
  for (I plane = 0; plane < g.C_in * g.cout_g; ++plane)
    for (I ky = 0; ky < g.kh; ++ky)
      std::copy(src + (plane * g.kh + ky) * g.kw, src + (plane * g.kh + ky + 1) * g.kw,
                wpad.data() + plane * wplane + ky * wrow);
  std::vector<Span<I>> ky(g.Hi);
  for (I iy = 0; iy < g.Hi; ++iy) ky[iy] = taps_inside<I>(iy, g.sh, g.kh, g.oh, g.oh + g.H);
  const BackArgs<T> a{&g, gc.const_data_ptr<T>(), wc.const_data_ptr<T>(), wpad.data(),
                      Jh, Jw, ky.data(), gx.mutable_data_ptr<T>()};
  at::parallel_for(0, g.N * g.C_in * g.Hi, grain_for(g.Wi * g.cout_g * g.kh * g.kw),
                   [&](I b, I e) { grad_rows<T>(a, b, e); });
}

template <typename T>
void grad_weight_typed(const Geometry& g, const at::Tensor& grad, const at::Tensor& x, at::Tensor& gw) {
  using acc_t = at::opmath_type<T>;
  const at::Tensor gc = grad.contiguous(), xc = x.contiguous();
  const T* xp0 = xc.const_data_ptr<T>();
  const T* gp0 = gc.const_data_ptr<T>();
  T* out = gw.mutable_data_ptr<T>();
  const I rows = g.C_in * g.cout_g * g.kh;  // one task row = (ci, cog, ky), all kx
  at::parallel_for(0, rows, grain_for(g.N * g.Hi * g.Wi), [&](I begin, I end) {
    for (I r = begin; r < end; ++r) {
      const I ky = r % g.kh, cog = (r / g.kh) % g.cout_g, ci = r / (g.kh * g.cout_g);
      const I co = (ci / g.cin_g) * g.cout_g + cog;
      const Span<I> rows_in = inputs_with_tap_inside<I>(ky, g.sh, g.oh, g.oh + g.H, g.Hi);
      for (I kx = 0; kx < g.kw; ++kx) {
        acc_t acc = acc_t(0);
        for (I n = 0; n < g.N; ++n) {
          const T* xp = xp0 + (n * g.C_in + ci) * g.Hi * g.Wi;
          const T* gp = gp0 + (n * g.C_out + co) * g.H * g.W;
          for (I iy = rows_in.begin; iy < rows_in.end; ++iy)
            acc += grad_weight_row<acc_t, T, I>(xp + iy * g.Wi, gp + (iy * g.sh + ky - g.oh) * g.W, g, kx);
        }
        out[r * g.kw + kx] = static_cast<T>(acc);
      }
    }
  });
}

template <typename T>
struct SkipArgs {
  const T* grad;  // N x C x H x W, contiguous
  T* gs;          // N x C x Hs x Ws
  I planes, H, W, Hs, Ws, sh, sw;  // planes = N * C
};

// Skip-gradient rows [begin, end): zeros, with the gradient's row at columns [sw, sw+W) in rows
// [sh, sh+H).  Vector stores, the last of a row moved back to end with it (rows are tens of
// values wide: per-row memset/memcpy calls would cost more than the copy).
template <typename T, int ISA>
FCN_ALWAYS_INLINE void skip_rows_body(const SkipArgs<T>& a, I begin, I end) {
  using V = typename Lanes<T>::V;
  constexpr int L = 8;
  const I H = a.H, W = a.W, Hs = a.Hs, Ws = a.Ws, sh = a.sh, sw = a.sw;
  auto put = [](T* __restrict__ d, const T* __restrict__ src, I len) FCN_LAMBDA_INLINE {
    if (len < L) {
      for (I k = 0; k < len; ++k) d[k] = src == nullptr ? T(0) : src[k];
      return;
    }
    for (I k = 0;; k += L) {
      const I at = std::min<I>(k, len - L);
      store_vec(d + at, src == nullptr ? V{} : load_vec<V>(src + at));
      if (at == len - L) break;
    }
  };
  RowIndex at(begin, Hs, a.planes);
  for (I r = begin; r < end; ++r, at.next()) {
    const I y = at.inner, plane = at.mid;
    T* __restrict__ d = a.gs + r * Ws;
    put(d, nullptr, Ws);
    if (y >= sh && y < sh + H) put(d + sw, a.grad + (plane * H + y - sh) * W, W);
  }
}

FCN_ISA_DISPATCHED(skip_rows, SkipArgs, skip_rows_body)

template <typename T>
void grad_skip_typed(const at::Tensor& grad, at::Tensor& gs, at::IntArrayRef skip_offset) {
  const SkipArgs<T> a{grad.const_data_ptr<T>(), gs.mutable_data_ptr<T>(), gs.size(0) * gs.size(1),
                      grad.size(2), grad.size(3), gs.size(2), gs.size(3), skip_offset[0], skip_offset[1]};
  at::parallel_for(0, a.planes * a.Hs, grain_for(a.Ws), [&](I b, I e) { skip_rows<T>(a, b, e); });
}

}  // namespace

at::Tensor grad_skip(const at::Tensor& grad, at::IntArrayRef skip_size, at::IntArrayRef skip_offset) {
  at::Tensor gs = at::empty(skip_size, grad.options());
  const at::Tensor gc = grad.contiguous();
  if (gc.scalar_type() == at::kDouble)
    grad_skip_typed<double>(gc, gs, skip_offset);
  else
    grad_skip_typed<float>(gc, gs, skip_offset);
  return gs;
}

void grad_input(const Geometry& g, const at::Tensor& grad, const at::Tensor& weight, at::Tensor& gx) {
  if (gx.scalar_type() == at::kDouble)
    grad_input_typed<double>(g, grad, weight, gx);
  else
    grad_input_typed<float>(g, grad, weight, gx);
}

void grad_weight(const Geometry& g, const at::Tensor& grad, const at::Tensor& x, at::Tensor& gw) {
  if (gw.scalar_type() == at::kDouble)
    grad_weight_typed<double>(g, grad, x, gw);
  else
    grad_weight_typed<float>(g, grad, x, gw);
}

}  // namespace cpu
}  // namespace fcn
