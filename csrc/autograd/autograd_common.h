// autograd_common.h: how ganfast's C++ ops get their derivatives (one file per op family in
// csrc/autograd/, each registering its ops for the Autograd dispatch key).
//
// Each op's backward is itself a ganfast op (x_backward), called through the dispatcher so it
// runs on whichever backend (CPU, CUDA) holds the tensors, and so its own autograd kernel
// decides what the next derivative does: a Node of its own where a family promises higher
// derivatives, autograd's not-implemented fallback (a clear error) where it does not.
//
// The formulas live in C++, as plain autograd Nodes (the way PyTorch's own ops record their
// graph), rather than in Python (torch.library.register_autograd): at GAN batch sizes a Python
// autograd node alone costs more than eager PyTorch's whole BCE, and a torch::autograd::Function
// costs ~5 us more per call than a Node. See docs/architecture.md. The fake (meta)
// implementations stay in Python, in ganfast/ops.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <string>
#include <type_traits>

namespace ganfast::autograd {

using at::Tensor;
using torch::autograd::Node;
using torch::autograd::SavedVariable;

// Who owns an autograd Node changed between torch releases: a std::shared_ptr up to 2.11 (Node
// derives from std::enable_shared_from_this), a c10::intrusive_ptr later (Node derives from
// c10::intrusive_ptr_target). ganfast builds against both (the GPU machines carry an older torch
// than this checkout's pin): every Node is made, held and handed to torch through these three,
// which pick by what Node derives from. The branch not taken is never instantiated.
template <typename T>
using NodePtr = std::conditional_t<std::is_base_of_v<c10::intrusive_ptr_target, Node>,
                                   c10::intrusive_ptr<T>, std::shared_ptr<T>>;

template <typename T>
NodePtr<T> make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, T>) return c10::make_intrusive<T>();
  else return std::make_shared<T>();
}

// The owning pointer to a Node from inside its own apply (SavedVariable::unpack of an output wants it).
template <typename T>
NodePtr<T> self_ptr(T* self) {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, T>) return c10::intrusive_ptr<T>::reclaim_copy(self);
  else return self->shared_from_this();
}
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Saves an optional operand (weight, bias); unpacks to nullopt when it was absent.
struct SavedOptional {
  SavedVariable var;
  bool present = false;
  void save(const std::optional<Tensor>& t, bool is_output = false) {
    present = t.has_value() && t->defined();
    if (present) var = SavedVariable(*t, is_output);
  }
  std::optional<Tensor> unpack(const NodePtr<Node>& saved_for = nullptr) const {
    return present ? std::optional<Tensor>(var.unpack(saved_for)) : std::nullopt;
  }
  void reset() { var.reset_data(); }
};

// Records `node` as the producer of `out`, its next edges being the op's tensor inputs.
template <typename NodePtrT, typename... Inputs>
void record(const NodePtrT& node, const Tensor& out, const Inputs&... inputs) {
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  torch::autograd::set_history(out, node);
}

// Gradients the ops do not provide: asking for them is an error, never a silent None.
inline void refuse_gradient(const Node& node, size_t input, const char* op, const char* arg) {
  TORCH_CHECK(!node.should_compute_output(input), op, ": the gradient with respect to ", arg,
              " is not supported");
}

// Lean double backward (ganfast.ops.lean_double_backward; ganfast.penalty's lean=True, the
// engine's default). The derivative of a piecewise-linear activation's backward with respect to
// the activation's input is exactly 0. Eager PyTorch, and ganfast by default, send that zero
// tensor back through the forward graph (a zeros_like, then a whole backward pass over zeros that
// adds zeros into every parameter's gradient). A bias_act recorded while lean is on omits that
// edge from the graph of its backward: nothing flows there, the gradients that do flow are the
// same numbers, and a tensor reached only through it keeps grad None where eager gives zeros.
// The flag is thread-local and read when the forward is recorded (the user's thread); the node
// carries it into the backward, which may run on an autograd worker thread (LeanScope).
bool lean_double_backward();
void set_lean_double_backward(bool on);

struct LeanScope {
  bool previous;
  explicit LeanScope(bool on) : previous(lean_double_backward()) { set_lean_double_backward(on); }
  ~LeanScope() { set_lean_double_backward(previous); }
  LeanScope(const LeanScope&) = delete;
  LeanScope& operator=(const LeanScope&) = delete;
};

}  // namespace ganfast::autograd
