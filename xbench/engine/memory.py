"""A per-GPU memory estimate of one cell at its micro-batch, from the model specs' ``arch``.

``plan=true`` prints it next to ``resources.gpu_mem_gb`` and warns when it does not fit. It is an
estimate for planning, in GB (1e9 bytes), built from these terms:

- weights: student fp32 master weights (4 B/param); each teacher in its dtype (bf16 on a GPU by
  default, xbench.engine.models.resolve_dtype); FSDP divides a sharded model by the world size.
- optimizer: the student's fp32 gradient and AdamW's two moments (12 B/param, sharded under
  FSDP); W's value, gradient and moments, indices and mask (V_S x K x 25 B).
- activations: what a bf16-autocast Llama layer keeps for backward per token, about
  16 h + 8 I + 4 kv bytes (fp32 residual and norm inputs, bf16 projections, the four SwiGLU
  (T, I) tensors; SDPA/flash attention keeps no T x T matrix), times layers and B x T tokens.
  With ``train.activation_checkpointing`` a layer keeps only its fp32 input (4 h) and one layer's
  full set is live during its recomputation.
- logits: the student's (B, T, V_S) bf16 head output, the fp32 log-softmax kept for backward and
  its fp32 gradient (10 B per entry); per teacher the fp32 student-side log-probabilities its loss
  keeps for backward (4 B per student entry); plus, for the largest teacher only (teachers run one
  after another and nothing keeps their logits), its bf16 output and fp32 copy (6 B per teacher
  entry; the losses work through the rest in chunks of ``kd.loss_chunk_size``).

Teacher-side token counts are taken equal to the student's (the real ratio depends on the pair).
Checked against peaks measured on one H200 (results/LOG.md, 2026-11-30): see the log for the ratio.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from xbench.engine.models import DTYPES
from xbench.vocab import LEARNS_W

GB = 1e9
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _arch(spec: Any) -> dict[str, Any] | None:
    arch = spec.get("arch") if spec is not None else None
    if not arch:
        return None
    return (
        dict(OmegaConf.to_container(arch, resolve=True)) if isinstance(arch, DictConfig) else arch
    )


def vocab_rows(spec: Any) -> int | None:
    """LM-head rows (``arch.vocab_size``; paper-scale specs give it)."""
    arch = _arch(spec) or {}
    return int(arch["vocab_size"]) if arch.get("vocab_size") else None


def param_count(arch: dict[str, Any], vocab: int) -> int:
    """Parameters of a Llama-architecture model of shape ``arch`` with ``vocab`` head rows."""
    h, n_layers, inter = arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"]
    heads = arch["num_attention_heads"]
    hd = arch.get("head_dim") or h // heads
    kv = arch.get("num_key_value_heads") or heads
    attn = h * heads * hd * 2 + h * kv * hd * 2  # q, o; k, v
    layer = attn + 3 * h * inter + 2 * h  # SwiGLU MLP, two RMSNorms
    embed = vocab * h * (1 if arch.get("tie_word_embeddings") else 2)
    return embed + n_layers * layer + h


def _layer_act_bytes(arch: dict[str, Any]) -> int:
    """Bytes one layer keeps for backward per token (bf16 autocast, flash/SDPA attention)."""
    h, inter = arch["hidden_size"], arch["intermediate_size"]
    hd = arch.get("head_dim") or h // arch["num_attention_heads"]
    kv = (arch.get("num_key_value_heads") or arch["num_attention_heads"]) * hd
    return 16 * h + 8 * inter + 4 * kv


def estimate(cfg: DictConfig, checkpointing: bool | None = None) -> dict[str, Any] | None:
    """Per-GPU GB of a resolved cell: ``weights``, ``optimizer``, ``activations``, ``logits``,
    ``total``, and ``gpu_gb`` / ``fits``; ``None`` when a model spec has no ``arch`` (the
    miniature world's models, whose memory does not matter). ``checkpointing`` overrides
    ``train.activation_checkpointing`` (``None``: only ``true`` counts as on)."""
    tc, res = cfg.train, cfg.resources
    s_arch = _arch(cfg.student)
    v_s = vocab_rows(cfg.student)
    if s_arch is None or v_s is None:
        return None
    world = max(1, int(res["nodes"]) * int(res["tasks_per_node"]))
    fsdp = str(tc.parallel) == "fsdp" and world > 1
    t_shard = str(tc["teacher_parallel"]) == "fsdp" and world > 1
    gpu = str(tc.device) != "cpu"
    b, t = int(tc.micro_batch_size), int(cfg.data.seq_len)
    tokens = b * t

    p_s = param_count(s_arch, v_s)
    weights = 4 * p_s / (world if fsdp else 1)
    optimizer = 12 * p_s / (world if fsdp else 1)
    per_layer = _layer_act_bytes(s_arch)
    n_layers = int(s_arch["num_hidden_layers"])
    if checkpointing is None:
        checkpointing = tc.get("activation_checkpointing") is True
    if checkpointing:
        activations = tokens * (n_layers * 4 * s_arch["hidden_size"] + per_layer)
    else:
        activations = tokens * n_layers * per_layer
    logits = 10 * tokens * v_s
    largest_teacher = 0.0
    for i, spec in enumerate(cfg.get("teachers") or []):
        arch, v_t = _arch(spec), vocab_rows(spec)
        if arch is None or v_t is None:
            return None
        name = str(spec.get("dtype") or "auto")
        if name == "auto":
            name = "bfloat16" if gpu else "float32"
        if name not in DTYPES:
            raise ValueError(f"teachers[{i}].dtype must be auto or one of {sorted(DTYPES)}.")
        weights += _BYTES[name] * param_count(arch, v_t) / (world if t_shard else 1)
        logits += 4 * tokens * v_s
        largest_teacher = max(largest_teacher, 6 * tokens * v_t)
        kd = {**OmegaConf.to_container(cfg.kd, resolve=True), **(spec.get("kd") or {})}
        if spec.method in LEARNS_W and kd.get("learn_w"):
            optimizer += 25 * v_s * int(kd["rank"])
    logits += largest_teacher
    total = weights + optimizer + activations + logits
    gpu_gb = float(res.get("gpu_mem_gb") or 0)
    return {
        "weights": weights / GB,
        "optimizer": optimizer / GB,
        "activations": activations / GB,
        "logits": logits / GB,
        "total": total / GB,
        "gpu_gb": gpu_gb,
        "fits": total / GB <= gpu_gb if gpu_gb else None,
        "checkpointing": checkpointing,
    }


def use_checkpointing(cfg: DictConfig) -> bool:
    """``train.activation_checkpointing``: true, false, or ``auto`` = on exactly when the estimate
    without it exceeds ``resources.gpu_mem_gb`` (it never changes the math, only memory and time:
    about a third more student compute)."""
    flag = cfg.train.get("activation_checkpointing")
    if flag == "auto":
        est = estimate(cfg, checkpointing=False)
        return bool(est is not None and est["fits"] is False)
    if flag not in (True, False, None):
        raise ValueError(
            f"train.activation_checkpointing must be true, false or auto; got {flag!r}."
        )
    return bool(flag)


def describe(cfg: DictConfig) -> str:
    """One ``MEM`` line for ``plan=true``; it says ``WILL NOT FIT`` when the estimate exceeds
    ``resources.gpu_mem_gb``."""
    est = estimate(cfg, checkpointing=use_checkpointing(cfg))
    if est is None:
        return "MEM no estimate (a model spec has no arch)"
    parts = " ".join(
        f"{k}={est[k]:.1f}" for k in ("weights", "optimizer", "activations", "logits", "total")
    )
    line = (
        f"MEM per GPU (GB, estimate at micro_batch_size={int(cfg.train.micro_batch_size)}, "
        f"seq_len={int(cfg.data.seq_len)}, activation checkpointing "
        f"{'on' if est['checkpointing'] else 'off'}): {parts}; "
        f"resources.gpu_mem_gb={est['gpu_gb']:g}"
    )
    if est["fits"] is False:
        line += (
            " WILL NOT FIT: lower train.micro_batch_size, set train.activation_checkpointing=true "
            "or train.parallel=fsdp / train.teacher_parallel=fsdp"
        )
    return line
