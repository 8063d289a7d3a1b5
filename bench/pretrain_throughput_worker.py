"""Per-rank worker code for ``bench/pretrain_throughput.py`` (run under torchrun, 2 ranks).

Modes (first argument):

* ``peak``: the fp32 matmul peak per rank (``pretrain.metrics.measure_matmul_peak``) measured by
  all ranks at the same time, one thread each — what zerolm's trainer does at start-up.
* ``hf``: Hugging Face ``transformers.Trainer`` on the same model and DeepSpeed config
  (``pretrain.ds_config.build_ds_config``) as zerolm, with a ``TrainerCallback`` timing each step end.
* ``mem``: zerolm's ``pretrain.engine.Engine`` at one ZeRO stage: a few steps on real packed
  batches, then the bytes of the parameter, gradient and optimizer-state tensors this rank holds
  (deduplicated by storage) and its resident memory.

Each mode writes one JSON file (``--out``, rank 0) that the driver reads. Not a public entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_args import add_run_args  # noqa: E402


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["peak", "hf", "mem"])
    ap.add_argument("--out", required=True)
    add_run_args(ap, precision_default="default")  # called with the driver's --precision
    ap.add_argument("--family", default="gpt2")
    ap.add_argument("--steps", type=int, default=33, help="optimizer steps in all")
    ap.add_argument("--warmup", type=int, default=3, help="steps not timed (hf)")
    ap.add_argument("--log-every", type=int, default=1)
    ap.add_argument("--peak-reps", type=int, default=5, help="peak: repetitions; hf/mem: also measure the peak first")
    ap.add_argument("--deepspeed-fp32-copy", action="store_true",
                    help="train.share_fp32_master=false: fp32 ZeRO-3 keeps DeepSpeed's second fp32 copy of the "
                         "parameter partition as its master (zerolm's default shares one copy)")
    return ap.parse_args(argv)


def _rank_world() -> tuple[int, int]:
    from zerolm.pretrain.distributed import detect

    env = detect(set_env=False)
    return env.rank, env.world_size


def _model_cfg(a: argparse.Namespace):
    from zerolm.pretrain.models import resolve_model_config
    from zerolm.config import ModelConfig

    return resolve_model_config(ModelConfig(family=a.family, n_layer=a.n_layer, d_model=a.d_model, n_head=a.n_head))


def _train_cfg(a: argparse.Namespace):
    from zerolm.config import TrainConfig

    # --precision default: HF Trainer's own default (fp32) for its DeepSpeed config and for the memory table
    return TrainConfig(zero_stage=a.zero_stage, precision="fp32" if a.precision == "default" else a.precision, max_steps=a.steps,
                       share_fp32_master=not getattr(a, "deepspeed_fp32_copy", False))


def _build_model(a: argparse.Namespace, tok):
    from zerolm.pretrain.models import build_model, count_parameters, flops_per_token, special_ids_of

    mcfg = _model_cfg(a)
    torch.manual_seed(_train_cfg(a).seed)  # identical initial weights on every rank (as the trainer)
    model = build_model(mcfg, vocab_size=tok.vocab_size, seq_len=a.seq_len, special_ids=special_ids_of(tok))
    n = count_parameters(model)["total"]
    return model, n, flops_per_token(n, mcfg.n_layer, mcfg.d_model, a.seq_len)


def _write(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _gather(obj):
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# -- peak ------------------------------------------------------------------------------------------
def _peak(reps: int) -> dict:
    """Median of ``reps`` matmul-peak measurements per rank, all ranks at once (process group up)."""
    import statistics

    import torch.distributed as dist

    from zerolm.pretrain.metrics import measure_matmul_peak

    vals = []
    for _ in range(reps):
        dist.barrier()  # all ranks multiply at the same time, as in the trainer
        vals.append(measure_matmul_peak("cpu"))
    per_rank = _gather({"median": statistics.median(vals), "all": vals, "threads": torch.get_num_threads()})
    return {"per_rank": per_rank, "peak_flops_per_rank": statistics.mean(r["median"] for r in per_rank)}


def run_peak(a: argparse.Namespace) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    res = _peak(a.peak_reps)
    if dist.get_rank() == 0:
        _write(a.out, res)
    dist.barrier()
    dist.destroy_process_group()


# -- Hugging Face Trainer --------------------------------------------------------------------------
def _hf_blocks(a: argparse.Namespace, hf_tok, n_blocks: int):
    """The run_clm.py recipe on the same corpus: tokenize documents (+ EOS, as zerolm packs them),
    concatenate, cut into seq_len blocks; labels = input_ids (the model shifts)."""
    import glob
    import itertools

    import datasets

    datasets.disable_progress_bars()
    files = sorted(glob.glob(os.path.join(a.corpus, "train", "*.jsonl")))
    if not files:
        raise SystemExit(f"no training shards under {a.corpus}/train")
    # take documents round-robin over the shards (all sources), just enough for the run
    need = n_blocks * a.seq_len
    handles = [open(f, encoding="utf-8") for f in files]
    texts, approx = [], 0
    while handles and approx < 2 * need:  # ~3 characters per token; twice what is needed
        for h in list(handles):
            line = h.readline()
            if not line:
                h.close()
                handles.remove(h)
                continue
            t = json.loads(line)["text"]
            texts.append(t)
            approx += len(t) // 3
    for h in handles:
        h.close()
    ds = datasets.Dataset.from_dict({"text": texts})
    eos = hf_tok.eos_token_id
    ds = ds.map(lambda b: {"input_ids": [ids + [eos] for ids in hf_tok(b["text"])["input_ids"]]}, batched=True,
                remove_columns=["text"])

    def group_texts(b):
        cat = list(itertools.chain.from_iterable(b["input_ids"]))
        n = len(cat) // a.seq_len * a.seq_len
        blocks = [cat[i:i + a.seq_len] for i in range(0, n, a.seq_len)]
        return {"input_ids": blocks, "attention_mask": [[1] * a.seq_len for _ in blocks], "labels": [list(x) for x in blocks]}

    ds = ds.map(group_texts, batched=True, batch_size=1000)
    if len(ds) < n_blocks:
        raise SystemExit(f"only {len(ds)} blocks of {a.seq_len} tokens from the corpus; need {n_blocks}")
    return ds


def run_hf(a: argparse.Namespace) -> None:
    import tempfile

    from accelerate import PartialState
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers.utils import logging as hf_logging

    from zerolm.data_pipeline.tokenizer import load_hf_tokenizer, load_pipeline_tokenizer
    from zerolm.pretrain.ds_config import build_ds_config
    from zerolm.pretrain.engine import skip_shm_build

    hf_logging.set_verbosity_warning()
    rank, world = _rank_world()
    skip_shm_build()  # as the trainer does (pretrain.engine.init_distributed)
    # transformers' DeepSpeed path gives accelerate no backend on a CPU-only machine, which then sees one process
    # (train_batch_size assertion); a DeepSpeed PartialState on gloo, configured before the TrainingArguments, is the
    # route that works under torchrun (docs/stack-notes.md, Accelerate on CPU)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")

    tok = load_pipeline_tokenizer(a.tokenizer)
    hf_tok = load_hf_tokenizer(a.tokenizer)
    model, n_params, fpt = _build_model(a, tok)
    tcfg = _train_cfg(a)
    ds_config = build_ds_config(tcfg, a.micro_batch, a.grad_accum, world, hidden_size=model.config.hidden_size)
    n_blocks = (a.steps + 1) * a.micro_batch * a.grad_accum * world
    train_ds = _hf_blocks(a, hf_tok, n_blocks)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    peak = _peak(a.peak_reps) if a.peak_reps else None
    timer = StepTimer()
    out_dir = tempfile.mkdtemp(prefix="hf_trainer_bench_")
    args = TrainingArguments(
        output_dir=out_dir,
        deepspeed=ds_config,
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.grad_accum,
        max_steps=a.steps,
        learning_rate=tcfg.lr,
        weight_decay=tcfg.weight_decay,
        adam_beta1=tcfg.beta1,
        adam_beta2=tcfg.beta2,
        adam_epsilon=tcfg.eps,
        max_grad_norm=tcfg.grad_clip,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": tcfg.min_lr_ratio},
        warmup_steps=tcfg.warmup_steps,
        optim="adamw_torch",
        logging_steps=a.log_every,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=tcfg.seed,
        bf16=a.precision == "bf16",
        accelerator_config={"use_configured_state": True},
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator,
                      callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    engine = trainer.model_wrapped
    res = {
        "framework": "hf_trainer",
        "peak": peak,
        "step_ends": [t - timer.begin for t in timer.ends],
        "train_total_s": total,
        "losses": losses,
        "n_params": n_params,
        "flops_per_token": fpt,
        "world_size": world,
        "tokens_per_step": a.micro_batch * a.grad_accum * world * a.seq_len,
        "deepspeed_engine": type(engine).__name__,
        "zero_stage": int(engine.zero_optimization_stage()) if hasattr(engine, "zero_optimization_stage") else None,
        "ds_train_batch_size": int(engine.train_batch_size()) if hasattr(engine, "train_batch_size") else None,
        "optimizer": type(getattr(engine, "optimizer", None)).__name__,
        "threads": torch.get_num_threads(),
        "data": "run_clm recipe: tokenize + EOS, concatenate, seq_len blocks; map-style datasets.Dataset, "
                "Trainer's DistributedSampler, default_data_collator",
    }
    if rank == 0:
        _write(a.out, res)
    import shutil

    import torch.distributed as dist

    shutil.rmtree(out_dir, ignore_errors=True)
    dist.barrier()
    dist.destroy_process_group()


# -- ZeRO memory -----------------------------------------------------------------------------------
def _resident_bytes(ptr: int, nbytes: int) -> int | None:
    """Bytes of [ptr, ptr+nbytes) resident in RAM (mincore(2)); None if it cannot be asked."""
    import ctypes
    import mmap

    if nbytes <= 0 or ptr == 0:
        return 0
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        page = mmap.PAGESIZE
        start = ptr - ptr % page
        length = ptr + nbytes - start
        npages = (length + page - 1) // page
        vec = (ctypes.c_ubyte * npages)()
        if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) != 0:
            return None
        return sum(v & 1 for v in vec) * page
    except Exception:  # noqa: BLE001
        return None


class _Ledger:
    """Bytes per category over distinct storages (a storage is charged to the first category that
    names it: a view of an already-counted buffer costs nothing)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = {}
        self.resident: dict[str, int] = {}

    def add(self, cat: str, t) -> None:
        if isinstance(t, (list, tuple)):
            for x in t:
                self.add(cat, x)
            return
        if isinstance(t, dict):
            for x in t.values():
                self.add(cat, x)
            return
        if not torch.is_tensor(t):
            return
        s = t.untyped_storage()
        ptr, nb = s.data_ptr(), s.nbytes()
        self.bytes.setdefault(cat, 0)
        self.resident.setdefault(cat, 0)
        if ptr == 0 or nb == 0 or ptr in self.seen:
            return
        self.seen.add(ptr)
        self.bytes[cat] += nb
        r = _resident_bytes(ptr, nb)
        self.resident[cat] += nb if r is None else r


def _account(eng) -> dict[str, dict[str, int]]:
    """Parameter, gradient, optimizer and communication-buffer bytes this rank holds now."""
    ds = eng.engine
    opt = ds.optimizer
    led = _Ledger()
    params = list(ds.module.parameters())
    # parameters: the module's tensors (views of DeepSpeed's flat buffer at ZeRO-1/2), ZeRO-3 partitions
    for p in params:
        led.add("params", p.data)
        led.add("params", getattr(p, "ds_tensor", None))
    for name in ("bit16_groups_flat", "fp16_partitioned_groups_flat", "lp_param_buffer"):
        led.add("params", getattr(opt, name, None))
    # gradients: full grads on the module, ZeRO-1/2 averaged partitions, ZeRO-3 partition buffer
    for p in params:
        led.add("grads", p.grad)
    led.add("grads", getattr(opt, "averaged_gradients", None))
    led.add("grads", getattr(opt, "grad_partitions_flat_buffer", None))
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        for t in getattr(opt, name, None) or []:
            led.add("grads", t.grad)
    # optimizer: fp32 master partition (ZeRO-1/2 clone even in fp32; fp32 ZeRO-3 shares the parameter partition
    # unless share_fp32_master=false, then it is charged here) + Adam state
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        led.add("opt_master", getattr(opt, name, None))
    client = getattr(eng, "_client_opt", None) or opt
    for st in client.state.values():
        led.add("opt_state", st)
    # gradient reduction buckets (allocated at reduce_bucket_size; only touched pages are resident)
    for b in (getattr(opt, "ipg_buckets", None) or {}).values():
        led.add("comm_buckets", getattr(b, "buffer", None))
    return {"bytes": led.bytes, "resident": led.resident}


def _trimmed_rss(proc) -> int:
    """RSS after glibc ``malloc_trim(0)`` hands freed heap pages back: what live tensors and the
    interpreter hold, without the allocator's cache."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return proc.memory_info().rss


def run_mem(a: argparse.Namespace) -> None:
    import resource

    import psutil

    from zerolm.data_pipeline.loader import PackedDataLoader
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
    from zerolm.pretrain import distributed
    from zerolm.pretrain.engine import Engine
    from zerolm.config import DataConfig, SourceConfig

    env = distributed.detect()
    distributed.init(env)
    peak = _peak(a.peak_reps) if a.peak_reps else None
    proc = psutil.Process()
    tok = load_pipeline_tokenizer(a.tokenizer)
    model, n_params, _ = _build_model(a, tok)
    rss_model = proc.memory_info().rss
    tcfg = _train_cfg(a)
    torch.manual_seed(tcfg.seed + env.rank)
    eng = Engine(model, tcfg, a.micro_batch, a.grad_accum, env.world_size)
    del model
    rss_engine = proc.memory_info().rss
    dcfg = DataConfig(
        sources=[SourceConfig(name="bundled", paths=[os.path.join(a.corpus, "train", "*.jsonl")])],
        validation_sources=[SourceConfig(name="bundled", paths=[os.path.join(a.corpus, "validation", "*.jsonl")])],
        tokenizer_dir=a.tokenizer, seq_len=a.seq_len, micro_batch_size=a.micro_batch, num_workers=0,
    )
    it = iter(PackedDataLoader(dcfg, rank=env.rank, world_size=env.world_size, tokenizer=tok))
    eng.train()
    in_step = after = None
    losses, t0 = [], time.perf_counter()
    for _ in range(a.steps):
        for _micro in range(a.grad_accum):
            loss = eng.forward(next(it)).loss
            eng.backward(loss)
            if _micro == a.grad_accum - 1:
                in_step = _account(eng)  # gradients alive, optimizer state from the previous step
            eng.step()
        losses.append(float(loss.detach()))
        after = _account(eng)
    step_s = (time.perf_counter() - t0) / a.steps
    res = {
        "zero_stage": a.zero_stage,
        "rank": env.rank,
        "in_step": in_step,
        "after_step": after,
        "rss_after_model_build": rss_model,
        "rss_after_engine": rss_engine,
        "rss_end": proc.memory_info().rss,
        "rss_end_trimmed": _trimmed_rss(proc),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "losses": losses,
        "step_s": step_s,
        "n_params": n_params,
        "optimizer": type(eng.optimizer).__name__,
        "shared_fp32_master_bytes": eng.shared_fp32_master_bytes,
        "peak": peak,
    }
    per_rank = _gather(res)
    if env.is_main:
        _write(a.out, {"zero_stage": a.zero_stage, "per_rank": per_rank})
    distributed.shutdown()


def main(argv: list[str] | None = None) -> None:
    a = _args(sys.argv[1:] if argv is None else argv)
    {"peak": run_peak, "hf": run_hf, "mem": run_mem}[a.mode](a)


if __name__ == "__main__":
    main()
