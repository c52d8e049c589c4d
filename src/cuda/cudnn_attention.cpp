#include "cuda/cudnn_attention.hpp"

#include <cudnn.h>
#include <dlfcn.h>

#define ZL_STRINGIFY_(x) #x
#define ZL_STRINGIFY(x) ZL_STRINGIFY_(x)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <set>
#include <unordered_map>

// The frontend loads cuDNN and NVRTC (which its runtime-compiled engines use) through dlopen
// instead of being linked. It reads the cuDNN handle from this one process-wide variable (its
// design, not ours), and some of its functions cache their symbols on first call, possibly
// during static initialisation: so the variable is defined, and the small libcudnn.so.9 (its
// engine sub-libraries load only when a handle is made) opened, before the frontend's headers.
// Null when cuDNN is not there: using it then fails with that message.
namespace cudnn_frontend {
void* cudnn_dlhandle = dlopen("libcudnn.so." ZL_STRINGIFY(CUDNN_MAJOR), RTLD_NOW | RTLD_GLOBAL);
}

#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>

#include "core/error.hpp"
#include "cuda/cuda_device.hpp"

namespace zerolora::cuda {

namespace fe = cudnn_frontend;

namespace {

// Tensor uids of the variant pack.
enum Uid : std::int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kDO,
  kDQ,
  kDK,
  kDV,
  kSeqLen,
  kOffsetsQkv,
  kOffsetsO,
  kOffsetsStats,
  kOffsetsKv
};

// Loads cuDNN for the frontend, by name (LD_LIBRARY_PATH, the loader's paths), else from where
// the build found it.
void load_cudnn() {
  if (fe::cudnn_dlhandle) return;
  const std::string name = "libcudnn.so." + std::to_string(CUDNN_MAJOR);
  fe::cudnn_dlhandle = dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL);
#ifdef ZEROLORA_CUDNN_LIBRARY_DIR
  if (!fe::cudnn_dlhandle)
    fe::cudnn_dlhandle = dlopen((std::string(ZEROLORA_CUDNN_LIBRARY_DIR) + "/" + name).c_str(),
                                RTLD_NOW | RTLD_GLOBAL);
#endif
  if (!fe::cudnn_dlhandle)
    throw DeviceError("cannot load " + name + " (" + dlerror() +
                      "): put the CUDA libraries' folders on LD_LIBRARY_PATH");
}

}  // namespace

bool cudnn_loadable(std::string* version_or_why) {
  try {
    load_cudnn();
  } catch (const DeviceError& e) {
    *version_or_why = e.what();
    return false;
  }
  return library_version(fe::cudnn_dlhandle, "libcudnn.so." + std::to_string(CUDNN_MAJOR),
                         "cudnnGetVersion", version_or_why);
}

namespace {

Index round_up(Index value, Index multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

using Tensor = std::shared_ptr<fe::graph::Tensor_attributes>;

struct Built {
  std::shared_ptr<fe::graph::Graph> graph;
  std::int64_t workspace = 0;
};

std::string describe(const SdpaKey& key) {
  return std::string(key.backward ? "backward" : "forward") + " B=" + std::to_string(key.slots) +
         " S=" + std::to_string(key.max_length) + " T=" + std::to_string(key.total_tokens) +
         " H=" + std::to_string(key.heads) + " KV=" + std::to_string(key.kv_heads) +
         (key.call_kv_heads != key.kv_heads
              ? " (" + std::to_string(key.call_kv_heads) + " KV per call)"
              : std::string()) +
         " hd=" + std::to_string(key.head_dim) +
         (key.window > 0 ? " window=" + std::to_string(key.window) : std::string()) +
         (key.backward ? std::string(" ") + cudnn_backward_name(key.algorithm) : std::string());
}

// The atomic backward's fp32 dQ accumulator for a key (cudnn_dq_accumulator_bytes).
std::int64_t dq_accumulator_bytes(const SdpaKey& key) {
  return static_cast<std::int64_t>(
      cudnn_dq_accumulator_bytes(key.algorithm, key.total_tokens, key.slots, key.max_length,
                                 key.call_kv_heads * (key.heads / key.kv_heads),
                                 AttentionShape{key.heads, key.kv_heads, key.head_dim}));
}

// The graph of a key, up to validate(); `message` gets the frontend's words when it refuses.
// sm_version > 0 validates for that GPU generation on the host alone (no device needed).
std::shared_ptr<fe::graph::Graph> make_graph(const SdpaKey& key, std::string& message,
                                             int sm_version) {
  const std::int64_t B = key.slots, S = key.max_length, H = key.heads, KV = key.kv_heads,
                     hd = key.head_dim, ld = (H + 2 * KV) * hd;
  // The heads this graph covers (a group of them in the deterministic backward): its dims; the
  // strides stay the layer's, and the caller points each tensor at the group's first head.
  const std::int64_t KVc = key.call_kv_heads, Hc = KVc * (H / KV);
  auto graph = std::make_shared<fe::graph::Graph>();
  if (sm_version > 0) graph->set_sm_version(sm_version);
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto offsets = [&](const char* name, std::int64_t uid) {
    return graph->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({B + 1, 1, 1, 1})
                             .set_stride({1, 1, 1, 1})
                             .set_data_type(fe::DataType_t::INT64));
  };
  const Tensor offsets_qkv = offsets("offsets_qkv", kOffsetsQkv);
  const Tensor offsets_o = offsets("offsets_o", kOffsetsO);
  const Tensor offsets_stats = offsets("offsets_stats", kOffsetsStats);
  const Tensor seq_len = graph->tensor(fe::graph::Tensor_attributes()
                                           .set_name("seq_len")
                                           .set_uid(kSeqLen)
                                           .set_dim({B, 1, 1, 1})
                                           .set_stride({1, 1, 1, 1})
                                           .set_data_type(fe::DataType_t::INT32));
  auto qkv_tensor = [&](const char* name, std::int64_t uid, std::int64_t heads) {
    return graph->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({B, heads, S, hd})
                             .set_stride({S * ld, hd, ld, 1})
                             .set_ragged_offset(offsets_qkv));
  };
  const Tensor q = qkv_tensor("Q", kQ, Hc), k = qkv_tensor("K", kK, KVc),
               v = qkv_tensor("V", kV, KVc);
  const std::vector<std::int64_t> o_dim{B, Hc, S, hd}, o_stride{S * H * hd, hd, H * hd, 1};
  const std::vector<std::int64_t> stats_dim{B, Hc, S, 1}, stats_stride{S * H, 1, H, 1};
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  try {
    if (!key.backward) {
      fe::graph::SDPA_attributes options;
      options.set_name("sdpa")
          .set_generate_stats(true)
          .set_attn_scale(scale)
          .set_padding_mask(true)
          .set_seq_len_q(seq_len)
          .set_seq_len_kv(seq_len)
          .set_causal_mask(true);
      // Keys kept where column + window > row: the row at i sees (i - window, i].
      if (key.window > 0) options.set_diagonal_band_left_bound(static_cast<int>(key.window));
      auto [o, stats] = graph->sdpa(q, k, v, options);
      o->set_output(true).set_uid(kO).set_dim(o_dim).set_stride(o_stride).set_ragged_offset(
          offsets_o);
      stats->set_output(true)
          .set_uid(kStats)
          .set_data_type(fe::DataType_t::FLOAT)
          .set_dim(stats_dim)
          .set_stride(stats_stride)
          .set_ragged_offset(offsets_stats);
    } else {
      auto input = [&](const char* name, std::int64_t uid, const std::vector<std::int64_t>& dim,
                       const std::vector<std::int64_t>& stride, const Tensor& ragged) {
        return graph->tensor(fe::graph::Tensor_attributes()
                                 .set_name(name)
                                 .set_uid(uid)
                                 .set_dim(dim)
                                 .set_stride(stride)
                                 .set_ragged_offset(ragged));
      };
      const Tensor o = input("O", kO, o_dim, o_stride, offsets_o);
      const Tensor d_o = input("dO", kDO, o_dim, o_stride, offsets_o);
      const Tensor stats = input("Stats", kStats, stats_dim, stats_stride, offsets_stats);
      stats->set_data_type(fe::DataType_t::FLOAT);
      // By default cuDNN's deterministic backward: the same bits every run (a resumed run
      // repeats the uninterrupted one), its workspace dP for every slot, slots x heads x S^2 x
      // 2 bytes (1 GiB for 4 slots of 2048 tokens and 32 heads; ops/cudnn_plan.hpp). Its
      // atomic-accumulating backward with dense gradients returned NaN gradients on every shape
      // tried on an H200 (cuDNN 9.19, 2026-12-04); CudnnBackward (cudnn_attention.hpp) says what is
      // tried next.
      fe::graph::SDPA_backward_attributes options;
      options.set_name("sdpa_backward")
          .set_attn_scale(scale)
          .set_padding_mask(true)
          .set_seq_len_q(seq_len)
          .set_seq_len_kv(seq_len)
          .set_causal_mask(true)
          .set_max_total_seq_len_q(key.total_tokens)
          .set_max_total_seq_len_kv(key.total_tokens)
          .set_deterministic_algorithm(key.algorithm == CudnnBackward::kDeterministic);
      if (key.window > 0) options.set_diagonal_band_left_bound(static_cast<int>(key.window));
      auto [dq, dk, dv] = graph->sdpa_backward(q, k, v, o, d_o, stats, options);
      if (fused_gradients(key.algorithm)) {
        // In q/k/v's own layout and offsets, as TransformerEngine and PyTorch declare them: the
        // accumulator (and GQA's per-query-head sums of dK and dV) take these strides, so they
        // are (H + 2 KV) / H times the dense layout's.
        const std::vector<std::int64_t> qkv_dim_stride{S * ld, hd, ld, 1};
        dq->set_output(true).set_uid(kDQ).set_dim(o_dim).set_stride(qkv_dim_stride);
        dq->set_ragged_offset(offsets_qkv);
        dk->set_output(true).set_uid(kDK).set_dim({B, KVc, S, hd}).set_stride(qkv_dim_stride);
        dk->set_ragged_offset(offsets_qkv);
        dv->set_output(true).set_uid(kDV).set_dim({B, KVc, S, hd}).set_stride(qkv_dim_stride);
        dv->set_ragged_offset(offsets_qkv);
      } else {
        // Dense, not into the fused layout: the frontend sizes its fp32 workspace (dQ's
        // accumulator, and for GQA dK's and dV's per-query-head sums) from these strides, so
        // the fused row of (H + 2 KV) hd would make it (H + 2 KV) / H times larger, and the GQA
        // sums (g + 2) times (g = H / KV: 10 times for Llama-2-70B).
        const Tensor offsets_kv = offsets("offsets_kv", kOffsetsKv);
        const std::vector<std::int64_t> kv_stride{S * KV * hd, hd, KV * hd, 1};
        dq->set_output(true).set_uid(kDQ).set_dim(o_dim).set_stride(o_stride).set_ragged_offset(
            offsets_o);
        dk->set_output(true)
            .set_uid(kDK)
            .set_dim({B, KVc, S, hd})
            .set_stride(kv_stride)
            .set_ragged_offset(offsets_kv);
        dv->set_output(true)
            .set_uid(kDV)
            .set_dim({B, KVc, S, hd})
            .set_stride(kv_stride)
            .set_ragged_offset(offsets_kv);
      }
    }
    // The frontend throws when no implementation fits, and its dynamic loading when a library
    // (libcudart, libcudnn) is missing: either way the caller falls back to its own kernel.
    auto status = graph->validate();
    if (!status.is_good()) {
      message = status.get_message();
      return nullptr;
    }
  } catch (const std::exception& e) {
    message = e.what();
    return nullptr;
  }
  return graph;
}

void check(const fe::error_t& status, const char* step, const SdpaKey& key) {
  if (!status.is_good()) {
    fe::error_t copy = status;
    throw DeviceError(std::string("cuDNN attention ") + step + " (" + describe(key) +
                      ") failed: " + copy.get_message());
  }
}

}  // namespace

SdpaKey sdpa_key(bool backward, const std::vector<Segment>& segments, Index M,
                 const AttentionShape& shape, CudnnBackward algorithm) {
  SdpaKey key;
  key.backward = backward;
  key.slots = cudnn_slot_count(static_cast<Index>(segments.size()));
  Index longest = 1;
  for (const auto& s : segments) longest = std::max(longest, s.length);
  key.max_length = cudnn_size_bucket(longest);
  // Only the backward graph is sized by the tokens (its workspace): the forward's key leaves
  // them out, so a forward graph serves every micro-batch of its bucket.
  // The atomic backward's accumulator spans the token bound: the padded rows, so that a tile
  // running past the last token (or an unused slot's, whose offset is M) stays inside it.
  if (backward) {
    key.total_tokens =
        algorithm == CudnnBackward::kDeterministic ? cudnn_size_bucket(M) : cudnn_padded_rows(M);
    key.algorithm = algorithm;
  }
  key.heads = shape.heads;
  key.kv_heads = shape.kv_heads;
  key.call_kv_heads = shape.kv_heads;
  key.head_dim = shape.head_dim;
  // A window no shorter than every segment is plain causal attention: the same graph.
  key.window = shape.window > 0 && shape.window < longest ? shape.window : 0;
  return key;
}

bool cudnn_attention_supports(const AttentionShape& shape) {
  return cudnn_supports_head_dim(shape.head_dim);
}

std::string validate_sdpa_graph(const SdpaKey& key) {
  load_cudnn();  // the frontend asks the library's version
  std::string message;
  make_graph(key, message, 90);  // Hopper, checked on the host
  return message;
}

std::size_t offsets_span(Index slots) {
  return static_cast<std::size_t>(round_up(slots + 1, 2));
}

std::vector<SdpaCall> sdpa_forward_calls(const std::vector<Segment>& segments, Index M,
                                         const AttentionShape& shape) {
  return {{sdpa_key(false, segments, M, shape), {0, segments.size()}}};
}

std::vector<SdpaCall> sdpa_backward_calls(const std::vector<Segment>& segments, Index M,
                                          const AttentionShape& shape, CudnnBackward algorithm,
                                          double dp_cap_bytes) {
  const bool deterministic = algorithm == CudnnBackward::kDeterministic;
  const std::vector<SegmentRange> groups =
      deterministic ? cudnn_backward_groups(segments, M, shape, dp_cap_bytes)
                    : std::vector<SegmentRange>{{0, segments.size()}};
  std::vector<SdpaCall> calls;
  for (const SegmentRange& group : groups) {
    const std::vector<Segment> part(segments.begin() + static_cast<std::ptrdiff_t>(group.first),
                                    segments.begin() + static_cast<std::ptrdiff_t>(group.last));
    SdpaKey key = sdpa_key(true, part, M, shape, algorithm);
    if (deterministic)
      key.call_kv_heads =
          cudnn_kv_heads_per_call(key.slots * key.max_length * key.max_length, shape, dp_cap_bytes);
    for (Index first = 0; first < shape.kv_heads; first += key.call_kv_heads)
      calls.push_back({key, group, first});
  }
  return calls;
}

SdpaGeometry sdpa_geometry(const std::vector<SdpaCall>& calls, const std::vector<Segment>& segments,
                           Index M) {
  // The offsets make each segment's rows cuDNN's sequence: they must be the batch's rows in
  // order, every row in one (a row in none would get no gradient at all).
  ZL_CHECK(segments_tile_rows(segments, M));
  SdpaGeometry g;
  for (std::size_t c = 0; c < calls.size(); ++c) {
    const SdpaCall& call = calls[c];
    const SdpaKey& key = call.key;
    if (c > 0 && calls[c - 1].segments == call.segments && calls[c - 1].key.slots == key.slots) {
      g.seq_len_at.push_back(g.seq_len_at.back());  // another group of heads: the same entries
      g.offsets_at.push_back(g.offsets_at.back());
      continue;
    }
    const auto slots = static_cast<std::size_t>(key.slots);
    const std::size_t span = offsets_span(key.slots);
    const std::int64_t ld = (key.heads + 2 * key.kv_heads) * key.head_dim;
    const std::size_t length_at = g.seq_len.size(), start_at = g.offsets.size();
    g.seq_len_at.push_back(length_at);
    g.offsets_at.push_back(start_at);
    g.seq_len.resize(length_at + static_cast<std::size_t>(round_up(key.slots, 4)), 0);
    g.offsets.resize(start_at + 4 * span, 0);
    // An unused slot (and the end entry): offset M, past the data, where any stray access
    // lands in the zero padding rows rather than in another call's segments.
    for (std::size_t b = 0; b <= slots; ++b) {
      const std::size_t index = call.segments.first + b;
      const bool used = b < slots && index < call.segments.last;
      const Index begin = used ? segments[index].begin : M;
      if (used) g.seq_len[length_at + b] = static_cast<std::int32_t>(segments[index].length);
      g.offsets[start_at + b] = begin * ld;
      g.offsets[start_at + span + b] = begin * key.heads * key.head_dim;
      g.offsets[start_at + 2 * span + b] = begin * key.heads;
      g.offsets[start_at + 3 * span + b] = begin * key.kv_heads * key.head_dim;
    }
  }
  return g;
}

struct CudnnAttention::Impl {
  Impl(Device& device_, cudaStream_t stream_)
      : device(device_),
        stream(stream_),
        algorithm(cudnn_backward_from_environment()),
        dp_cap(cudnn_dp_workspace_cap_from_environment()) {}
  Device& device;
  cudaStream_t stream;
  CudnnBackward algorithm;
  double dp_cap;  // bytes
  cudnnHandle_t handle = nullptr;
  std::map<SdpaKey, Built> graphs;
  std::set<SdpaKey> refused;  // forward keys whose graphs the frontend refused: not retried
  std::vector<std::string> refusals;
  // The lengths and ragged offsets of a pass's calls on the device (sdpa_geometry). The forward
  // and the backward keep their own, so that each is uploaded once per micro-batch (every
  // layer's passes share them).
  struct Geometry {
    DeviceBuffer<std::int32_t> seq_len;
    DeviceBuffer<std::int64_t> offsets;
    SdpaGeometry host;  // as uploaded
  };
  Geometry forward_geometry, backward_geometry;
  DeviceBuffer<std::byte> workspace;
  DeviceBuffer<float> stats_scratch;  // a call's statistics, where their slice is unaligned

  Built build(const SdpaKey& key) {
    std::string message;
    auto graph = make_graph(key, message, 0);
    if (!graph) throw DeviceError("cuDNN attention refused " + describe(key) + ": " + message);
    check(graph->build_operation_graph(handle), "build_operation_graph", key);
    check(graph->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}),
          "create_execution_plans", key);
    check(graph->check_support(handle), "check_support", key);
    check(graph->build_plans(handle), "build_plans", key);
    Built built{graph, 0};
    check(graph->get_workspace_size(built.workspace), "get_workspace_size", key);
    return built;
  }

  Built& graph_for(const SdpaKey& key) {
    auto it = graphs.find(key);
    if (it != graphs.end()) return it->second;
    return graphs.emplace(key, build(key)).first->second;
  }

  // The workspace for a pass's calls, sized for the largest before any runs: one buffer for all.
  void reserve_workspace(const std::vector<SdpaCall>& calls) {
    std::int64_t bytes = 1;
    for (const SdpaCall& call : calls) bytes = std::max(bytes, graph_for(call.key).workspace);
    workspace.ensure(device, static_cast<std::size_t>(bytes));
  }

  // The calls' geometry (sdpa_geometry), uploaded only when it differs from the last upload.
  void upload_geometry(Geometry& g, const std::vector<SdpaCall>& calls,
                       const std::vector<Segment>& segments, Index M) {
    SdpaGeometry host = sdpa_geometry(calls, segments, M);
    const bool same = host.seq_len == g.host.seq_len && host.offsets == g.host.offsets;
    g.host = std::move(host);
    if (same) return;
    upload<std::int32_t>(device, g.seq_len, g.host.seq_len);
    upload<std::int64_t>(device, g.offsets, g.host.offsets);
  }

  void run(const SdpaKey& key, std::unordered_map<std::int64_t, void*>& pack, Geometry& g,
           std::size_t call) {
    Built& built = graph_for(key);
    const std::size_t span = offsets_span(key.slots);
    std::int64_t* offsets = g.offsets.data() + g.host.offsets_at[call];
    pack[kSeqLen] = g.seq_len.data() + g.host.seq_len_at[call];
    pack[kOffsetsQkv] = offsets;
    pack[kOffsetsO] = offsets + span;
    pack[kOffsetsStats] = offsets + 2 * span;
    if (key.backward && !fused_gradients(key.algorithm)) pack[kOffsetsKv] = offsets + 3 * span;
    if (fe::detail::set_stream(handle, stream) != CUDNN_STATUS_SUCCESS)
      throw DeviceError("cudnnSetStream failed");
    if (key.backward && key.algorithm != CudnnBackward::kDeterministic) {
      // The frontend zeroed the accumulator itself before cuDNN 9.6 and leaves it to the backend
      // since; zeroed here too (one pass of its bytes), so that no stale bytes can enter it.
      const std::int64_t bytes = std::min(dq_accumulator_bytes(key), built.workspace);
      if (cudaMemsetAsync(workspace.data(), 0, static_cast<std::size_t>(bytes), stream) !=
          cudaSuccess)
        throw DeviceError("cudaMemsetAsync of cuDNN's dQ accumulator (" + describe(key) +
                          ") failed");
    }
    check(built.graph->execute(handle, pack, workspace.data()), "execute", key);
  }
};

CudnnAttention::CudnnAttention(Device& device, cudaStream_t stream)
    : impl_(std::make_unique<Impl>(device, stream)) {
  load_cudnn();
  const cudnnStatus_t status = fe::detail::create_handle(&impl_->handle);
  if (status != CUDNN_STATUS_SUCCESS)
    throw DeviceError(std::string("cudnnCreate failed: ") + fe::detail::get_error_string(status));
}

CudnnAttention::~CudnnAttention() {
  if (impl_ && impl_->handle) fe::detail::destroy_handle(impl_->handle);
}

bool CudnnAttention::available(const std::vector<Segment>& segments, Index M,
                               const AttentionShape& shape) {
  if (!cudnn_attention_supports(shape)) return false;
  const SdpaKey forward_key = sdpa_key(false, segments, M, shape);
  if (impl_->refused.count(forward_key)) return false;
  try {
    impl_->graph_for(forward_key);
    for (const SdpaCall& call :
         sdpa_backward_calls(segments, M, shape, impl_->algorithm, impl_->dp_cap))
      impl_->graph_for(call.key);
  } catch (const std::exception& e) {  // DeviceError, or the frontend's own (a library missing)
    impl_->refused.insert(forward_key);
    impl_->refusals.push_back(describe(forward_key) + ": " + e.what());
    return false;
  }
  return true;
}

CudnnBackward CudnnAttention::backward_algorithm() const {
  return impl_->algorithm;
}

double CudnnAttention::dp_workspace_cap() const {
  return impl_->dp_cap;
}

const std::vector<std::string>& CudnnAttention::refusals() const {
  return impl_->refusals;
}

void CudnnAttention::forward(Bf16Bits* out, float* stats, const Bf16Bits* qkv,
                             const std::vector<Segment>& segments, Index M,
                             const AttentionShape& shape) {
  const std::vector<SdpaCall> calls = sdpa_forward_calls(segments, M, shape);
  impl_->upload_geometry(impl_->forward_geometry, calls, segments, M);
  impl_->reserve_workspace(calls);
  const Index hd = shape.head_dim;
  std::unordered_map<std::int64_t, void*> pack{
      {kQ, const_cast<Bf16Bits*>(qkv)},
      {kK, const_cast<Bf16Bits*>(qkv + shape.heads * hd)},
      {kV, const_cast<Bf16Bits*>(qkv + (shape.heads + shape.kv_heads) * hd)},
      {kO, out},
      {kStats, stats}};
  impl_->run(calls[0].key, pack, impl_->forward_geometry, 0);
}

void CudnnAttention::backward(Bf16Bits* diff_q, Bf16Bits* diff_k, Bf16Bits* diff_v,
                              const Bf16Bits* diff_out, const Bf16Bits* qkv, const Bf16Bits* out,
                              const float* stats, const std::vector<Segment>& segments, Index M,
                              const AttentionShape& shape) {
  const std::vector<SdpaCall> calls =
      sdpa_backward_calls(segments, M, shape, impl_->algorithm, impl_->dp_cap);
  impl_->upload_geometry(impl_->backward_geometry, calls, segments, M);
  const Index hd = shape.head_dim, k_col = shape.heads * hd,
              v_col = (shape.heads + shape.kv_heads) * hd, per_kv = shape.heads / shape.kv_heads;
  // One call per group of segments and of heads, each reading and writing only its segments'
  // rows and its heads' columns: every tensor from the group's first head on, the strides the
  // layer's. A statistics slice off a 16-byte boundary (cudnn_stats_slice_aligned) is copied
  // first to the same columns from 0 of a scratch of the same layout, every padded row: the
  // same strides and ragged offsets, an aligned start.
  impl_->reserve_workspace(calls);
  const std::size_t stats_rows = static_cast<std::size_t>(cudnn_padded_rows(M));
  for (std::size_t c = 0; c < calls.size(); ++c) {
    const Index kv = calls[c].kv_head_first * hd, q = calls[c].kv_head_first * per_kv * hd;
    const float* call_stats = stats + calls[c].kv_head_first * per_kv;
    if (!cudnn_stats_slice_aligned(calls[c].kv_head_first, shape)) {  // (stats: a cudaMalloc)
      const std::size_t pitch = static_cast<std::size_t>(shape.heads) * sizeof(float);
      float* scratch = impl_->stats_scratch.ensure(impl_->device, stats_rows * shape.heads);
      const std::size_t width =
          static_cast<std::size_t>(calls[c].key.call_kv_heads * per_kv) * sizeof(float);
      if (cudaMemcpy2DAsync(scratch, pitch, call_stats, pitch, width, stats_rows,
                            cudaMemcpyDeviceToDevice, impl_->stream) != cudaSuccess)
        throw DeviceError("cudaMemcpy2DAsync of the statistics of KV heads from " +
                          std::to_string(calls[c].kv_head_first) + " (" + describe(calls[c].key) +
                          ") failed");
      call_stats = scratch;
    }
    std::unordered_map<std::int64_t, void*> pack{{kQ, const_cast<Bf16Bits*>(qkv + q)},
                                                 {kK, const_cast<Bf16Bits*>(qkv + k_col + kv)},
                                                 {kV, const_cast<Bf16Bits*>(qkv + v_col + kv)},
                                                 {kO, const_cast<Bf16Bits*>(out + q)},
                                                 {kDO, const_cast<Bf16Bits*>(diff_out + q)},
                                                 {kStats, const_cast<float*>(call_stats)},
                                                 {kDQ, diff_q + q},
                                                 {kDK, diff_k + kv},
                                                 {kDV, diff_v + kv}};
    impl_->run(calls[c].key, pack, impl_->backward_geometry, c);
  }
}

}  // namespace zerolora::cuda
