"""trainer.strategy=fsdp: Lightning's FSDPStrategy set up for continued pre-training.

The decoder layers are sharded: FSDP auto-wraps every module whose class the model lists in
`_no_split_modules` (LlamaDecoderLayer, Qwen2DecoderLayer, ...; peft's LoRA/DoRA weights sit inside
them, `use_orig_params=True` lets frozen and trainable weights share a shard). What lies outside the
layers (input embedding, output matrix, final norm) stays whole on every rank, as under DDP, and cptlab
averages its gradients itself. That keeps the row-masked new-token rows of a vocabulary extension
(cptlab.training.optim.RowMaskedAdamW) exact: a sharded matrix is a flat slice on each rank and has no rows.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from pytorch_lightning.strategies import FSDPStrategy

from cptlab.errors import CptlabError
from cptlab.model.adapter import unwrap
from cptlab.training.checkpoint import load_checkpoint_file

# Where a checkpoint loaded under FSDP keeps the names of the weights Lightning already loaded.
STATE_DICT_KEYS = "cptlab_state_dict_keys"


def layer_classes(model: torch.nn.Module) -> set[type]:
    """The classes of the model's transformer blocks (its `_no_split_modules`), found among its modules."""
    names = set(getattr(unwrap(model), "_no_split_modules", None) or ())
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise CptlabError(f"trainer.strategy=fsdp: {type(unwrap(model)).__name__} declares no decoder-layer class "
                          f"(_no_split_modules) to shard by; use trainer.strategy=ddp")
    return classes


def replicated_modules(model: torch.nn.Module, layers: set[type]) -> list[torch.nn.Module]:
    """The modules that hold parameters outside every decoder layer (embeddings, output matrix, final norm)."""
    inside: set[int] = set()
    for module in model.modules():
        if type(module) in layers:
            inside.update(id(m) for m in module.modules())
    return [m for m in model.modules()
            if id(m) not in inside and any(True for _ in m.parameters(recurse=False))]


class CPTFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, also on CPU: Lightning refuses accelerator=cpu for its own class only
    (an exact type check) and leaves FSDP to guess the device, which fails on a machine without an
    accelerator; torch's FSDP itself runs on CPU over gloo, which is how the test suite runs this path."""

    def _setup_model(self, model):
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                        **self.kwargs)

    # Full state dicts: Lightning asks FSDP to offload them to CPU, which crashes the process (SIGSEGV,
    # torch 2.13) when the parameters already are on CPU; there they are gathered without offloading.
    def lightning_module_state_dict(self):
        with self._cpu_state_dicts():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with self._cpu_state_dicts():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        # Lightning reads a full checkpoint with its own lazy unpickler, which runs whatever the file names: it
        # is handed the checkpoint read by the weights-only one instead (cptlab.training.checkpoint.load_checkpoint_file).
        # A sharded checkpoint (a directory, whose metadata Lightning unpickles too) cptlab never writes: refused.
        if not Path(checkpoint_path).is_file():
            raise CptlabError(f"{checkpoint_path} is not a checkpoint file (cptlab writes full FSDP checkpoints); "
                              "delete it, or use a new run directory (hydra.run.dir=...)")
        checkpoint = load_checkpoint_file(checkpoint_path, mmap=True)
        # Lightning loads the weights into the FSDP model itself and drops them from the checkpoint;
        # their names stay for CPTModule.on_load_checkpoint's check that the run's trained weights are all there.
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise CptlabError(f"{checkpoint_path} is not a cptlab training checkpoint (it has no state_dict)")
        keys = list(checkpoint["state_dict"])
        with self._cpu_state_dicts(), _lightning_reads(checkpoint):
            checkpoint = super().load_checkpoint(checkpoint_path, weights_only=True)
        checkpoint[STATE_DICT_KEYS] = keys
        return checkpoint

    def _cpu_state_dicts(self):
        if self.root_device.type != "cpu":
            return contextlib.nullcontext()
        return _full_state_dicts_without_offload()


def fsdp_strategy(model: torch.nn.Module, *, sharding: str = "FULL_SHARD") -> CPTFSDPStrategy:
    """An FSDP strategy sharding the decoder layers of `model` (full checkpoints, written by rank 0).
    `sharding` (trainer.fsdp_sharding, checked by the run) is the name of a torch ShardingStrategy, as spelled."""
    from torch.distributed.fsdp import ShardingStrategy

    strategy = ShardingStrategy.__members__.get(sharding) if isinstance(sharding, str) else None
    if strategy is None:
        raise ValueError(f"{sharding!r} is not the name of a torch FSDP ShardingStrategy (trainer.fsdp_sharding)")
    layers = layer_classes(model)
    return CPTFSDPStrategy(auto_wrap_policy=layers, ignored_modules=replicated_modules(model, layers),
                           sharding_strategy=strategy, state_dict_type="full", use_orig_params=True)


@contextlib.contextmanager
def _lightning_reads(checkpoint: dict):
    """Within it, Lightning's FSDP strategy gets `checkpoint` (already read, weights only) where it would unpickle
    the file itself (its private `_lazy_load`): a patch scoped to the call, like the one below."""
    import pytorch_lightning.strategies.fsdp as lightning_fsdp

    original = lightning_fsdp._lazy_load
    lightning_fsdp._lazy_load = lambda path: checkpoint
    try:
        yield
    finally:
        lightning_fsdp._lazy_load = original


@contextlib.contextmanager
def _full_state_dicts_without_offload():
    """Within it, Lightning's (private) helper that sets up full state dicts asks for no CPU offload: a
    patch scoped to the call, for CPU runs only (see CPTFSDPStrategy)."""
    import pytorch_lightning.strategies.fsdp as lightning_fsdp
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    def context(module, world_size, rank0_only=True):
        return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

    original = lightning_fsdp._get_full_state_dict_context
    lightning_fsdp._get_full_state_dict_context = context
    try:
        yield
    finally:
        lightning_fsdp._get_full_state_dict_context = original


def replicated_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters FSDP leaves whole (see module docstring), each once."""
    params, seen = [], set()
    for module in replicated_modules(model, layer_classes(model)):
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def is_fsdp(trainer) -> bool:
    return isinstance(getattr(trainer, "strategy", None), FSDPStrategy)


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce (mean) the gradients of parameters no FSDP unit manages, as DDP would have."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if world_size <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def full_parameters(trainer, *, recurse: bool = True):
    """A context in which every rank holds the whole model (collective: enter it on all ranks); a no-op
    without FSDP. recurse=False gathers only the root's own parameters (none: they are replicated) but
    still initialises FSDP's root, which must happen before a forward that bypasses the root (evaluation
    calls the Hugging Face model inside the wrapped LightningModule); the layers gather themselves."""
    if not is_fsdp(trainer):
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(trainer.strategy.model, recurse=recurse, writeback=False)

