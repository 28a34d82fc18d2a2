"""Callbacks that log cptlab's metrics: train metrics every N steps, held-out evaluation at step 0
and every N steps. They run before ModelCheckpoint (Lightning orders checkpointing last), so a
checkpoint at step N always comes after step N's metrics are written."""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch

from cptlab.errors import Interrupted
from cptlab.evaluation.bpb import eval_sums, metrics_from_sums
from cptlab.training.fsdp import full_parameters, is_fsdp


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    for lg in trainer.loggers:
        lg.log_metrics(metrics, step=step)
        lg.save()


def tokens_seen(trainer: pl.Trainer, tokens_per_batch: int) -> int:
    return trainer.lightning_module.batches_done * tokens_per_batch


def plain_line(trainer: pl.Trainer, text: str) -> None:
    """One flushed line on stdout from global rank zero: the progress a log file shows without a TTY."""
    if trainer.is_global_zero:
        print(text, file=sys.stdout, flush=True)


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class TrainMetrics(pl.Callback):
    """train/loss, train/tokens_per_sec, train/replay_share, lr and trainer/tokens_seen; with `mix` (the sampler's
    MixtureSampler.mix: batches done -> {domain or domain/source: share of the rows so far}) train/mix/<key> too."""

    def __init__(self, every_n_steps: int, tokens_per_batch: int, plain: bool = False,
                 mix: Callable[[int], dict[str, float]] | None = None):
        self.every, self.tokens_per_batch, self.mix = every_n_steps, tokens_per_batch, mix
        # Without a TTY (no progress bar): one plain line per logging step, with an ETA from the wall clock.
        self.plain = plain
        self._wall0, self._step0 = time.time(), 0
        self.latest: dict[str, float] = {}
        self.train_seconds = 0.0  # wall time inside training steps (evaluation excluded)
        self.train_tokens = 0
        self._t0 = None
        self._tokens0 = 0
        self._seconds0 = 0.0
        self._last_step = -1

    def on_train_start(self, trainer, pl_module):
        # A resumed run continues the curve from its checkpoint: rows logged after it are dropped.
        for lg in trainer.loggers:
            if hasattr(lg, "truncate_after"):
                lg.truncate_after(trainer.global_step)
        self._t0, self._tokens0 = time.perf_counter(), tokens_seen(trainer, self.tokens_per_batch)
        self._wall0, self._step0 = time.time(), trainer.global_step

    def pause(self):
        """Stop the throughput clock (called around evaluation)."""
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self._t0 = None

    def resume(self):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last_step or not (step % self.every == 0 or step >= trainer.max_steps):
            return
        self._last_step = step
        pl_module.check_finite()  # the host syncs here anyway (the logged loss)
        popped = pl_module.pop_train_loss()
        if popped is None:
            return
        loss, retention = (float(trainer.strategy.reduce(x, reduce_op="mean")) for x in popped)
        self.pause()
        seen = tokens_seen(trainer, self.tokens_per_batch)
        window_tokens, window_s = seen - self._tokens0, self.train_seconds - self._seconds0
        self.train_tokens += window_tokens
        self._tokens0, self._seconds0 = seen, self.train_seconds
        self.latest = {
            "train/loss": loss,
            "train/tokens_per_sec": window_tokens / window_s if window_s > 0 else 0.0,
            "train/replay_share": pl_module.replay_share,
            **pl_module.lr_metrics(trainer.optimizers[0]),  # lr, lr/<group> (optim.lr_scale)
            "trainer/tokens_seen": seen,
            "train/stage": pl_module.stage,
        }
        if pl_module.retention is not None:
            self.latest["train/retention_loss"] = retention
        if self.mix is not None:  # the achieved mixture: a pure function of the batches done (cptlab.data.mixture)
            self.latest.update({f"train/mix/{k}": v for k, v in self.mix(pl_module.batches_done).items()})
        log_metrics(trainer, self.latest, step)
        pl_module.log("loss", loss, prog_bar=True, logger=False)
        pl_module.log("tok/s", self.latest["train/tokens_per_sec"], prog_bar=True, logger=False)
        if self.plain:
            self.print_line(trainer, step)
        self.resume()

    def print_line(self, trainer, step: int) -> None:
        total, done = trainer.max_steps, step - self._step0
        eta = (time.time() - self._wall0) / done * (total - step) if done > 0 else 0.0
        plain_line(trainer, f"[train] step {step}/{total} ({100 * step / total:.0f}%)  "
                            f"loss {self.latest['train/loss']:.4f}  tokens/s {self.latest['train/tokens_per_sec']:,.0f}  "
                            f"stage {self.latest['train/stage']}  ETA {format_eta(eta)}")

    @property
    def mean_tokens_per_sec(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0


class EveryNSteps(pl.Callback):
    """Calls `self.evaluate(trainer, pl_module)` at step 0, every `self.every` steps and at the last step, once per
    step (`self.last_eval_step`, which `evaluate` sets and the checkpointed state restores: a resumed run does
    not evaluate a step twice)."""

    every: int
    last_eval_step: int = -1

    def evaluate(self, trainer, pl_module):
        raise NotImplementedError

    def on_train_start(self, trainer, pl_module):
        if trainer.global_step == 0 and self.last_eval_step < 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step != self.last_eval_step and (step % self.every == 0 or step >= trainer.max_steps):
            self.evaluate(trainer, pl_module)


def all_blocks(trainer, mine: torch.Tensor, n: int) -> torch.Tensor:
    """Per-block sums of all `n` blocks in block order, on the CPU, from each rank's rows of blocks[rank::world]
    (a collective: every rank calls it). Rows are padded to the same count for the gather, then dropped."""
    world = trainer.world_size
    if world == 1:
        return mine.detach().cpu()
    padded = mine.new_zeros((-(-n // world), mine.shape[1]))
    padded[:len(mine)] = mine
    return interleave_ranks(trainer.strategy.all_gather(padded).cpu(), n)


def interleave_ranks(gathered: torch.Tensor, n: int) -> torch.Tensor:
    """[world, rows, k] gathered per-rank rows -> [n, k] in block order: block j is rank j % world's row j // world
    (the split of PeriodicEval._sums); the padding rows land past n."""
    return gathered.transpose(0, 1).reshape(-1, gathered.shape[-1])[:n]


class PeriodicEval(EveryNSteps):
    """val/D/{loss,ppl,bpb,delta_bpb} on every domain's held-out blocks, at step 0 and every N steps.

    After a vocabulary extension (`base_rows`: the base's vocabulary size), step 0 also scores the domains whose
    blocks hold only base tokens with the softmax over the base's rows alone: val/D/bpb_base_vocab, exactly the
    unextended base's bpb on the same blocks. val/D/bpb minus it is what the new rows' initialisation costs the
    base language before any update (the probability mass the new rows take)."""

    def __init__(self, eval_sets: dict[str, torch.Tensor], token_bytes: torch.Tensor, *, every_n_steps: int,
                 batch_size: int, tokens_per_batch: int, clock: TrainMetrics | None = None, ema=None,
                 plain: bool = False, base_rows: int | None = None):
        self.eval_sets, self.token_bytes, self.ema, self.base_rows = eval_sets, token_bytes, ema, base_rows
        self.plain = plain  # without a TTY: one plain line per evaluation (per-domain bpb and its change)
        self.every, self.batch_size, self.tokens_per_batch = every_n_steps, batch_size, tokens_per_batch
        self.clock = clock
        self.bpb0: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        # Per domain, the latest evaluation's [nll, n_tokens, n_bytes] of each block (raw weights, every rank's
        # blocks in block order): summary.json's eval_block_sums, which cptlab-compare's bootstrap resamples.
        self.latest_blocks: dict[str, torch.Tensor] = {}
        self.last_eval_step = -1

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        pl_module.check_finite()  # weights a non-finite loss has touched are not worth evaluating
        if self.clock:
            self.clock.pause()
        with full_parameters(trainer, recurse=False):
            metrics = self._evaluate(trainer, pl_module, "val")
            if trainer.global_step == 0:
                metrics.update(self._base_vocab(trainer, pl_module))
        if self.ema is not None and self.ema.shadow:
            with self.ema.swapped(pl_module.model):
                metrics.update(self._evaluate(trainer, pl_module, "val_ema"))
        step = trainer.global_step
        metrics["trainer/tokens_seen"] = tokens_seen(trainer, self.tokens_per_batch)
        self.last_eval_step, self.latest = step, metrics
        if step == 0:
            self.first = dict(metrics)
        log_metrics(trainer, metrics, step)
        if self.plain:
            parts = [f"{name} bpb {metrics[f'val/{name}/bpb']:.4f} ({metrics[f'val/{name}/delta_bpb']:+.4f})"
                     for name in self.eval_sets]
            plain_line(trainer, f"[eval]  step {step}/{trainer.max_steps}  " + "  ".join(parts))
        if self.clock:
            self.clock.resume()
        return metrics

    def _sums(self, trainer, pl_module, blocks: torch.Tensor, vocab_limit: int | None = None,
              keep_blocks: str | None = None) -> dict[str, float]:
        """The metrics of `blocks`, each rank scoring blocks[rank::world]; `keep_blocks`: a domain name, under which
        the per-block sums of every rank are kept in self.latest_blocks (a collective gather: all ranks call it)."""
        rank, world = trainer.global_rank, trainer.world_size
        # Under FSDP each rank makes as many forward passes as rank 0 (which has the most blocks).
        n_batches = -(-len(blocks[0::world]) // self.batch_size) if is_fsdp(trainer) else None
        sums = eval_sums(pl_module.model, blocks[rank::world], self.token_bytes, batch_size=self.batch_size,
                         device=pl_module.device, n_batches=n_batches, filler=blocks[:1],
                         chunked=getattr(pl_module, "chunked_loss", False), vocab_limit=vocab_limit,
                         per_block=keep_blocks is not None, doc_eos=getattr(pl_module, "doc_eos", None))
        if keep_blocks is not None:
            sums, mine = sums
            self.latest_blocks[keep_blocks] = all_blocks(trainer, mine, len(blocks))
        return metrics_from_sums(trainer.strategy.reduce(sums, reduce_op="sum"))

    def _base_vocab(self, trainer, pl_module) -> dict[str, float]:
        """val/D/bpb_base_vocab for the domains whose blocks hold base tokens only (see the class docstring)."""
        if not self.base_rows or self.base_rows >= len(self.token_bytes):
            return {}
        return {f"val/{name}/bpb_base_vocab": self._sums(trainer, pl_module, blocks, self.base_rows)["bpb"]
                for name, blocks in self.eval_sets.items() if int(blocks.max()) < self.base_rows}

    def _evaluate(self, trainer, pl_module, prefix: str) -> dict[str, float]:
        metrics = {}
        for name, blocks in self.eval_sets.items():
            m = self._sums(trainer, pl_module, blocks, keep_blocks=name if prefix == "val" else None)
            # delta_bpb of both the raw and the EMA weights is measured from the step-0 (raw) bpb.
            self.bpb0.setdefault(name, m["bpb"])
            m["delta_bpb"] = m["bpb"] - self.bpb0[name]
            metrics.update({f"{prefix}/{name}/{k}": v for k, v in m.items()})
        return metrics

    def state_dict(self):
        return {"bpb0": self.bpb0, "first": self.first, "latest": self.latest, "last_eval_step": self.last_eval_step,
                "latest_blocks": self.latest_blocks}

    def load_state_dict(self, state):
        self.bpb0, self.first = dict(state["bpb0"]), dict(state["first"])
        self.latest, self.last_eval_step = dict(state["latest"]), state["last_eval_step"]
        self.latest_blocks = dict(state.get("latest_blocks") or {})  # absent from checkpoints written before it


class Preempted(Interrupted):
    """Raised after a SIGTERM/SIGUSR1 checkpoint: the run stops (one line, exit status 128 + the signal's number),
    and re-running the command resumes it."""


class PreemptionCheckpoint(pl.Callback):
    """SIGTERM / SIGUSR1 (SLURM pre-emption, `kill`, a scheduler's time limit) finish the current step,
    write `last.ckpt` (atomically) and stop with status failed: "interrupted ... re-run to resume"."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, last_checkpoint):
        self.last_checkpoint = last_checkpoint
        self.received: str | None = None
        self._previous = {}

    def on_train_start(self, trainer, pl_module):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        import signal

        self.received = signal.Signals(signum).name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # SLURM and torchrun signal every rank, so all ranks enter the (collective) save together.
        if self.received:
            # weights_only=False: Lightning's "model weights only" switch, off: optimizer, schedule and loop
            # state are saved too, for an exact resume (every checkpoint is still read weights-only).
            trainer.save_checkpoint(self.last_checkpoint, weights_only=False)
            raise Preempted(f"interrupted by {self.received} at step {trainer.global_step}; checkpoint saved to "
                            f"{self.last_checkpoint}: re-run the same command to resume", self.received)

    def _restore_handlers(self):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module):
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception):
        self._restore_handlers()
