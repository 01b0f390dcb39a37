// The CPU kernels behind deconv_crop_sum (cpu/forward.cpp, cpu/backward.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../fcn_ops.h"

namespace fcn {
namespace cpu {

// out (N x C_out x H x W, contiguous, allocated) = the cropped deconvolution plus the skip.
void forward(const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
             const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset, at::Tensor& out);

// gx (N x C_in x Hi x Wi, contiguous, allocated) from the cropped output's gradient.
void grad_input(const Geometry& g, const at::Tensor& grad, const at::Tensor& weight, at::Tensor& gx);

// gw (the weight's shape, contiguous, allocated) from the cropped output's gradient.
void grad_weight(const Geometry& g, const at::Tensor& grad, const at::Tensor& x, at::Tensor& gw);

// The skip's gradient: zeros of skip_size with grad at the crop window, in one pass.
at::Tensor grad_skip(const at::Tensor& grad, at::IntArrayRef skip_size, at::IntArrayRef skip_offset);

// Rows per parallel task: about 2^18 multiply-adds (tens of microseconds) per task, so that small
// calls stay on one thread instead of paying for a parallel region.
inline int64_t grain_for(int64_t work_per_row) {
  return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, work_per_row));
}

}  // namespace cpu
}  // namespace fcn
