"""Structured-config schemas: a wrong type or an unknown key fails at compose time, by name.

The schema is stored in Hydra's ConfigStore as `cptlab_schema`, the first entry of
conf/train.yaml's defaults list, so every group option merges onto typed, struct-mode nodes.
Also registers the resolvers the YAML uses (`run_name`, `wandb_id`, `wandb_offline`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from cptlab.errors import CptlabError
from cptlab.utils.limits import MAX_DOC_BYTES
from cptlab.utils.lr import wsd_decay_start

# -- what a field admits, declared beside it --------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """The values a config field admits, kept beside the field so every check of it (cptlab.run.validate's pass
    over a composed config, a front end's check of a value it passes on outside a run) reads this one
    declaration. Library modules never import this module: they take values already checked.

    `choices`: the allowed values; `span`: a number range as the message spells it: "> 0", ">= 1", "(0, 1)",
    "[0, 1)", "[0.98, 1]". `when(cfg)`: only configs that read the field are checked (its value is unused
    otherwise); `note` ends the message. A null value of an Optional field is always admitted.
    """

    choices: tuple = ()
    span: str = ""
    when: Callable[[Any], bool] | None = None
    note: str = ""

    def admits(self, value) -> bool:
        if self.choices:
            return value in self.choices
        low, high, low_open, high_open = _bounds(self.span)
        return ((low is None or (value > low if low_open else value >= low))
                and (high is None or (value < high if high_open else value <= high)))

    def check(self, key: str, value) -> None:
        """Raise the one-line error that names the full key and the value, unless the value is admitted."""
        if value is None or self.admits(value):
            return
        raise CptlabError(f"{key}={value!r} must be {self.must()}")

    def must(self) -> str:
        """What the message says an admitted value is: "one of a, b", "> 0", "in (0, 1)", then the note."""
        must = f"one of {', '.join(str(c) for c in self.choices)}" if self.choices else \
            (self.span if self.span[0] in "<>" else f"in {self.span}")
        return must + (f" ({self.note})" if self.note else "")


def _bounds(span: str) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low_open, high_open) of a span: "> 0", ">= 1", "(0, 1)", "[0.98, 1]"."""
    if span.startswith(">"):
        return float(span.lstrip(">= ")), None, not span.startswith(">="), False
    low, high = (float(x) for x in span[1:-1].split(","))
    return low, high, span[0] == "(", span[-1] == ")"


def choice(default, choices: tuple, *, when=None, note: str = ""):
    """A field whose value must be one of `choices`."""
    return field(default=default, metadata={"rule": Rule(choices=tuple(choices), when=when, note=note)})


def bounded(default, span: str, *, when=None, note: str = ""):
    """A numeric field whose value must lie in `span` (see Rule)."""
    _bounds(span)  # a malformed span fails at import, not at the first bad value
    return field(default=default, metadata={"rule": Rule(span=span, when=when, note=note)})


def _two_stage(cfg) -> bool:
    return cfg.schedule.name == "two_stage"


def _lora(cfg) -> bool:
    return cfg.adapter.name in ("lora", "dora")


def _ema(cfg) -> bool:  # every retention keeps an EMA of the weights
    return cfg.retention.name != "none"


def _mean_teacher(cfg) -> bool:
    return cfg.retention.name == "mean_teacher"


def rule_of(schema: type, name: str) -> Rule | None:
    """The Rule declared on field `name` of dataclass `schema`, if any."""
    return next((f.metadata.get("rule") for f in dataclasses.fields(schema) if f.name == name), None)


def check_value(key: str, value, *, required: bool = False) -> None:
    """Check one value against the rule of its dotted `key` ("tokenizer.kind", "data.domains.NAME.weight"):
    for front ends (cptlab.cli, cptlab.run, benchmarks) that hand a user's value to a library function outside a
    validated run, so it is refused as a run refuses it, in one line naming the key.
    `required`: refuse null even where the config admits it (a null there is resolved before this caller)."""
    *path, name = key.split(".")
    schema, parts = TrainConfig, iter(path)
    for part in parts:
        hint = field_types(schema)[part]
        if typing.get_origin(hint) is dict:
            next(parts)  # the entry's own name (a domain's)
        schema = nested_schema(hint)
    rule = rule_of(schema, name)
    if rule is None:
        raise KeyError(f"no rule is declared for {key}")
    if value is None and (required or type(None) not in typing.get_args(field_types(schema)[name])):
        # null is admitted only where the field is Optional (a run's config cannot hold it elsewhere)
        raise CptlabError(f"{key}=None must be " + rule.must())
    rule.check(key, value)


def field_types(schema: type) -> dict[str, Any]:
    """The resolved type of each field of a schema dataclass (this module's annotations are strings)."""
    return typing.get_type_hints(schema)


def nested_schema(hint) -> type | None:
    """The schema dataclass a field type holds: itself, or inside Optional[...], list[...] or dict[str, ...]."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next((s for arg in typing.get_args(hint) if (s := nested_schema(arg)) is not None), None)


# The allowed values, each tuple once: front ends that offer a value's choices (cptlab.cli) import it from here;
# library modules dispatch on the values they implement and refuse any other (a ValueError), never this list.
TOKENIZER_KINDS = ("base", "train", "extend")
INITS = ("random", "mean", "subword_mean")
ROLES = ("new", "replay", "eval")  # eval: never trained on or replayed, every document held out
BAD_TEXT = ("replace", "skip", "error")
FREEZE_SCHEDULES = ("full", "two_stage", "new_tokens_only", "phases")
STAGE1_ROWS = ("new", "all")
ADAPTERS = ("none", "lora", "dora", "block_expansion")
RETENTIONS = ("none", "ema", "mean_teacher")
RETENTION_ROWS = ("replay", "all", "new")
OPTIMIZERS = ("adamw",)
PRECISIONS = ("16-mixed", "bf16-mixed", "32-true", "64-true", "16-true", "bf16-true", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16")
NAN_POLICIES = ("stop", "skip_batch")
ON_CHANGED_INPUTS = ("refuse", "restart", "resume")
ADMIT_RULES = ("auto", "script", "strict", "all")
MODEL_TYPES = ("bpe", "unigram")  # tokenizer.model_type of a SentencePiece model cptlab trains
DTYPES = ("float32", "bfloat16", "float16")
LR_SCHEDULES = ("cosine", "wsd", "constant")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD")


@dataclass
class PathsConfig:
    runs_dir: str = "runs"
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = None
    dtype: str = choice("float32", DTYPES)
    # Llama config fields for a random-init model (used when name_or_path is null); with random_init, the
    # fields written over the base's own config.
    config: Optional[dict[str, Any]] = None
    # true: random-init weights of the base's architecture (its config.json with `config` over it) and the
    # base's tokenizer; debug=smoke sets it. A base not built yet is replaced by its `stand_in` recipe, if any.
    random_init: bool = False
    # A GGUF file ("PACKAGE:FILE" inside an installed package, or a path) converted once into
    # ${paths.cache_dir}/gguf/ as a plain HF directory, which then is the base (model=smollm2).
    gguf: Optional[str] = None
    # Recompute block activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False
    # The loss without the full float32 logits [B*T, V]: the output head runs a chunk of positions at a time,
    # each chunk's gradients made in forward (cptlab.model.loss); same loss and gradients, far less memory at a
    # big vocabulary.
    chunked_loss: bool = False
    # torch.compile the model's forward (in place: parameter names, checkpoints and exports are unchanged).
    compile: bool = False


@dataclass
class TokenizerConfig:
    kind: str = choice("base", TOKENIZER_KINDS)
    path: Optional[str] = None  # the base tokenizer; default: model.name_or_path
    vocab_size: int = 4096  # train: the vocabulary; extend: the domain model's vocabulary (when add_pieces is null)
    # extend: append exactly this many new pieces (then vocab_size is unused)
    add_pieces: Optional[int] = bounded(None, ">= 1", note="new pieces; null: every admitted piece of a "
                                        "tokenizer.vocab_size domain vocabulary")
    admit: str = choice("auto", ADMIT_RULES)  # extend: which new pieces are appended
    # null: bpe for kind=train, the base's type for extend
    model_type: Optional[str] = choice(None, MODEL_TYPES, when=lambda cfg: cfg.tokenizer.kind in ("train", "extend"))
    character_coverage: float = bounded(0.9995, "[0.98, 1]", note="SentencePiece's range",
                                        when=lambda cfg: cfg.tokenizer.kind in ("train", "extend"))
    # train/extend: each domain's tokenizer training text is its train split's leading documents up to this many
    # UTF-8 bytes (a streamed sample: memory and time stay bounded on corpora bigger than memory); null: all of it
    max_train_bytes: Optional[int] = bounded(1 << 30, ">= 1", note="bytes; null: no cap")
    init: str = choice("subword_mean", INITS)  # new embedding rows
    pad_to_multiple_of: Optional[int] = 64


@dataclass
class DomainConfig:
    role: str = choice("new", ROLES)
    sources: list[str] = MISSING
    heldout: float = 0.02  # a share in (0, 1) or a document count >= 1 (cptlab.data.split.heldout_kind)
    weight: float = bounded(1.0, "> 0")  # relative weight among the domains of the same role
    max_docs: Optional[int] = bounded(None, ">= 1")
    text_field: str = "text"
    # {source: weight}: each source (as written in `sources`; unlisted ones weigh 1) gets its share of the
    # domain's rows (cptlab.data.source_weights); empty: the sources are one stream. No cache key holds it.
    source_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class StageConfig:
    # The stage is in force for the optimizer steps before until_step (or the first until_tokens tokens) and after
    # the previous stage's end; the last stage may leave both null (to the end). cptlab.data.stages
    until_step: Optional[int] = bounded(None, ">= 1")
    until_tokens: Optional[int] = bounded(None, ">= 1")
    replay_ratio: Optional[float] = bounded(None, "[0, 1)", note="or null: data.replay_ratio")
    weights: dict[str, float] = field(default_factory=dict)  # {domain: weight}; unlisted domains: their own weight


@dataclass
class DataConfig:
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    replay_ratio: float = bounded(0.0, "[0, 1)")
    # The mixture step range by step range (the ratio and weights above are the defaults); empty: one mix throughout.
    stages: list[StageConfig] = field(default_factory=list)
    # Domain weights within a role times (train tokens)^(1/temperature); null: the weights alone.
    temperature: Optional[float] = bounded(None, "> 0", note="or null: the configured weights alone")
    seq_len: int = bounded(256, ">= 1")
    batch_size: int = bounded(16, ">= 1")
    max_docs: Optional[int] = bounded(None, ">= 1")  # cap on every domain's documents (smoke runs)
    num_workers: int = bounded(0, ">= 0")
    num_proc: int = bounded(1, ">= 1")  # pre-tokenization processes
    on_bad_text: str = choice("replace", BAD_TEXT)
    # The longest document in UTF-8 bytes (a .txt/.jsonl line, a parquet/dataset row, a directory's .txt file): a
    # longer one is refused, naming its file and line, once that many bytes of it are read (never split).
    max_doc_bytes: Optional[int] = bounded(MAX_DOC_BYTES, ">= 1", note="bytes; null: no cap")
    # Keys the train/held-out document split (and the tokenizer trained on the train side); `seed` never
    # changes it, so runs that differ only in seed are scored on the same held-out documents.
    split_seed: int = 0
    # Each document of a packed block attends only to itself, its positions restarting at the EOS before it
    # (cptlab.model.doc_mask), in training and held-out evaluation; allow-listed model types only.
    doc_masking: bool = False


@dataclass
class PhaseConfig:
    # The phase lasts while the optimizer step is < until_step; null for the last phase.
    until_step: Optional[int] = None
    # Groups: new_rows, embeddings, lm_head, layers.N, layers.A-B, norms, adapter, all (cptlab.model.phases).
    train: list[str] = field(default_factory=list)


@dataclass
class ScheduleConfig:
    name: str = choice("full", FREEZE_SCHEDULES)
    stage1_steps: int = bounded(100, ">= 1", when=_two_stage)  # two_stage: optimizer steps of stage 1
    # two_stage: stage 1 trains the new token rows (new) or all embedding rows (all)
    stage1_rows: str = choice("new", STAGE1_ROWS, when=_two_stage)
    rewarm: bool = False  # warm the learning rate up again at each stage start
    phases: Optional[list[PhaseConfig]] = None  # schedule=phases: the phases themselves


@dataclass
class AdapterConfig:
    name: str = choice("none", ADAPTERS)
    r: int = bounded(8, ">= 1", when=_lora)
    alpha: float = bounded(16.0, "> 0", when=_lora)
    dropout: float = bounded(0.05, "[0, 1)", when=_lora)
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
    name: str = choice("none", RETENTIONS)
    decay: float = bounded(0.99, "(0, 1)", when=_ema)  # EMA decay per update
    every_n_steps: int = bounded(1, ">= 1", when=_ema)  # EMA update interval (optimizer steps)
    weight: float = bounded(1.0, "> 0", when=_mean_teacher)  # mean_teacher: weight of KL(teacher || student)
    on: str = choice("replay", RETENTION_ROWS, when=_mean_teacher)  # mean_teacher: rows the KL applies to


@dataclass
class LRScaleConfig:
    # Multipliers of optim.lr per parameter group (cptlab.training.optim): the input embedding matrix, the output
    # matrix, the new token rows of both (vocabulary extension), and every other trainable weight.
    embeddings: float = 1.0
    lm_head: float = 1.0
    new_rows: float = 1.0
    rest: float = 1.0


@dataclass
class OptimConfig:
    name: str = choice("adamw", OPTIMIZERS)
    lr: float = bounded(3e-4, "> 0")
    weight_decay: float = bounded(0.1, ">= 0")
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = bounded(1e-8, "> 0")
    warmup_steps: int = 20
    schedule: str = choice("cosine", LR_SCHEDULES)
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: Optional[float] = bounded(1.0, "> 0", note="or null: no clipping")
    lr_scale: LRScaleConfig = field(default_factory=LRScaleConfig)


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    fsdp_sharding: str = choice("FULL_SHARD", FSDP_SHARDING, when=lambda cfg: cfg.trainer.strategy == "fsdp")
    precision: str = choice("32-true", PRECISIONS)
    # The run length in optimizer steps (also the warm-up + decay schedule's): this default or an experiment's,
    # never trainer/*.yaml's, so choosing the hardware does not change the learning-rate schedule.
    max_steps: int = bounded(200, ">= 1")
    accumulate_grad_batches: int = bounded(1, ">= 1")
    log_every_n_steps: int = bounded(10, ">= 1")
    num_threads: Optional[int] = None


@dataclass
class TrainOptions:
    # What a non-finite train loss does: stop (the run fails, its last checkpoint intact) | skip_batch.
    nan_policy: str = choice("stop", NAN_POLICIES)
    # skip_batch gives up (the run fails) after this many skipped batches in a row, or in all.
    max_consecutive_skipped: int = bounded(5, ">= 1")
    max_skipped_batches: int = bounded(50, ">= 1")
    # A run directory re-run with other inputs (model/tokenizer/data config, sources' content, base files):
    # refuse | restart (from step 0) | resume (continue from the checkpoint with the change).
    on_changed_inputs: str = choice("refuse", ON_CHANGED_INPUTS)


@dataclass
class HarnessConfig:
    # lm-evaluation-harness tasks scored in-process on the current weights (cptlab.evaluation.harness): lm-eval task names,
    # the built-in offline probes (cptlab/evaluation/tasks/*.yaml) or tasks of include_path; empty: no harness evaluation.
    tasks: list[str] = field(default_factory=list)
    every_n_steps: Optional[int] = bounded(None, ">= 1", note="or null: with every bpb evaluation")
    limit: Optional[float] = bounded(None, "> 0", note="documents per task, a share of them when < 1; or null: all")
    num_fewshot: Optional[int] = bounded(None, ">= 0", note="or null: each task's own")
    include_path: Optional[str] = None  # a directory of task YAMLs (local tasks run offline)
    batch_size: int = bounded(16, ">= 1")  # sequences per forward pass


@dataclass
class EvalConfig:
    every_n_steps: int = bounded(50, ">= 1")
    max_blocks: int = bounded(32, ">= 1")
    batch_size: int = bounded(8, ">= 1")
    harness: HarnessConfig = field(default_factory=HarnessConfig)


@dataclass
class CheckpointConfig:
    every_n_steps: int = bounded(100, ">= 1")


@dataclass
class PrepareConfig:
    # cptlab-prepare only: build shard group `group` of `groups` (every groups-th source file of each domain),
    # so a job array fills the shared token cache in parallel; groups=1 also builds the domain entries.
    group: int = bounded(0, ">= 0")  # and < groups (cptlab.run.validate)
    groups: int = bounded(1, ">= 1")
    tokenizer_only: bool = False  # only the tokenizer (the first step of a cluster's pre-tokenization)


@dataclass
class StandInConfig:
    """A base model's recipe standing in for it (stand_in=demo_base; debug=smoke selects it): a random-init run
    whose model.name_or_path is `name_or_path` while that holds no config.json runs `model.config` (the run's own
    model.config written over it) on the tokenizer `tokenizer` trains from `data`'s domains (the same cached build
    as the base's own run)."""
    name_or_path: str = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class TrainConfig:
    name: str = "default"  # the experiment's name: runs land in ${paths.runs_dir}/${name}/<overrides>
    seed: int = bounded(0, ">= 0")
    # When set, a completed run also saves its model + tokenizer here as a Hugging Face directory (atomically);
    # experiment=demo_base publishes the demo base model to the cache this way.
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
    stand_in: Optional[StandInConfig] = None  # a base's recipe for a random-init run while it is not built


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


def lr_decay_start(*, _root_) -> int:
    """`${lr_decay_start:}`: the first optimizer step of the decay phase of optim.schedule=wsd over
    trainer.max_steps, e.g. where a data.stages entry starts annealing (conf/experiment/demo_zh_anneal.yaml);
    the arithmetic is cptlab.utils.lr's, which the schedule itself (cptlab.training.schedule.LRSchedule) runs too."""
    return wsd_decay_start(int(_root_.trainer.max_steps), int(_root_.optim.warmup_steps),
                           float(_root_.optim.decay_fraction))


def register() -> None:
    """Register the schema and resolvers (idempotent; called on import of cptlab.cli.train_app)."""
    ConfigStore.instance().store(name="cptlab_schema", node=TrainConfig)
    for name, fn in (("run_name", run_name), ("wandb_id", wandb_id), ("wandb_offline", wandb_offline),
                     ("run_tags", run_tags), ("lr_decay_start", lr_decay_start)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    from cptlab.utils.hydra_overrides import install

    install()  # `+data.domains.NEW=...` from the command line (cptlab.utils.hydra_overrides)


register()
