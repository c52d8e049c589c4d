#include "cuda/cuda_lora.hpp"

#include <algorithm>

namespace zerolora::cuda {

static_assert(kLoraGroupMax == zerolora::kLoraGroupMax &&
              kLoraGroupMaxRank == zerolora::kLoraGroupMaxRank);

namespace {

// lora.cu's branches (cuda_ops.hpp LoraBranches): small_b read, W_b, the output written.
void add_branch(LoraBranches& group, const float* small, const float* w, float* out,
                std::uint64_t key = 0) {
  group.small[group.count] = small;
  group.w[group.count] = w;
  group.out[group.count] = out;
  group.key[group.count] = key;
  ++group.count;
}
LoraBranches one_branch(const float* small, const float* w, float* out, std::uint64_t key = 0) {
  LoraBranches branch;
  add_branch(branch, small, w, out, key);
  return branch;
}

}  // namespace

CudaLora::CudaLora(CudaDevice& device, LtGemm& gemm)
    : device_(device), gemm_(gemm), s_(device.stream()) {}

void CudaLora::project(float* z, Mat<const float> src, const float* a, Index rank,
                       const DropoutMask& dropout) {
  const Index M = src.rows, in = src.cols;
  if (lora_takes_fused(rank, {src.cs})) {
    lora_contract(s_, one_branch(nullptr, a, z, dropout.key), src.data, src.rs, in, 1, M, in,
                  static_cast<int>(rank), 1.0f, dropout.p, dropout.row_keys);
    return;
  }
  gemm_.matmul(dropped(src, dropout), Mat<const float>::dense(a, rank, in).t(),
               Mat<float>::dense(z, M, rank), 1.0f, false);
}

void CudaLora::forward(Mat<float> dst, float* z, Mat<const float> src, const float* a,
                       const float* b, Index rank, double scale, const DropoutMask& dropout) {
  project(z, src, a, rank, dropout);
  expand(dst, z, b, rank, scale);
}

void CudaLora::backward(Mat<float> diff_src, float* diff_a, float* diff_b,
                        Mat<const float> diff_dst, const float* z, Mat<const float> src,
                        const float* a, const float* b, Index rank, double scale,
                        const DropoutMask& dropout) {
  const Index M = src.rows, in = src.cols, out = diff_dst.cols;
  const auto s = static_cast<float>(scale);
  if (lora_takes_fused(rank, {src.cs, diff_src.cs, diff_dst.cs})) {
    const BackwardBranch branch{diff_a, diff_b, diff_dst, z, a, b, dropout};
    backward_group(diff_src, {&branch, 1}, src, rank, scale);
    return;
  }
  float* dz = dz_.ensure(device_, static_cast<std::size_t>(M * rank));
  const auto dz_mat = Mat<float>::dense(dz, M, rank);
  const auto a_mat = Mat<const float>::dense(a, rank, in);
  gemm_.matmul(diff_dst.t(), Mat<const float>::dense(z, M, rank),
               Mat<float>::dense(diff_b, out, rank), s, true);
  gemm_.matmul(diff_dst, Mat<const float>::dense(b, out, rank), dz_mat, s, false);
  gemm_.matmul(dz_mat.as_const().t(), dropped(src, dropout), Mat<float>::dense(diff_a, rank, in),
               1.0f, true);
  if (!dropout.active()) {
    gemm_.matmul(dz_mat, a_mat, diff_src, 1.0f, true);
  } else {
    float* work = work_.ensure(device_, static_cast<std::size_t>(M * in));
    gemm_.matmul(dz_mat, a_mat, Mat<float>::dense(work, M, in), 1.0f, false);
    apply_dropout(s_, diff_src.data, diff_src.rs, diff_src.cs, work, in, 1, M, in, dropout.p,
                  dropout.key, dropout.row_keys, true);
  }
}

// Branches that lora.cu may take as one group: at most kLoraGroupMax of rank at most
// kLoraGroupMaxRank (one alone: any fused rank), sharing contiguous src columns and one dropout
// draw but for its key.
template <class Branch>
bool CudaLora::groups(Index rank, std::span<const Branch> branches,
                      std::initializer_list<Index> column_strides) {
  if (branches.empty() || branches.size() > static_cast<std::size_t>(kLoraGroupMax) ||
      !lora_takes_fused(rank, column_strides))
    return false;
  if (branches.size() > 1 && rank > kLoraGroupMaxRank) return false;
  for (const auto& br : branches)
    if (br.dropout.p != branches.front().dropout.p ||
        br.dropout.row_keys != branches.front().dropout.row_keys)
      return false;
  return true;
}

bool CudaLora::groups_backward(Mat<float> diff_src, std::span<const BackwardBranch> branches,
                               Mat<const float> src, Index rank) {
  bool grouped = groups(rank, branches, {src.cs, diff_src.cs});
  for (const auto& br : branches) grouped = grouped && lora_takes_fused(rank, {br.diff_dst.cs});
  return grouped;
}

// The fused kernels' backward of branches sharing src and diff_src (one, or a group): each
// branch's dB += s dy^T z and dz = s dy B (B(k, c) at b[c r + k]), then for all of them in one
// pass over src and diff_src together (lora_outer_expand), dA += dz^T drop(x) and dx +=
// drop'(dz A) (A(k, j) at a[k in + j]).
void CudaLora::backward_group(Mat<float> diff_src, std::span<const BackwardBranch> branches,
                              Mat<const float> src, Index rank, double scale) {
  const Index M = src.rows, in = src.cols, count = static_cast<Index>(branches.size());
  const int r = static_cast<int>(rank);
  const auto s = static_cast<float>(scale);
  float* dz = dz_.ensure(device_, static_cast<std::size_t>(count * M * rank));
  Index scratch = lora_outer_scratch(M, in, r, static_cast<int>(count));
  for (const auto& br : branches)
    scratch = std::max(scratch, lora_outer_scratch(M, br.diff_dst.cols, r, 1));
  float* partial = partial_.ensure(device_, static_cast<std::size_t>(scratch));
  LoraBranches group;
  for (const auto& br : branches) {
    float* dz_b = dz + group.count * M * rank;
    const Mat<const float> dy = br.diff_dst;
    lora_outer(s_, one_branch(br.z, nullptr, br.diff_b), 1, rank, dy.data, dy.rs, M, dy.cols, r, s,
               0.0, nullptr, partial);
    lora_contract(s_, one_branch(nullptr, br.b, dz_b), dy.data, dy.rs, 1, rank, M, dy.cols, r, s,
                  0.0, nullptr);
    add_branch(group, dz_b, br.a, br.diff_a, br.dropout.key);
  }
  const DropoutMask& dropout = branches.front().dropout;
  lora_outer_expand(s_, group, in, 1, src.data, src.rs, diff_src.data, diff_src.rs, in, 1, M, in, r,
                    1.0f, dropout.p, dropout.row_keys, partial);
}

// y += s z B^T (B(k, c) at b[c r + k]).
void CudaLora::expand(Mat<float> dst, const float* z, const float* b, Index rank, double scale) {
  if (lora_takes_fused(rank, {dst.cs})) {
    lora_expand(s_, dst.data, dst.rs, one_branch(z, b, nullptr), 1, rank, dst.rows, dst.cols,
                static_cast<int>(rank), static_cast<float>(scale), 0.0, nullptr);
    return;
  }
  gemm_.matmul(Mat<const float>::dense(z, dst.rows, rank),
               Mat<const float>::dense(b, dst.cols, rank).t(), dst, static_cast<float>(scale),
               true);
}

// drop(src) as a dense matrix (src itself when dropout is off).
Mat<const float> CudaLora::dropped(Mat<const float> src, const DropoutMask& dropout) {
  if (!dropout.active()) return src;
  const Index M = src.rows, in = src.cols;
  float* work = dropout_work_.ensure(device_, static_cast<std::size_t>(M * in));
  apply_dropout(s_, work, in, 1, src.data, src.rs, src.cs, M, in, dropout.p, dropout.key,
                dropout.row_keys, false);
  return Mat<const float>::dense(work, M, in);
}

}  // namespace zerolora::cuda
