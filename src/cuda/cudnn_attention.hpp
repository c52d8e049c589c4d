// cuDNN's fused attention (SDPA forward and backward) through the cuDNN frontend's graph API,
// for the bf16 policy: the packed batch's segments are cuDNN's ragged (THD) sequences, so no
// compute is spent on padding and documents never attend across each other; GQA natively
// (K and V keep their KV heads); causal per segment. Q, K and V are read straight out of the
// fused [M, (H + 2 KV) hd] projection (three base pointers, one row stride), O is [M, H hd],
// the softmax statistics token-major [M, H] (cuDNN's ragged stats); the gradients come out
// dense, dQ [M, H hd] and dK, dV [M, KV hd] (their strides size cuDNN's fp32 workspace), or with
// the atomic backward in the fused layout of q/k/v (CudnnBackward below).
// Graphs are built once per bucketed shape (SdpaKey) and cached; building is slow (seconds) and
// needs a GPU, validation does not: validate_sdpa_graph() checks a key's graph for sm_90 on the
// host, which the CPU-only tests do.
#pragma once

#include <cuda_runtime.h>

#include <compare>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.hpp"
#include "cuda/cuda_ops.hpp"
#include "ops/attention.hpp"
#include "ops/cudnn_plan.hpp"

namespace zerolora::cuda {

// Which backward cuDNN runs (ZEROLORA_CUDNN_BACKWARD): ops/cudnn_plan.hpp, host code, so that
// estimate-memory counts its workspace.
using zerolora::cudnn_backward_from_environment;
using zerolora::cudnn_backward_name;
using zerolora::CudnnBackward;
using zerolora::fused_gradients;

// One cached graph: pass, bucketed batch slots and lengths, heads.
struct SdpaKey {
  bool backward = false;
  Index slots = 0;         // B: cudnn_slot_count(segments)
  Index max_length = 0;    // S: longest segment, rounded up by cudnn_size_bucket
  Index total_tokens = 0;  // T: tokens, rounded up likewise (backward only: its workspace;
                           // the atomic backward's: the padded rows)
  Index heads = 0, kv_heads = 0, head_dim = 0;  // the layer's (the tensors' strides)
  // The KV heads the graph covers, with their heads / kv_heads query heads each: kv_heads, but
  // in the deterministic backward's groups of heads (cudnn_kv_heads_per_call).
  Index call_kv_heads = 0;
  Index window = 0;  // Mistral's sliding window where it cuts a segment (a diagonal band); else 0
  CudnnBackward algorithm = CudnnBackward::kDeterministic;  // backward only
  auto operator<=>(const SdpaKey&) const = default;
};

SdpaKey sdpa_key(bool backward, const std::vector<Segment>& segments, Index M,
                 const AttentionShape& shape,
                 CudnnBackward algorithm = CudnnBackward::kDeterministic);

// The cuDNN calls of one pass over a batch: each call's key, the segments it covers, and its
// first KV head (its heads: key.call_kv_heads from there, with their query heads). The forward:
// one call; the deterministic backward: one per group of segments within its workspace budget
// (cudnn_backward_groups) and, in each, per group of heads whose dP is within dp_cap_bytes
// (cudnn_kv_heads_per_call; ops/cudnn_plan.hpp); the atomic backward: one.
struct SdpaCall {
  SdpaKey key;
  SegmentRange segments;
  Index kv_head_first = 0;
};
std::vector<SdpaCall> sdpa_forward_calls(const std::vector<Segment>& segments, Index M,
                                         const AttentionShape& shape);
std::vector<SdpaCall> sdpa_backward_calls(const std::vector<Segment>& segments, Index M,
                                          const AttentionShape& shape, CudnnBackward algorithm,
                                          double dp_cap_bytes);

// The lengths and ragged offsets of a pass's calls as uploaded to the device, in one array
// each: per call, its slots' lengths (rounded up to four entries, 16 bytes; an unused slot 0)
// and four arrays of slots + 1 offsets (q/k/v rows, O and dense dQ rows, statistics rows, dense
// dK and dV rows), each offsets_span(slots) long so that every one is 16-byte aligned; an
// unused slot's offsets, and the end entry's, are M's (past the data). Calls over the same
// segments (a group's groups of heads) share their entries.
struct SdpaGeometry {
  std::vector<std::int32_t> seq_len;
  std::vector<std::int64_t> offsets;
  std::vector<std::size_t> seq_len_at, offsets_at;  // each call's first entries
};
SdpaGeometry sdpa_geometry(const std::vector<SdpaCall>& calls, const std::vector<Segment>& segments,
                           Index M);

// Whether cuDNN (libcudnn.so.<major>) loads here: its version, or why not.
bool cudnn_loadable(std::string* version_or_why);

// What cuDNN's fused attention takes here: head_dim a multiple of 8, at most 256 (Hopper).
bool cudnn_attention_supports(const AttentionShape& shape);

// "" when the key's graph validates for sm_90 (host only, no GPU), else the frontend's message.
std::string validate_sdpa_graph(const SdpaKey& key);

// Entries between the starts of the four ragged-offset arrays (q/k/v, O and dQ, stats, dK and
// dV): slots + 1 rounded up to even, so that each array is 16-byte aligned.
std::size_t offsets_span(Index slots);

class CudnnAttention {
 public:
  CudnnAttention(Device& device, cudaStream_t stream);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Whether cuDNN takes this batch's shape: builds (or finds) both passes' graphs; false when
  // the frontend refuses either (the caller then uses its own kernel for both passes, so
  // forward and backward always agree on the statistics' layout).
  bool available(const std::vector<Segment>& segments, Index M, const AttentionShape& shape);
  // What cuDNN said each time it refused a shape ("<key>: <why>"), for the device check.
  const std::vector<std::string>& refusals() const;
  // Every buffer of both passes holds cudnn_padded_rows(M) rows (ops/cudnn_plan.hpp): an
  // input's rows past M zero (cuDNN may read them), an output's past M undefined.
  // out [M, H hd] bf16 (=), stats [M, H] fp32 (=), from qkv [M, (H + 2 KV) hd] bf16.
  void forward(Bf16Bits* out, float* stats, const Bf16Bits* qkv,
               const std::vector<Segment>& segments, Index M, const AttentionShape& shape);
  // The backward this object runs, and the deterministic one's cap on a call's dP workspace
  // (both read from the environment when it is made).
  CudnnBackward backward_algorithm() const;
  double dp_workspace_cap() const;
  // diff_q [M, H hd], diff_k and diff_v [M, KV hd] (=) from diff_out and the forward's out
  // (bf16, exactly as written) and stats; with fused_gradients(backward_algorithm()) the three
  // are columns of one [M, (H + 2 KV) hd] buffer instead.
  void backward(Bf16Bits* diff_q, Bf16Bits* diff_k, Bf16Bits* diff_v, const Bf16Bits* diff_out,
                const Bf16Bits* qkv, const Bf16Bits* out, const float* stats,
                const std::vector<Segment>& segments, Index M, const AttentionShape& shape);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zerolora::cuda
