// Operators that run the CUDA kernels (csrc/cuda/kernels.cuh) on the CPU under the emulated
// launch (launch.h), for tests/test_cuda_emulated.py; never part of the installed extension.
//
// Same validation (plan_forward/plan_backward) and the same int32/int64 choice as the CUDA entry
// points; the test picks the block size, caps the grid (so grid-stride loops wrap) and can force
// the int64 path.
#include "launch.h"  // before kernels.cuh: it defines the kernels' CUDA spellings

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../cuda/kernels.cuh"
#include "../deconv_crop_sum.h"

namespace fcn {
namespace {

struct Launch {
  int64_t threads, max_blocks;
  bool force_int64;
};

unsigned grid_for(int64_t total, const Launch& l) { return unsigned(blocks_for(total, l.threads, l.max_blocks)); }

template <typename I>
void forward_as(const Geometry& g, const at::Tensor& xc, const at::Tensor& wc,
                const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset, at::Tensor& out,
                const Launch& l) {
  const SkipView<I> sv = skip_view<I>(skip, skip_offset);
  const I total = I(out.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "emulated_forward", [&] {
    const scalar_t* sp = skip.has_value() ? skip->const_data_ptr<scalar_t>() : nullptr;
    fcn_emulated::launch(grid_for(total, l), unsigned(l.threads), [&] {
      forward_kernel<scalar_t, I>(g, xc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), sp, sv,
                                  out.mutable_data_ptr<scalar_t>(), total);
    });
  });
}

template <typename I>
void grad_input_as(const Geometry& g, const at::Tensor& gc, const at::Tensor& wc, at::Tensor& gx, const Launch& l) {
  const I total = I(gx.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "emulated_grad_input", [&] {
    fcn_emulated::launch(grid_for(total, l), unsigned(l.threads), [&] {
      grad_input_kernel<scalar_t, I>(g, gc.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(),
                                     gx.mutable_data_ptr<scalar_t>(), total);
    });
  });
}

template <typename I>
int64_t grad_weight_as(const Geometry& g, const at::Tensor& xc, const at::Tensor& gc, at::Tensor& gw, const Launch& l) {
  TORCH_CHECK(l.threads <= kThreads && (l.threads & (l.threads - 1)) == 0,
              "grad_weight_kernel needs a power-of-two block of at most ", kThreads, " threads");
  int64_t syncs = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "emulated_grad_weight", [&] {
    syncs = fcn_emulated::launch(unsigned(gw.numel()), unsigned(l.threads), [&] {
      grad_weight_kernel<scalar_t, I>(g, xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(),
                                      gw.mutable_data_ptr<scalar_t>());
    });
  });
  return syncs;
}

// Returns the output and whether the int64 path ran.
std::tuple<at::Tensor, bool> forward(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                                     at::IntArrayRef offset, at::IntArrayRef size,
                                     std::optional<at::Tensor> skip, at::IntArrayRef skip_offset,
                                     int64_t groups, int64_t threads, int64_t max_blocks, bool force_int64) {
  const Geometry g = plan_forward(x, weight, stride, offset, size, skip, skip_offset, groups);
  const Launch l{threads, max_blocks, force_int64};
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty({g.N, g.C_out, g.H, g.W}, x.options());
  const bool wide = force_int64 || !forward_fits_int32(g, skip);
  if (wide) forward_as<int64_t>(g, xc, wc, skip, skip_offset, out, l);
  else forward_as<int32_t>(g, xc, wc, skip, skip_offset, out, l);
  return {out, wide};
}

// Returns the x and weight gradients, the barriers the weight gradient's threads passed, and
// whether the int64 path ran.
std::tuple<at::Tensor, at::Tensor, int64_t, bool> backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef offset, at::IntArrayRef skip_size, at::IntArrayRef skip_offset, int64_t groups,
    int64_t threads, int64_t max_blocks, bool force_int64) {
  const Geometry g = plan_backward(grad, x, weight, stride, offset, skip_size, skip_offset, groups,
                                   {true, true, false});
  const Launch l{threads, max_blocks, force_int64};
  const at::Tensor gc = grad.contiguous(), wc = weight.contiguous(), xc = x.contiguous();
  at::Tensor gx = at::empty({g.N, g.C_in, g.Hi, g.Wi}, x.options());
  at::Tensor gw = at::empty(weight.sizes(), weight.options());
  const bool wide = force_int64 || !fits_int32(g);
  int64_t syncs;
  if (wide) {
    grad_input_as<int64_t>(g, gc, wc, gx, l);
    syncs = grad_weight_as<int64_t>(g, xc, gc, gw, l);
  } else {
    grad_input_as<int32_t>(g, gc, wc, gx, l);
    syncs = grad_weight_as<int32_t>(g, xc, gc, gw, l);
  }
  return {gx, gw, syncs, wide};
}

}  // namespace
}  // namespace fcn

// torch.ops.fcn_emulated.*, CPU tensors only: a library rather than a Python module, which keeps
// torch/extension.h (and its compile time) out of the test's build.
TORCH_LIBRARY(fcn_emulated, m) {
  m.def("forward", &fcn::forward);
  m.def("backward", &fcn::backward);
}
