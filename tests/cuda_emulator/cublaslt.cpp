// The CUDA emulator's cuBLASLt (built as libcublasLt.so.13, which src/cuda/gemm.cpp loads):
// D = alpha op(A) op(B) + beta C on column-major layouts, fp32 or bf16 operands, fp32
// accumulation and output. It checks what cuBLASLt would refuse or what would fault on a GPU:
// layouts whose shapes do not chain, a leading dimension below the rows, types other than the
// backend's, operands outside device memory, pointers less aligned than the plan's heuristic
// was promised, a workspace smaller than the preference said, D apart from C with an algorithm
// that does not support it (ZEROLORA_EMULATED_LT_IN_PLACE_ONLY=1 makes every algorithm such a
// one, as some of a real cuBLASLt's are). Nothing here is NVIDIA's code:
// it proves the backend describes its GEMMs as cuBLASLt documents them, not cuBLASLt itself.
#include <cublasLt.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emulator_state.hpp"

namespace {

struct Layout {
  cudaDataType_t type;
  std::uint64_t rows, cols;
  std::int64_t ld;
};
struct Desc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
};
struct Preference {
  std::uint64_t workspace = 0;
  std::uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: cuBLASLt's default
};

std::size_t element_bytes(cudaDataType_t type) {
  return type == CUDA_R_32F ? 4 : 2;
}

// cuBLASLt reports through its status (and its log), never through CUDA's last error.
cublasStatus_t invalid(const std::string& message) {
  std::fprintf(stderr, "cuBLASLt emulator: %s\n", message.c_str());
  return CUBLAS_STATUS_INVALID_VALUE;
}

// The problem the layouts describe: op(A) [m x k], op(B) [k x n], C and D [m x n].
cublasStatus_t problem(const Desc& d, const Layout& a, const Layout& b, const Layout& c,
                       const Layout& out, std::uint64_t& m, std::uint64_t& n, std::uint64_t& k) {
  if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F)
    return invalid("the backend asks for fp32 compute and scale only (no TF32)");
  if (a.type != b.type || (a.type != CUDA_R_32F && a.type != CUDA_R_16BF))
    return invalid("A and B must both be fp32 or both bf16");
  if (c.type != CUDA_R_32F || out.type != CUDA_R_32F) return invalid("C and D must be fp32");
  for (const Layout* l : {&a, &b, &c, &out})
    if (l->ld < 1 || static_cast<std::uint64_t>(l->ld) < l->rows)
      return invalid("a leading dimension " + std::to_string(l->ld) + " below the rows " +
                     std::to_string(l->rows));
  m = d.trans_a == CUBLAS_OP_N ? a.rows : a.cols;
  k = d.trans_a == CUBLAS_OP_N ? a.cols : a.rows;
  const std::uint64_t kb = d.trans_b == CUBLAS_OP_N ? b.rows : b.cols;
  n = d.trans_b == CUBLAS_OP_N ? b.cols : b.rows;
  if (kb != k || c.rows != m || c.cols != n || out.rows != m || out.cols != n)
    return invalid("the layouts do not chain: op(A) [" + std::to_string(m) + " x " +
                   std::to_string(k) + "], op(B) [" + std::to_string(kb) + " x " +
                   std::to_string(n) + "], C [" + std::to_string(c.rows) + " x " +
                   std::to_string(c.cols) + "]");
  return CUBLAS_STATUS_SUCCESS;
}

std::size_t extent_bytes(const Layout& l) {
  if (l.rows == 0 || l.cols == 0) return 0;
  return (static_cast<std::size_t>(l.ld) * (l.cols - 1) + l.rows) * element_bytes(l.type);
}

// The opaque handles are the emulator's structs.
template <class T, class Handle, class... Fields>
cublasStatus_t create(Handle* handle, Fields... fields) {
  *handle = reinterpret_cast<Handle>(new T{fields...});
  return CUBLAS_STATUS_SUCCESS;
}
template <class T, class Handle>
cublasStatus_t destroy(Handle handle) {
  delete reinterpret_cast<T*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}

float load(const void* base, cudaDataType_t type, std::size_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(base)[i];
  const std::uint32_t bits = std::uint32_t{static_cast<const std::uint16_t*>(base)[i]} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// D = scale_a op(A) op(B) + scale_c C: op(A) as m rows and op(B) as n columns of k contiguous
// floats, then one dot product per element (eight partial sums, so that it vectorizes). One
// thread, the stream's: an OpenMP team here would spin beside the host's and starve it.
void multiply(const Desc& desc, const void* a, const Layout& la, const void* b, const Layout& lb,
              const void* c, const Layout& lc, void* d, const Layout& ld, std::uint64_t m,
              std::uint64_t n, std::uint64_t k, float scale_a, float scale_c) {
  const std::size_t M = m, N = n, K = k;
  std::vector<float> rows_a(M * K), cols_b(N * K);
  for (std::size_t i = 0; i < M; ++i)
    for (std::size_t p = 0; p < K; ++p)
      rows_a[i * K + p] =
          load(a, la.type, desc.trans_a == CUBLAS_OP_N ? i + p * la.ld : p + i * la.ld);
  for (std::size_t j = 0; j < N; ++j)
    for (std::size_t p = 0; p < K; ++p)
      cols_b[j * K + p] =
          load(b, lb.type, desc.trans_b == CUBLAS_OP_N ? p + j * lb.ld : j + p * lb.ld);
  auto* out = static_cast<float*>(d);
  const auto* in_c = static_cast<const float*>(c);
  for (std::size_t j = 0; j < N; ++j) {
    const float* col = &cols_b[j * K];
    for (std::size_t i = 0; i < M; ++i) {
      const float* row = &rows_a[i * K];
      float partial[8] = {};
      std::size_t p = 0;
      for (; p + 8 <= K; p += 8)
        for (int l = 0; l < 8; ++l) partial[l] += row[p + l] * col[p + l];
      float sum = 0.0f;
      for (; p < K; ++p) sum += row[p] * col[p];
      for (float x : partial) sum += x;
      // beta = 0 reads nothing of C (it may hold NaN), as cuBLAS promises.
      const float previous = scale_c == 0.0f ? 0.0f : scale_c * in_c[i + j * lc.ld];
      out[i + j * ld.ld] = scale_a * sum + previous;
    }
  }
}

}  // namespace

extern "C" {

std::size_t cublasLtGetVersion(void) {
  return CUBLAS_VER_MAJOR * 10000;
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  static int token;
  *handle = reinterpret_cast<cublasLtHandle_t>(&token);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t) {
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS (other)";
  }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  return create<Desc>(desc, compute, scale);
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  return destroy<Desc>(desc);
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attribute,
                                              const void* value, size_t bytes) {
  auto& d = *reinterpret_cast<Desc*>(desc);
  if (attribute != CUBLASLT_MATMUL_DESC_TRANSA && attribute != CUBLASLT_MATMUL_DESC_TRANSB)
    return invalid("a matmul attribute the emulator does not model: " + std::to_string(attribute));
  if (bytes != sizeof(std::int32_t)) return invalid("TRANSA/TRANSB take an int32");
  std::int32_t op;
  std::memcpy(&op, value, sizeof op);
  if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return invalid("an operation other than N or T");
  (attribute == CUBLASLT_MATMUL_DESC_TRANSA ? d.trans_a : d.trans_b) =
      static_cast<cublasOperation_t>(op);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  return create<Layout>(layout, type, rows, cols, ld);
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  return destroy<Layout>(layout);
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* preference) {
  return create<Preference>(preference);
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t preference) {
  return destroy<Preference>(preference);
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t preference,
                                                    cublasLtMatmulPreferenceAttributes_t attribute,
                                                    const void* value, size_t bytes) {
  auto& p = *reinterpret_cast<Preference*>(preference);
  if (attribute == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
    if (bytes != sizeof p.workspace) return invalid("MAX_WORKSPACE_BYTES takes a uint64");
    std::memcpy(&p.workspace, value, bytes);
    return CUBLAS_STATUS_SUCCESS;
  }
  if (attribute >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES &&
      attribute <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
    if (bytes != sizeof(std::uint32_t)) return invalid("MIN_ALIGNMENT_*_BYTES take a uint32");
    std::memcpy(&p.align[attribute - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], value, bytes);
    return CUBLAS_STATUS_SUCCESS;
  }
  return invalid("a preference the emulator does not model: " + std::to_string(attribute));
}

// One algorithm, which remembers the alignments and workspace it was chosen for.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t preference, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned) {
  *returned = 0;
  if (requested < 1) return invalid("a heuristic asked for no algorithm");
  std::uint64_t m, n, k;
  const cublasStatus_t status =
      problem(*reinterpret_cast<const Desc*>(desc), *reinterpret_cast<const Layout*>(a),
              *reinterpret_cast<const Layout*>(b), *reinterpret_cast<const Layout*>(c),
              *reinterpret_cast<const Layout*>(d), m, n, k);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  const auto& p = *reinterpret_cast<const Preference*>(preference);
  results[0] = cublasLtMatmulHeuristicResult_t{};
  for (int i = 0; i < 4; ++i) results[0].algo.data[i] = p.align[i];
  results[0].algo.data[4] = p.workspace;
  results[0].algo.data[5] = 0x7a6c656d75ull;  // marks an algorithm this library chose
  const char* in_place_only = std::getenv("ZEROLORA_EMULATED_LT_IN_PLACE_ONLY");
  results[0].algo.data[6] = in_place_only && std::strcmp(in_place_only, "1") == 0 ? 0 : 1;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoCapGetAttribute(const cublasLtMatmulAlgo_t* algo,
                                                 cublasLtMatmulAlgoCapAttributes_t attribute,
                                                 void* buffer, size_t bytes, size_t* written) {
  if (!algo || algo->data[5] != 0x7a6c656d75ull)
    return invalid("a capability asked of an algorithm not from the heuristic");
  if (attribute != CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT)
    return invalid("an algorithm capability the emulator does not model: " +
                   std::to_string(attribute));
  if (written) *written = sizeof(std::int32_t);
  if (bytes != sizeof(std::int32_t) || !buffer)
    return invalid("OUT_OF_PLACE_RESULT_SUPPORT takes an int32");
  const auto supported = static_cast<std::int32_t>(algo->data[6]);
  std::memcpy(buffer, &supported, sizeof supported);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc_handle, const void* alpha,
                              const void* a, cublasLtMatrixLayout_t a_layout, const void* b,
                              cublasLtMatrixLayout_t b_layout, const void* beta, const void* c,
                              cublasLtMatrixLayout_t c_layout, void* d,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  // Copies: the product runs later, on the stream, and the caller may change its descriptions.
  const Desc desc = *reinterpret_cast<const Desc*>(desc_handle);
  const Layout la = *reinterpret_cast<const Layout*>(a_layout);
  const Layout lb = *reinterpret_cast<const Layout*>(b_layout);
  const Layout lc = *reinterpret_cast<const Layout*>(c_layout);
  const Layout ld = *reinterpret_cast<const Layout*>(d_layout);
  std::uint64_t m, n, k;
  const cublasStatus_t status = problem(desc, la, lb, lc, ld, m, n, k);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (!algo || algo->data[5] != 0x7a6c656d75ull)
    return invalid("cublasLtMatmul without an algorithm from the heuristic");
  const void* pointers[4] = {a, b, c, d};
  const Layout* layouts[4] = {&la, &lb, &lc, &ld};
  const char* names[4] = {"A", "B", "C", "D"};
  for (int i = 0; i < 4; ++i) {
    const auto address = reinterpret_cast<std::uintptr_t>(pointers[i]);
    if (address % algo->data[i] != 0)
      return invalid(std::string(names[i]) + " is less aligned than the " +
                     std::to_string(algo->data[i]) + " bytes its algorithm was chosen for");
    const std::size_t bytes = extent_bytes(*layouts[i]);
    if (bytes && !zl_emu_is_device_range(pointers[i], bytes))
      return invalid(std::string(names[i]) + " (" + std::to_string(bytes) +
                     " bytes by its layout) is not in one device allocation");
  }
  if (c != d && algo->data[6] == 0) {
    std::fprintf(stderr, "cuBLASLt (emulated): D apart from C with an in-place-only algorithm\n");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  // cuBLASLt computes D in place of C only with C's own layout, and never over A or B.
  if (c == d && (lc.ld != ld.ld || lc.rows != ld.rows || lc.cols != ld.cols))
    return invalid("D is C in place but with another layout");
  const auto overlaps = [&](const void* p, const Layout& l) {
    const auto x = reinterpret_cast<std::uintptr_t>(p), y = reinterpret_cast<std::uintptr_t>(d);
    return x < y + extent_bytes(ld) && y < x + extent_bytes(l);
  };
  if (overlaps(a, la) || overlaps(b, lb)) return invalid("D overlaps A or B");
  if (workspace_bytes < algo->data[4] ||
      (workspace_bytes && !zl_emu_is_device_range(workspace, workspace_bytes)))
    return invalid("the workspace is smaller than promised or not device memory");
  float scale_a, scale_c;  // host pointers (the default pointer mode): read at the call
  std::memcpy(&scale_a, alpha, sizeof scale_a);
  std::memcpy(&scale_c, beta, sizeof scale_c);
  zerolora::cuda_emulator::enqueue(
      stream, [=] { multiply(desc, a, la, b, lb, c, lc, d, ld, m, n, k, scale_a, scale_c); });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
