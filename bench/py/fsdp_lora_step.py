"""PyTorch FSDP (full shard, gloo, CPU) + PEFT LoRA on the Llama-2-7B-shaped 2-layer stack:
the ZeRO-3 peer of `mpirun -np 2 bench_zero` in bench/compare.py. Spawns --world processes;
prints key=value lines (rank 0 collects every rank's peak RSS).

  python3 fsdp_lora_step.py --world 2 --seq 512 --steps 3
FSDP2 (fully_shard) per decoder layer and at the root; bf16 parameters (LoRA too: FSDP shards
need one dtype per group) and gradient checkpointing, one thread per rank.
"""
import argparse
import os
import resource
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(rank, args, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    torch.manual_seed(rank)
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                         attn_implementation="sdpa", dtype=torch.bfloat16)
    # Memory-lean FSDP, as for a model that does not fit one rank: build on the meta device,
    # shard, then give each rank storage for its shards only and initialise them there.
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
                           autocast_adapter_dtype=False)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if "norm" in name:
                local.fill_(1.0)
            elif "lora_B" in name:
                local.zero_()
            else:
                local.normal_(0, 0.02)
    model.base_model.model.model.rotary_emb = LlamaRotaryEmbedding(config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = ((torch.arange(args.seq) * 7919 + 13 + rank) % 32000)[None]
    times = []
    for step in range(args.steps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dist.barrier()
        if step > 0:
            times.append(time.perf_counter() - t0)
    rss = torch.tensor([peak_rss_mib()], dtype=torch.float64)
    all_rss = [torch.zeros(1, dtype=torch.float64) for _ in range(args.world)]
    dist.all_gather(all_rss, rss)
    if rank == 0:
        step_s = statistics.median(times)
        print(f"fsdp_world={args.world}")
        print(f"fsdp_step_s={step_s:.6g}")
        print(f"fsdp_tokens_per_s={args.world * args.seq / step_s:.6g}")
        for r, value in enumerate(all_rss):
            print(f"fsdp_rank{r}_peak_rss_mib={value.item():.6g}")
        print(f"fsdp_loss={loss.item():.6g}", flush=True)
    # Every rank past its last collective before any tears gloo down: destroying the group while
    # the other rank still used it once aborted rank 0 ("terminate called without an active
    # exception") after it had printed its results.
    dist.barrier()
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--port", type=int, default=29517)
    args = p.parse_args()
    mp.spawn(worker, args=(args, args.port), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
