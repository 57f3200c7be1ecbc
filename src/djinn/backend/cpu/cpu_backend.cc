#include "djinn/backend/cpu/cpu_backend.h"

#include "djinn/backend/cpu/compute_pool.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <new>

#include "djinn/backend/cpu/cpu_kernels.h"
#include "djinn/backend/cpu/stream_copy.h"

namespace djinn {

CpuBackend::CpuBackend() { (void)cpu::ComputePool::instance(); }

Status CpuBackend::run_op(OpKind op, const OpAttrs& a, std::span<const TensorView* const> in, const TensorView& out,
                          const SymbolBindings& /*bindings*/) {
  switch (op) {
    case OpKind::kEmbedding: return cpu::embedding(*in[0], *in[1], out);
    case OpKind::kMatMul: return cpu::matmul(*in[0], *in[1], a.transpose_b, out);
    case OpKind::kMatMulAdd:  // the product, then the residual added in place (elementwise)
      DJINN_RETURN_IF_ERROR(cpu::matmul(*in[0], *in[1], a.transpose_b, out));
      return cpu::add(out, *in[2], out);
    case OpKind::kAdd: return cpu::add(*in[0], *in[1], out);
    case OpKind::kMul: return cpu::mul(*in[0], *in[1], out);
    case OpKind::kLayerNorm: return cpu::layernorm(*in[0], *in[1], *in[2], a.eps, out);
    case OpKind::kRmsNorm: return cpu::rmsnorm(*in[0], *in[1], a.eps, out);
    case OpKind::kGeluNew: return cpu::gelu_new(*in[0], out);
    case OpKind::kSilu: return cpu::silu(*in[0], out);
    case OpKind::kSiluMul: return cpu::silu_mul(*in[0], *in[1], out);
    case OpKind::kRope: return cpu::rope(*in[0], *in[1], a.head_dim, a.rope_theta, out);
    case OpKind::kSoftmax: return cpu::softmax(*in[0], out);
    case OpKind::kSlice: return cpu::slice(*in[0], a.start, a.length, out);
    case OpKind::kKvAppend: {
      DJINN_ASSIGN_OR_RETURN(const int64_t past, cpu::past_of(*in[2]));
      return cpu::kv_append(*in[0], *in[1], past);
    }
    case OpKind::kAttention: {
      DJINN_ASSIGN_OR_RETURN(const int64_t past, cpu::past_of(*in[3]));
      return cpu::attention(*in[0], *in[1], *in[2], a, past, out);
    }
    case OpKind::kBatchedDecodeAttention:
      return cpu::batched_decode_attention(*in[0], *in[1], *in[2], *in[3], in.subspan(4), a, out);
    case OpKind::kRows: return cpu::rows(*in[0], a.start, a.length, out);
    case OpKind::kConcatRows: return cpu::concat_rows(*in[0], *in[1], out);
    case OpKind::kLastRow: return cpu::last_row(*in[0], out);
    case OpKind::kArgmax: return cpu::argmax(*in[0], out);
  }
  return internal_error("cpu backend: unknown op");
}

void* CpuBackend::allocate(size_t bytes, size_t alignment) {
  const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  return std::aligned_alloc(alignment, rounded == 0 ? alignment : rounded);
}

void CpuBackend::deallocate(void* pointer) { std::free(pointer); }

Status CpuBackend::copy(std::span<const CopyRegion> regions, CopyQueue queue) {
  // Swaps larger than the cache bypass it (cpu/stream_copy.h); everything else, and
  // every compute-queue copy (its bytes are read next), goes through it.
  size_t total = 0;
  for (const CopyRegion& r : regions) total += r.bytes;
  const bool stream = queue != CopyQueue::kCompute && total >= cpu::stream_copy_min_bytes();
  for (const CopyRegion& r : regions) {
    if (r.bytes == 0) continue;
    if (stream) {
      cpu::stream_copy(r.dst, r.src, r.bytes);
    } else {
      std::memcpy(r.dst, r.src, r.bytes);
    }
  }
  return {};
}

Status CpuBackend::zero(void* dst, size_t bytes) {
  if (bytes > 0) std::memset(dst, 0, bytes);
  return {};
}

size_t CpuBackend::free_memory_bytes() const {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      size_t kib = 0;
      std::istringstream(line.substr(13)) >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

}  // namespace djinn
