"""GPU training throughput of a deberta-v3-base-sized model (random weights) at max_length 1024.

For bf16 and fp16 (GradScaler) autocast with fp32 weights, as the training engine runs them: tokens/s
over timed optimizer steps, peak GPU memory, and the largest batch that fits (doubling until out of
memory). fp32 is measured too as the baseline the ratios are printed against. Skips without CUDA.

    python benchmarks/gpu_train_bench.py [--steps 100] [--batch 8] [--max-length 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DebertaV2Config, DebertaV2Model

from common.models import EssayScorer, ScorerConfig
from common.train.optim import param_groups

BASE = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=512, relative_attention=True,
            pos_att_type=["p2c", "c2p"], position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
            position_biased_input=False, max_relative_positions=-1, type_vocab_size=0)


def build(gradient_checkpointing: bool = False) -> tuple[EssayScorer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    backbone = DebertaV2Model(DebertaV2Config(**BASE))
    model = EssayScorer(ScorerConfig(backbone="random-deberta-v3-base", gradient_checkpointing=gradient_checkpointing),
                        backbone=backbone).cuda()
    groups = param_groups(model, model.encoder_layers(), model.embeddings_module(), 2e-5, 1e-3, 0.01, 0.9)
    return model, torch.optim.AdamW(groups, lr=2e-5, fused=True)


def step(model, optimizer, scaler, dtype, batch, length) -> None:
    ids = torch.randint(5, 128000, (batch, length), device="cuda")
    mask = torch.ones_like(ids)
    target = torch.randint(1, 7, (batch,), device="cuda").float()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        loss = model.loss(model(ids, mask).float(), target)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def throughput(name: str, dtype, steps: int, batch: int, length: int) -> float:
    model, optimizer = build()
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    for _ in range(5):
        step(model, optimizer, scaler, dtype, batch, length)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, scaler, dtype, batch, length)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tps = steps * batch * length / seconds
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"{name:5s} batch {batch} x {length}: {tps:10,.0f} tokens/s, {seconds / steps * 1000:6.0f} ms/step, "
          f"peak {peak:5.1f} GiB", flush=True)
    del model, optimizer
    torch.cuda.empty_cache()
    return tps


def largest_batch(name: str, dtype, length: int, start: int, limit: int = 512) -> int:
    model, optimizer = build()
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    fits, batch = 0, start
    while batch <= limit:
        try:
            step(model, optimizer, scaler, dtype, batch, length)
            torch.cuda.synchronize()
            fits = batch
            batch *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    print(f"{name:5s} largest batch that fits at {length} tokens: {fits} (doubling from {start})", flush=True)
    del model, optimizer
    torch.cuda.empty_cache()
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 supported: "
          f"{torch.cuda.is_bf16_supported()}")
    fp32 = throughput("fp32", torch.float32, max(10, args.steps // 4), args.batch, args.max_length)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        tps = throughput(name, dtype, args.steps, args.batch, args.max_length)
        print(f"      {name} / fp32 throughput: {tps / fp32:.2f}x")
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        largest_batch(name, dtype, args.max_length, args.batch)


if __name__ == "__main__":
    main()
