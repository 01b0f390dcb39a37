// Host side of deconv_crop_sum shared by the CPU and CUDA entry points (deconv_crop_sum.cpp): input
// validation into a Geometry, the backward's result, the 32-bit index check.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <tuple>

#include "fcn_ops.h"

namespace fcn {

// Validates a forward call (TORCH_CHECK with a clear message) and returns its geometry.
Geometry plan_forward(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                      at::IntArrayRef offset, at::IntArrayRef size,
                      const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                      int64_t groups);

// Validates a backward call; the crop size is the gradient's.
Geometry plan_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                       at::IntArrayRef stride, at::IntArrayRef offset, at::IntArrayRef skip_size,
                       at::IntArrayRef skip_offset, int64_t groups,
                       const std::array<bool, 3>& output_mask);

// The backward's result: a gradient left undefined (masked out) becomes an empty tensor, which the
// autograd formula maps to None; made only when needed (small calls feel each allocation).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_result(at::Tensor gx, at::Tensor gw, at::Tensor gs,
                                                               const at::Tensor& like);

// Caffe backpropagates through Deconvolution + Crop with zeros over the cropped-away border and
// forms every product of the transposed convolution there, so a non-finite factor gives NaN
// (0 * inf) where the kernels, which skip those products, give +-inf.  When the factor a gradient
// multiplies is not finite (the weight for gx, x for gw), that defined gradient is replaced by the
// uncropped transposed convolution's backward over the zero-padded gradient, in float64.
void match_caffe_when_not_finite(const Geometry& g, const at::Tensor& grad, const at::Tensor& x,
                                 const at::Tensor& weight, int64_t groups, at::Tensor& gx,
                                 at::Tensor& gw);

// True when every index of the call stays below 2^30 (the CUDA kernels then use 32-bit indexing).
bool fits_int32(const Geometry& g);

}  // namespace fcn
