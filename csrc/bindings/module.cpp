// numoe._cpu: one bind_* per concern (bindings.hpp).
#include "bindings.hpp"

NB_MODULE(_cpu, m) {
  m.doc() =
      "numoe's CPU extension: topology and node memory, the thread pool, the quantized kernels, "
      "the linear and MoE ops, the small decode ops and the C++ decode blocks.";
  numoe::py::bind_pool(m);
  numoe::py::bind_linear(m);
  numoe::py::bind_memory(m);
  numoe::py::bind_ops(m);
  numoe::py::bind_decode(m);
  numoe::py::bind_quant(m);
}
