// Autograd of deconv_crop_sum, registered at the Autograd key for every device.
//
// In C++ rather than torch.library.register_autograd: FCN's 2x skip calls are a few microseconds
// of arithmetic, and a Python autograd kernel plus a Python backward node cost more than that on
// every call.  Without grad mode or an input that requires grad the call goes straight to the
// device kernel; otherwise a torch::autograd::Function records a C++ node whose backward calls
// deconv_crop_sum_backward, asking only for the gradients the graph needs.  The backward op itself
// is not differentiable: backpropagating through it (double backward) raises a clear error.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <optional>

namespace fcn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_below_autograd(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef offset, at::IntArrayRef size,
                                  const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                                  int64_t groups) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcn_caffe_repro::deconv_crop_sum", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef,
                                               const std::optional<at::Tensor>&, at::IntArrayRef,
                                               int64_t)>();
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(x, weight, stride, offset, size, skip, skip_offset, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef offset, c10::SymIntArrayRef skip_size, at::IntArrayRef skip_offset, int64_t groups,
    std::array<bool, 3> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fcn_caffe_repro::deconv_crop_sum_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
              c10::SymIntArrayRef, at::IntArrayRef, int64_t, std::array<bool, 3>)>();
  // Nothing to record unless a graph is being built (create_graph: then through the Autograd key,
  // whose fallback raises): skip the fallback's checks.
  std::optional<at::AutoDispatchBelowADInplaceOrView> below;
  if (!at::GradMode::is_enabled()) below.emplace();
  return op.call(grad, x, weight, stride, offset, skip_size, skip_offset, groups, output_mask);
}

class DeconvCropSum : public torch::autograd::Function<DeconvCropSum> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            at::IntArrayRef stride, at::IntArrayRef offset, at::IntArrayRef size,
                            const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                            int64_t groups) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["skip_offset"] = skip_offset;
    ctx->saved_data["groups"] = groups;
    // Empty without a skip; symbolic under torch.compile's dynamic shapes (the schema's SymInt[]).
    ctx->saved_data["skip_size"] = skip.has_value() && skip->defined() ? skip->sym_sizes() : c10::SymIntArrayRef();
    return forward_below_autograd(x, weight, stride, offset, size, skip, skip_offset, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto skip_size = ctx->saved_data["skip_size"].toSymIntVector();
    // Edges: x 0, weight 1, skip 2 (only when it was given).
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   !skip_size.empty() && ctx->needs_input_grad(2)};
    auto [gx, gw, gs] = backward_op(grads[0], saved[0], saved[1], ctx->saved_data["stride"].toIntVector(),
                                    ctx->saved_data["offset"].toIntVector(), skip_size,
                                    ctx->saved_data["skip_offset"].toIntVector(),
                                    ctx->saved_data["groups"].toInt(), mask);
    const at::Tensor none;
    return {mask[0] ? gx : none, mask[1] ? gw : none, none, none, none, mask[2] ? gs : none, none, none};
  }
};

at::Tensor deconv_crop_sum_autograd(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                                    at::IntArrayRef offset, at::IntArrayRef size,
                                    const std::optional<at::Tensor>& skip, at::IntArrayRef skip_offset,
                                    int64_t groups) {
  const bool wants_grad = at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (skip.has_value() && skip->requires_grad()));
  if (!wants_grad) return forward_below_autograd(x, weight, stride, offset, size, skip, skip_offset, groups);
  return DeconvCropSum::apply(x, weight, stride, offset, size, skip, skip_offset, groups);
}

}  // namespace
}  // namespace fcn

TORCH_LIBRARY_IMPL(fcn_caffe_repro, Autograd, m) {
  m.impl("deconv_crop_sum", &fcn::deconv_crop_sum_autograd);
  m.impl("deconv_crop_sum_backward", torch::autograd::autogradNotImplementedFallback());
}
