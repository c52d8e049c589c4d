#include "ops/matmul.hpp"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/cpu_dispatch.hpp"
#include "core/error.hpp"
#include "core/runtime_state.hpp"

namespace zerolora {
namespace {

// Below this many multiply-adds our own loops beat a oneDNN call, whose fixed cost is a few
// microseconds: LoRA's skinny products of small models live here.
constexpr Index kLoopMaxProduct = 2048;

// c = alpha a b (+ c). Operands are first made contiguous along the vectorized dimension:
// wide results (N >= 16) accumulate rows, c[i, :] += a[i, k] b[k, :]; narrow ones are dot
// products, c[i, j] = a[i, :] . b[:, j]. Rows of c are shared among the threads.
template <class In, class Out>
ZL_CPU_CLONES void matmul_loop(Runtime& rt, Mat<const In> a, Mat<const In> b, Mat<Out> c,
                               double alpha, bool accumulate) {
  using Acc = std::conditional_t<std::is_same_v<Out, double>, double, float>;
  const Index M = c.rows, N = c.cols, K = a.cols;
  const bool wide = N >= 16;
  // wide: b as [K, N] rows; narrow: b^T as [N, K] rows. a always as [M, K] rows.
  std::vector<Acc> bd(static_cast<std::size_t>(K * N)), ad(static_cast<std::size_t>(M * K));
  for (Index k = 0; k < K; ++k)
    for (Index j = 0; j < N; ++j)
      (wide ? bd[k * N + j] : bd[j * K + k]) = static_cast<Acc>(to_float(b.at(k, j)));
  for (Index i = 0; i < M; ++i)
    for (Index k = 0; k < K; ++k) ad[i * K + k] = static_cast<Acc>(to_float(a.at(i, k)));
  const Acc scale = static_cast<Acc>(alpha);
#pragma omp parallel num_threads(rt.threads()) if (M * N * K > 32768 && M > 1)
  {
    std::vector<Acc> row(static_cast<std::size_t>(N));
#pragma omp for schedule(static)
    for (Index i = 0; i < M; ++i) {
      const Acc* ai = ad.data() + i * K;
      if (wide) {
        std::fill(row.begin(), row.end(), Acc{0});
        for (Index k = 0; k < K; ++k) {
          const Acc aik = ai[k];
          const Acc* bk = bd.data() + k * N;
#pragma omp simd
          for (Index j = 0; j < N; ++j) row[j] += aik * bk[j];
        }
      } else {
        for (Index j = 0; j < N; ++j) {
          const Acc* bj = bd.data() + j * K;
          Acc dot = 0;
#pragma omp simd reduction(+ : dot)
          for (Index k = 0; k < K; ++k) dot += ai[k] * bj[k];
          row[j] = dot;
        }
      }
      Out* ci = c.data + i * c.rs;
      for (Index j = 0; j < N; ++j)
        ci[j] = static_cast<Out>(accumulate ? ci[j] + scale * row[j] : scale * row[j]);
    }
  }
}

UnsupportedError no_bf16_matmul() {
  return UnsupportedError(
      "bf16 matmuls are not available on this CPU: this oneDNN implements them with AVX-512 "
      "only. Compute in fp32 instead (train: --bf16 false; generate, forward, merge: --dtype "
      "fp32)");
}

template <class T>
constexpr dnnl::memory::data_type dnnl_type() {
  if constexpr (std::is_same_v<T, float>)
    return dnnl::memory::data_type::f32;
  else
    return dnnl::memory::data_type::bf16;
}

// Products of at least this many multiply-adds keep a smaller rest (bulk_rows).
constexpr double kLargeProducts = 1 << 30;
// From this many (2^34: 24 ms or more at the AMX peak of 1.4 TFLOP/s, 0.5-1 ms to create), all
// rows run on one exact primitive: a rest would stream the whole weight a second time on the
// slower kernel (a Llama-2 lm_head's 3 rest rows of 511: 25 ms forward + 35 ms backward, 4% of
// job (a)'s step), and creating a primitive for every new row count costs under 4%.
constexpr double kHugeProducts = 17179869184.0;

// The row count given at execution instead of at creation (MatmulKey::m of such primitives).
constexpr std::int64_t kRowsAtExecution = -1;

// The primitive descriptor of c = a b, in oneDNN 2's API (through an op descriptor) or 3's.
dnnl::matmul::primitive_desc make_matmul_desc(const dnnl::engine& engine,
                                              const dnnl::memory::desc& a,
                                              const dnnl::memory::desc& b,
                                              const dnnl::memory::desc& c,
                                              const dnnl::primitive_attr& attr = {}) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::matmul::primitive_desc(engine, a, b, c, attr);
#else
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, engine);
#endif
}

template <class In, class Out>
detail::CachedMatmul create_matmul(Runtime& rt, const detail::MatmulKey& key) {
  using dims = dnnl::memory::dims;
  const dnnl::memory::dim rows = key.m == kRowsAtExecution ? DNNL_RUNTIME_DIM_VAL : key.m;
  dnnl::memory::desc a_md(dims{rows, key.k}, dnnl_type<In>(), dims{key.a_rs, key.a_cs});
  dnnl::memory::desc b_md(dims{key.k, key.n}, dnnl_type<In>(), dims{key.b_rs, key.b_cs});
  dnnl::memory::desc c_md(dims{rows, key.n}, dnnl_type<Out>(), dims{key.c_rs, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::post_ops ops;
  if (key.alpha != 1.0f) {
#if DNNL_VERSION_MAJOR >= 3
    // oneDNN 3 dropped output scales: alpha is a linear post-op, placed before the sum so that
    // only the product is scaled (c = alpha a b + c).
    ops.append_eltwise(dnnl::algorithm::eltwise_linear, key.alpha, 0.0f);
#else
    attr.set_output_scales(0, {key.alpha});
#endif
  }
  if (key.accumulate) ops.append_sum(1.0f);
  if (ops.len() > 0) attr.set_post_ops(ops);
  dnnl::matmul::primitive_desc pd;
  try {
    pd = make_matmul_desc(rt.state().engine, a_md, b_md, c_md, attr);
  } catch (const dnnl::error&) {
    if constexpr (std::is_same_v<In, bf16>) throw no_bf16_matmul();
    throw;
  }
  return {dnnl::matmul(pd), a_md, b_md, c_md, pd.scratchpad_desc().get_size()};
}

// The leading rows of an [M, ...] product that run on an exact primitive: a multiple of a power
// of two between M / 16 and M / 8 (M / 128 and M / 64 for products of 2^30 multiply-adds or
// more, where creating a primitive costs little against running it and the slower rest should
// be small); all of M below 64 or from kHugeProducts.
Index bulk_rows(Index M, double products) {
  if (M < 64 || products >= kHugeProducts) return M;
  const Index parts = products >= kLargeProducts ? 64 : 8;
  Index granule = 1;
  while (granule * 2 * parts <= M) granule *= 2;
  return M - M % granule;
}

// c = alpha a b (+ c) on the cached primitive of its exact shape, or (rows_at_execution) on the
// one of its shape without the row count.
template <class In, class Out>
void run_primitive(Runtime& rt, Mat<const In> a, Mat<const In> b, Mat<Out> c, double alpha,
                   bool accumulate, bool rows_at_execution) {
  const Index M = c.rows;
  auto& state = rt.state();
  detail::MatmulKey key{M,
                        c.cols,
                        a.cols,
                        a.rs,
                        a.cs,
                        b.rs,
                        b.cs,
                        c.rs,
                        static_cast<int>(dnnl_type<In>()),
                        static_cast<int>(dnnl_type<Out>()),
                        static_cast<float>(alpha),
                        accumulate};
  if (rows_at_execution) key.m = kRowsAtExecution;
  std::shared_ptr<const detail::CachedMatmul> entry;
  {
    std::lock_guard lock(state.matmul_mutex);
    auto it = state.matmuls.find(key);
    if (it == state.matmuls.end()) {
      auto created = std::make_shared<const detail::CachedMatmul>(create_matmul<In, Out>(rt, key));
      state.matmul_recency.push_front(key);
      it = state.matmuls
               .emplace(key, detail::RuntimeState::CachedMatmulSlot{std::move(created),
                                                                    state.matmul_recency.begin()})
               .first;
      if (state.matmuls.size() > std::max<std::size_t>(1, state.max_cached_matmuls)) {
        state.matmuls.erase(state.matmul_recency.back());
        state.matmul_recency.pop_back();
      }
    } else {
      state.matmul_recency.splice(state.matmul_recency.begin(), state.matmul_recency,
                                  it->second.recency);
    }
    entry = it->second.matmul;
  }
  const int thread = omp_in_parallel() ? omp_get_thread_num() : 0;
  ZL_CHECK(thread < static_cast<int>(state.streams.size()));
  auto& scratch = state.scratchpads[static_cast<std::size_t>(thread)];
  scratch.ensure(entry->scratchpad_bytes);
  using dims = dnnl::memory::dims;
  const bool exact = !rows_at_execution;
  dnnl::memory a_mem(
      exact ? entry->a : dnnl::memory::desc(dims{M, a.cols}, dnnl_type<In>(), dims{a.rs, a.cs}),
      state.engine, const_cast<In*>(a.data));
  dnnl::memory b_mem(entry->b, state.engine, const_cast<In*>(b.data));
  dnnl::memory c_mem(
      exact ? entry->c : dnnl::memory::desc(dims{M, c.cols}, dnnl_type<Out>(), dims{c.rs, 1}),
      state.engine, c.data);
  dnnl::memory s_mem(
      dnnl::memory::desc(dnnl::memory::dims{static_cast<Index>(entry->scratchpad_bytes)},
                         dnnl::memory::data_type::u8, dnnl::memory::dims{1}),
      state.engine, scratch.data());
  auto& stream = state.streams[static_cast<std::size_t>(thread)];
  entry->primitive.execute(stream, {{DNNL_ARG_SRC, a_mem},
                                    {DNNL_ARG_WEIGHTS, b_mem},
                                    {DNNL_ARG_DST, c_mem},
                                    {DNNL_ARG_SCRATCHPAD, s_mem}});
  stream.wait();
}

// Creating a oneDNN primitive JIT-compiles it: 0.6-1.3 ms on the development machine, against
// ~50 us to run one of a small model's GEMMs. With a primitive per row count, unpacked batches
// (whose token count changes every step) spent a third of job (b)'s step creating primitives
// (ONEDNN_VERBOSE=2). So M rows run as a bulk (bulk_rows), whose row counts recur across steps,
// on an exact primitive (brgemm, on AMX where present), and the rest (under M / 8 rows, or
// M / 64) on a primitive that takes its row count at execution (oneDNN's gemm:jit, ~0.06 ms to
// create, one per shape without the rows, but slower to run).
// Which primitive computes a row depends on M alone, never on what ran before, so a resumed
// run computes what the uninterrupted one did.
// One exception to the bulk: a large bf16 product whose b is row-major ([K, N], N contiguous:
// every backward-data GEMM, d(x) = d(y) W, the lm_head's too) runs all its rows on the second
// primitive. oneDNN 2.6's brgemm runs those at 760-860 GFLOP/s on AMX where gemm:jit reaches
// 1170-1670 (Llama-2-7B's shapes, 2 threads: lm_head backward 174 -> 95 ms, gate/up 114 -> 67,
// down 61 -> 35, q/k/v 64 -> 37, o 20 -> 15); on AVX-512 BF16 without AMX gemm:jit is 2-6%
// faster. Products with a K-contiguous b (the forward's x W^T) run near the peak on brgemm.
template <class In, class Out>
void matmul_onednn(Runtime& rt, Mat<const In> a, Mat<const In> b, Mat<Out> c, double alpha,
                   bool accumulate) {
  const Index M = c.rows, N = c.cols, K = a.cols;
  const double products = static_cast<double>(M) * static_cast<double>(N * K);
  const bool row_major_b = std::is_same_v<In, bf16> && b.cs == 1 && b.rs != 1;
  const Index bulk = row_major_b && products >= kLargeProducts ? 0 : bulk_rows(M, products);
  if (bulk > 0)
    run_primitive(rt, a.block(0, 0, bulk, K), b, c.block(0, 0, bulk, N), alpha, accumulate, false);
  if (bulk < M)
    run_primitive(rt, a.block(bulk, 0, M - bulk, K), b, c.block(bulk, 0, M - bulk, N), alpha,
                  accumulate, true);
}

}  // namespace

template <class In, class Out>
void matmul(Runtime& rt, Mat<const In> a, Mat<const In> b, Mat<Out> c, double alpha,
            bool accumulate) {
  ZL_CHECK(a.rows == c.rows && b.cols == c.cols && a.cols == b.rows);
  ZL_CHECK(c.cs == 1);
  if (c.rows == 0 || c.cols == 0) return;
  if (a.cols == 0) {
    if (!accumulate)
      for (Index i = 0; i < c.rows; ++i)
        for (Index j = 0; j < c.cols; ++j) c.at(i, j) = Out{0};
    return;
  }
  if constexpr (std::is_same_v<Out, double>) {
    matmul_loop(rt, a, b, c, alpha, accumulate);
  } else {
    if (c.rows * c.cols * a.cols <= kLoopMaxProduct)
      matmul_loop(rt, a, b, c, alpha, accumulate);
    else
      matmul_onednn(rt, a, b, c, alpha, accumulate);
  }
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
}

void require_bf16_matmul(Runtime& rt) {
  using dims = dnnl::memory::dims;
  const dnnl::memory::desc a(dims{64, 64}, dnnl::memory::data_type::bf16, dims{64, 1});
  const dnnl::memory::desc c(dims{64, 64}, dnnl::memory::data_type::f32, dims{64, 1});
  try {
    make_matmul_desc(rt.state().engine, a, a, c);
  } catch (const dnnl::error&) {
    throw no_bf16_matmul();
  }
}

template void matmul<float, float>(Runtime&, Mat<const float>, Mat<const float>, Mat<float>, double,
                                   bool);
template void matmul<bf16, float>(Runtime&, Mat<const bf16>, Mat<const bf16>, Mat<float>, double,
                                  bool);
template void matmul<double, double>(Runtime&, Mat<const double>, Mat<const double>, Mat<double>,
                                     double, bool);

}  // namespace zerolora
