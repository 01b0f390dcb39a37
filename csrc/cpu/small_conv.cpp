// 3x3 convolution, stride 1, padding 1, for few channels: forward, input gradient and weight
// gradient on float32 channels_last tensors, as a training iteration of a width-divided VGG net
// needs them (the main job's conv1 to conv3: 4 to 16 channels; at 32 oneDNN is faster).
// oneDNN's kernels are blocked for 16 or more channels and run such layers far below the FMA rate
// (a 4 -> 4 convolution over 326 x 326: about 14 GFLOP/s on an Intel Xeon).  Here one output
// pixel's channels are one vector and every (tap, input channel) term one broadcast and one FMA;
// 4 -> 4 under AVX-512 packs four pixels into a 16-lane vector.
//
// The input gradient is the forward of the output gradient with the weights transposed and
// flipped.  The weight and bias gradients are summed per block of BLOCK_ROWS output rows in
// float32, the blocks then added in order in float64: the same bits for any thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"

// FCN_ISA_DISPATCHED also compiles float64 entry points; these kernels are float32 only.
#pragma GCC diagnostic ignored "-Wunused-function"

namespace fcn {
namespace {

using cpu::Block;
using cpu::cpu_level;
using cpu::load_vec;
using cpu::store_vec;

constexpr int64_t BLOCK_ROWS = 4;

template <typename T>
struct ConvArgs {
  const T* x;  // N x H x W x cin
  const T* w;  // 9 x cin x cout: w[(tap * cin + ci) * cout + co], tap = ky * 3 + kx
  const T* b;  // cout, or nullptr
  T* y;        // N x H x W x cout
  int64_t H, W, cin, cout;
};

// One output pixel at column ox of row oy, every tap checked against the image's edges.
template <int CO, typename V>
FCN_ALWAYS_INLINE V edge_pixel(const ConvArgs<float>& a, const float* image, int64_t oy, int64_t ox, V acc) {
  for (int64_t ky = 0; ky < 3; ++ky) {
    const int64_t iy = oy + ky - 1;
    if (iy < 0 || iy >= a.H) continue;
    for (int64_t kx = 0; kx < 3; ++kx) {
      const int64_t ix = ox + kx - 1;
      if (ix < 0 || ix >= a.W) continue;
      const float* xp = image + (iy * a.W + ix) * a.cin;
      const float* wp = a.w + (ky * 3 + kx) * a.cin * CO;
      for (int64_t ci = 0; ci < a.cin; ++ci) acc += xp[ci] * load_vec<V>(wp + ci * CO);
    }
  }
  return acc;
}

// Rows [begin, end) of the flat (image, output row) index: the edge columns, and columns left over
// at the row's end, pixel by pixel; the interior STEP columns at a time by
// step(image, oy, ky0, ky1, ox, yrow), taps ky0 <= ky < ky1 inside the image.
template <int CO, int STEP, typename V, typename Step>
FCN_ALWAYS_INLINE void forward_row_loop(const ConvArgs<float>& a, int64_t begin, int64_t end, V bias, Step&& step) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / a.H, oy = r % a.H;
    const float* image = a.x + n * a.H * a.W * a.cin;
    float* yrow = a.y + r * a.W * CO;
    const int64_t ky0 = oy == 0 ? 1 : 0, ky1 = oy == a.H - 1 ? 2 : 3;
    store_vec(yrow, edge_pixel<CO>(a, image, oy, 0, bias));
    if (a.W > 1) store_vec(yrow + (a.W - 1) * CO, edge_pixel<CO>(a, image, oy, a.W - 1, bias));
    int64_t ox = 1;
    for (; ox + STEP <= a.W - 1; ox += STEP) step(image, oy, ky0, ky1, ox, yrow);
    for (; ox < a.W - 1; ++ox) store_vec(yrow + ox * CO, edge_pixel<CO>(a, image, oy, ox, bias));
  }
}

// CI input and CO output channels, the CO of one pixel one vector; P pixels per step
// (independent accumulators).
template <int CI, int CO, int P>
FCN_ALWAYS_INLINE void forward_rows(const ConvArgs<float>& a, int64_t begin, int64_t end) {
  using V = typename Block<float, CO>::type;
  V bias = {};
  if (a.b) bias = load_vec<V>(a.b);
  forward_row_loop<CO, P>(a, begin, end, bias,
                          [&](const float* image, int64_t oy, int64_t ky0, int64_t ky1, int64_t ox, float* yrow)
                              FCN_LAMBDA_INLINE {
    V acc[P];
    for (int p = 0; p < P; ++p) acc[p] = bias;
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const float* xp = image + ((oy + ky - 1) * a.W + ox - 1) * CI;
      const float* wp = a.w + ky * 3 * CI * CO;
      for (int kx = 0; kx < 3; ++kx) {
        for (int ci = 0; ci < CI; ++ci) {
          const V wv = load_vec<V>(wp + (kx * CI + ci) * CO);
#pragma GCC unroll 8
          for (int p = 0; p < P; ++p) acc[p] += xp[(p + kx) * CI + ci] * wv;
        }
      }
    }
    for (int p = 0; p < P; ++p) store_vec(yrow + (ox + p) * CO, acc[p]);
  });
}

// 4 -> 4 channels: four pixels' outputs per 16-lane vector (lane 4p + co), each input channel
// broadcast across its pixel's four lanes by a shuffle: a quarter of the FMAs of the generic
// path's 4-lane vectors.  Eight pixels per step.
FCN_ALWAYS_INLINE void forward_rows_4x4(const ConvArgs<float>& a, int64_t begin, int64_t end) {
  using V4 = typename Block<float, 4>::type;
  using V16 = typename Block<float, 16>::type;
  using M16 = typename Block<int32_t, 16>::type;
  V16 wr[36];  // (tap, ci): the 4 output channels' weights, repeated for the 4 pixels
  for (int k = 0; k < 36; ++k)
    for (int l = 0; l < 16; ++l) wr[k][l] = a.w[k * 4 + (l & 3)];
  const M16 sel[4] = {{0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12},
                      {1, 1, 1, 1, 5, 5, 5, 5, 9, 9, 9, 9, 13, 13, 13, 13},
                      {2, 2, 2, 2, 6, 6, 6, 6, 10, 10, 10, 10, 14, 14, 14, 14},
                      {3, 3, 3, 3, 7, 7, 7, 7, 11, 11, 11, 11, 15, 15, 15, 15}};
  V4 bias = {};
  if (a.b) bias = load_vec<V4>(a.b);
  V16 bias16;
  for (int l = 0; l < 16; ++l) bias16[l] = bias[l & 3];
  forward_row_loop<4, 8>(a, begin, end, bias,
                         [&](const float* image, int64_t oy, int64_t ky0, int64_t ky1, int64_t ox, float* yrow)
                             FCN_LAMBDA_INLINE {
    V16 acc0 = bias16, acc1 = bias16;
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const float* xp = image + ((oy + ky - 1) * a.W + ox - 1) * 4;
      for (int kx = 0; kx < 3; ++kx) {
        const V16 x0 = load_vec<V16>(xp + kx * 4), x1 = load_vec<V16>(xp + kx * 4 + 16);
        const V16* w = wr + (ky * 3 + kx) * 4;
        for (int ci = 0; ci < 4; ++ci) {
          acc0 += __builtin_shuffle(x0, sel[ci]) * w[ci];
          acc1 += __builtin_shuffle(x1, sel[ci]) * w[ci];
        }
      }
    }
    store_vec(yrow + ox * 4, acc0);
    store_vec(yrow + ox * 4 + 16, acc1);
  });
}

template <int CO, int P>
FCN_ALWAYS_INLINE void forward_cin(const ConvArgs<float>& a, int64_t begin, int64_t end) {
  switch (a.cin) {
    case 4: return forward_rows<4, CO, P>(a, begin, end);
    case 8: return forward_rows<8, CO, P>(a, begin, end);
    default: return forward_rows<16, CO, P>(a, begin, end);
  }
}

template <typename T, int ISA>
FCN_ALWAYS_INLINE void forward_body(const ConvArgs<T>& a, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, float>) {
    switch (a.cout) {
      case 4:
        if (a.cin == 4 && ISA == 2) return forward_rows_4x4(a, begin, end);
        return forward_cin<4, 8>(a, begin, end);
      case 8: return forward_cin<8, ISA == 0 ? 4 : 8>(a, begin, end);
      default: return forward_cin<16, ISA == 2 ? 8 : 4>(a, begin, end);
    }
  }
}

FCN_ISA_DISPATCHED(forward_kernel, ConvArgs, forward_body)

template <typename T>
struct GradArgs {
  const T* x;   // N x H x W x cin
  const T* gy;  // N x H x W x cout
  float* part;  // per block of rows: 9 x cin x cout weight terms, then cout bias terms
  int64_t H, W, cin, cout, rows;  // rows: N * H
};

// The weight and bias gradient terms of output-row blocks [begin, end), each into its own part.
// CO output channels per vector; CI (4 or 8, dividing cin) input channels' accumulators at a time.
template <int CO, int CI>
FCN_ALWAYS_INLINE void grad_blocks(const GradArgs<float>& a, int64_t begin, int64_t end) {
  using V = typename Block<float, CO>::type;
  const int64_t per_block = (9 * a.cin + 1) * CO;
  for (int64_t blk = begin; blk < end; ++blk) {
    float* part = a.part + blk * per_block;
    for (int64_t i = 0; i < per_block; ++i) part[i] = 0.0f;
    const int64_t r1 = std::min(a.rows, (blk + 1) * BLOCK_ROWS);
    for (int64_t r = blk * BLOCK_ROWS; r < r1; ++r) {
      const int64_t n = r / a.H, oy = r % a.H;
      const float* image = a.x + n * a.H * a.W * a.cin;
      const float* grow = a.gy + r * a.W * CO;
      V bsum = {};
      for (int64_t ox = 0; ox < a.W; ++ox) bsum += load_vec<V>(grow + ox * CO);
      float* bias_part = part + 9 * a.cin * CO;
      store_vec(bias_part, load_vec<V>(bias_part) + bsum);
      for (int64_t ky = 0; ky < 3; ++ky) {
        const int64_t iy = oy + ky - 1;
        if (iy < 0 || iy >= a.H) continue;
        const float* xrow = image + iy * a.W * a.cin;
        for (int64_t kx = 0; kx < 3; ++kx) {
          // output columns whose tap kx falls inside the image: ix = ox + kx - 1 in [0, W)
          const int64_t ox0 = kx == 0 ? 1 : 0, ox1 = kx == 2 ? a.W - 1 : a.W;
          float* tap_part = part + (ky * 3 + kx) * a.cin * CO;
          for (int64_t c0 = 0; c0 < a.cin; c0 += CI) {  // CI divides cin
            V acc[CI];
            for (int c = 0; c < CI; ++c) acc[c] = V{};
            const float* xc = xrow + (ox0 + kx - 1) * a.cin + c0;
            for (int64_t ox = ox0; ox < ox1; ++ox, xc += a.cin) {
              const V g = load_vec<V>(grow + ox * CO);
              for (int c = 0; c < CI; ++c) acc[c] += xc[c] * g;
            }
            for (int c = 0; c < CI; ++c) {
              float* dst = tap_part + (c0 + c) * CO;
              store_vec(dst, load_vec<V>(dst) + acc[c]);
            }
          }
        }
      }
    }
  }
}

template <int CO>
FCN_ALWAYS_INLINE void grad_cin(const GradArgs<float>& a, int64_t begin, int64_t end) {
  if (a.cin == 4) return grad_blocks<CO, 4>(a, begin, end);
  return grad_blocks<CO, 8>(a, begin, end);
}

template <typename T, int ISA>
FCN_ALWAYS_INLINE void grad_body(const GradArgs<T>& a, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, float>) {
    switch (a.cout) {
      case 4: return grad_cin<4>(a, begin, end);
      case 8: return grad_cin<8>(a, begin, end);
      default: return grad_cin<16>(a, begin, end);
    }
  }
}

FCN_ISA_DISPATCHED(grad_kernel, GradArgs, grad_body)

bool supported_channels(int64_t c) { return c == 4 || c == 8 || c == 16; }

void check_input(const at::Tensor& x, const at::Tensor& w, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, op,
              ": float32 CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && w.dim() == 4 && w.size(1) == x.size(1) && w.size(2) == 3 && w.size(3) == 3, op,
              ": x N x C x H x W and weight C_out x C x 3 x 3, got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(supported_channels(x.size(1)) && supported_channels(w.size(0)), op,
              ": 4, 8 or 16 input and output channels, got ", x.size(1), " and ", w.size(0));
}

// weight C_out x C_in x 3 x 3 -> 9 x C_in x C_out (flip: taps reversed, for the input gradient)
at::Tensor taps_major(const at::Tensor& w, bool transpose_flip) {
  if (!transpose_flip) return w.permute({2, 3, 1, 0}).contiguous();
  return w.flip({2, 3}).permute({2, 3, 0, 1}).contiguous();
}

at::Tensor run_forward(const at::Tensor& x, const at::Tensor& w9, const float* bias, int64_t cout) {
  const int64_t N = x.size(0), cin = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({N, cout, H, W}, x.options(), at::MemoryFormat::ChannelsLast);
  const ConvArgs<float> a{xc.const_data_ptr<float>(), w9.const_data_ptr<float>(), bias, y.mutable_data_ptr<float>(),
                          H, W, cin, cout};
  at::parallel_for(0, N * H, 1, [&](int64_t b, int64_t e) { forward_kernel<float>(a, b, e); });
  return y;
}

at::Tensor small_conv_forward_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  check_input(x, w, "small_conv_forward");
  const at::Tensor bias = b.has_value() && b->defined() ? b->contiguous() : at::Tensor();
  TORCH_CHECK(!bias.defined() || (bias.scalar_type() == at::kFloat && bias.numel() == w.size(0)),
              "small_conv_forward: bias must be float32 of C_out elements");
  return run_forward(x, taps_major(w, false), bias.defined() ? bias.const_data_ptr<float>() : nullptr, w.size(0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> small_conv_backward_cpu(const at::Tensor& gy, const at::Tensor& x,
                                                                      const at::Tensor& w,
                                                                      std::array<bool, 3> mask) {
  check_input(x, w, "small_conv_backward");
  const int64_t N = x.size(0), cin = x.size(1), H = x.size(2), W = x.size(3), cout = w.size(0);
  TORCH_CHECK(gy.scalar_type() == at::kFloat && gy.sizes() == at::IntArrayRef({N, cout, H, W}),
              "small_conv_backward: grad must be float32 of shape ", at::IntArrayRef({N, cout, H, W}));
  const at::Tensor g = gy.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor gx, gw, gb;
  if (mask[0]) gx = run_forward(g, taps_major(w, true), nullptr, cin);
  if (mask[1] || mask[2]) {
    const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t rows = N * H, blocks = (rows + BLOCK_ROWS - 1) / BLOCK_ROWS, per_block = (9 * cin + 1) * cout;
    at::Tensor part = at::empty({blocks, per_block}, x.options());
    const GradArgs<float> a{xc.const_data_ptr<float>(), g.const_data_ptr<float>(), part.mutable_data_ptr<float>(),
                            H, W, cin, cout, rows};
    at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) { grad_kernel<float>(a, b, e); });
    std::vector<double> sum(per_block, 0.0);  // the blocks added in order
    const float* pp = part.const_data_ptr<float>();
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t i = 0; i < per_block; ++i) sum[i] += pp[blk * per_block + i];
    at::Tensor total = at::empty({per_block}, x.options());
    std::copy(sum.begin(), sum.end(), total.mutable_data_ptr<float>());
    if (mask[1]) gw = total.narrow(0, 0, 9 * cin * cout).view({3, 3, cin, cout}).permute({3, 2, 0, 1}).contiguous();
    if (mask[2]) gb = total.narrow(0, 9 * cin * cout, cout).clone();
  }
  const auto none = [&] { return at::empty({0}, x.options()); };  // an output_mask entry that was false
  return {mask[0] ? gx : none(), mask[1] ? gw : none(), mask[2] ? gb : none()};
}

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, CPU, m) {
  m.impl("small_conv_forward", &fcn::small_conv_forward_cpu);
  m.impl("small_conv_backward", &fcn::small_conv_backward_cpu);
}
