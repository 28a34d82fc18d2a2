import math

import pytest
import torch

from cptlab.errors import CptlabError
from cptlab.optim import LRSchedule, build_optimizer, build_scheduler


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


def test_bad_schedule_names_the_key():
    with pytest.raises(CptlabError, match="optim.schedule='linear'"):
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
