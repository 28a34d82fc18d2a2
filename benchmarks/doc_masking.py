"""7. Document masking: training tokens/s with `data.doc_masking=true` against the same steps without it.

The model is the demo base's shape (experiment=demo_base's `model.config` and `data.seq_len`; `--quick`: the
tiny sizes of the other benchmarks), random-init, fp32, vocabulary = the base tokenizer's (4096, as the demo
base's), trained on blocks packed from the demo:en train split exactly as cptlab's token stream packs them
(`encode_documents`: each document followed by EOS). Both sides are `CPTModule.training_step` + backward +
the fused AdamW step cptlab uses on CPU, each on its own copy of the same initial weights, on the same batch
at every step; they alternate step by step (which one goes first alternates too), so both meet the same
background load. The masked side differs only by the position ids that restart at each EOS, from which
transformers builds the block-diagonal causal mask (an explicit sdpa mask instead of the `is_causal` kernel).
The headline is the median over k of (plain step k time / masked step k time): masked tokens/s relative to plain.
"""

from __future__ import annotations

import copy
import time

from benchmarks.common import SEED, BenchResult, Context, Ratio, median

RATIO_KEY = "doc_masking.masked_vs_plain_tokens_per_s"


def shape(ctx: Context) -> tuple[dict, int, int, int, int]:
    """(model.config, seq_len, batch, timed steps, warm-up steps): the demo base's shape, or --quick's tiny one."""
    s = ctx.sizes
    if s.quick:
        config = dict(hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
                      num_attention_heads=s.heads, num_key_value_heads=s.heads, max_position_embeddings=512)
        return config, s.seq_len, s.batch_size, 4, 1
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import cptlab.config  # noqa: F401  (schema and resolvers)
    from cptlab.utils.console import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo_base"])
    return OmegaConf.to_container(cfg.model.config, resolve=True), int(cfg.data.seq_len), 4, 8, 1


def packed_blocks(ctx: Context, tok, rows: int, seq_len: int):
    """[rows, seq_len + 1] token blocks of the demo:en train split, packed as cptlab's stream packs it."""
    import numpy as np
    import torch

    from cptlab.data.tokens import encode_documents

    need, docs, parts, have = rows * (seq_len + 1), ctx.en_split[0], [], 0
    for start in range(0, len(docs), 200):
        parts.append(encode_documents(tok, docs[start:start + 200], tok.eos_token_id, "int64"))
        have += len(parts[-1])
        if have >= need:
            break
    stream = np.concatenate(parts)
    if len(stream) < need:
        raise RuntimeError(f"demo:en gave {len(stream)} tokens, fewer than the {need} the benchmark needs")
    return torch.from_numpy(stream[:need].astype(np.int64)).view(rows, seq_len + 1)


def run(ctx: Context) -> BenchResult:
    import torch

    from cptlab.model.doc_mask import document_position_ids
    from cptlab.model.load import load_model
    from cptlab.tokenizer.hf import load_tokenizer
    from cptlab.training.module import CPTModule
    from cptlab.training.optim import build_optimizer
    from cptlab.training.schedule import LRSchedule

    res = BenchResult("doc_masking")
    config, seq_len, batch, steps, warmup = shape(ctx)
    tok = load_tokenizer(ctx.base_tokenizer_dir)
    blocks = packed_blocks(ctx, tok, batch * (steps + warmup), seq_len)
    torch.set_num_threads(ctx.sizes.threads)
    base = load_model(None, config=config, dtype="float32", vocab_size=len(tok), eos_id=tok.eos_token_id, seed=SEED)
    sides = {}
    for name, doc_eos in (("plain", None), ("masked", tok.eos_token_id)):
        model = copy.deepcopy(base)
        module = CPTModule(model, lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                           schedule=LRSchedule(total_steps=steps + warmup, warmup_steps=0), doc_eos=doc_eos)
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8, fused=True)
        sides[name] = (module, optimizer, [])
    for k in range(steps + warmup):
        rows = blocks[k * batch:(k + 1) * batch]
        step = {"input_ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous(), "step": k,
                "rows": batch, "replay_rows": 0}
        for name in (("plain", "masked") if k % 2 == 0 else ("masked", "plain")):
            module, optimizer, times = sides[name]
            t0 = time.perf_counter()
            module.training_step(dict(step), k).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if k >= warmup:
                times.append(time.perf_counter() - t0)
    plain, masked = sides["plain"][2], sides["masked"][2]
    ratio = median([p / m for p, m in zip(plain, masked)])
    tokens = batch * seq_len
    plain_tps, masked_tps = tokens / median(plain), tokens / median(masked)
    segments = document_position_ids(blocks[:, :-1], tok.eos_token_id).eq(0).sum(dim=1).float()
    res.ratios.append(Ratio(RATIO_KEY, ratio, f"doc_masking=true {masked_tps:,.0f} tok/s",
                            f"doc_masking=false {plain_tps:,.0f} tok/s", None,
                            note=f"{float(segments.mean()):.1f} documents per {seq_len}-token block"))
    res.details = {"model_config": config, "seq_len": seq_len, "batch_size": batch, "timed_steps": steps,
                   "warmup_steps": warmup, "threads": ctx.sizes.threads, "plain_step_s": plain,
                   "masked_step_s": masked, "plain_tokens_per_s": plain_tps, "masked_tokens_per_s": masked_tps,
                   "ratio_of_medians": median(plain) / median(masked),
                   "segments_per_block_mean": float(segments.mean())}
    return res
