// How the model gets its base weights: unit by unit, in an order announced up front.
// Single-process weights hand out their buffers directly (LlamaWeights in host memory; on a GPU
// a one-rank store in its memory: src/zero3/whole_model.hpp); the ZeRO-3 store
// (src/zero3/sharded_weights.hpp) all-gathers each unit from the ranks' shards, prefetching
// along the announced schedule and freeing a unit when it is released.
#pragma once

#include <exception>
#include <vector>

#include "model/parameter_table.hpp"

namespace zerolora {

struct UnitId {
  Unit kind;
  int layer = -1;  // for Unit::kLayer
  bool operator==(const UnitId&) const = default;
};

template <class W>
class WeightProvider {
 public:
  virtual ~WeightProvider() = default;
  virtual const LlamaConfig& config() const = 0;
  virtual const LayerLayout& layout() const = 0;
  // The units this step will acquire, in order (every rank announces the same schedule).
  virtual void begin_schedule(const std::vector<UnitId>& schedule) {}
  // The unit's full buffer (parameter_table offsets apply), valid until release(unit).
  virtual const W* acquire(UnitId unit) = 0;
  virtual void release(UnitId unit) {}
  // True when acquire hands out the same buffer every time and release frees nothing (the
  // whole model in memory): a device copy of a unit may then be kept for the whole run.
  virtual bool resident() const { return false; }
  // True when acquire hands out the runtime device's memory (ZeRO-3's store keeps its shards
  // there); false: host memory, which the model copies to a device the host cannot address.
  virtual bool device_memory() const { return false; }
};

// An acquired unit, released at scope exit. release() may issue the next gather and fail
// (device memory full, a CUDA error): that error leaves the destructor as the typed error it
// is (noexcept(false); an implicitly noexcept destructor would std::terminate). While another
// error unwinds the stack, a failing release is dropped, so that the first error is the one
// the run reports.
template <class W>
struct AcquiredUnit {
  WeightProvider<W>& provider;
  UnitId unit;
  const W* data;
  int unwinding = std::uncaught_exceptions();  // errors in flight when acquired
  ~AcquiredUnit() noexcept(false) {
    if (std::uncaught_exceptions() <= unwinding) {
      provider.release(unit);
      return;
    }
    try {
      provider.release(unit);
    } catch (...) {  // NOLINT(bugprone-empty-catch): the error already unwinding wins
    }
  }
};

// Elements of a unit's buffer.
inline Index unit_elements(const LlamaConfig& c, const LayerLayout& layout, UnitId unit) {
  switch (unit.kind) {
    case Unit::kLayer:
      return layout.size();
    case Unit::kFinalNorm:
      return c.hidden_size;
    case Unit::kEmbedding:
    case Unit::kLmHead:
      return c.vocab_size * c.hidden_size;
  }
  return 0;
}

// The unit holding the lm_head weights: the embedding when they are tied.
inline UnitId lm_head_unit(const LlamaConfig& c) {
  return c.tie_word_embeddings ? UnitId{Unit::kEmbedding} : UnitId{Unit::kLmHead};
}

}  // namespace zerolora
