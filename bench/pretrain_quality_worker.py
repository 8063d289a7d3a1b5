"""Worker code for ``bench/pretrain_quality.py``. Not a public entry point.

Modes (first argument):

* ``hf`` (under torchrun, 2 ranks): Hugging Face ``transformers.Trainer`` trains the model zerolm
  would build from the same zerolm config file (``--config``: the YAML the zerolm run reads), on
  the ``run_clm.py`` / ``run_mlm.py`` data recipe, with zerolm's DeepSpeed config, AdamW
  hyper-parameters and LR schedule; saves the final model with ``Trainer.save_model``.
* ``eval`` (one process): the bench's own evaluator — fixed validation blocks (and, for masked-LM,
  fixed 15 % 80/10/10 masks drawn once from a seeded ``torch.Generator``), each model loaded with
  ``AutoModelFor{CausalLM,MaskedLM}.from_pretrained``; mean cross-entropy (nats) over the predicted
  tokens and top-1 accuracy on them.

Each mode writes one JSON file (``--out``; rank 0 for ``hf``).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from pretrain_throughput_worker import _rank_world, _write  # noqa: E402

IGNORE = -100


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["hf", "eval"])
    ap.add_argument("--config", required=True, help="the zerolm config (YAML) of the run to mirror / to evaluate for")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--model-out", help="hf: where Trainer.save_model writes the final model")
    ap.add_argument("--hf-mlm-blocks", choices=["zerolm", "run_mlm"], default="zerolm",
                    help="hf, masked-LM: block layout (see the bench's docstring)")
    ap.add_argument("--hf-average-tokens", action="store_true",
                    help="hf: TrainingArguments.average_tokens_across_devices=True (HF's default; see the bench's docstring)")
    ap.add_argument("--models", nargs="*", default=[], help="eval: NAME=DIR of Hugging Face model folders")
    ap.add_argument("--eval-mlm-probability", type=float, default=0.15)
    ap.add_argument("--eval-seed", type=int, default=20240601)
    ap.add_argument("--eval-mask-draws", type=int, default=4,
                    help="eval, masked-LM: the validation blocks are masked this many times over (one fixed draw of "
                         "the repeated blocks): more masked tokens, less evaluation noise")
    ap.add_argument("--eval-batch", type=int, default=16)
    return ap.parse_args(argv)


def _documents(corpus_glob: str) -> list[str]:
    """Every document's text of the files matching ``corpus_glob``, files in sorted order."""
    texts = []
    for f in sorted(glob.glob(corpus_glob)):
        with open(f, encoding="utf-8") as h:
            texts += [json.loads(line)["text"] for line in h if line.strip()]
    if not texts:
        raise SystemExit(f"no documents in {corpus_glob}")
    return texts


# -- Hugging Face Trainer --------------------------------------------------------------------------
def recipe_dataset(texts: list[str], hf_tok, seq_len: int, objective: str, mlm_blocks: str = "zerolm"):
    """The run_clm.py / run_mlm.py recipe as a map-style ``datasets.Dataset`` of ``input_ids`` blocks.

    Tokenize every document with the Hugging Face tokenizer (which adds no special tokens), append
    the document separator zerolm packs with (EOS for causal-LM, [SEP] for masked-LM), concatenate
    within map batches of 1000 documents, and cut into blocks, dropping each map batch's remainder
    (as run_clm.py's ``group_texts``). Masked-LM blocks: ``mlm_blocks="zerolm"`` → ``[CLS]`` +
    ``seq_len − 2`` tokens + ``[SEP]`` (zerolm's layout); ``"run_mlm"`` → each document
    ``[CLS] … [SEP]`` (what run_mlm.py gets from a BERT tokenizer's template), blocks of ``seq_len``.
    """
    import datasets

    datasets.disable_progress_bars()
    mlm = objective == "mlm"
    sep = hf_tok.sep_token_id if mlm else hf_tok.eos_token_id
    cls = hf_tok.cls_token_id
    body = seq_len - 2 if mlm and mlm_blocks == "zerolm" else seq_len
    lead = [cls] if mlm and mlm_blocks == "run_mlm" else []

    def tokenize(b):
        return {"input_ids": [lead + ids + [sep] for ids in hf_tok(b["text"])["input_ids"]]}

    def group_texts(b):
        cat = list(itertools.chain.from_iterable(b["input_ids"]))
        n = len(cat) // body * body
        blocks = [cat[i:i + body] for i in range(0, n, body)]
        if body != seq_len:
            blocks = [[cls] + x + [sep] for x in blocks]
        return {"input_ids": blocks}

    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(tokenize, batched=True, remove_columns=["text"], keep_in_memory=True)
    return ds.map(group_texts, batched=True, batch_size=1000, keep_in_memory=True)


def _state_digest(model: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights: Σ over parameters of Σ|w|·(i+1) (float64)."""
    return float(sum(p.detach().double().abs().sum() * (i + 1) for i, p in enumerate(model.parameters())))


def run_hf(a: argparse.Namespace) -> None:
    from accelerate import PartialState
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from zerolm.config import load_config
    from zerolm.data_pipeline.tokenizer import load_hf_tokenizer, load_pipeline_tokenizer
    from zerolm.pretrain.ds_config import build_ds_config
    from zerolm.pretrain.engine import lr_at, skip_shm_build
    from zerolm.pretrain.models import build_model, objective_of, resolve_model_config, special_ids_of

    t_start = time.perf_counter()
    hf_logging.set_verbosity_warning()
    cfg = load_config(a.config)
    tcfg, dcfg = cfg.train, cfg.data
    rank, world = _rank_world()
    # as pretrain_throughput_worker.run_hf: a DeepSpeed PartialState on gloo before the TrainingArguments
    skip_shm_build()
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")

    tok = load_pipeline_tokenizer(dcfg.tokenizer_dir)
    hf_tok = load_hf_tokenizer(dcfg.tokenizer_dir)
    mcfg = resolve_model_config(cfg.model)
    objective = objective_of(mcfg.family)
    if objective != dcfg.objective:
        raise SystemExit(f"config: model.family {mcfg.family} trains {objective}, data.objective is {dcfg.objective}")
    torch.manual_seed(tcfg.seed)  # as zerolm's Trainer: seed, then build → the same initial weights
    model = build_model(mcfg, vocab_size=tok.vocab_size, seq_len=dcfg.seq_len, special_ids=special_ids_of(tok))
    init_digest = _state_digest(model)

    texts = [t for src in dcfg.sources for p in src.paths for t in _documents(p)]
    t0 = time.perf_counter()
    train_ds = recipe_dataset(texts, hf_tok, dcfg.seq_len, objective, a.hf_mlm_blocks)
    data_s = time.perf_counter() - t0
    accum = tcfg.gradient_accumulation_steps or 1
    collator = DataCollatorForLanguageModeling(
        tokenizer=hf_tok, mlm=objective == "mlm", mlm_probability=dcfg.mlm_probability if objective == "mlm" else 0.15)

    class ZerolmScheduleTrainer(Trainer):
        """``Trainer`` whose LR schedule is zerolm's ``lr_at`` (warm-up (s+1)/W, cosine to min_lr_ratio) as a
        ``LambdaLR``; HF's ``cosine_with_min_lr`` warms up from 0 (s/W), one step behind."""

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lambda s: lr_at(s, tcfg))
                self._created_lr_scheduler = True
            return self.lr_scheduler

    args = TrainingArguments(
        output_dir=a.model_out + ".trainer",
        deepspeed=build_ds_config(tcfg, dcfg.micro_batch_size, accum, world, hidden_size=model.config.hidden_size),
        per_device_train_batch_size=dcfg.micro_batch_size,
        gradient_accumulation_steps=accum,
        max_steps=tcfg.max_steps,
        learning_rate=tcfg.lr,
        weight_decay=tcfg.weight_decay,
        adam_beta1=tcfg.beta1,
        adam_beta2=tcfg.beta2,
        adam_epsilon=tcfg.eps,
        max_grad_norm=tcfg.grad_clip,
        warmup_steps=tcfg.warmup_steps,
        optim="adamw_torch",
        logging_steps=tcfg.log_every,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=tcfg.seed,
        bf16=tcfg.precision == "bf16",
        accelerator_config={"use_configured_state": True},
        average_tokens_across_devices=a.hf_average_tokens,
    )

    class StepClock(TrainerCallback):
        """Wall-clock time of every optimizer step's end."""

        ends: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    trainer = ZerolmScheduleTrainer(model=model, args=args, train_dataset=train_ds, data_collator=collator,
                                    callbacks=[clock])
    # zerolm decays parameters with ≥ 2 dimensions (pretrain/engine.py weight_decay_groups); HF: all but biases and norms
    # (compared by tensor: a tied lm_head.weight is wte.weight under another name)
    names = set(trainer.get_decay_parameter_names(model))
    params = dict(model.named_parameters())
    hf_decay = names & set(params)  # named_parameters() lists a tied tensor once
    zl_decay = {n for n, p in params.items() if p.dim() >= 2}
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    trainer.save_model(a.model_out)
    hist = trainer.state.log_history
    res = {
        "trainer": "hf",
        "init_digest": init_digest,
        "blocks_in_dataset": len(train_ds),
        "data_prep_s": data_s,
        "train_s": train_s,
        "step_s_median": statistics.median(b - a for a, b in zip(clock.ends, clock.ends[1:])) if len(clock.ends) > 2 else None,
        "worker_s": time.perf_counter() - t_start,
        "epochs": float(trainer.state.epoch or 0),
        "train_loss_log": [(h["step"], h["loss"]) for h in hist if "loss" in h],
        "lr_log": [(h["step"], h["learning_rate"]) for h in hist if "learning_rate" in h],
        "decay_groups_match_zerolm": hf_decay == zl_decay,
        "decay_only_hf": sorted(hf_decay - zl_decay), "decay_only_zerolm": sorted(zl_decay - hf_decay),
        "deepspeed_engine": type(trainer.model_wrapped).__name__,
        "world_size": world,
        "mlm_blocks": a.hf_mlm_blocks if objective == "mlm" else None,
        "average_tokens_across_devices": a.hf_average_tokens,
    }
    if rank == 0:
        _write(a.out, res)
    import shutil

    import torch.distributed as dist

    shutil.rmtree(a.model_out + ".trainer", ignore_errors=True)
    dist.barrier()
    dist.destroy_process_group()


# -- the independent evaluator ---------------------------------------------------------------------
def validation_blocks(cfg, tok) -> torch.Tensor:
    """Fixed validation blocks, int64 ``(n_blocks, seq_len)``: every document of the config's validation
    sources (files sorted) + its separator (EOS causal-LM, [SEP] masked-LM), concatenated, cut into
    ``seq_len`` blocks (masked-LM: ``[CLS]`` + ``seq_len − 2`` tokens + ``[SEP]``), remainder dropped."""
    dcfg = cfg.data
    mlm = dcfg.objective == "mlm"
    texts = [t for src in dcfg.validation_sources for p in src.paths for t in _documents(p)]
    sep = tok.sep_id if mlm else tok.eos_id
    stream = [i for ids in tok.encode_batch(texts) for i in (*ids, sep)]
    body = dcfg.seq_len - 2 if mlm else dcfg.seq_len
    n = len(stream) // body
    x = torch.tensor(stream[:n * body], dtype=torch.long).view(n, body)
    if mlm:
        x = torch.cat([torch.full((n, 1), tok.cls_id), x, torch.full((n, 1), tok.sep_id)], dim=1)
    return x


def fixed_masks(blocks: torch.Tensor, tok, probability: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking drawn once (Devlin et al. 2019 §3.1): each non-special position is chosen with
    ``probability``; chosen → 80 % ``[MASK]``, 10 % a random non-special token, 10 % unchanged.
    Returns ``(inputs, labels)``, both ``blocks``' shape; labels = original id where chosen, else −100."""
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted({tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id}))
    maskable = ~torch.isin(blocks, special)
    chosen = (torch.rand(blocks.shape, generator=g) < probability) & maskable
    action = torch.rand(blocks.shape, generator=g)
    rand_ids = torch.randint(int(special.max()) + 1, tok.vocab_size, blocks.shape, generator=g)
    inputs = blocks.clone()
    inputs[chosen & (action < 0.8)] = tok.mask_id
    rnd = chosen & (action >= 0.8) & (action < 0.9)
    inputs[rnd] = rand_ids[rnd]
    return inputs, torch.where(chosen, blocks, torch.full_like(blocks, IGNORE))


@torch.no_grad()
def score(model, inputs: torch.Tensor, labels: torch.Tensor, causal: bool, batch: int) -> dict:
    """Mean cross-entropy (nats) and top-1 accuracy over the predicted tokens. Causal: position t
    predicts ``labels[t+1]``; masked: position t predicts ``labels[t]`` where it is not −100. The CE is
    ``logsumexp(logits) − logits[target]`` in float64 (not the model's own loss); ``_nll`` holds it per
    predicted token (1-D, in block order) for paired comparisons."""
    model.eval()
    per_token, correct = [], 0
    for i in range(0, len(inputs), batch):
        x, y = inputs[i:i + batch], labels[i:i + batch]
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits.double()
        if causal:
            logits, y = logits[:, :-1], y[:, 1:]
        keep = y != IGNORE
        lg, tgt = logits[keep], y[keep]
        per_token.append(torch.logsumexp(lg, dim=-1) - lg.gather(1, tgt[:, None]).squeeze(1))
        correct += int((lg.argmax(-1) == tgt).sum())
    nll = torch.cat(per_token)
    count = int(nll.numel())
    return {"val_loss": float(nll.mean()), "val_acc": correct / count, "val_tokens": count,
            "val_perplexity": math.exp(float(nll.mean())), "_nll": nll}


def run_eval(a: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from zerolm.config import load_config
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    cfg = load_config(a.config)
    tok = load_pipeline_tokenizer(cfg.data.tokenizer_dir)
    blocks = validation_blocks(cfg, tok)
    causal = cfg.data.objective == "clm"
    if causal:
        inputs, labels = blocks, blocks
    else:
        inputs, labels = fixed_masks(blocks.repeat(a.eval_mask_draws, 1), tok, a.eval_mlm_probability, a.eval_seed)
    res = {"blocks": int(blocks.shape[0]), "seq_len": int(blocks.shape[1]), "objective": cfg.data.objective,
           "mlm_probability": None if causal else a.eval_mlm_probability,
           "mask_draws": None if causal else a.eval_mask_draws, "models": {}, "paired": {}}
    nll = {}
    cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    for spec in a.models:
        name, path = spec.split("=", 1)
        t0 = time.perf_counter()
        model, info = cls.from_pretrained(path, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        if bad:  # a weight left at its random init would be scored silently
            raise SystemExit(f"{path}: weights did not load cleanly: {bad}")
        r = score(model, inputs, labels, causal, a.eval_batch)
        nll[name] = r.pop("_nll")
        res["models"][name] = {**r, "eval_s": time.perf_counter() - t0, "path": path}
        del model
    # zerolm_sN vs hf_sN on the same tokens: mean difference and its standard error (paired, per token;
    # tokens of one block are correlated, so this understates the noise somewhat)
    for name in nll:
        other = "hf_" + name[len("zerolm_"):]
        if name.startswith("zerolm_") and other in nll:
            d = nll[name] - nll[other]
            res["paired"][name[len("zerolm_s"):]] = {"diff": float(d.mean()), "se": float(d.std() / math.sqrt(d.numel()))}
    _write(a.out, res)


def main(argv: list[str] | None = None) -> None:
    a = _args(sys.argv[1:] if argv is None else argv)
    if a.mode == "hf" and not a.model_out:
        raise SystemExit("hf: --model-out is required")
    {"hf": run_hf, "eval": run_eval}[a.mode](a)


if __name__ == "__main__":
    main()
