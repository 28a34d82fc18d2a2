"""Lightning glue for the mixture stream: batch `s` of the stream is `sampler.batch(s)`, so a resumed
run starts the loader at the module's `batches_done` and sees exactly the batches it would have."""

from __future__ import annotations

import itertools

import pytorch_lightning as pl
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class StepStream(IterableDataset):
    """Endless stream of this rank's micro-batches from `start`; workers interleave steps, and the
    DataLoader's round-robin over workers puts them back in order."""

    def __init__(self, sampler, start: int, rank: int, world_size: int):
        self.sampler, self.start, self.rank, self.world_size = sampler, start, rank, world_size
        self.replay_index = [i for i, d in enumerate(sampler.domains) if d.role == "replay"]

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        for step in itertools.count(self.start + wid, nworkers):
            batch = self.sampler.batch(step, rank=self.rank, world_size=self.world_size)
            counts = self.sampler.counts(step)
            batch["step"] = step
            batch["rows"] = sum(counts.values())
            batch["replay_rows"] = sum(counts[self.sampler.domains[i].name] for i in self.replay_index)
            yield batch


class CPTDataModule(pl.LightningDataModule):
    def __init__(self, sampler, *, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        self.sampler, self.num_workers, self.pin_memory = sampler, num_workers, pin_memory

    def train_dataloader(self):
        trainer = self.trainer
        start = trainer.lightning_module.batches_done  # restored from the checkpoint before this call
        stream = StepStream(self.sampler, start, trainer.global_rank, trainer.world_size)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=False)
