"""The own torch Llama of tools/make_bf16_fixtures.py: zerolora's layer (src/model/llama_layer.cpp)
as custom autograd functions that follow the engine's formulas and operation order, rounding to
bf16 exactly where its bf16 mode does (Rounding: the matmul operands, and with bf16_residual the
residual stream). make_bf16_fixtures.py says where the engine rounds and how the result is
validated (rounding off, it reproduces Transformers + PEFT)."""
import math

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding


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
