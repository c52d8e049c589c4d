#!/usr/bin/env python3
"""A second reference per fixture that rounds to bf16 exactly where zerolora's bf16 mode does
(Bf16Policy: bf16 base weights, bf16 matmul operands, fp32 accumulation, fp32 activations,
fp32 LoRA), so the engine's bf16 mode can be compared with tight tolerances.

For each fixture in tests/fixtures/{gqa_tied,odd_untied_all,llama3_rope,linear_rope,qwen2_bias,
mistral_window} it reads
the committed model (model/: config.json + bf16 safetensors) and, from reference.safetensors
(made by tools/make_fixtures.py with torch + transformers + PEFT in fp32), the batch, the LoRA
weights and the optimizer settings; runs its own torch implementation of the Llama forward and
backward that rounds to bf16 at the engine's points; and writes
tests/fixtures/<case>/reference_bf16.safetensors                (ComputeOptions defaults:
    bf16_residual = false, attention softmax in fp32)
tests/fixtures/<case>/reference_bf16_residual.safetensors       (bf16_residual = true)
with the same tensors as reference.safetensors: input_ids, attention_mask, labels, lora.<name>,
logits, loss, grad.<name>, losses, grad_norms, step3.<name> (the 3 training steps exactly as
tools/make_fixtures.py makes them: clip_grad_norm_ then torch.optim.AdamW).

Where the engine rounds (file:line in zerolora at the time of writing; see ROUNDING_POINTS):
  forward   every base projection y = bf16(x) W^T, W bf16, fp32 accumulation and output
            (src/ops/linear.cpp linear_forward): the fused QKV, O, fused gate/up, down and the lm_head;
            the residual adds (O, down) are fp32 sums onto the fp32 residual.
  backward  every base projection dX = bf16(dY) W (src/ops/linear.cpp linear_backward_data): the lm_head (dY =
            the cross-entropy gradient already scaled by 1/label count), down, fused gate/up,
            O, fused QKV.
  attention head_dim < 64 (all four fixtures: head_dim 16) runs the direct kernel
            (src/ops/attention.cpp:43,56,132), which computes in fp32 throughout: nothing is
            rounded. head_dim >= 64 runs the tiled kernel: Q, K, V, P, dO and dS rounded (see
            Attention below).
  not rounded: embedding output (bf16 table values, exact in fp32), RMSNorm (fp32, bf16 weight),
            RoPE (fp32 cos/sin), SwiGLU, softmax, cross-entropy, the whole LoRA branch (fp32
            weights, fp32 unrounded input, fp32 gradients), the residual stream.
  bf16_residual = true adds: the residual stream rounded to bf16 where it enters each layer and
            the final norm (src/model/llama_model.cpp:160,169 via seal_layer_input :128-135),
            with the gradient passed straight through.
The fp32 ops follow the engine's formulas and operation order where that is cheap (RMSNorm,
SwiGLU, attention, LoRA, cross-entropy forward and backward as custom autograd Functions), but
GEMM summation order, fast_exp and FMA contraction differ at the ulp level: an element that
lands within a few ulps of a bf16 rounding boundary can round the other way in the engine
("tie flip"), and one flip moves later values by up to a bf16 step. --noise-floor measures how
far such ulp differences move each output.

Validation (always run): the same code with rounding off must reproduce reference.safetensors
(the HF + PEFT fp32 reference); it prints that, and how far each bf16 reference is from the fp32
one. Run: .venv/bin/python tools/make_bf16_fixtures.py [--check-only] [--noise-floor]
(about 15 s on 2 cores).
"""
import argparse
import json
import math
import pathlib

import sys

try:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
except ImportError as missing:  # ctest reads exit 77 as "skipped"
    print(f"skipped: needs the Python reference stack ({missing}); scripts/python-env.sh makes .venv")
    sys.exit(77)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CASES = ["gqa_tied", "odd_untied_all", "llama3_rope", "linear_rope", "qwen2_bias", "mistral_window"]
# --check-only: a committed file may differ from a regeneration by this many times the ulp-level
# noise measured on the checking machine. Files made on an Intel Sapphire Rapids, checked on an
# AMD EPYC (AVX-512), differed by up to 2.4x that machine's noise (qwen2_bias grad_norms,
# measured 2026-12-03), while one rounding point more or less (the residual files against the
# others) moves the losses or the grad norms by 5.5x (mistral_window) to 1700x it, more than 4x
# in every fixture.
CROSS_MACHINE_NOISE = 4

ROUNDING_POINTS = [
    "base projection forward: input activation rounded to bf16 before the GEMM, bf16 weight, fp32 "
    "accumulation, fp32 output (src/ops/linear.cpp linear_forward as_weight_type): fused QKV (h1), O (attention "
    "output), fused gate/up (h2), down (silu(g)*u), lm_head (final-norm output)",
    "base projection backward data: output gradient rounded to bf16 before dX = dY W "
    "(src/ops/linear.cpp linear_backward_data): lm_head (scaled cross-entropy gradient), down, fused gate/up, O, fused QKV",
    "attention, head_dim >= 64 only (tiled kernel, src/ops/attention.cpp:65,115,143-144,212,223): Q, K, "
    "V, P (forward), dO, P, dS (backward); head_dim < 64 (direct kernel, all these fixtures): none",
    "bf16_residual only: residual stream rounded where it enters each layer and the final norm, "
    "straight-through gradient (src/model/llama_model.cpp:128-135,160,169)",
]


def bf16(x):
    return x.to(torch.bfloat16).to(x.dtype)


class Rounding:
    """Where to round: `operands` = the engine's matmul-operand rounding (Bf16Policy),
    `residual` = ComputeOptions::bf16_residual."""

    def __init__(self, operands, residual):
        self.operands = operands
        self.residual = residual

    def r(self, x):
        return bf16(x) if self.operands else x


class BaseLinear(torch.autograd.Function):
    """y = round(x) W^T (fp32 accumulation); dX = round(dY) W. W is frozen (no gradient)."""

    @staticmethod
    def forward(ctx, x, weight, rounding):
        ctx.save_for_backward(weight)
        ctx.rounding = rounding
        return rounding.r(x) @ rounding.r(weight).t()

    @staticmethod
    def backward(ctx, dy):
        (weight,) = ctx.saved_tensors
        return ctx.rounding.r(dy) @ ctx.rounding.r(weight), None, None


class RoundStraightThrough(torch.autograd.Function):
    """bf16_residual: forward rounds, backward passes the gradient unchanged."""

    @staticmethod
    def forward(ctx, x):
        return bf16(x)

    @staticmethod
    def backward(ctx, dy):
        return dy


class CrossEntropySum(torch.autograd.Function):
    """src/ops/cross_entropy.cpp: per row lse = max + log(sum exp(z - max)) in fp32, row loss
    (fp32) lse - z[t] summed in double; gradient fp32(exp(z - lse) * scale), target minus scale,
    scale = fp32(1 / label count). Returns the double sum; backward yields d(sum * scale)."""

    @staticmethod
    def forward(ctx, logits, targets, scale):
        z = logits
        row_max = z.max(dim=-1, keepdim=True).values
        lse = row_max + torch.log(torch.exp(z - row_max).sum(dim=-1, keepdim=True))
        rows = (lse.squeeze(-1) - z.gather(-1, targets[:, None]).squeeze(-1))
        ctx.save_for_backward(z, lse, targets)
        ctx.scale = scale
        return rows.to(torch.float64).sum()

    @staticmethod
    def backward(ctx, grad_out):
        z, lse, targets = ctx.saved_tensors
        s = torch.tensor(ctx.scale, dtype=torch.float32).to(z.dtype)  # static_cast<float>(grad_scale)
        g = torch.exp(z - lse) * s
        g[torch.arange(z.shape[0]), targets] -= s
        return g * grad_out.to(z.dtype), None, None


class Attention(torch.autograd.Function):
    """Causal attention of src/ops/attention*.cpp, forward and backward with the engine's
    formulas: q [..., T, hd], k, v [..., T, hd] (kv heads already repeated), allowed [T, T] bool.
    kernel "direct" (head_dim < 64, attention_direct.cpp; all four fixtures): fp32 throughout,
      S = (scale Q) K^T, O = (exp(S - max) V) / sum; backward P = exp(S - lse),
      delta = rowsum(dO * O), dS = P (dO V^T - delta) scale, dQ = dS K, dK = dS^T Q, dV = P^T dO.
    kernel "tiled" (head_dim >= 64, attention.cpp) with bf16 rounding r():
      S = scale r(Q) r(K)^T (fp32), P = exp(S - max) / sum, O = r(P) r(V); backward
      P = exp(S - lse) (fp32), delta = rowsum(O * dO) (unrounded O and dO),
      dV = r(P)^T r(dO), dP = r(dO) r(V)^T, dS = r(P (dP - delta)), dQ = scale dS r(K),
      dK = scale dS^T r(Q). Not used by the four fixtures (head_dim 16)."""

    @staticmethod
    def forward(ctx, q, k, v, allowed, scale, rounding, kernel):
        r = rounding.r if kernel == "tiled" else (lambda x: x)
        qb, kb, vb = r(q), r(k), r(v)
        if kernel == "tiled":
            s = (qb @ kb.transpose(-1, -2)) * scale
        else:
            s = (qb * scale) @ kb.transpose(-1, -2)
        s = s.masked_fill(~allowed, float("-inf"))
        row_max = s.max(dim=-1, keepdim=True).values
        e = torch.exp(s - row_max)
        total = e.sum(dim=-1, keepdim=True)
        inv = 1.0 / total
        lse = row_max + torch.log(total)
        o = r(e * inv) @ vb if kernel == "tiled" else (e @ vb) * inv
        ctx.save_for_backward(qb, kb, vb, allowed, lse, o)
        ctx.scale, ctx.r, ctx.kernel = scale, r, kernel
        return o

    @staticmethod
    def backward(ctx, d_o):
        qb, kb, vb, allowed, lse, o = ctx.saved_tensors
        r, scale = ctx.r, ctx.scale
        delta = (d_o * o).sum(dim=-1, keepdim=True)
        if ctx.kernel == "tiled":
            s = (qb @ kb.transpose(-1, -2)) * scale
        else:
            s = (qb * scale) @ kb.transpose(-1, -2)
        p = torch.where(allowed, torch.exp(s - lse), torch.zeros_like(s))
        dob = r(d_o)
        dv = r(p).transpose(-1, -2) @ dob
        dp = dob @ vb.transpose(-1, -2)
        if ctx.kernel == "tiled":
            ds = r(p * (dp - delta))
            dq = (ds @ kb) * scale
            dk = (ds.transpose(-1, -2) @ qb) * scale
        else:
            ds = p * (dp - delta) * scale
            dq = ds @ kb
            dk = ds.transpose(-1, -2) @ qb
        return dq, dk, dv, None, None, None, None


class RmsNorm(torch.autograd.Function):
    """src/ops/rmsnorm.cpp: r = 1 / sqrt(sum(x^2) / D + eps), y = x r w (fp32, bf16-valued w);
    dx = r w dy - x (sum(w dy x) r^3 / D). The weight is frozen."""

    @staticmethod
    def forward(ctx, x, w, eps):
        D = x.shape[-1]
        r = 1.0 / torch.sqrt((x * x).sum(-1, keepdim=True) / D + eps)
        ctx.save_for_backward(x, w, r)
        return x * r * w

    @staticmethod
    def backward(ctx, dy):
        x, w, r = ctx.saved_tensors
        D = x.shape[-1]
        dot = (w * dy * x).sum(-1, keepdim=True)
        coef = dot * r * r * r / D
        return r * w * dy - x * coef, None, None


class SwiGlu(torch.autograd.Function):
    """src/ops/swiglu.cpp: y = g / (1 + exp(-g)) u; with s = 1 / (1 + exp(-g)):
    dg = dy u s (1 + g (1 - s)), du = dy g s."""

    @staticmethod
    def forward(ctx, g, u):
        ctx.save_for_backward(g, u)
        return g / (1 + torch.exp(-g)) * u

    @staticmethod
    def backward(ctx, dy):
        g, u = ctx.saved_tensors
        s = 1 / (1 + torch.exp(-g))
        return dy * u * s * (1 + g * (1 - s)), dy * g * s


class Lora(torch.autograd.Function):
    """src/ops/lora_branch.cpp, fp32 (no dropout): z = x A^T, y = scale (z B^T);
    dB = scale dy^T z, dz = scale (dy B), dA = dz^T x, dx = dz A."""

    @staticmethod
    def forward(ctx, x, a, b, scale):
        z = x @ a.t()
        ctx.save_for_backward(x, a, b, z)
        ctx.scale = scale
        return (z @ b.t()) * scale

    @staticmethod
    def backward(ctx, dy):
        x, a, b, z = ctx.saved_tensors
        s = ctx.scale
        lead = dy.shape[:-1]
        dy2, z2, x2 = dy.reshape(-1, dy.shape[-1]), z.reshape(-1, z.shape[-1]), x.reshape(-1, x.shape[-1])
        db = (dy2.t() @ z2) * s
        dz = (dy2 @ b) * s
        da = dz.t() @ x2
        dx = (dz @ a).reshape(*lead, x.shape[-1])
        return dx, da, db, None


def load_model(model_dir, dtype=torch.float32):
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update({k: v.to(dtype) for k, v in load_file(f).items()})
    config = LlamaConfig.from_pretrained(model_dir)
    return config, weights


class Emulator:
    """The Llama forward of zerolora's layer (src/model/llama_layer.cpp) on a padded [B, T] batch
    (each row its own causal segment; padded rows attend to the row's real keys, as HF's eager
    attention does, and carry no loss)."""

    def __init__(self, config, weights, lora, lora_scale, rounding):
        self.c = config
        self.w = weights
        self.lora = lora  # (layer, module) -> (A, B) leaf tensors
        self.rounding = rounding
        rope = LlamaRotaryEmbedding(config)
        self.inv_freq = rope.inv_freq.to(torch.float32)
        assert rope.attention_scaling == 1.0
        self.hd = config.head_dim
        self.H, self.KV = config.num_attention_heads, config.num_key_value_heads
        self.scale = lora_scale
        self.tiled = self.hd >= 64  # src/ops/attention.cpp:43 (Kernel::kAuto)
        self.window = getattr(config, "sliding_window", None) or 0

    def rms(self, x, weight):
        return RmsNorm.apply(x, weight, self.c.rms_norm_eps)

    def project(self, x, weight, modules, widths, bias=None):
        """Base projection (one fused GEMM, then its fp32 bias where the model has one: Qwen2's
        q, k, v) plus each adapted module's fp32 LoRA on unrounded x."""
        y = BaseLinear.apply(x, weight, self.rounding)
        if bias is not None:
            y = y + bias
        parts = list(torch.split(y, widths, dim=-1))
        for i, m in enumerate(modules):
            if m in self.lora:
                a, b = self.lora[m]
                parts[i] = parts[i] + Lora.apply(x, a, b, self.scale)
        return parts

    def rope(self, x, positions):
        angle = positions[:, None].to(torch.float32) * self.inv_freq[None, :]  # fp32 product
        cos = torch.cos(angle.double()).float().to(x.dtype)  # src/ops/rope.cpp:222: cos of the fp32 angle
        sin = torch.sin(angle.double()).float().to(x.dtype)
        cos = torch.cat([cos, cos], -1)
        sin = torch.cat([sin, sin], -1)
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def attention(self, q, k, v, mask):
        B, T, _ = q.shape
        q = q.view(B, T, self.H, self.hd).transpose(1, 2)
        k = k.view(B, T, self.KV, self.hd).transpose(1, 2)
        v = v.view(B, T, self.KV, self.hd).transpose(1, 2)
        group = self.H // self.KV
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        if self.window:  # Mistral's sliding window: a row sees its last `window` positions
            causal &= torch.ones(T, T, dtype=torch.bool).triu(-(self.window - 1))
        allowed = causal[None, None] & mask[:, None, None, :].bool()
        # A padding row past a sliding window sees no real key: let every row see itself, so
        # that it stays finite (it carries no loss; real rows see themselves anyway). What HF
        # computes for such a row is its own affair: all-position logits are not compared when
        # the model has a window (see main).
        dead = ~allowed.any(-1, keepdim=True)  # [B, 1, T, 1]: rows that see no key
        allowed = allowed | (torch.eye(T, dtype=torch.bool)[None, None] & dead)
        scale = 1.0 / math.sqrt(self.hd)
        o = Attention.apply(q, k, v, allowed, scale, self.rounding, "tiled" if self.tiled else "direct")
        return o.transpose(1, 2).reshape(B, T, self.H * self.hd)

    def seal(self, x):
        return RoundStraightThrough.apply(x) if self.rounding.residual else x

    def forward(self, input_ids, mask):
        c, w = self.c, self.w
        B, T = input_ids.shape
        positions = torch.arange(T)
        Qd, KVd = self.H * self.hd, self.KV * self.hd
        x = self.seal(w["model.embed_tokens.weight"][input_ids])
        for l in range(c.num_hidden_layers):
            p = f"model.layers.{l}."
            lw = lambda n: w[p + n + ".weight"]
            h1 = self.rms(x, lw("input_layernorm"))
            wqkv = torch.cat([lw("self_attn.q_proj"), lw("self_attn.k_proj"), lw("self_attn.v_proj")])
            bias = None
            if p + "self_attn.q_proj.bias" in w:
                bias = torch.cat([w[p + f"self_attn.{m}_proj.bias"] for m in "qkv"])
            q, k, v = self.project(h1, wqkv, [(l, "q_proj"), (l, "k_proj"), (l, "v_proj")], [Qd, KVd, KVd],
                                   bias)
            q = self._rope_heads(q, self.H, positions)
            k = self._rope_heads(k, self.KV, positions)
            attn = self.attention(q, k, v, mask)
            (o,) = self.project(attn, lw("self_attn.o_proj"), [(l, "o_proj")], [c.hidden_size])
            x2 = x + o
            h2 = self.rms(x2, lw("post_attention_layernorm"))
            wgu = torch.cat([lw("mlp.gate_proj"), lw("mlp.up_proj")])
            g, u = self.project(h2, wgu, [(l, "gate_proj"), (l, "up_proj")],
                                [c.intermediate_size, c.intermediate_size])
            act = SwiGlu.apply(g, u)
            (d,) = self.project(act, lw("mlp.down_proj"), [(l, "down_proj")], [c.hidden_size])
            x = self.seal(x2 + d)
        h = self.rms(x, w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if c.tie_word_embeddings else w["lm_head.weight"]
        return BaseLinear.apply(h, head, self.rounding)

    def _rope_heads(self, x, heads, positions):
        B, T, _ = x.shape
        y = self.rope(x.view(B, T, heads, self.hd).transpose(1, 2), positions)
        return y.transpose(1, 2).reshape(B, T, heads * self.hd)


def loss_of(logits, labels):
    """Sum over label tokens (shifted: position i predicts labels[i + 1]) with the engine's
    gradient scale 1 / count; returns (mean loss as a double, the autograd sum)."""
    V = logits.shape[-1]
    z = logits[:, :-1].reshape(-1, V)
    t = labels[:, 1:].reshape(-1)
    keep = t != -100
    count = int(keep.sum())
    total = CrossEntropySum.apply(z[keep], t[keep], 1.0 / count)
    return total / count, total


def module_key(peft_name):
    # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
    parts = peft_name.split(".")
    layer = int(parts[parts.index("layers") + 1])
    module = parts[parts.index("layers") + 3]
    return layer, module, parts[-2]  # lora_A / lora_B


def run_case(name, rounding, steps_override=None, dtype=torch.float32):
    """dtype float64 (diagnostics only): the same roundings to bf16 with exact-ish arithmetic in
    between; its distance from the float32 run samples the fp32 noise floor (tie flips)."""
    case = FIXTURES / name
    config, weights = load_model(case / "model", dtype)
    ref = safe_open(str(case / "reference.safetensors"), "pt")
    meta = ref.metadata()
    rank, alpha = int(meta["lora_rank"]), float(meta["lora_alpha"])
    lora_scale = alpha / math.sqrt(rank) if meta["use_rslora"] == "true" else alpha / rank  # LoraConfig::scale
    # safe_open hands out views of one mapping (every get_tensor of a name shares storage):
    # copy, so that training the LoRA leaves never aliases what is read or written.
    get = lambda k: ref.get_tensor(k).clone()
    input_ids, mask, labels = (get(k) for k in ("input_ids", "attention_mask", "labels"))
    names = sorted(k[len("lora."):] for k in ref.keys() if k.startswith("lora."))
    params = {n: get("lora." + n).to(dtype).requires_grad_(True) for n in names}
    lora = {}
    for n, t in params.items():
        layer, module, ab = module_key(n)
        lora.setdefault((layer, module), [None, None])[0 if ab == "lora_A" else 1] = t
    assert all(a is not None and b is not None for a, b in lora.values())
    model = Emulator(config, weights, {k: tuple(v) for k, v in lora.items()}, lora_scale, rounding)

    out = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    for n in names:
        out["lora." + n] = get("lora." + n)
    logits = model.forward(input_ids, mask)
    mean, total = loss_of(logits, labels)
    out["logits"] = logits.detach().float().clone()
    out["loss"] = torch.tensor(mean.detach().item(), dtype=torch.float32).reshape(())
    total.backward()
    for n in names:
        out["grad." + n] = params[n].grad.detach().float().clone()

    # The 3 steps of tools/make_fixtures.py: clip_grad_norm_ then torch.optim.AdamW.
    plist = [params[n] for n in names]
    opt = torch.optim.AdamW(plist, lr=float(meta["lr"]), betas=(float(meta["beta1"]), float(meta["beta2"])),
                            eps=float(meta["eps"]), weight_decay=float(meta["weight_decay"]))
    losses, norms = [], []
    steps = int(meta["steps"]) if steps_override is None else steps_override
    for _ in range(steps):
        opt.zero_grad()
        logits = model.forward(input_ids, mask)
        mean, total = loss_of(logits, labels)
        total.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(plist, float(meta["max_grad_norm"]))))
        opt.step()
        losses.append(mean.detach().item())
    for n in names:
        out["step3." + n] = params[n].detach().float().clone()
    out["losses"] = torch.tensor(losses, dtype=torch.float32)
    out["grad_norms"] = torch.tensor(norms, dtype=torch.float32)
    return out, meta, ref


def max_rel(a, b):
    """max|a - b| / max|b| (tests/test_util.hpp's max_rel_error)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def compare(ours, ref, label, real_only_mask=None):
    """Per-kind worst errors of `ours` against `ref` (a safe_open file or a dict): logits (real
    positions; and all positions, padding included), loss, grads, step3 weights (max_rel per
    tensor, worst tensor), losses and grad norms (relative, worst step)."""
    if isinstance(ref, dict):
        ref = _DictFile(ref)
    res = {}
    lg, rl = ours["logits"], ref.get_tensor("logits")
    if real_only_mask is not None:
        m = real_only_mask.bool()
        res["logits"] = max_rel(lg[m], rl[m])
        res["logits_all_positions"] = max_rel(lg, rl)
    else:
        res["logits"] = max_rel(lg, rl)
    res["loss"] = abs(ours["loss"].item() - ref.get_tensor("loss").item()) / abs(ref.get_tensor("loss").item())
    for kind in ("grad", "step3"):
        res[kind] = max(max_rel(ours[k], ref.get_tensor(k)) for k in ours if k.startswith(kind + "."))
    res["losses"] = float(((ours["losses"].double() - ref.get_tensor("losses").double()).abs()
                           / ref.get_tensor("losses").double().abs()).max())
    res["grad_norms"] = float(((ours["grad_norms"].double() - ref.get_tensor("grad_norms").double()).abs()
                               / ref.get_tensor("grad_norms").double().abs()).max())
    print(f"  {label}: " + ", ".join(f"{k} {v:.2e}" for k, v in res.items()))
    return res


class _DictFile:
    def __init__(self, d):
        self.d = d

    def get_tensor(self, k):
        return self.d[k]


def self_test_functions():
    """The hand-written backward of every custom Function, with rounding off, against torch's
    gradcheck in float64; the attention Function (both kernels) also against plain softmax
    attention (the tiled kernel is checked although no fixture uses it)."""
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    off = Rounding(False, False)
    q, k, v = (torch.randn(2, 3, 7, 8, **f64) for _ in range(3))
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(2, 3, 7, 7).clone()
    allowed[1, :, :, 5:] = False  # row 1 padded after 5 tokens: its keys 5, 6 masked
    for kernel in ("direct", "tiled"):
        assert torch.autograd.gradcheck(lambda q, k, v: Attention.apply(q, k, v, allowed, 0.35, off, kernel),
                                        (q, k, v))
        s = ((q @ k.transpose(-1, -2)) * 0.35).masked_fill(~allowed, float("-inf"))
        assert max_rel(Attention.apply(q, k, v, allowed, 0.35, off, kernel), torch.softmax(s, -1) @ v) < 1e-12
    x, w = torch.randn(3, 4, 6, **f64), (1 + 0.1 * torch.randn(6, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x: RmsNorm.apply(x, w, 1e-5), (x,))
    g, u = torch.randn(3, 5, **f64), torch.randn(3, 5, **f64)
    assert torch.autograd.gradcheck(SwiGlu.apply, (g, u))
    x, a, b = torch.randn(2, 4, 6, **f64), torch.randn(3, 6, **f64), torch.randn(5, 3, **f64)
    assert torch.autograd.gradcheck(lambda x, a, b: Lora.apply(x, a, b, 1.7), (x, a, b))
    x, wt = torch.randn(4, 6, **f64), torch.randn(5, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: BaseLinear.apply(x, wt, off), (x,))
    print("custom autograd Functions: gradcheck (float64, rounding off) passed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-only", action="store_true",
                    help="validate, write nothing, and fail (exit 1) unless the emulator with rounding "
                         "off reproduces reference.safetensors and the committed bf16 files are what "
                         f"it makes, within {CROSS_MACHINE_NOISE} times the ulp-level noise it measures (the test suite runs "
                         "this)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="also run the bf16 emulation with float64 arithmetic between the roundings and "
                         "print its distance from the float32 one: how far ulp-level differences (tie "
                         "flips) move each output, i.e. the least tolerance a comparison can use")
    args = ap.parse_args()
    torch.set_num_threads(2)
    self_test_functions()
    summary = {}
    failures = []
    for name in CASES:
        print(name)
        case = FIXTURES / name
        # (a) rounding off: the same code must reproduce the HF + PEFT fp32 reference.
        fp32, meta, ref = run_case(name, Rounding(False, False))
        real = ref.get_tensor("attention_mask")
        summary[(name, "fp32 emulation vs reference")] = check = compare(
            fp32, ref, "fp32 emulation vs reference.safetensors", real)
        # The emulator is trusted because, rounding off, it is the HF + PEFT reference: 1e-5,
        # and 2e-4 for the weights after 3 AdamW steps (tests/tolerances.hpp, kFp32.weights).
        # Padding rows past a sliding window see no real key, and what HF's masks do there is
        # not the engine's concern (no loss, never read): compare real positions only then.
        windowed = bool(json.loads((case / "model" / "config.json").read_text()).get("sliding_window"))
        bad = [k for k, v in check.items() if v > (2e-4 if k == "step3" else 1e-5)
               and not (windowed and k == "logits_all_positions")]
        if bad:
            failures.append(f"{name}: with rounding off the emulator differs from "
                            f"reference.safetensors in {', '.join(bad)}")
        for residual, file_name in ((False, "reference_bf16.safetensors"), (True, "reference_bf16_residual.safetensors")):
            out, _, _ = run_case(name, Rounding(True, residual))
            label = f"bf16{' residual' if residual else ''} vs fp32 reference"
            summary[(name, label)] = compare(out, ref, label, real)
            noise = None
            if args.noise_floor or args.check_only:
                out64, _, _ = run_case(name, Rounding(True, residual), dtype=torch.float64)
                label = f"bf16{' residual' if residual else ''}: float64-between-roundings vs float32"
                summary[(name, label)] = noise = compare(out64, out, label, real)
            if args.check_only:
                # Regenerated on another CPU, torch's fp32 GEMMs sum in another order, and an
                # element within ulps of a bf16 boundary rounds the other way (a tie flip): the
                # committed file is "what this script makes" when it is as close as the ulp-level
                # noise measured here (float64 vs float32 between the same roundings), with a
                # factor for the two machines' noise (CROSS_MACHINE_NOISE).
                with safe_open(str(case / file_name), "pt") as committed:
                    got = compare(out, committed, f"regenerated vs committed {file_name}", real)
                over = {k: v for k, v in got.items() if v > max(1e-6, CROSS_MACHINE_NOISE * noise[k])}
                if over:
                    failures.append(f"{name}: the committed {file_name} is not what this script makes: "
                                    + ", ".join(f"{k} {v:.2e} (noise {noise[k]:.2e})" for k, v in over.items())
                                    + "; regenerate it")
                continue
            m = {k: v for k, v in meta.items() if k != "generator"}
            m["generator"] = (f"tools/make_bf16_fixtures.py: torch {torch.__version__}; own Llama forward/backward "
                              "in fp32 that rounds to bf16 where zerolora's Bf16Policy does")
            m["models"] = ("zerolora bf16 mode (Bf16Policy), ComputeOptions: attention softmax fp32, bf16_residual "
                           + ("true" if residual else "false"))
            m["attention_kernel"] = "tiled (bf16 Q K V P dO dS)" if config_head_dim(case) >= 64 else "direct (fp32)"
            m["rounding_points"] = json.dumps(ROUNDING_POINTS if residual else ROUNDING_POINTS[:3])
            save_file({k: v.contiguous() for k, v in out.items()}, case / file_name, metadata=m)
            print(f"  wrote {case / file_name}")
    for line in failures:
        print(f"FAIL {line}")
    if failures:
        raise SystemExit(1)
    return summary


def config_head_dim(case):
    c = json.loads((case / "model" / "config.json").read_text())
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


if __name__ == "__main__":
    main()
