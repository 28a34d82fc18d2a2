"""Structured-config schemas: a wrong type or an unknown key fails at compose time, by name.

The schema is stored in Hydra's ConfigStore as `cptlab_schema`, the first entry of
conf/train.yaml's defaults list, so every group option merges onto typed, struct-mode nodes.
Also registers the resolvers the YAML uses (`run_name`, `wandb_id`, `wandb_offline`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class PathsConfig:
    runs_dir: str = "runs"
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = None
    dtype: str = "float32"
    # Llama config fields for a random-init model (used when name_or_path is null); with random_init, the
    # fields written over the base's own config.
    config: Optional[dict[str, Any]] = None
    # true: random-init weights of the base's architecture (its config.json with `config` over it) and the
    # base's tokenizer; debug=smoke sets it. A missing demo base stands in from experiment=demo_base's config.
    random_init: bool = False
    # A GGUF file ("PACKAGE:FILE" inside an installed package, or a path) converted once into
    # ${paths.cache_dir}/gguf/ as a plain HF directory, which then is the base (model=smollm2).
    gguf: Optional[str] = None
    # Recompute block activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False
    # The loss without the full float32 logits [B*T, V]: the output head runs a chunk of positions at a time,
    # each chunk checkpointed (cptlab.model.loss); same loss and gradients, far less memory at a big vocabulary.
    chunked_loss: bool = False
    # torch.compile the model's forward (in place: parameter names, checkpoints and exports are unchanged).
    compile: bool = False


@dataclass
class TokenizerConfig:
    kind: str = "base"  # base | train | extend
    path: Optional[str] = None  # the base tokenizer; default: model.name_or_path
    vocab_size: int = 4096  # train: the vocabulary; extend: the domain model's vocabulary (when add_pieces is null)
    add_pieces: Optional[int] = None  # extend: append exactly this many new pieces (then vocab_size is unused)
    admit: str = "auto"  # extend: which new pieces are appended: auto | script | strict | all
    model_type: Optional[str] = None  # bpe | unigram; null: bpe for kind=train, the base's type for extend
    character_coverage: float = 0.9995
    # train/extend: each domain's tokenizer training text is its train split's leading documents up to this many
    # UTF-8 bytes (a streamed sample: memory and time stay bounded on corpora bigger than memory); null: all of it
    max_train_bytes: Optional[int] = 1 << 30
    init: str = "subword_mean"  # new embedding rows: random | mean | subword_mean
    pad_to_multiple_of: Optional[int] = 64


@dataclass
class DomainConfig:
    role: str = "new"
    sources: list[str] = MISSING
    heldout: float = 0.02
    weight: float = 1.0
    max_docs: Optional[int] = None
    text_field: str = "text"


@dataclass
class DataConfig:
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    replay_ratio: float = 0.0
    seq_len: int = 256
    batch_size: int = 16
    max_docs: Optional[int] = None  # cap on every domain's documents (smoke runs)
    num_workers: int = 0
    num_proc: int = 1  # pre-tokenization processes
    on_bad_text: str = "replace"
    # Keys the train/held-out document split (and the tokenizer trained on the train side); `seed` never
    # changes it, so runs that differ only in seed are scored on the same held-out documents.
    split_seed: int = 0


@dataclass
class PhaseConfig:
    # The phase lasts while the optimizer step is < until_step; null for the last phase.
    until_step: Optional[int] = None
    # Groups: new_rows, embeddings, lm_head, layers.N, layers.A-B, norms, adapter, all (cptlab.model.freeze).
    train: list[str] = field(default_factory=list)


@dataclass
class ScheduleConfig:
    name: str = "full"  # full | two_stage | new_tokens_only | phases
    stage1_steps: int = 100  # two_stage: optimizer steps of stage 1
    stage1_rows: str = "new"  # two_stage: stage 1 trains the new token rows (new) or all embedding rows (all)
    rewarm: bool = False  # warm the learning rate up again at each stage start
    phases: Optional[list[PhaseConfig]] = None  # schedule=phases: the phases themselves


@dataclass
class AdapterConfig:
    name: str = "none"  # none | lora | dora | block_expansion
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    rslora: bool = False
    train_new_tokens: bool = False  # also train the new token rows of the embedding and output matrices
    # block_expansion: new zero-output blocks (LLaMA Pro), after every N/blocks blocks (interleave), after the
    # last block (end), or after the listed blocks
    blocks: int = 2
    placement: Any = "interleave"


@dataclass
class RetentionConfig:
    name: str = "none"  # none | ema | mean_teacher
    decay: float = 0.99  # EMA decay per update
    every_n_steps: int = 1  # EMA update interval (optimizer steps)
    weight: float = 1.0  # mean_teacher: weight of KL(teacher || student)
    on: str = "replay"  # mean_teacher: rows the KL applies to: replay | all | new


@dataclass
class LRScaleConfig:
    # Multipliers of optim.lr per parameter group (cptlab.optim): the input embedding matrix, the output
    # matrix, the new token rows of both (vocabulary extension), and every other trainable weight.
    embeddings: float = 1.0
    lm_head: float = 1.0
    new_rows: float = 1.0
    rest: float = 1.0


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 20
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: Optional[float] = 1.0
    lr_scale: LRScaleConfig = field(default_factory=LRScaleConfig)


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    fsdp_sharding: str = "FULL_SHARD"  # strategy=fsdp: FULL_SHARD | SHARD_GRAD_OP | NO_SHARD
    precision: str = "32-true"
    max_steps: int = 200  # the run length: conf/train.yaml and experiments, never trainer/*.yaml
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    num_threads: Optional[int] = None


@dataclass
class TrainOptions:
    nan_policy: str = "stop"  # stop | skip_batch: what a non-finite train loss does
    # skip_batch gives up (the run fails) after this many skipped batches in a row, or in all.
    max_consecutive_skipped: int = 5
    max_skipped_batches: int = 50
    # A run directory re-run with other inputs (model/tokenizer/data config, sources' content, base files):
    # refuse | restart (from step 0) | resume (continue from the checkpoint with the change).
    on_changed_inputs: str = "refuse"


@dataclass
class EvalConfig:
    every_n_steps: int = 50
    max_blocks: int = 32
    batch_size: int = 8


@dataclass
class CheckpointConfig:
    every_n_steps: int = 100


@dataclass
class PrepareConfig:
    # cptlab-prepare only: build shard group `group` of `groups` (every groups-th source file of each domain),
    # so a job array fills the shared token cache in parallel; groups=1 also builds the domain entries.
    group: int = 0
    groups: int = 1
    tokenizer_only: bool = False  # only the tokenizer (the first step of a cluster's pre-tokenization)


@dataclass
class TrainConfig:
    name: str = "default"
    seed: int = 0
    publish_dir: Optional[str] = None
    tags: list[str] = field(default_factory=list)  # extra wandb tags (the group choices are added)
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: dict[str, Any] = field(default_factory=dict)
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


def run_name(override_dirname: str) -> str:
    """Directory name for a run from its overrides: filesystem-safe, never empty, bounded."""
    if not override_dirname:
        return "default"
    name = re.sub(r"[^A-Za-z0-9_.,=+\-]", "_", override_dirname)
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha256(override_dirname.encode()).hexdigest()[:12]
    return name


def wandb_id(output_dir: str) -> str:
    """A wandb run id derived from the run directory, so re-running a command resumes its run."""
    return hashlib.sha256(os.path.abspath(str(output_dir)).encode()).hexdigest()[:16]


def wandb_offline() -> bool:
    """Offline unless credentials are configured (WANDB_API_KEY or a netrc login) and not disabled."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("CI") == "true":
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = os.path.expanduser("~/.netrc")
    return not (os.path.exists(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8", errors="ignore").read())


def run_tags(tags, *choices: str) -> list[str]:
    """wandb tags: the config's `tags`, then the option choices that tell runs apart, each once."""
    return list(dict.fromkeys([*(str(t) for t in tags or ()), *choices]))


def register() -> None:
    """Register the schema and resolvers (idempotent; called on import of cptlab.train)."""
    ConfigStore.instance().store(name="cptlab_schema", node=TrainConfig)
    for name, fn in (("run_name", run_name), ("wandb_id", wandb_id), ("wandb_offline", wandb_offline),
                     ("run_tags", run_tags)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()
