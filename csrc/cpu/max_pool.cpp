// MAX pooling for a training iteration on CPU: unpadded windows no narrower than the stride,
// Caffe's ceil-mode output size, windows clipped at the bottom and right edges.  The forward
// returns, besides the pooled top, the winner's position in its window as one byte
// (row * kernel_w + col), so that the backward scatters the gradient without int64 indices (8x the
// bytes) or a second pass over the input.  The winner is PyTorch's max_pool2d's: the first maximum
// in row-major order, or a NaN (the last one) if any.  Contiguous NCHW and channels_last inputs run
// in their own layout; the results keep it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace fcn {
namespace {

struct PoolShape {
  int64_t N, C, H, W, oh, ow, kh, kw, sh, sw;
};

// Caffe's without padding: ceil((in - k) / s) + 1 windows; with k >= s each starts inside.
int64_t pooled_size(int64_t in, int64_t k, int64_t s) { return (in - k + s - 1) / s + 1; }

// One window of one channel: x points at the window's first element, `step` apart along a row,
// `row` apart between rows.  Writes the maximum and its window position.
template <typename T>
inline void window_max(const T* x, int64_t rows, int64_t cols, int64_t kw, int64_t step, int64_t row,
                       T* y, uint8_t* m) {
  T best = -std::numeric_limits<T>::infinity();
  int arg = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const T v = x[i * row + j * step];
      const bool take = (v > best) | (v != v);
      best = take ? v : best;
      arg = take ? static_cast<int>(i * kw + j) : arg;
    }
  *y = best;
  *m = static_cast<uint8_t>(arg);
}

template <typename T>
void forward_nchw(const PoolShape& p, const T* x, T* y, uint8_t* m) {
  at::parallel_for(0, p.N * p.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* xp = x + plane * p.H * p.W;
      for (int64_t oy = 0; oy < p.oh; ++oy) {
        const int64_t y0 = oy * p.sh, rows = std::min(p.kh, p.H - y0);
        const int64_t out = (plane * p.oh + oy) * p.ow;
        for (int64_t ox = 0; ox < p.ow; ++ox) {
          const int64_t x0 = ox * p.sw, cols = std::min(p.kw, p.W - x0);
          window_max(xp + y0 * p.W + x0, rows, cols, p.kw, 1, p.W, y + out + ox, m + out + ox);
        }
      }
    }
  });
}

// channels_last: for each output pixel the channels are contiguous.  A data-dependent branch per
// element would mispredict on random data, so four channels at a time are compared and blended in
// one SSE vector (float, C a multiple of 4); other cases run window_max per channel.
#if defined(__SSE2__)
inline void window_max4(const float* x, int64_t rows, int64_t cols, int64_t kw, int64_t step, int64_t row,
                        float* y, uint8_t* m) {
  __m128 best = _mm_set1_ps(-std::numeric_limits<float>::infinity()), arg = _mm_setzero_ps();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const __m128 v = _mm_loadu_ps(x + i * row + j * step);
      const __m128 take = _mm_or_ps(_mm_cmpgt_ps(v, best), _mm_cmpunord_ps(v, v));
      const __m128 pos = _mm_set1_ps(static_cast<float>(i * kw + j));
      best = _mm_or_ps(_mm_and_ps(take, v), _mm_andnot_ps(take, best));
      arg = _mm_or_ps(_mm_and_ps(take, pos), _mm_andnot_ps(take, arg));
    }
  _mm_storeu_ps(y, best);
  const __m128i a = _mm_cvttps_epi32(arg);
  const int32_t bytes = _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(a, a), _mm_packs_epi32(a, a)));
  std::memcpy(m, &bytes, 4);
}
#endif

template <typename T>
void forward_channels_last(const PoolShape& p, const T* x, T* y, uint8_t* m) {
  const int64_t C = p.C;
#if defined(__SSE2__)
  constexpr bool kVector = std::is_same_v<T, float>;
#else
  constexpr bool kVector = false;
#endif
  const int64_t lanes = kVector && C % 4 == 0 ? 4 : 1;
  at::parallel_for(0, p.N * p.oh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / p.oh, oy = r % p.oh;
      const int64_t y0 = oy * p.sh, rows = std::min(p.kh, p.H - y0);
      for (int64_t ox = 0; ox < p.ow; ++ox) {
        const int64_t x0 = ox * p.sw, cols = std::min(p.kw, p.W - x0);
        const T* xw = x + ((n * p.H + y0) * p.W + x0) * C;
        const int64_t out = (r * p.ow + ox) * C;
        for (int64_t c = 0; c < C; c += lanes) {
#if defined(__SSE2__)
          if constexpr (kVector)
            if (lanes == 4) {
              window_max4(xw + c, rows, cols, p.kw, C, p.W * C, y + out + c, m + out + c);
              continue;
            }
#endif
          window_max(xw + c, rows, cols, p.kw, C, p.W * C, y + out + c, m + out + c);
        }
      }
    }
  });
}

// The backward adds each top gradient to its winner; windows overlap only within a plane (NCHW)
// or an image (channels_last), so those are the units run in parallel.
template <typename T>
void backward_nchw(const PoolShape& p, const T* gy, const uint8_t* m, T* gx) {
  at::parallel_for(0, p.N * p.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      T* gp = gx + plane * p.H * p.W;
      for (int64_t oy = 0; oy < p.oh; ++oy) {
        const int64_t out = (plane * p.oh + oy) * p.ow;
        for (int64_t ox = 0; ox < p.ow; ++ox) {
          const int64_t pos = m[out + ox];
          gp[(oy * p.sh + pos / p.kw) * p.W + ox * p.sw + pos % p.kw] += gy[out + ox];
        }
      }
    }
  });
}

template <typename T>
void backward_channels_last(const PoolShape& p, const T* gy, const uint8_t* m, T* gx) {
  const int64_t C = p.C;
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t oy = 0; oy < p.oh; ++oy)
        for (int64_t ox = 0; ox < p.ow; ++ox) {
          const int64_t out = ((n * p.oh + oy) * p.ow + ox) * C;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t pos = m[out + c];
            gx[((n * p.H + oy * p.sh + pos / p.kw) * p.W + ox * p.sw + pos % p.kw) * C + c] += gy[out + c];
          }
        }
  });
}

bool is_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

PoolShape plan(at::IntArrayRef size, at::IntArrayRef kernel, at::IntArrayRef stride) {
  TORCH_CHECK(size.size() == 4, "max_pool: input must be 4-D (N x C x H x W), got ", size.size(), "-D");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2, "max_pool: kernel and stride must have 2 elements");
  TORCH_CHECK(kernel[0] >= 1 && kernel[1] >= 1 && kernel[0] * kernel[1] <= 256,
              "max_pool: the kernel must have between 1 and 256 elements, got ", kernel);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && stride[0] <= kernel[0] && stride[1] <= kernel[1],
              "max_pool: stride must be between 1 and the kernel (no empty windows), got ", stride,
              " for kernel ", kernel);
  TORCH_CHECK(size[2] >= kernel[0] && size[3] >= kernel[1], "max_pool: input of spatial size ",
              size[2], " x ", size[3], " is smaller than the kernel ", kernel);
  return {size[0], size[1], size[2], size[3], pooled_size(size[2], kernel[0], stride[0]),
          pooled_size(size[3], kernel[1], stride[1]), kernel[0], kernel[1], stride[0], stride[1]};
}

void check_dtype(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "max_pool: float32 or float64 only, got ", t.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> max_pool_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel,
                                                        at::IntArrayRef stride) {
  check_dtype(input);
  const PoolShape p = plan(input.sizes(), kernel, stride);
  const bool last = is_channels_last(input);
  const auto format = last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(format);
  at::Tensor y = at::empty({p.N, p.C, p.oh, p.ow}, x.options().memory_format(format));
  at::Tensor m = at::empty({p.N, p.C, p.oh, p.ow}, x.options().dtype(at::kByte).memory_format(format));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool_forward_cpu", [&] {
    if (last)
      forward_channels_last<scalar_t>(p, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                      m.mutable_data_ptr<uint8_t>());
    else
      forward_nchw<scalar_t>(p, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                             m.mutable_data_ptr<uint8_t>());
  });
  return {y, m};
}

at::Tensor max_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& mask, at::IntArrayRef input_size,
                                 at::IntArrayRef kernel, at::IntArrayRef stride) {
  check_dtype(grad);
  const PoolShape p = plan(input_size, kernel, stride);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == p.N && grad.size(1) == p.C && grad.size(2) == p.oh &&
                  grad.size(3) == p.ow,
              "max_pool_backward: grad has shape ", grad.sizes(), ", the pooled top is ",
              at::IntArrayRef({p.N, p.C, p.oh, p.ow}));
  TORCH_CHECK(mask.scalar_type() == at::kByte && mask.sizes() == grad.sizes(),
              "max_pool_backward: mask must be uint8 of the grad's shape");
  const bool last = is_channels_last(mask);
  const auto format = last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor g = grad.contiguous(format), mc = mask.contiguous(format);
  at::Tensor gx = at::empty(input_size, g.options(), format).zero_();  // at::zeros drops the format
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "max_pool_backward_cpu", [&] {
    if (last)
      backward_channels_last<scalar_t>(p, g.const_data_ptr<scalar_t>(), mc.const_data_ptr<uint8_t>(),
                                       gx.mutable_data_ptr<scalar_t>());
    else
      backward_nchw<scalar_t>(p, g.const_data_ptr<scalar_t>(), mc.const_data_ptr<uint8_t>(),
                              gx.mutable_data_ptr<scalar_t>());
  });
  return gx;
}

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, CPU, m) {
  m.impl("max_pool_forward", &fcn::max_pool_forward_cpu);
  m.impl("max_pool_backward", &fcn::max_pool_backward_cpu);
}
