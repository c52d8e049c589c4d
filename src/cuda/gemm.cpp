#include "cuda/gemm.hpp"

#include <cublasLt.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "core/error.hpp"
#include "cuda/cuda_device.hpp"

namespace zerolora::cuda {

namespace {

constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

std::string shape(const GemmKey& key) {
  return "m=" + std::to_string(key.m) + " n=" + std::to_string(key.n) +
         " k=" + std::to_string(key.k) + " lda=" + std::to_string(key.lda) +
         " ldb=" + std::to_string(key.ldb) + " ldc=" + std::to_string(key.ldc) +
         (key.in_type ? " bf16" : " fp32") + (key.trans_a ? " opA=T" : " opA=N") +
         (key.trans_b ? " opB=T" : " opB=N") + " align=" + std::to_string(key.align_a) + "/" +
         std::to_string(key.align_b) + "/" + std::to_string(key.align_c) +
         (key.accumulate ? " beta=1" : " beta=0") + (key.out_of_place ? " C apart from D" : "");
}

// One operand of the column-major problem, from a row-major view: a row-major matrix is the
// column-major transpose with leading dimension rs; a view with rs == 1 is column-major already.
struct Operand {
  bool transposed_storage;  // stored column-major as the view itself (rs == 1)
  Index ld;
};

Operand describe(Index rows, Index cols, Index rs, Index cs, const char* name) {
  if (cs == 1 && rs >= cols) return {false, rows == 1 ? std::max<Index>(rs, cols) : rs};
  if (rs == 1 && cs >= rows) return {true, cols == 1 ? std::max<Index>(cs, rows) : cs};
  throw ShapeError(std::string("GEMM operand ") + name + " [" + std::to_string(rows) + ", " +
                   std::to_string(cols) + "] with strides (" + std::to_string(rs) + ", " +
                   std::to_string(cs) + ") is neither row- nor column-major");
}

}  // namespace

int pointer_alignment(const void* pointer) {
  const auto address = reinterpret_cast<std::uintptr_t>(pointer);
  int alignment = 256;
  while (alignment > 1 && address % static_cast<std::uintptr_t>(alignment) != 0) alignment /= 2;
  return alignment;
}

GemmKey gemm_key(const void* a, Index a_rows, Index a_cols, Index a_rs, Index a_cs, const void* b,
                 Index b_rows, Index b_cols, Index b_rs, Index b_cs, const void* c, Index c_rows,
                 Index c_cols, Index c_rs, Index c_cs, int in_type, std::size_t element_bytes,
                 bool accumulate) {
  if (a_cols != b_rows || c_rows != a_rows || c_cols != b_cols)
    throw ShapeError("GEMM shapes do not chain: [" + std::to_string(a_rows) + ", " +
                     std::to_string(a_cols) + "] x [" + std::to_string(b_rows) + ", " +
                     std::to_string(b_cols) + "] -> [" + std::to_string(c_rows) + ", " +
                     std::to_string(c_cols) + "]");
  if (c_cs != 1 || c_rs < c_cols) throw ShapeError("GEMM result must be row-major");
  const Operand A = describe(a_rows, a_cols, a_rs, a_cs, "a");
  const Operand B = describe(b_rows, b_cols, b_rs, b_cs, "b");
  GemmKey key{};
  // column-major D [N x M] = opA(b-side) [N x K] . opB(a-side) [K x M]
  key.m = c_cols;
  key.n = c_rows;
  key.k = a_cols;
  key.trans_a = B.transposed_storage;  // b stored [K x N] column-major: transpose it
  key.lda = B.ld;
  key.trans_b = A.transposed_storage;  // a stored [M x K] column-major: transpose it
  key.ldb = A.ld;
  key.ldc = c_rows == 1 ? std::max<Index>(c_rs, c_cols) : c_rs;
  key.in_type = in_type;
  key.align_a = pointer_alignment(b);
  key.align_b = pointer_alignment(a);
  key.align_c = pointer_alignment(c);
  key.accumulate = accumulate;
  return key;
}

// cuBLASLt's entry points, from the library loaded when the first GEMM object is made: linking
// it would load it into every process of a CUDA build, CPU runs included (210 MB of resident
// relocations).
struct LtGemm::Api {
  void* library = nullptr;
#define ZL_LT_FUNCTION(name) decltype(&::name) name = nullptr;
  ZL_LT_FUNCTION(cublasLtCreate)
  ZL_LT_FUNCTION(cublasLtDestroy)
  ZL_LT_FUNCTION(cublasLtGetStatusString)
  ZL_LT_FUNCTION(cublasLtMatmul)
  ZL_LT_FUNCTION(cublasLtMatmulAlgoCapGetAttribute)
  ZL_LT_FUNCTION(cublasLtMatmulAlgoGetHeuristic)
  ZL_LT_FUNCTION(cublasLtMatmulDescCreate)
  ZL_LT_FUNCTION(cublasLtMatmulDescDestroy)
  ZL_LT_FUNCTION(cublasLtMatmulDescSetAttribute)
  ZL_LT_FUNCTION(cublasLtMatmulPreferenceCreate)
  ZL_LT_FUNCTION(cublasLtMatmulPreferenceDestroy)
  ZL_LT_FUNCTION(cublasLtMatmulPreferenceSetAttribute)
  ZL_LT_FUNCTION(cublasLtMatrixLayoutCreate)
  ZL_LT_FUNCTION(cublasLtMatrixLayoutDestroy)
#undef ZL_LT_FUNCTION

  Api() {
    const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library)
      throw DeviceError("cannot load " + name + " (" + dlerror() +
                        "): put the CUDA libraries' folder on LD_LIBRARY_PATH");
    auto bind = [&](auto& function, const char* symbol) {
      function =
          reinterpret_cast<std::remove_reference_t<decltype(function)>>(dlsym(library, symbol));
      if (!function) throw DeviceError(name + " has no " + symbol);
    };
#define ZL_LT_BIND(name) bind(name, #name);
    ZL_LT_BIND(cublasLtCreate)
    ZL_LT_BIND(cublasLtDestroy)
    ZL_LT_BIND(cublasLtGetStatusString)
    ZL_LT_BIND(cublasLtMatmul)
    ZL_LT_BIND(cublasLtMatmulAlgoCapGetAttribute)
    ZL_LT_BIND(cublasLtMatmulAlgoGetHeuristic)
    ZL_LT_BIND(cublasLtMatmulDescCreate)
    ZL_LT_BIND(cublasLtMatmulDescDestroy)
    ZL_LT_BIND(cublasLtMatmulDescSetAttribute)
    ZL_LT_BIND(cublasLtMatmulPreferenceCreate)
    ZL_LT_BIND(cublasLtMatmulPreferenceDestroy)
    ZL_LT_BIND(cublasLtMatmulPreferenceSetAttribute)
    ZL_LT_BIND(cublasLtMatrixLayoutCreate)
    ZL_LT_BIND(cublasLtMatrixLayoutDestroy)
#undef ZL_LT_BIND
  }
  ~Api() {
    if (library) dlclose(library);
  }
  void check(cublasStatus_t status, const char* call, const GemmKey* key = nullptr) const {
    if (status != CUBLAS_STATUS_SUCCESS)
      throw DeviceError(std::string("cuBLASLt ") + call + (key ? " (" + shape(*key) + ")" : "") +
                        " failed: " + cublasLtGetStatusString(status));
  }
};

struct LtGemm::Plan {
  const Api& api;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  // Out of place, but no algorithm offered supports it: the addend is copied into D first and
  // the GEMM accumulates in place.
  bool copy_addend = false;
  explicit Plan(const Api& lt) : api(lt) {}
  ~Plan() {
    if (a) api.cublasLtMatrixLayoutDestroy(a);
    if (b) api.cublasLtMatrixLayoutDestroy(b);
    if (c) api.cublasLtMatrixLayoutDestroy(c);
    if (desc) api.cublasLtMatmulDescDestroy(desc);
  }
};

bool cublaslt_loadable(std::string* version_or_why) {
  const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    *version_or_why = "cannot load " + name + " (" + dlerror() +
                      "): put the CUDA libraries' folder on LD_LIBRARY_PATH";
    return false;
  }
  const bool loads = library_version(library, name, "cublasLtGetVersion", version_or_why);
  dlclose(library);
  return loads;
}

LtGemm::LtGemm(Device& device, cudaStream_t stream, std::size_t max_plans)
    : stream_(stream), max_plans_(max_plans), api_(std::make_unique<Api>()) {
  cublasLtHandle_t handle = nullptr;
  api_->check(api_->cublasLtCreate(&handle), "cublasLtCreate");
  handle_ = handle;
  workspace_.ensure(device, kWorkspaceBytes);
}

LtGemm::~LtGemm() {
  plans_.clear();
  if (handle_) api_->cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

void LtGemm::matmul(Mat<const float> a, Mat<const float> b, Mat<float> c, float alpha,
                    bool accumulate, const float* addend) {
  const GemmKey key = gemm_key(a.data, a.rows, a.cols, a.rs, a.cs, b.data, b.rows, b.cols, b.rs,
                               b.cs, c.data, c.rows, c.cols, c.rs, c.cs, 0, 4, accumulate);
  run(key, a.data, b.data, c.data, alpha, addend);
}

void LtGemm::matmul(Mat<const bf16> a, Mat<const bf16> b, Mat<float> c, float alpha,
                    bool accumulate, const float* addend) {
  const GemmKey key = gemm_key(a.data, a.rows, a.cols, a.rs, a.cs, b.data, b.rows, b.cols, b.rs,
                               b.cs, c.data, c.rows, c.cols, c.rs, c.cs, 1, 2, accumulate);
  run(key, a.data, b.data, c.data, alpha, addend);
}

// D's m x n values (column-major, leading dimension ldc) from the addend, in the same layout.
void LtGemm::copy_into_d(const GemmKey& key, float* d, const float* addend) {
  const std::size_t pitch = static_cast<std::size_t>(key.ldc) * sizeof(float);
  check_cuda(
      cudaMemcpy2DAsync(d, pitch, addend, pitch, static_cast<std::size_t>(key.m) * sizeof(float),
                        static_cast<std::size_t>(key.n), cudaMemcpyDeviceToDevice, stream_),
      "cudaMemcpy2DAsync (a GEMM's addend into its output)");
}

// addend: C where it is not D (same layout, apart from D; null: C is D). The plan's C and D
// alignment is the lesser of the two pointers', and its algorithm one that writes D apart from
// C (CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT), so the plan suits both.
void LtGemm::run(GemmKey key, const void* a, const void* b, float* c, float alpha,
                 const float* addend) {
  if (addend && addend != c) {
    if (!key.accumulate) throw InternalError("a GEMM addend without accumulate");
    if (key.m > 0 && key.n > 0 &&
        byte_ranges_overlap(c, addend,
                            static_cast<std::size_t>(((key.n - 1) * key.ldc + key.m) * 4)))
      throw InternalError("a GEMM's addend overlaps its output " + shape(key));
    key.align_c = std::min(key.align_c, pointer_alignment(addend));
    key.out_of_place = true;
  } else {
    addend = c;
  }
  if (key.m == 0 || key.n == 0) return;
  if (key.k == 0) {  // an empty sum: c = 0 (or the addend when accumulating)
    if (addend != c)
      copy_into_d(key, c, addend);
    else if (!key.accumulate)
      check_cuda(cudaMemset2DAsync(c, static_cast<std::size_t>(key.ldc) * sizeof(float), 0,
                                   static_cast<std::size_t>(key.m) * sizeof(float),
                                   static_cast<std::size_t>(key.n), stream_),
                 "cudaMemset2DAsync (a GEMM with k = 0)");
    return;
  }
  auto handle = static_cast<cublasLtHandle_t>(handle_);
  // Unpacked batches change M nearly every step: the cache starts afresh when full, so a long
  // run's host memory stays bounded (a heuristic call costs microseconds).
  if (plans_.size() >= max_plans_ && !plans_.contains(key)) plans_.clear();
  auto& slot = plans_[key];
  if (!slot) {
    auto plan = std::make_unique<Plan>(*api_);
    const Api& lt = *api_;
    const cudaDataType_t in = key.in_type ? CUDA_R_16BF : CUDA_R_32F;
    lt.check(lt.cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
             "cublasLtMatmulDescCreate", &key);
    const cublasOperation_t op_a = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    lt.check(lt.cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a,
                                               sizeof op_a),
             "cublasLtMatmulDescSetAttribute(TRANSA)", &key);
    lt.check(lt.cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b,
                                               sizeof op_b),
             "cublasLtMatmulDescSetAttribute(TRANSB)", &key);
    // Stored shapes: A is [m x k] or, transposed, [k x m]; B is [k x n] or [n x k].
    lt.check(lt.cublasLtMatrixLayoutCreate(&plan->a, in, key.trans_a ? key.k : key.m,
                                           key.trans_a ? key.m : key.k, key.lda),
             "cublasLtMatrixLayoutCreate(A)", &key);
    lt.check(lt.cublasLtMatrixLayoutCreate(&plan->b, in, key.trans_b ? key.n : key.k,
                                           key.trans_b ? key.k : key.n, key.ldb),
             "cublasLtMatrixLayoutCreate(B)", &key);
    lt.check(lt.cublasLtMatrixLayoutCreate(&plan->c, CUDA_R_32F, key.m, key.n, key.ldc),
             "cublasLtMatrixLayoutCreate(C)", &key);
    cublasLtMatmulPreference_t preference = nullptr;
    lt.check(lt.cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate",
             &key);
    const std::uint64_t workspace = kWorkspaceBytes;
    const std::uint32_t align[3] = {static_cast<std::uint32_t>(key.align_a),
                                    static_cast<std::uint32_t>(key.align_b),
                                    static_cast<std::uint32_t>(key.align_c)};
    const struct {
      cublasLtMatmulPreferenceAttributes_t attribute;
      const void* value;
      std::size_t bytes;
      const char* call;
    } preferences[] = {{CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace,
                        "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)"},
                       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align[0], sizeof align[0],
                        "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_A_BYTES)"},
                       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align[1], sizeof align[1],
                        "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_B_BYTES)"},
                       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align[2], sizeof align[2],
                        "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_C_BYTES)"},
                       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align[2], sizeof align[2],
                        "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D_BYTES)"}};
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    const char* call = "";
    for (const auto& p : preferences) {
      if (status != CUBLAS_STATUS_SUCCESS) break;
      status = lt.cublasLtMatmulPreferenceSetAttribute(preference, p.attribute, p.value, p.bytes);
      call = p.call;
    }
    // In place, cuBLASLt's first choice; out of place, its first that supports it (the heuristic
    // sees descriptors, not pointers), else its first choice with the addend copied into D.
    constexpr int kCandidates = 8;
    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int found = 0;
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = lt.cublasLtMatmulAlgoGetHeuristic(
          handle, plan->desc, plan->a, plan->b, plan->c, plan->c, preference,
          key.out_of_place ? kCandidates : 1, results, &found);
      call = "cublasLtMatmulAlgoGetHeuristic";
    }
    lt.cublasLtMatmulPreferenceDestroy(preference);
    lt.check(status, call, &key);
    const cublasLtMatmulHeuristicResult_t *chosen = nullptr, *apart = nullptr;
    for (int i = 0; i < found; ++i) {
      // A result is usable only where its own state says so (cublasLt.h).
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      if (!chosen) chosen = &results[i];
      if (!key.out_of_place) break;
      std::int32_t supported = 0;
      std::size_t written = 0;
      if (lt.cublasLtMatmulAlgoCapGetAttribute(
              &results[i].algo, CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT, &supported,
              sizeof supported, &written) == CUBLAS_STATUS_SUCCESS &&
          supported != 0) {
        apart = &results[i];
        break;
      }
    }
    if (chosen && key.out_of_place) {
      if (apart)
        chosen = apart;
      else
        plan->copy_addend = true;  // none of them writes D apart from C
    }
    if (!chosen)
      throw DeviceError("cuBLASLt has no algorithm for the GEMM " + shape(key) +
                        (found == 0
                             ? std::string()
                             : std::string(": ") + lt.cublasLtGetStatusString(results[0].state)));
    plan->algo = chosen->algo;
    slot = std::move(plan);
  }
  const float beta = key.accumulate ? 1.0f : 0.0f;
  if (slot->copy_addend && addend != c) {
    copy_into_d(key, c, addend);
    addend = c;
  }
  api_->check(api_->cublasLtMatmul(handle, slot->desc, &alpha, b, slot->a, a, slot->b, &beta,
                                   addend, slot->c, c, slot->c, &slot->algo, workspace_.data(),
                                   kWorkspaceBytes, stream_),
              "cublasLtMatmul", &key);
}

}  // namespace zerolora::cuda
