// A batch's segments on the device as the GPU's reference attention kernel reads them
// (cuda_ops.hpp AttentionGeometry: each row's segment, each segment's begin and length),
// uploaded only when they differ from the last batch's: every layer's passes share them.
// Host code (cuda_kernels.cpp, and the CUDA emulator's cuDNN stand-in).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/device.hpp"
#include "core/error.hpp"
#include "cuda/cuda_ops.hpp"
#include "ops/attention.hpp"

namespace zerolora::cuda {

class SegmentsOnDevice {
 public:
  AttentionGeometry geometry(Device& device, const std::vector<Segment>& segments, Index M,
                             const AttentionShape& shape) {
    // Every row in a segment (the kernels read each row's segment), GQA's groups whole.
    ZL_CHECK(shape.kv_heads > 0 && shape.heads % shape.kv_heads == 0);
    ZL_CHECK(segments_tile_rows(segments, M));
    const bool same = segments.size() == segments_.size() &&
                      std::equal(segments.begin(), segments.end(), segments_.begin(),
                                 [](const Segment& a, const Segment& b) {
                                   return a.begin == b.begin && a.length == b.length;
                                 });
    if (!same || M != rows_) {
      std::vector<std::int32_t> row_segment(static_cast<std::size_t>(M)), begin, length;
      for (std::size_t s = 0; s < segments.size(); ++s) {
        begin.push_back(static_cast<std::int32_t>(segments[s].begin));
        length.push_back(static_cast<std::int32_t>(segments[s].length));
        for (Index t = 0; t < segments[s].length; ++t)
          row_segment[static_cast<std::size_t>(segments[s].begin + t)] =
              static_cast<std::int32_t>(s);
      }
      upload<std::int32_t>(device, row_segment_, row_segment);
      upload<std::int32_t>(device, segment_begin_, begin);
      upload<std::int32_t>(device, segment_length_, length);
      segments_ = segments;
      rows_ = M;
    }
    return {row_segment_.data(), segment_begin_.data(), segment_length_.data(), M,
            shape.heads,         shape.kv_heads,        shape.head_dim,         shape.window};
  }

 private:
  DeviceBuffer<std::int32_t> row_segment_, segment_begin_, segment_length_;
  std::vector<Segment> segments_;
  Index rows_ = -1;
};

}  // namespace zerolora::cuda
