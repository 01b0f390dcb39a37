// Winograd F(2x2, 3x3) transforms for 3x3, stride-1 convolutions of float32 channels_last maps (the
// fast inference mode's wide layers; Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016).  Each 2x2 output tile is A^T [(G g G^T) .* (B^T d B)] A: 16 products per tile
// and channel pair instead of 36, computed as 16 matrix products (tiles x C) x (C x K) that
// torch.bmm runs between the two kernels here:
//   winograd_input:  x (N x C x H x W, channels_last)  ->  V = B^T d B, 16 x (N*TH*TW) x C
//   winograd_output: M (16 x (N*TH*TW) x K), bias     ->  y = A^T M A + bias, then the activation,
//                                                          N x K x OH x OW channels_last
// The tile of output rows 2*ty, 2*ty+1 reads input rows 2*ty - pad .. 2*ty - pad + 3 (outside the
// map: zeros, Caffe's padding).  winograd_output also says whether every pre-activation value is
// finite: where an input or weight is inf or NaN, the transforms spread it over whole tiles (and
// inf - inf is NaN), so the caller computes such a layer directly instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace fcn {
namespace {

int64_t tiles(int64_t out) { return (out + 1) / 2; }

inline float activate(float v, int64_t activation, float slope) {
  return activation == 0 ? v : (v > 0.0f ? v : (activation == 1 ? 0.0f : v * slope));
}

// One tile's 2x2 outputs for every channel: A^T M A + bias, activated; returns 0, or NaN if a
// pre-activation value is not finite.
template <int64_t Act>
float tile_output_for(const float* const* p, const float* __restrict b, int64_t K, float slope,
                      float* __restrict q00, float* __restrict q01, float* __restrict q10, float* __restrict q11) {
  const float *__restrict m0 = p[0], *__restrict m1 = p[1], *__restrict m2 = p[2], *__restrict m3 = p[3];
  const float *__restrict m4 = p[4], *__restrict m5 = p[5], *__restrict m6 = p[6], *__restrict m7 = p[7];
  const float *__restrict m8 = p[8], *__restrict m9 = p[9], *__restrict m10 = p[10], *__restrict m11 = p[11];
  const float *__restrict m12 = p[12], *__restrict m13 = p[13], *__restrict m14 = p[14], *__restrict m15 = p[15];
  float check = 0.0f;
#pragma omp simd reduction(+ : check)
  for (int64_t k = 0; k < K; ++k) {
    const float a0 = m0[k] + m4[k] + m8[k], a1 = m1[k] + m5[k] + m9[k];  // A^T M: rows combined
    const float a2 = m2[k] + m6[k] + m10[k], a3 = m3[k] + m7[k] + m11[k];
    const float c0 = m4[k] - m8[k] - m12[k], c1 = m5[k] - m9[k] - m13[k];
    const float c2 = m6[k] - m10[k] - m14[k], c3 = m7[k] - m11[k] - m15[k];
    const float y00 = a0 + a1 + a2 + b[k], y01 = a1 - a2 - a3 + b[k];  // (A^T M) A, + bias
    const float y10 = c0 + c1 + c2 + b[k], y11 = c1 - c2 - c3 + b[k];
    check += y00 * 0.0f + y01 * 0.0f + y10 * 0.0f + y11 * 0.0f;  // each alone: two large finite values are no inf
    q00[k] = activate(y00, Act, slope);
    q01[k] = activate(y01, Act, slope);
    q10[k] = activate(y10, Act, slope);
    q11[k] = activate(y11, Act, slope);
  }
  return check;
}

inline float tile_output(const float* const* p, const float* b, int64_t K, int64_t activation, float slope,
                         float* q00, float* q01, float* q10, float* q11) {
  if (activation == 0) return tile_output_for<0>(p, b, K, slope, q00, q01, q10, q11);
  if (activation == 1) return tile_output_for<1>(p, b, K, slope, q00, q01, q10, q11);
  return tile_output_for<2>(p, b, K, slope, q00, q01, q10, q11);
}

void check_map(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "winograd: ", what,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

}  // namespace

at::Tensor winograd_input_cpu(const at::Tensor& input, at::IntArrayRef pad, const c10::optional<at::Tensor>& out) {
  check_map(input, "the input");
  TORCH_CHECK(input.dim() == 4, "winograd: the input must be N x C x H x W, got ", input.dim(), "-D");
  TORCH_CHECK(pad.size() == 2 && pad[0] >= 0 && pad[1] >= 0, "winograd: pad must be 2 values >= 0, got ", pad);
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = H + 2 * pad[0] - 2, OW = W + 2 * pad[1] - 2;
  TORCH_CHECK(OH >= 1 && OW >= 1, "winograd: a ", H, " x ", W, " map padded by ", pad, " is smaller than 3 x 3");
  const int64_t TH = tiles(OH), TW = tiles(OW), T = N * TH * TW;
  at::Tensor v;
  if (out.has_value() && out->defined()) {  // the caller's workspace: no fresh pages to fault in
    check_map(*out, "out");
    TORCH_CHECK(out->is_contiguous() && out->numel() == 16 * T * C, "winograd: out must be a contiguous tensor "
                "of ", 16 * T * C, " values, got ", out->sizes());
    v = out->view({16, T, C});
  } else {
    v = at::empty({16, T, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  }
  const float* src = x.const_data_ptr<float>();
  float* dst = v.mutable_data_ptr<float>();
  at::parallel_for(0, N * TH, 1, [&](int64_t begin, int64_t end) {
    const std::vector<float> zeros(C, 0.0f);  // the padding's row of channels
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / TH, ty = r % TH;
      for (int64_t tx = 0; tx < TW; ++tx) {
        const float* d[4][4];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) {
            const int64_t y = 2 * ty - pad[0] + i, xx = 2 * tx - pad[1] + j;
            d[i][j] = (y >= 0 && y < H && xx >= 0 && xx < W) ? src + ((n * H + y) * W + xx) * C : zeros.data();
          }
        const int64_t t = r * TW + tx;
        float* v_row[16];  // the tile's row of each of the 16 products' inputs
        for (int k = 0; k < 16; ++k) v_row[k] = dst + (k * T + t) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          float b[4][4];  // B^T d: rows combined
          for (int j = 0; j < 4; ++j) {
            b[0][j] = d[0][j][c] - d[2][j][c];
            b[1][j] = d[1][j][c] + d[2][j][c];
            b[2][j] = d[2][j][c] - d[1][j][c];
            b[3][j] = d[1][j][c] - d[3][j][c];
          }
          for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns combined
            v_row[4 * i + 0][c] = b[i][0] - b[i][2];
            v_row[4 * i + 1][c] = b[i][1] + b[i][2];
            v_row[4 * i + 2][c] = b[i][2] - b[i][1];
            v_row[4 * i + 3][c] = b[i][1] - b[i][3];
          }
        }
      }
    }
  });
  return v;
}

std::tuple<at::Tensor, bool> winograd_output_cpu(const at::Tensor& m, const c10::optional<at::Tensor>& bias,
                                                 at::IntArrayRef out_size, int64_t activation, double slope) {
  check_map(m, "the products");
  TORCH_CHECK(m.dim() == 3 && m.size(0) == 16 && m.is_contiguous(), "winograd: the products must be a contiguous "
              "16 x tiles x K tensor, got ", m.sizes());
  TORCH_CHECK(out_size.size() == 3, "winograd: out_size must be (N, OH, OW), got ", out_size);
  TORCH_CHECK(activation >= 0 && activation <= 2, "winograd: activation must be 0 (none), 1 (ReLU) or 2 (leaky)");
  const int64_t N = out_size[0], OH = out_size[1], OW = out_size[2], K = m.size(2);
  const int64_t TH = tiles(OH), TW = tiles(OW), T = N * TH * TW;
  TORCH_CHECK(m.size(1) == T, "winograd: ", m.size(1), " tiles for an output of ", out_size, " (", T, " expected)");
  const at::Tensor bias_k = bias.has_value() && bias->defined() ? bias->contiguous() : at::zeros({K}, m.options());
  check_map(bias_k, "the bias");
  TORCH_CHECK(bias_k.numel() == K, "winograd: the bias has ", bias_k.numel(), " values for ", K, " outputs");
  const float* b = bias_k.const_data_ptr<float>();
  at::Tensor y = at::empty({N, K, OH, OW}, m.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* src = m.const_data_ptr<float>();
  float* dst = y.mutable_data_ptr<float>();
  const float s = static_cast<float>(slope);
  std::vector<uint8_t> finite(N * TH, 1);
  at::parallel_for(0, N * TH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> spare(4 * K);  // the outputs of a tile past the map's edge: computed, not kept
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / TH, ty = r % TH;
      float check = 0.0f;  // stays 0 while every value is finite; NaN once one is not (0 * inf)
      for (int64_t tx = 0; tx < TW; ++tx) {
        const int64_t t = r * TW + tx;
        const float* p[16];
        for (int k = 0; k < 16; ++k) p[k] = src + (k * T + t) * K;
        float* q[2][2];
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) {
            const int64_t oy = 2 * ty + i, ox = 2 * tx + j;
            q[i][j] = oy < OH && ox < OW ? dst + ((n * OH + oy) * OW + ox) * K : spare.data() + (2 * i + j) * K;
          }
        check += tile_output(p, b, K, activation, s, q[0][0], q[0][1], q[1][0], q[1][1]);
      }
      finite[r] = check == 0.0f;
    }
  });
  bool all_finite = true;
  for (uint8_t f : finite) all_finite = all_finite && f;
  return {y, all_finite};
}

}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, CPU, m) {
  m.impl("winograd_input", &fcn::winograd_input_cpu);
  m.impl("winograd_output", &fcn::winograd_output_cpu);
}
