"""CPTModule with freezing schedules and adapters, trained by Lightning on a tiny Llama (vocabulary grown
from 96 to 128 rows, tied and untied): frozen rows and weights stay bitwise unchanged under AdamW weight
decay, clipping and bf16-mixed; the stage switch happens at the configured step, also across a resume;
parameters that start training late get fresh optimizer state; checkpoints hold only trained state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from cptlab.data.datamodule import CPTDataModule
from cptlab.model.adapter import apply_adapter
from cptlab.model.load import load_model
from cptlab.run.plan_values import freeze_plan
from cptlab.training.module import CPTModule
from cptlab.training.schedule import LRSchedule

BASE, GROWN, HIDDEN = 96, 128, 32


# -- fixtures -----------------------------------------------------------------------------------------


class Sampler:
    """A deterministic stream: batch `step` is a pure function of `step`, new token ids included."""

    def __init__(self, vocab=GROWN, batch=4, seq=16):
        self.vocab, self.batch_size, self.seq = vocab, batch, seq
        self.domains = [SimpleNamespace(name="x", role="new")]

    def batch(self, step, rank=0, world_size=1):
        g = torch.Generator().manual_seed(1000 + step)
        tokens = torch.randint(0, self.vocab, (self.batch_size, self.seq + 1), generator=g)
        return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}

    def counts(self, step):
        return {"x": self.batch_size}


def tiny(tied=False, hidden=HIDDEN, inter=64, vocab=BASE, grow=GROWN):
    """A random-init Llama as cptlab builds one (seed 0), its vocabulary grown from `vocab` to `grow` rows."""
    model = load_model(None, config=dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=tied), dtype="float32", vocab_size=vocab)
    if grow:
        torch.manual_seed(0)
        model.resize_token_embeddings(grow, mean_resizing=False)
    return model


def adapter_cfg(name="none", **kw):
    base = {"name": name, "r": 4, "alpha": 8.0, "dropout": 0.0, "rslora": False, "train_new_tokens": False,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    return OmegaConf.create({**base, **kw})


def schedule_cfg(name="full", **kw):
    base = {"name": name, "stage1_steps": 3, "stage1_rows": "new", "rewarm": False, "phases": None}
    return OmegaConf.create({**base, **kw})


def build(*, tied=False, adapter=None, schedule=None, total=6, wd=0.1, lr=1e-2, model=None, base_rows=BASE):
    adapter = adapter if adapter is not None else adapter_cfg()
    schedule = schedule if schedule is not None else schedule_cfg()
    torch.manual_seed(0)
    model = apply_adapter(model if model is not None else tiny(tied), adapter, base_rows=base_rows)
    plan = freeze_plan(model, schedule, adapter)
    lrs = LRSchedule(total_steps=total, warmup_steps=2, kind="cosine",
                     restarts=plan.stage_starts if schedule.rewarm else ())
    return CPTModule(model, lr=lr, weight_decay=wd, betas=[0.9, 0.95], eps=1e-8, schedule=lrs, freeze=plan)


class Recorder(pl.Callback):
    """After every optimizer step: which parameters changed, the stage, the lr and the optimizer's params."""

    def __init__(self):
        self.steps = []
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._last = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the learning rate of this step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        named = dict(pl_module.model.named_parameters())
        changed = {n for n, p in named.items() if not torch.equal(p, self._last[n])}
        self.steps.append(SimpleNamespace(
            step=trainer.global_step - 1, stage=pl_module.stage, changed=changed,
            in_optimizer={n for n, p in named.items() if id(p) in ids},
            requires_grad={n for n, p in named.items() if p.requires_grad},
            lr=self._lr, optimizer=opt))


class SaveAt(pl.Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def fit(module, steps, *, precision="32-true", callbacks=(), ckpt_path=None, root=None):
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, precision=precision, gradient_clip_val=1.0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         use_distributed_sampler=False, callbacks=list(callbacks), default_root_dir=root)
    trainer.fit(module, datamodule=CPTDataModule(Sampler()), ckpt_path=ckpt_path)
    return trainer


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}


def matrices(names):
    return {n for n in names if n.endswith(("embed_tokens.weight", "lm_head.weight"))}


# -- learning-rate restarts -----------------------------------------------------------------------------


def test_lr_rewarms_at_stage_starts_and_decays_over_the_remaining_steps():
    s = LRSchedule(total_steps=110, warmup_steps=10, kind="cosine", min_lr_ratio=0.1, restarts=(50,))
    plain = LRSchedule(total_steps=110, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    assert [s.factor(t) for t in range(50)] == [plain.factor(t) for t in range(50)]
    assert s.factor(50) == pytest.approx(0.1) and s.factor(54) == pytest.approx(0.5) and s.factor(59) == 1.0
    assert s.factor(60 + 25) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the 50 decay steps left
    assert s.factor(110) == pytest.approx(0.1)
    wsd = LRSchedule(total_steps=100, warmup_steps=0, kind="wsd", min_lr_ratio=0.0, decay_fraction=0.5, restarts=(60,))
    assert wsd.factor(79) == 1.0 and wsd.factor(90) == pytest.approx(0.5)


# -- bitwise-frozen rows and weights ------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("tied", [False, True])
def test_new_tokens_only_leaves_old_rows_and_body_bitwise_unchanged(tied, precision):
    module = build(tied=tied, schedule=schedule_cfg("new_tokens_only"), wd=0.1, lr=5e-2)
    before = snapshot(module)
    trainer = fit(module, 5, precision=precision)
    after = snapshot(module)
    mats = matrices(after)
    assert len(mats) == (1 if tied else 2)
    for name in after:
        if name in mats:
            assert torch.equal(after[name][:BASE], before[name][:BASE]), name
            assert not torch.equal(after[name][BASE:], before[name][BASE:]), name
            assert after[name].dtype == torch.float32  # fp32 master weights
        else:
            assert torch.equal(after[name], before[name]), name
    opt = trainer.optimizers[0]
    params = [p for g in opt.param_groups for p in g["params"]]
    assert all(p.requires_grad for p in params) and len(params) == len(mats)
    for p in params:  # moments only for the trainable rows
        assert opt.state[p]["exp_avg"].shape == (GROWN - BASE, HIDDEN)


def test_control_plain_adamw_with_zero_gradients_moves_frozen_rows():
    """Why the rows are swapped out of the step: a zero gradient does not protect a row from decay."""
    w = torch.nn.Parameter(torch.ones(4, 2))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.1)
    w.grad = torch.zeros_like(w)
    w.grad[2:] = 1.0
    opt.step()
    assert not torch.equal(w.detach()[:2], torch.ones(2, 2))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("tied", [False, True])
def test_lora_with_new_tokens_trains_exactly_adapter_and_new_rows(tied, precision):
    adapter = adapter_cfg("lora", train_new_tokens=True, dropout=0.1)
    module = build(tied=tied, adapter=adapter, wd=0.1, lr=5e-2)
    before = snapshot(module)
    recorder = Recorder()
    fit(module, 4, precision=precision, callbacks=[recorder])
    after = snapshot(module)
    adapter_names = {n for n in after if "lora_" in n}
    mats = matrices(after)
    for name in after:
        if name in adapter_names:
            if "lora_B" in name:
                assert not torch.equal(after[name], before[name]), name
        elif name in mats:
            assert torch.equal(after[name][:BASE], before[name][:BASE]), name
            assert not torch.equal(after[name][BASE:], before[name][BASE:]), name
        else:
            assert torch.equal(after[name], before[name]), name
    for rec in recorder.steps:
        assert rec.in_optimizer == rec.requires_grad == adapter_names | mats


# -- stage switch -------------------------------------------------------------------------------------


def test_two_stage_switches_at_the_configured_step_with_fresh_state_for_late_parameters():
    module = build(schedule=schedule_cfg("two_stage", stage1_steps=3, stage1_rows="new", rewarm=True), total=6)
    recorder = Recorder()
    fit(module, 6, callbacks=[recorder])
    names = set(dict(module.model.named_parameters()))
    mats = matrices(names)
    assert [r.stage for r in recorder.steps] == [0, 0, 0, 1, 1, 1]
    assert [module.current_stage(s) for s in range(7)] == [0, 0, 0, 1, 1, 1, 1]
    for r in recorder.steps[:3]:
        assert r.changed == mats and r.in_optimizer == r.requires_grad == mats
    for r in recorder.steps[3:]:
        assert r.changed == names and r.in_optimizer == r.requires_grad == names
    # re-warmed: warm-up (2 steps) again from step 3
    lrs = [r.lr for r in recorder.steps]
    assert lrs[0] == pytest.approx(5e-3) and lrs[3] == pytest.approx(5e-3) and lrs[4] == pytest.approx(1e-2)
    # every parameter's state after the switch counts from the switch: the whole matrices are new in
    # stage 2 (their trainable rows changed), the body had none
    opt = recorder.steps[-1].optimizer
    params = dict(module.model.named_parameters())
    for name in names:
        assert int(opt.state[params[name]]["step"]) == 3, name
        assert opt.state[params[name]]["exp_avg"].shape == params[name].shape


def test_unchanged_parameters_keep_their_state_across_the_switch():
    adapter = adapter_cfg("lora", train_new_tokens=True)
    module = build(adapter=adapter, schedule=schedule_cfg("two_stage", stage1_steps=2, stage1_rows="new"))
    recorder = Recorder()
    fit(module, 5, callbacks=[recorder])
    opt = recorder.steps[-1].optimizer
    params = dict(module.model.named_parameters())
    for name, p in params.items():
        if name in matrices(params):
            assert int(opt.state[p]["step"]) == 5, name  # new rows trained in both stages: state carried
        elif "lora_" in name:
            assert int(opt.state[p]["step"]) == 3, name  # from the switch on
        else:
            assert p not in opt.state and not p.requires_grad


@pytest.mark.parametrize("stop", [2, 3])  # before the switch, and exactly at it
def test_resume_across_the_switch_is_exact(tmp_path, stop):
    adapter = adapter_cfg("lora", train_new_tokens=True, dropout=0.2)
    schedule = schedule_cfg("two_stage", stage1_steps=3, stage1_rows="all", rewarm=True)
    reference = build(adapter=adapter, schedule=schedule)
    ref_recorder = Recorder()
    fit(reference, 6, callbacks=[ref_recorder], root=tmp_path)

    ckpt = tmp_path / "stop.ckpt"
    first = build(adapter=adapter, schedule=schedule)
    fit(first, stop, callbacks=[SaveAt(stop, ckpt)], root=tmp_path)
    assert ckpt.is_file()

    torch.manual_seed(1234)  # the resumed process's own RNG must not matter
    resumed = build(adapter=adapter, schedule=schedule)
    recorder = Recorder()
    fit(resumed, 6, callbacks=[recorder], ckpt_path=ckpt, root=tmp_path)
    assert [r.step for r in recorder.steps] == list(range(stop, 6))
    assert [r.stage for r in recorder.steps] == [resumed.current_stage(s) for s in range(stop, 6)]
    assert [r.lr for r in recorder.steps] == [r.lr for r in ref_recorder.steps[stop:]]
    assert [r.changed for r in recorder.steps] == [r.changed for r in ref_recorder.steps[stop:]]
    got, want = snapshot(resumed), snapshot(reference)
    assert all(torch.equal(got[n], want[n]) for n in want), [n for n in want if not torch.equal(got[n], want[n])]
    ref_opt, opt = ref_recorder.steps[-1].optimizer, recorder.steps[-1].optimizer
    for (a, b) in zip(ref_opt.state.values(), opt.state.values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_multi_process_mode_matches_single_process_mode():
    """Under DDP every parameter some phase trains keeps requires_grad; inactive ones have their
    gradients dropped. Forced here on one process: the result is the same training."""

    class KeepGrad(CPTModule):
        def setup(self, stage):
            self._keep_requires_grad = True
            self.plan.apply(self.phase, keep_requires_grad=True)

    schedule = schedule_cfg("two_stage", stage1_steps=2, stage1_rows="new")
    plain = build(schedule=schedule, total=4)
    fit(plain, 4)
    forced = build(schedule=schedule, total=4)
    forced.__class__ = KeepGrad
    fit(forced, 4)
    a, b = snapshot(plain), snapshot(forced)
    assert all(torch.equal(a[n], b[n]) for n in a)


# -- checkpoints ----------------------------------------------------------------------------------------


def test_checkpoints_hold_only_trained_state(tmp_path):
    sizes = {}
    for label, adapter, schedule in [("full", adapter_cfg(), schedule_cfg()),
                                     ("lora", adapter_cfg("lora", train_new_tokens=True), schedule_cfg()),
                                     ("new_tokens_only", adapter_cfg(), schedule_cfg("new_tokens_only"))]:
        module = build(adapter=adapter, schedule=schedule,
                       model=tiny(hidden=64, inter=176, vocab=448, grow=512), base_rows=448)
        path = tmp_path / f"{label}.ckpt"
        fit(module, 2, callbacks=[SaveAt(2, path)], root=tmp_path)
        sizes[label] = path.stat().st_size
        ckpt = torch.load(path, weights_only=False)
        keys = set(ckpt["state_dict"])
        rows = ckpt["cptlab"]["rows"]
        if label == "lora":
            assert keys and all("lora_" in k for k in keys)
            assert {tuple(v["rows"].shape) for v in rows.values()} == {(512 - 448, 64)}
            assert len(rows) == 2 and all(v["start"] == 448 for v in rows.values())
        elif label == "new_tokens_only":
            assert keys == set() and len(rows) == 2
    print(f"checkpoint sizes (bytes): {sizes}; full/lora = {sizes['full'] / sizes['lora']:.1f}x")
    assert sizes["full"] >= 5 * sizes["lora"]
    assert sizes["full"] >= 5 * sizes["new_tokens_only"]


def test_a_checkpoint_from_another_config_is_refused(tmp_path):
    path = tmp_path / "lora.ckpt"
    fit(build(adapter=adapter_cfg("lora")), 1, callbacks=[SaveAt(1, path)], root=tmp_path)
    other = build(adapter=adapter_cfg("dora"))
    with pytest.raises(Exception, match="lacks trained weights"):
        fit(other, 2, ckpt_path=path, root=tmp_path)
