"""Typed schema of every config group, registered in Hydra's ConfigStore (group ``schema``).

Each field carries its constraint in ``metadata``: ``choices`` (an enum), ``ge``, ``gt``, ``le``,
``lt`` (a range) and ``help`` (what the value means, quoted in the error sentence).
``validate(cfg)`` (``xbench.config.validate``) checks a composed config against these classes
field by field. Defaults are stated once, in the YAML files under ``conf/``; the classes here
state types and constraints only (every field is MISSING until a YAML sets it). Keys a group holds
beyond its schema are left alone (plug-ins and experiments may add their own, e.g. ``world``).

No ``from __future__ import annotations``: OmegaConf reads these annotations at runtime.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from xbench.vocab import KD_METHODS, KL_DIRECTIONS, MIX_MODES, MULTI_TEACHER  # noqa: F401 (KD_METHODS re-exported)


def _f(help: str = "", **rule: Any) -> Any:
    """A dataclass field with a constraint and a help text, and no default: defaults are stated
    once, in the YAML groups under ``conf/`` (beside their comments); ``???`` (MISSING) here."""
    return field(default=MISSING, metadata={"help": help, **rule})


@dataclass
class ModelSpec:
    """``student`` and every ``zoo`` teacher: where the model and its tokenizer come from."""

    name: str = _f("the label in leaderboards")
    tokenizer: str = _f(
        "an offline asset (llama3, qwen3, smollm2), mini:KIND, a directory or Hub id",
    )
    model: str = _f("a Hub id, a directory, mini:ROLE, or config (random init from arch)")
    arch: Optional[dict[str, Any]] = _f("architecture when model=config")  # noqa: UP045, RUF009


@dataclass
class DataConf:
    # jsonl, shards, hf or a plug-in's scheme (mini): checked against the registered plug-ins.
    source: str = _f("the corpus")
    seq_len: int = _f("packed sequence length in student tokens", ge=2)
    separator: str = _f("text between packed documents")
    num_workers: int = _f("dataloader worker processes", ge=0)
    max_docs: Optional[int] = _f("stop after this many documents", ge=1)  # noqa: UP045
    path: Optional[str] = _f("the jsonl file when source=jsonl")  # noqa: UP045
    name: Optional[str] = _f("the dataset id when source=hf")  # noqa: UP045
    split: Optional[str] = _f("the dataset split when source=hf")  # noqa: UP045
    text_field: Optional[str] = _f("the text column (shards, hf)")  # noqa: UP045
    # Streamed pre-training corpora (xbench/engine/corpus.py, source=shards|hf).
    files: Optional[str] = _f("the shard glob when source=shards")  # noqa: UP045
    subset: Optional[str] = _f("the dataset config name when source=hf")  # noqa: UP045
    ids_field: Optional[str] = _f("a token-id column instead of text_field")  # noqa: UP045
    detokenizer: Optional[str] = _f("gpt2 or a tokenizer spec for ids_field")  # noqa: UP045
    shuffle_buffer: Optional[int] = _f("streamed shuffle buffer (hf)", ge=0)  # noqa: UP045
    token_budget: Optional[int] = _f("student tokens to read in all", ge=1)  # noqa: UP045


@dataclass
class OptimConf:
    lr: float = _f("the AdamW learning rate", gt=0)
    betas: list[float] = _f("AdamW betas in [0, 1)", length=2, ge=0, lt=1)  # noqa: RUF009
    eps: float = _f("AdamW epsilon", gt=0)
    weight_decay: float = _f("AdamW weight decay", ge=0)
    warmup_steps: int = _f("linear warm-up steps", ge=0)
    min_lr_ratio: float = _f("final lr of the cosine schedule / lr", ge=0, le=1)
    grad_clip: float = _f("gradient-norm clip (0 disables it)", ge=0)
    w_lr: float = _f("learning rate of P-KL's learnable W values", ge=0)


@dataclass
class KdConf:
    alpha: float = _f("xtoken's weight of H-KL against P-KL", ge=0, le=1)
    rank: int = _f("projection rank K, teacher tokens kept per student row of W", ge=1)
    topk: int = _f("P-KL's teacher top-k columns per micro-batch", ge=1)
    temperature: float = _f("softmax temperature of teacher and student", gt=0)
    chunk_method: str = _f("chunk probabilities", choices=("mean", "chain"))
    learn_w: bool = _f("P-KL learns W's values")
    hkl_threshold: float = _f("H-KL relaxed set: largest W weight of a row", gt=0, le=1)
    gold_semantics: str = _f("GOLD's common set", choices=("trl", "canonical"))
    gold_weights: str = _f("GOLD/H-KL weights", choices=("adaptive", "fixed"))
    kl: str = _f("the divergence direction", choices=KL_DIRECTIONS)
    beta: float = _f("the JSD mixture weight", ge=0, le=1)
    reverse_pass: bool = _f("W builder's teacher->student pass")
    loss_chunk_size: int = _f("chunks per slice inside a loss", ge=1)
    multi_teacher: str = _f("how teachers are weighted", choices=MULTI_TEACHER)


@dataclass
class MixConf:
    mode: str = _f("how CE and KD combine", choices=MIX_MODES)
    ce_weight: float = _f("CE weight when mode=fixed", ge=0)
    kd_weight: float = _f("KD weight when mode=fixed", ge=0)
    max_scale: float = _f("cap of the dynamic scale |CE|/|KD|", gt=0)


@dataclass
class TrainConf:
    enabled: bool = _f("train before evaluating")
    steps: int = _f("optimizer steps", ge=1)
    global_batch_size: int = _f("sequences per optimizer step", ge=1)
    micro_batch_size: int = _f("sequences per forward on one rank", ge=1)
    device: str = _f("where to train", choices=("auto", "cpu", "cuda"))
    precision: str = _f("autocast precision on GPU", choices=("bf16", "fp32"))
    parallel: str = _f("student parallelism", choices=("none", "ddp", "fsdp"))
    teacher_parallel: str = _f("teacher placement", choices=("replicate", "fsdp"))
    aligner: str = _f("the chunk aligner", choices=("offset", "dp"))
    log_every: int = _f("steps between metric records", ge=1)
    ckpt_every: int = _f("steps between checkpoints", ge=1)
    keep_checkpoints: int = _f("checkpoints kept on disk", ge=1)
    threads: int = _f("torch intra-op threads (0: torch default)", ge=0)
    teacher_cache: bool = _f("cache teacher top-k logits on disk")
    teacher_cache_dir: str = _f("where the teacher-logit cache lives")
    delete_checkpoints_when_done: bool = _f("drop checkpoints of finished cells")
    debug_sleep_s: float = _f("sleep after each step (tests only)", ge=0)
    dist_timeout_s: Optional[float] = _f("process-group timeout in seconds", gt=0)  # noqa: UP045


@dataclass
class ResourcesConf:
    nodes: int = _f("nodes of one cell", ge=1)
    tasks_per_node: int = _f("ranks per node", ge=1)
    gpus_per_node: int = _f("GPUs per node", ge=0)
    cpus_per_task: int = _f("CPUs per rank", ge=1)
    mem_gb: float = _f("memory per node in GB", gt=0)
    timeout_min: int = _f("wall-clock limit of one cell in minutes", ge=1)
    gpu_mem_gb: float = _f("memory of one GPU in GB (the plan's fit check)", gt=0)


@dataclass
class WandbConf:
    enabled: bool = _f("log to Weights & Biases")
    mode: str = _f("the wandb mode", choices=("online", "offline", "disabled"))
    project: str = _f("the wandb project")


@dataclass
class EvalTask:
    num_fewshot: int = _f("few-shot examples", ge=0)
    metric: str = _f("the lm-eval metric the leaderboard reads")
    filter: str = _f("the lm-eval filter of that metric")


@dataclass
class EvalConf:
    """Keys mirror ``lm_eval.simple_evaluate`` (see conf/eval/_common.yaml)."""

    suite: str = _f("the suite's name")
    tasks: dict[str, Any] = _f("task -> {num_fewshot, metric, filter}")  # noqa: RUF009
    num_fewshot: Optional[int] = _f("overrides every task's shot count", ge=0)  # noqa: UP045
    limit: Optional[float] = _f("docs per task: an int >= 1 or a fraction", gt=0)  # noqa: UP045
    batch_size: int = _f("lm-eval batch size", ge=1)
    max_batch_size: int = _f("lm-eval's largest batch", ge=1)
    max_length: Optional[int] = _f("context length (null: the model's)", ge=1)  # noqa: UP045
    add_bos_token: Optional[bool] = _f("prepend BOS (null: the tokenizer's default)")  # noqa: UP045
    apply_chat_template: bool = _f("wrap prompts in the chat template")
    fewshot_as_multiturn: bool = _f("few-shot examples as chat turns")
    include_defaults: bool = _f("index lm-eval's built-in tasks too")
    log_samples: bool = _f("write per-sample records")
    bootstrap_iters: int = _f("bootstrap resamples for stderr (0: none)", ge=0)
    random_seed: int = _f("lm-eval seed", ge=0)
    numpy_random_seed: int = _f("lm-eval numpy seed", ge=0)
    torch_random_seed: int = _f("lm-eval torch seed", ge=0)
    fewshot_random_seed: int = _f("few-shot sampling seed", ge=0)
    model: Optional[str] = _f("a run directory, checkpoint, model directory, asset or Hub id")  # noqa: UP045
    tokenizer: Optional[str] = _f("tokenizer instead of the model's own")  # noqa: UP045
    device: str = _f("where to evaluate")
    dtype: Optional[str] = _f(  # noqa: UP045
        "weights dtype", choices=(None, "auto", "float32", "bfloat16", "float16")
    )
    out_dir: Optional[str] = _f("run directory for eval/results.json")  # noqa: UP045


@dataclass
class CellConf:
    """The top level of ``conf/cell.yaml`` (sweep and train)."""

    experiment: str = _f("the experiment's name")
    cell: str = _f("the cell of the experiment to run")
    seed: int = _f("the run's seed", ge=0)
    out_root: str = _f("where run directories go")
    plan: bool = _f("print the job plan, launch nothing")


@dataclass
class PairConf:
    """``conf/pair.yaml``: the tokenizer-pair audit."""

    student: str = _f("the student tokenizer (asset, directory or Hub id)")
    teacher: str = _f(
        "the teacher tokenizer(s): one name or a list [a,b] (asset, directory or Hub id)"
    )
    out_dir: str = _f("where the report goes")
    sample_size: int = _f("GSM8K rows sampled", ge=0)
    seed: int = _f("which rows are sampled", ge=0)
    rank: int = _f("projection rank K", ge=1)
    reverse_pass: bool = _f("W's teacher->student pass")
    threshold: float = _f("H-KL relaxed set threshold", gt=0, le=1)
    align_method: str = _f("the aligner of the statistics", choices=("offset", "dp"))


# Group key in a cell config -> its schema.
CELL_GROUPS: dict[str, type] = {
    "student": ModelSpec,
    "data": DataConf,
    "optim": OptimConf,
    "kd": KdConf,
    "mix": MixConf,
    "train": TrainConf,
    "resources": ResourcesConf,
    "wandb": WandbConf,
    "eval": EvalConf,
}


def register() -> None:
    """Store every schema under the ``schema`` group of Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    for name, node in {
        **CELL_GROUPS,
        "teacher": ModelSpec,
        "cell": CellConf,
        "pair": PairConf,
        "eval_task": EvalTask,
    }.items():
        cs.store(group="schema", name=name, node=node, provider="xbench")


register()
