"""The LR schedules and AdamW groups, and optim.lr_scale: every trained row moves by AdamW at optim.lr times its
group's scale (embeddings, lm_head, new_rows, rest) at every step of every phase, across a resume, with LoRA's
new-token rows and under FSDP; rows that do not train stay bit for bit under weight decay."""

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from cptlab.data.datamodule import CPTDataModule
from cptlab.errors import CptlabError
from cptlab.model.adapter import apply_adapter
from cptlab.model.load import load_model
from cptlab.run.plan_values import freeze_plan, lr_scale_of
from cptlab.training.module import CPTModule
from cptlab.training.optim import build_optimizer, build_scheduler, lr_groups, param_groups
from cptlab.training.schedule import LRScale, LRSchedule


def test_warmup_is_linear_to_peak():
    s = LRSchedule(total_steps=100, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(4) == pytest.approx(0.5)
    assert s.factor(9) == pytest.approx(1.0)


def test_cosine_reaches_min_ratio_at_the_end_and_half_way_is_mid():
    s = LRSchedule(total_steps=110, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s.factor(110) == pytest.approx(0.1)
    assert s.factor(500) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly():
    s = LRSchedule(total_steps=100, warmup_steps=10, kind="wsd", min_lr_ratio=0.0, decay_fraction=0.2)
    assert [s.factor(t) for t in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert s.factor(80) == pytest.approx(1.0)
    assert s.factor(90) == pytest.approx(0.5)
    assert s.factor(100) == pytest.approx(0.0)


def test_constant_after_warmup():
    s = LRSchedule(total_steps=10, warmup_steps=2, kind="constant")
    assert [s.factor(t) for t in range(2, 10)] == [1.0] * 8


def test_an_unknown_schedule_is_refused_not_taken_for_another():
    """optim.schedule's message is the rule's (check_value, tests/test_validation_rules.py; a run:
    tests/reliability/test_validation.py); the schedule itself has three shapes and refuses any other name
    when it is built, never falling back to one of them."""
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear' \\(optim.schedule\\)"):
        LRSchedule(total_steps=10, kind="linear")


def test_scheduler_drives_optimizer_lr_and_no_decay_on_vectors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, lr=1.0, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.1]
    assert sum(len(g["params"]) for g in opt.param_groups if g["weight_decay"] == 0.0) == 3  # bias, ln w, ln b
    sched = build_scheduler(opt, LRSchedule(total_steps=10, warmup_steps=5, kind="constant"))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert not math.isnan(lrs[-1])


# -- optim.lr_scale -------------------------------------------------------------------------------------

BASE, GROWN, LR, WD, BETAS, EPS = 96, 128, 1e-2, 0.1, (0.9, 0.95), 1e-8


@pytest.mark.parametrize("node, message", [
    ({"embeddings": 0.0}, r"optim.lr_scale.embeddings=0.0 must be a number > 0"),
    ({"rest": -1}, r"optim.lr_scale.rest=-1 must be"),
    ({"new_rows": float("nan")}, r"optim.lr_scale.new_rows=nan must be"),
    ({"body": 2.0}, r"optim.lr_scale.body is not a group"),
])
def test_bad_lr_scale_names_the_key(node, message):
    with pytest.raises(CptlabError, match=message):
        lr_scale_of(node)


def test_lr_scale_in_the_composed_config_reaches_validation(compose_cfg):
    from cptlab.run.validate import validate

    cfg = compose_cfg(["optim.lr_scale.lm_head=0.5"])
    assert lr_scale_of(cfg.optim.lr_scale) == LRScale(lm_head=0.5)
    with pytest.raises(CptlabError, match=r"^optim.lr_scale.lm_head=-2.0 must be"):
        validate(compose_cfg(["experiment=demo_zh", "debug=smoke", "optim.lr_scale.lm_head=-2"]))


def test_lr_groups_classify_matrices_rows_and_the_rest():
    shapes = {"embed": GROWN, "head": GROWN, "w": 8}
    scale = LRScale(embeddings=0.1, lm_head=0.5, new_rows=2.0, rest=3.0)
    whole = lr_groups({"embed": 0, "head": 0, "w": 0}, shapes, embeddings="embed", lm_head="head", base_rows=BASE,
                      scale=scale)
    assert whole == {"embed": ("embeddings", 2.0, (0, BASE, 0.05)), "head": ("lm_head", 2.0, (0, BASE, 0.25)),
                     "w": ("rest", 3.0, None)}
    lower = lr_groups({"embed": 0}, shapes, embeddings="embed", lm_head="head", base_rows=BASE,
                      scale=LRScale(embeddings=2.0, new_rows=0.5))
    assert lower == {"embed": ("embeddings", 2.0, (BASE, GROWN, 0.25))}
    masked = lr_groups({"embed": BASE, "head": BASE}, shapes, embeddings="embed", lm_head="head", base_rows=BASE,
                       scale=scale)
    assert masked == {"embed": ("new_rows", 2.0, None), "head": ("new_rows", 2.0, None)}
    no_new_rows = lr_groups({"embed": 0}, {"embed": BASE}, embeddings="embed", lm_head="head", base_rows=BASE,
                            scale=scale)
    assert no_new_rows == {"embed": ("embeddings", 0.1, None)}
    with pytest.raises(CptlabError, match=r"optim.lr_scale.lm_head=0.5 differs from optim.lr_scale.embeddings=0.1"):
        lr_groups({"embed": 0}, shapes, embeddings="embed", lm_head="embed", base_rows=BASE, scale=scale)


def test_one_scale_keeps_the_single_lr_groups():
    """All scales 1 (the default): the groups of a single learning rate, so older checkpoints still load."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = param_groups(model, 0.1)
    assert [(len(g["params"]), g["weight_decay"], g["lr_scale"]) for g in groups] == [(1, 0.1, 1.0), (3, 0.0, 1.0)]
    scaled = param_groups(model, 0.1, lr_scales={model[0].weight: 0.5, model[1].weight: 0.5})
    assert [(len(g["params"]), g["weight_decay"], g["lr_scale"]) for g in scaled] == [
        (1, 0.1, 0.5), (1, 0.0, 0.5), (2, 0.0, 1.0)]


class Stream:
    """Batch `step` is a pure function of `step`, new token ids included."""

    def __init__(self, batch=4, seq=16):
        self.batch_size, self.seq = batch, seq
        self.domains = [SimpleNamespace(name="x", role="new")]

    def batch(self, step, rank=0, world_size=1):
        g = torch.Generator().manual_seed(1000 + step)
        tokens = torch.randint(0, GROWN, (self.batch_size, self.seq + 1), generator=g)
        return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}

    def counts(self, step):
        return {"x": self.batch_size}


def module(scale: LRScale, *, schedule="two_stage", adapter="none", tied=False, train_new_tokens=False):
    model = load_model(None, config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=tied), dtype="float32", vocab_size=BASE)
    torch.manual_seed(0)
    model.resize_token_embeddings(GROWN, mean_resizing=False)
    adapter_cfg = OmegaConf.create({"name": adapter, "r": 4, "alpha": 8.0, "dropout": 0.0, "rslora": False,
                                    "train_new_tokens": train_new_tokens, "target_modules": ["q_proj", "v_proj"]})
    schedule_cfg = OmegaConf.create({"name": schedule, "stage1_steps": 3, "stage1_rows": "all", "rewarm": True,
                                     "phases": None})
    model = apply_adapter(model, adapter_cfg, base_rows=BASE)
    plan = freeze_plan(model, schedule_cfg, adapter_cfg)
    lrs = LRSchedule(total_steps=6, warmup_steps=2, kind="cosine", restarts=plan.stage_starts)
    return CPTModule(model, lr=LR, weight_decay=WD, betas=list(BETAS), eps=EPS, schedule=lrs, freeze=plan,
                     lr_scale=scale)


class Updates(pl.Callback):
    """Per optimizer step: the weights before and after it, and the AdamW state it left (cloned)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        named = dict(pl_module.model.named_parameters())
        state = {n: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                 for n, p in named.items() if p in opt.state}
        after = {n: p.detach().clone() for n, p in named.items()}
        self.steps.append(SimpleNamespace(step=trainer.global_step - 1, before=self._before, after=after, state=state,
                                          metrics=pl_module.lr_metrics(opt)))


def fit(mod, steps, callbacks=(), ckpt_path=None, root=None):
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                         callbacks=list(callbacks), default_root_dir=root)
    trainer.fit(mod, datamodule=CPTDataModule(Stream()), ckpt_path=ckpt_path)
    return trainer


class SaveAt(pl.Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def adamw_step(before, state, lr):
    """What one AdamW step with learning rate `lr` (a number or one per row) makes of `before`, given
    the moments and step count it left (float64); matrices decay, vectors do not."""
    t = float(state["step"])
    m, v, p = state["exp_avg"].double(), state["exp_avg_sq"].double(), before.double()
    lr = torch.as_tensor(lr, dtype=torch.float64).reshape(-1, *[1] * (p.ndim - 1)) if not isinstance(lr, float) else lr
    bc1, bc2 = 1 - BETAS[0] ** t, 1 - BETAS[1] ** t
    wd = WD if p.ndim >= 2 else 0.0
    return p * (1 - lr * wd) - lr / bc1 * m / (v.sqrt() / math.sqrt(bc2) + EPS)


def check_step(rec, mod, scale: LRScale, base_lr: float):
    """Every trained row moved by AdamW at base_lr times its group's scale; every other row did not move."""
    plan = mod.plan
    embed, head = plan._matrix("in"), plan._matrix("out")
    active = plan.trainable(plan.phase_at(rec.step))
    for name, after in rec.after.items():
        before = rec.before[name]
        if name not in active:
            assert torch.equal(after, before), (rec.step, name)
            continue
        start = active[name]
        if name in (embed, head):
            matrix = scale.embeddings if name == embed else scale.lm_head
            rows = torch.tensor([matrix if r < BASE else scale.new_rows for r in range(after.shape[0])])
            rows = (rows * base_lr)[start:]
        else:
            rows = base_lr * scale.rest
        assert torch.equal(after[:start], before[:start]), (rec.step, name)  # masked rows: bitwise
        want = adamw_step(before[start:], rec.state[name], rows)
        torch.testing.assert_close(after[start:].double(), want, rtol=2e-7, atol=2e-8, msg=f"step {rec.step}: {name}")
        assert not torch.equal(after[start:], before[start:]), (rec.step, name)


def test_embedding_rows_update_at_a_tenth_of_the_lr_at_every_step_across_a_resume(tmp_path):
    """optim.lr_scale.embeddings=0.1 with the other groups scaled too (lm_head, new rows, rest), on a
    two-stage schedule (stage 1: whole embedding matrices, stage 2: everything), resumed at the switch:
    each trained row's update is the AdamW update at optim.lr * schedule * its group's scale, every step."""
    scale = LRScale(embeddings=0.1, lm_head=0.5, new_rows=3.0, rest=2.0)
    reference = module(scale)
    ref = Updates()
    fit(reference, 6, callbacks=[ref], root=tmp_path)

    ckpt = tmp_path / "stop.ckpt"
    fit(module(scale), 3, callbacks=[SaveAt(3, ckpt)], root=tmp_path)
    torch.manual_seed(1234)
    resumed = module(scale)
    rec = Updates()
    fit(resumed, 6, callbacks=[rec], ckpt_path=ckpt, root=tmp_path)

    assert [r.step for r in rec.steps] == [3, 4, 5]
    for r in ref.steps + rec.steps:
        base_lr = LR * reference.lr_schedule.factor(r.step)
        check_step(r, reference, scale, base_lr)
    for a, b in zip(ref.steps[3:], rec.steps):
        assert all(torch.equal(a.after[n], b.after[n]) for n in a.after)
        assert a.metrics == b.metrics
    # lr/<group> curves: the base lr of the next step times each scale
    last = rec.steps[-1].metrics
    assert set(last) == {"lr", "lr/embeddings", "lr/lm_head", "lr/new_rows", "lr/rest"}
    assert last["lr"] == pytest.approx(LR * reference.lr_schedule.factor(6))
    for group in ("embeddings", "lm_head", "new_rows", "rest"):
        assert last[f"lr/{group}"] == pytest.approx(last["lr"] * scale[group])


@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_only_at_their_scale_keep_old_rows_bitwise_under_weight_decay(tied):
    scale = LRScale(embeddings=0.1, lm_head=0.1, new_rows=5.0)
    mod = module(scale, schedule="new_tokens_only", tied=tied)
    rec = Updates()
    fit(mod, 3, callbacks=[rec])
    for r in rec.steps:
        check_step(r, mod, scale, LR * mod.lr_schedule.factor(r.step))  # old rows checked bitwise there
    assert set(rec.steps[-1].metrics) == {"lr", "lr/new_rows"}


def test_lora_with_new_tokens_trains_adapter_at_rest_and_new_rows_at_their_scale():
    scale = LRScale(new_rows=4.0, rest=0.25)
    mod = module(scale, schedule="full", adapter="lora", train_new_tokens=True)
    rec = Updates()
    fit(mod, 3, callbacks=[rec])
    for r in rec.steps:
        check_step(r, mod, scale, LR * mod.lr_schedule.factor(r.step))
    assert set(rec.steps[-1].metrics) == {"lr", "lr/new_rows", "lr/rest"}


@pytest.mark.slow
def test_lr_scale_under_cpu_fsdp_matches_one_process(tmp_path):
    """trainer=fsdp (two processes, gloo) with every group scaled, whole matrices with new rows in stage 1
    (rows rescaled after the step) and everything in stage 2: the curves of one process, lr/<group> included."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["experiment=demo_zh", "debug=smoke", "trainer.max_steps=6", "eval.every_n_steps=3",
            "trainer.log_every_n_steps=1", "schedule=two_stage", "schedule.stage1_steps=3", "schedule.stage1_rows=all",
            "optim.lr_scale.embeddings=0.5", "optim.lr_scale.lm_head=2.0", "optim.lr_scale.new_rows=3.0",
            "optim.lr_scale.rest=0.5"]
    fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    curves = []
    for extra, name in (([], "single"), (fsdp, "fsdp")):
        run_dir = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "cptlab.cli.train_app", *args, *extra, f"hydra.run.dir={run_dir}"],
                              cwd=root, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(run_dir / "metrics.csv", newline="") as f:
            curves.append({(int(r["step"]), k): float(v) for r in csv.DictReader(f) for k, v in r.items()
                           if v and k not in ("step", "train/tokens_per_sec")})
    single, sharded = curves
    assert set(single) == set(sharded)
    assert {k for _, k in single if k.startswith("lr/")} == {"lr/embeddings", "lr/lm_head", "lr/new_rows", "lr/rest"}
    for key, value in single.items():
        assert sharded[key] == pytest.approx(value, rel=1e-4, abs=1e-4 if "delta" in key[1] else 1e-5), key
