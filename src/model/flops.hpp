// Model FLOPs per trained token for LoRA on a frozen base (DESIGN.md, "FLOPs, for MFU").
// N = every matmul weight (q, k, v, o, gate, up, down of each layer, plus lm_head; not the
// embedding lookup). Forward 2N + backward 2N (activation gradients only), plus LoRA:
// forward 2 r (in + out), backward 4 r (in + out) per adapted matrix, plus causal attention
// 6 T d per layer (d = heads x head_dim). Recompute is not counted.
#pragma once

#include "io/llama_config.hpp"
#include "lora/lora_layout.hpp"

namespace zerolora {

inline double model_flops_per_token(const LlamaConfig& c, const LoraLayout* lora, Index seq_len) {
  const double D = static_cast<double>(c.hidden_size), I = static_cast<double>(c.intermediate_size);
  const double per_layer = D * c.q_dim() + 2.0 * D * c.kv_dim() + c.q_dim() * D + 3.0 * D * I;
  const double n =
      per_layer * static_cast<double>(c.num_layers) + static_cast<double>(c.vocab_size) * D;
  double flops = 4.0 * n;
  if (lora) {
    for (int l = 0; l < c.num_layers; ++l)
      for (int m = 0; m < kLoraModuleCount; ++m)
        if (const auto* a = lora->adapter(l, static_cast<LoraModule>(m)))
          flops += 6.0 * lora->config().rank * static_cast<double>(a->in + a->out);
  }
  flops += 6.0 * static_cast<double>(seq_len) * static_cast<double>(c.q_dim()) *
           static_cast<double>(c.num_layers);
  return flops;
}

inline double model_flops_per_token(const LlamaConfig& c, const LoraLayout& lora, Index seq_len) {
  return model_flops_per_token(c, &lora, seq_len);
}

}  // namespace zerolora
