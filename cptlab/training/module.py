"""The LightningModule: causal-LM loss on mixture batches, the optimizer/schedule, the freezing schedule's
phases, and the counters that make the data stream resumable (the stream is a pure function of the
micro-batch index).

Freezing phases (cptlab.model.freeze) are a pure function of the optimizer step. At a phase switch the
optimizer is rebuilt over the parameters that train from then on: a parameter whose trainable part is
unchanged keeps its AdamW state, every other one starts fresh (as a separate stage would). The
optimizer only ever holds what trains now; requires_grad=False parameters are never in it.

Checkpoints hold what can differ from the base model (the parameters some phase so far trained; of a
row-masked matrix only its trainable rows) plus counters, phase and RNG state; the frozen rest is
rebuilt from the base by the pipeline before the checkpoint loads.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.types import LRSchedulerConfig

from cptlab.errors import CptlabError
from cptlab.model.doc_mask import document_position_ids
from cptlab.model.freeze import FreezePlan, clean_name
from cptlab.model.loss import causal_lm_loss
from cptlab.model.phases import Phase
from cptlab.rundir.layout import LAST_CHECKPOINT
from cptlab.training.fsdp import STATE_DICT_KEYS, average_gradients, is_fsdp
from cptlab.training.optim import base_lr, build_optimizer, build_scheduler, lr_groups
from cptlab.training.schedule import LRScale, LRSchedule

PREFIX = "model."


class CPTModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, *, lr: float, weight_decay: float, betas, eps: float,
                 schedule: LRSchedule, freeze: FreezePlan | None = None,
                 nan_policy: str = "stop", lr_scale: LRScale | None = None, max_consecutive_skipped: int = 5,
                 max_skipped_batches: int = 50, chunked_loss: bool = False, doc_eos: int | None = None):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, list(betas), eps
        self.lr_schedule = schedule
        self.lr_scale = lr_scale if lr_scale is not None else LRScale()
        self.plan = freeze if freeze is not None else FreezePlan(model, [Phase(None, ("adapter",))])
        self.base_rows = self.plan.base_rows
        # optim.lr_scale: the learning-rate group of every parameter each phase trains (cptlab.training.optim.lr_groups)
        self.lr_plans = [self._lr_plan(i) for i in range(len(self.plan.phases))]
        # Micro-batches consumed and replay rows among them, over all ranks (same on every rank).
        self.batches_done = 0
        self.rows_seen = 0
        self.replay_rows_seen = 0
        # Running train-loss sum since the last log, kept on device: no host sync per step.
        self.loss_sum = torch.zeros(())
        self.loss_count = 0
        # Optional retention loss `(model, batch, logits) -> tensor` (mean teacher), added with this weight.
        self.retention, self.retention_weight = None, 0.0
        self.retention_sum = torch.zeros(())
        # train.nan_policy: "stop" fails the run at a non-finite loss (the last checkpoint stays the last
        # good one); "skip_batch" skips that batch's update and counts it. "stop" costs no host sync per
        # step: the first bad micro-batch is noted on the device and checked (one sync) where the host
        # looks anyway (train-metric logs, evaluations) and before every checkpoint is written.
        self.nan_policy, self.skipped_batches = nan_policy, 0
        # model.chunked_loss: the loss (and the evaluation's per-token losses) never materialise the full
        # float32 logits [B*T, V] (cptlab.model.loss). The mean-teacher KL needs the student's logits, so a
        # run with a retention loss takes the plain path for training (evaluation stays chunked).
        self.chunked_loss = chunked_loss
        # data.doc_masking: the EOS id at which a document's segment starts (cptlab.model.doc_mask), read by
        # the loss, the mean teacher and the held-out evaluation (PeriodicEval); None: plain causal blocks.
        self.doc_eos = doc_eos
        # skip_batch gives up after this many skipped batches in a row / in all (a diverged model skips forever).
        self.max_consecutive_skipped, self.max_skipped_batches = max_consecutive_skipped, max_skipped_batches
        self.consecutive_skipped = 0
        self.first_nonfinite = torch.full((), -1, dtype=torch.long)  # micro-batch index, -1 = none yet
        # The freezing phase the parameters and the optimizer are set up for.
        self.phase = 0
        self._keep_requires_grad = False
        self._pending_rng = None
        # trainer.strategy=fsdp: the parameters FSDP leaves whole on every rank, whose gradients this module
        # averages (cptlab.training.fsdp); empty otherwise.
        self.replicated: list[torch.nn.Parameter] = []
        # Checkpoints hold only what training can have changed; the rest comes from the base model.
        self.strict_loading = False
        self.plan.apply(self.phase)

    # -- stages ---------------------------------------------------------------------------------------

    def current_stage(self, global_step: int) -> int:
        """The freezing phase in effect for optimizer step `global_step` (0-based)."""
        return self.plan.phase_at(global_step)

    @property
    def stage(self) -> int:
        """The phase that trained the latest optimizer step (the one being trained during a step)."""
        return self.phase

    def setup(self, stage: str) -> None:
        # Several processes: DDP registers the parameters that require grad once, when it wraps the model,
        # so all parameters some phase trains keep requires_grad and inactive ones have gradients dropped.
        self._keep_requires_grad = self.trainer.world_size > 1
        self.plan.apply(self.phase, keep_requires_grad=self._keep_requires_grad)

    def _lr_plan(self, phase: int) -> dict[str, tuple]:
        active = self.plan.trainable(phase)
        return lr_groups(active, {n: self.plan.params[n].shape[0] for n in active}, embeddings=self.plan._matrix("in"),
                         lm_head=self.plan._matrix("out"), base_rows=self.base_rows, scale=self.lr_scale)

    def lr_metrics(self, optimizer) -> dict[str, float]:
        """`lr` (optim.lr times the schedule now) and `lr/<group>` for every group some phase trains."""
        lr = base_lr(optimizer)
        groups = {g for plan in self.lr_plans for g, _, _ in plan.values()}
        if any(self.plan.params[n].shape[0] > self.base_rows for plan in self.lr_plans for n, (g, _, _) in plan.items()
               if g in ("embeddings", "lm_head")):
            groups.add("new_rows")  # whole matrices with new rows: those rows train too
        return {"lr": lr, **{f"lr/{g}": lr * self.lr_scale[g] for g in sorted(groups)}}

    def _make_optimizer(self):
        active = self.plan.trainable(self.phase)
        params = [self.plan.params[n] for n in active]
        row_starts = {self.plan.params[n]: s for n, s in active.items() if s > 0}
        lr_plan = self.lr_plans[self.phase]
        lr_scales = {self.plan.params[n]: scale for n, (_, scale, _) in lr_plan.items()}
        row_scales = {self.plan.params[n]: rows for n, (_, _, rows) in lr_plan.items() if rows is not None}
        # Fused AdamW (faster on CPU and GPU; benchmarks/README.md). A fused optimizer declares that it
        # unscales gradients itself, and Lightning then refuses gradient clipping under mixed precision;
        # with bf16 nothing is scaled and under fp16 the GradScaler unscales before the step, so the
        # declaration is switched off and clipping works as with the plain optimizer.
        opt = build_optimizer(None, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps,
                              fused=self.device.type in ("cuda", "cpu"), params=params, row_starts=row_starts,
                              lr_scales=lr_scales, row_scales=row_scales)
        opt._step_supports_amp_scaling = False
        return opt

    def configure_optimizers(self):
        opt = self._make_optimizer()
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": build_scheduler(opt, self.lr_schedule), "interval": "step"}}

    def _switch_phase(self, phase: int) -> None:
        old = self.plan.trainable(self.phase)
        self.phase = phase
        new = self.plan.apply(phase, keep_requires_grad=self._keep_requires_grad)
        for name, p in self.plan.params.items():
            if name not in new:
                p.grad = None
        trainer = self.trainer
        old_opt = trainer.optimizers[0]
        opt = self._make_optimizer()
        for name, start in new.items():  # unchanged parameters keep their moments; the others start fresh
            p = self.plan.params[name]
            if old.get(name) == start and p in old_opt.state:
                opt.state[p] = old_opt.state[p]
        step = trainer.global_step
        scheduler = build_scheduler(opt, self.lr_schedule, start_step=step)
        trainer.strategy.optimizers = [opt]
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(scheduler, interval="step")]

    def on_train_batch_start(self, batch, batch_idx):
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
        phase = self.current_stage(self.trainer.global_step)
        if phase != self.phase:
            self._switch_phase(phase)

    def on_before_optimizer_step(self, optimizer):
        # Runs before gradient clipping: frozen rows and inactive parameters must not count in the norm.
        if self.replicated:
            average_gradients(self.replicated, self.trainer.world_size)
        active = self.plan.trainable(self.phase)
        for name, p in self.plan.params.items():
            if p.grad is None:
                continue
            if name not in active:
                p.grad = None
            elif active[name] > 0:
                p.grad[:active[name]].zero_()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if gradient_clip_val and is_fsdp(self.trainer):
            # Lightning cannot clip by norm under FSDP; the root FSDP module computes the norm over the
            # shards of every rank and the whole (replicated) parameters.
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Free the gradients as soon as they are used (as transformers.Trainer does): Lightning zeroes them
        # only after the next step's forward, which kept a model's worth of gradients alive through it (the
        # forward's end is a step's peak memory). Called once per accumulation window, after its last backward.
        optimizer.zero_grad(set_to_none=True)

    # -- training ---------------------------------------------------------------------------------------

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch, batch_idx):
        if batch["step"] != self.batches_done:
            raise RuntimeError(f"data stream out of step: got batch {batch['step']}, expected {self.batches_done}")
        position_ids = None
        if self.doc_eos is not None:
            position_ids = document_position_ids(batch["input_ids"], self.doc_eos)
            batch = {**batch, "position_ids": position_ids}  # the mean teacher scores the block the same way
        if self.chunked_loss and self.retention is None:
            loss = causal_lm_loss(self.model, batch["input_ids"], batch["targets"], position_ids=position_ids)
        else:
            logits = self.model(input_ids=batch["input_ids"], position_ids=position_ids, use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten())
        if self.retention is not None:
            extra = self.retention(self.model, batch, logits)
            self.retention_sum = self.retention_sum.to(extra.device) + extra.detach()
            loss = loss + self.retention_weight * extra
        self.batches_done += 1
        self.rows_seen += batch["rows"]
        self.replay_rows_seen += batch["replay_rows"]
        if self.nan_policy == "skip_batch":
            if not torch.isfinite(loss):  # one host sync per step: skipping has to decide now
                self.skipped_batches += 1
                self.consecutive_skipped += 1
                if (self.consecutive_skipped >= self.max_consecutive_skipped
                        or self.skipped_batches >= self.max_skipped_batches):
                    raise CptlabError(
                        f"train.nan_policy=skip_batch gave up at batch {batch['step']}: {self.consecutive_skipped} "
                        f"non-finite losses in a row, {self.skipped_batches} in all (train.max_consecutive_skipped="
                        f"{self.max_consecutive_skipped}, train.max_skipped_batches={self.max_skipped_batches}); "
                        f"{self._checkpoint_note()}")
                return None  # Lightning skips backward and the optimizer step
            self.consecutive_skipped = 0
        else:
            self._note_nonfinite(loss, batch["step"])
        self.loss_sum = self.loss_sum.to(loss.device) + loss.detach()
        self.loss_count += 1
        if len(self.plan.phases) > 1:
            self.log("stage", float(self.phase), prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    def _note_nonfinite(self, loss: torch.Tensor, batch_index: int) -> None:
        """Remember (on the device, without a sync) the first micro-batch whose loss was not finite."""
        first = self.first_nonfinite.to(loss.device)
        self.first_nonfinite = torch.where(~torch.isfinite(loss.detach()) & (first < 0), batch_index, first)

    def check_finite(self) -> None:
        """Fail the run (train.nan_policy=stop) if a loss since the start was not finite; one host sync.
        Called at the same points on every rank, which agree (max over ranks) and so stop together."""
        first = self.first_nonfinite
        if self._trainer is not None and self.trainer.world_size > 1:
            first = self.trainer.strategy.reduce(first.to(self.device), reduce_op="max")
        first = int(first)
        if first >= 0:
            raise CptlabError(f"non-finite train loss at batch {first} (found at step {self.trainer.global_step}); "
                              f"stopped by train.nan_policy=stop; {self._checkpoint_note()}")

    def check_finite_weights(self) -> None:
        """Fail if a parameter some phase trained is not finite (a diverged update with a finite loss)."""
        for name, p in self.plan.params.items():
            if not torch.isfinite(p.detach()).all():
                raise CptlabError(f"non-finite weights ({name}) at step {self.trainer.global_step}: the run diverged "
                                  f"(lower optim.lr?); {self._checkpoint_note()}")

    def _checkpoint_note(self) -> str:
        """Whether a checkpoint written before the failure exists: the state a re-run resumes from."""
        callback = getattr(self._trainer, "checkpoint_callback", None)
        dirpath = getattr(callback, "dirpath", None)
        last = Path(dirpath) / LAST_CHECKPOINT if dirpath else None
        if last is not None and last.is_file():
            return f"the last good state is the checkpoint {last}"
        return "no checkpoint was written before it, so a re-run starts from step 0"

    def pop_train_loss(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Mean train loss (causal LM + weighted retention) and mean retention loss since the last call
        (device tensors), reset for the next interval."""
        if self.loss_count == 0:
            return None
        mean, retention = self.loss_sum / self.loss_count, self.retention_sum.to(self.loss_sum.device) / self.loss_count
        self.loss_sum, self.retention_sum, self.loss_count = torch.zeros((), device=mean.device), torch.zeros(()), 0
        return mean, retention

    @property
    def replay_share(self) -> float:
        return self.replay_rows_seen / self.rows_seen if self.rows_seen else 0.0

    # -- checkpoints ------------------------------------------------------------------------------------

    def _kept(self) -> dict[str, int]:
        """state_dict key -> first row kept, for every parameter the checkpoint holds."""
        trained = self.plan.trained_until(self.phase)
        by_id = {id(self.plan.params[n]): s for n, s in trained.items()}
        return {PREFIX + clean_name(key): by_id[id(p)] for key, p in self.model.named_parameters(remove_duplicate=False)
                if id(p) in by_id}

    def on_save_checkpoint(self, checkpoint):
        self.check_finite()  # a checkpoint is never written from weights a non-finite loss has touched
        self.check_finite_weights()
        kept = self._kept()
        params = {PREFIX + clean_name(k) for k, _ in self.model.named_parameters(remove_duplicate=False)}
        state, rows = checkpoint["state_dict"], {}
        for key in list(state):
            if key in params and key not in kept:
                del state[key]
            elif kept.get(key, 0) > 0:
                start = kept[key]
                rows[key] = {"start": start, "rows": state.pop(key)[start:].clone()}
        # Merged into what callbacks (which run first) may have put there, e.g. EMA weights.
        checkpoint.setdefault("cptlab", {}).update({
            "batches_done": self.batches_done, "rows_seen": self.rows_seen, "replay_rows_seen": self.replay_rows_seen,
            "phase": self.phase, "base_rows": self.base_rows, "rows": rows, "rng": _rng_state(),
            # the train-loss window in progress (a pre-emption checkpoint can fall between two logs)
            "loss_window": (self.loss_sum.detach().cpu(), self.retention_sum.detach().cpu(), self.loss_count),
            "skipped_batches": self.skipped_batches})

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("cptlab", {})
        self.batches_done = state.get("batches_done", 0)
        self.rows_seen = state.get("rows_seen", 0)
        self.replay_rows_seen = state.get("replay_rows_seen", 0)
        self.skipped_batches = state.get("skipped_batches", 0)
        if "loss_window" in state:
            self.loss_sum, self.retention_sum, self.loss_count = state["loss_window"]
        base_rows = state.get("base_rows", self.base_rows)
        if base_rows != self.base_rows:
            raise CptlabError(f"the checkpoint was trained with {base_rows} base embedding rows, this run's model "
                              f"has {self.base_rows}: the tokenizer or base model changed since")
        self.phase = state.get("phase", self.current_stage(checkpoint.get("global_step", 0)))
        self.plan.apply(self.phase, keep_requires_grad=self._keep_requires_grad)
        restore_rows(self.model, state.get("rows", {}), prefix=PREFIX)
        saved = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint.get(STATE_DICT_KEYS, ())
        missing = [k for k, s in self._kept().items() if s == 0 and k not in saved]
        if missing:
            raise CptlabError(f"the checkpoint lacks trained weights ({missing[0]}, {len(missing)} in all): it was "
                              f"written by a run with another schedule or adapter config")
        self._pending_rng = state.get("rng")


def restore_rows(model: torch.nn.Module, rows: dict, *, prefix: str = "") -> None:
    """Copy saved row blocks ({key: {"start", "rows"}}) into the model's matrices."""
    params = {clean_name(n): p for n, p in model.named_parameters(remove_duplicate=False)}
    for key, entry in rows.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name not in params:
            raise CptlabError(f"the checkpoint holds rows of {name}, which this model does not have")
        p, start, block = params[name], entry["start"], entry["rows"]
        if p.shape[0] - start != block.shape[0] or p.shape[1:] != block.shape[1:]:
            raise CptlabError(f"the checkpoint's rows of {name} ({tuple(block.shape)} from row {start}) do not fit "
                              f"the model's {tuple(p.shape)}: the tokenizer or base model changed since")
        with torch.no_grad():
            p[start:].copy_(block)


def load_trained_weights(model: torch.nn.Module, checkpoint: dict) -> None:
    """Apply a cptlab checkpoint's weights to a freshly built model (the base rebuilt by the pipeline):
    what `CPTModule` restores on resume, for use outside Lightning (export)."""
    state = {k[len(PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CptlabError(f"the checkpoint does not fit the model rebuilt from the run's config "
                          f"(unexpected {result.unexpected_keys[0]})")
    restore_rows(model, checkpoint.get("cptlab", {}).get("rows", {}), prefix=PREFIX)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Restore the RNG at the first step after a resume (dropout then draws what it would have drawn)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # another device count: the CUDA streams cannot match anyway
            pass
