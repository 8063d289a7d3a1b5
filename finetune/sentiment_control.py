"""Method ``control`` of ``zerolm finetune sentiment``: control codes (Keskar et al. 2019, CTRL).

The policy is finetuned with the shared DeepSpeed loop (:class:`pretrain.trainer.Trainer` with
:func:`control_components`, causal-LM :class:`pretrain.objectives.Objective`) on labelled real rows
written ``<code tokens> <text tokens> EOS``, the loss on the text only (the code and padding are
−100). Codes are plain text (``sentiment.control_codes``) tokenized as ``code + "\\n"`` and
concatenated with the text's tokens, so generation = code tokens + prompt tokens sees exactly the
token boundary it was trained on. Rank 0 then consolidates the final checkpoint and exports it with
:func:`finetune.sentiment_export.export_policy`.

Two sources of training text (``sentiment.control_data``):

* ``rows`` (:func:`control_examples`): the labelled rows themselves, ``<code> <review>``. It teaches
  the rows' register (critics' snippets) as much as the code → sentiment link, and never shows the
  model a code followed by a story or a news paragraph, which is what it is asked to continue.
* ``samples`` (:func:`sampled_examples`): the policy's own continuations of training prompts of every
  kind, ``control_k`` per prompt; per prompt, the continuation the reward classifier scores most
  positive is written after the positive code and the most negative after the negative code, loss on
  the continuation. The model is shown the same prompt continued both ways under the two codes, in
  its own register, so the code is the only thing that tells the two apart. This is one round of
  reward-conditioned finetuning on the model's own samples — Quark (Lu et al. 2022, "Quark:
  Controllable Text Generation with Reinforced Unlearning") with two reward bins, or best/worst-of-k
  filtering as in expert iteration / RAFT (Dong et al. 2023) — with plain-text codes (Keskar et al.
  2019). The samples are drawn once, split over the ranks by fixed chunks (the same set on any world
  size) and kept in ``RUN_DIR/control_samples.jsonl`` (+ ``.json``) so a resumed run trains on the
  same data.

``control_sources`` draws each code's continuations from its own policy instead (e.g. the exports of
an RLOO run toward each target, :mod:`finetune.rloo`): the positive code's examples are the positive
policy's continuations that the reward reads positive, the negative code's the negative policy's that
it reads negative, of the same prompts. The finetuned model is still ``policy``: it learns from two
steered policies to steer by the code — distilling them into one code-conditioned model, the way CTRL
(Keskar et al. 2019) learns codes from text that already carries the attribute.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zerolm.config import ZeroLMConfig
from zerolm.errors import ConfigError, DataError
from zerolm.finetune import data as fdata
from zerolm.finetune import sentiment as S
from zerolm.finetune.sentiment import code_ids, load_policy, polarity_of
from zerolm.finetune.sentiment_prompts import prompt_pool, split_texts
from zerolm.finetune.sentiment_export import export_meta, export_policy
from zerolm.fsutil import write_json, write_jsonl
from zerolm.pretrain import distributed
from zerolm.pretrain.distributed import is_main_process

log = logging.getLogger(__name__)

SAMPLES_FILE = "control_samples.jsonl"  # one record per prompt: its k continuations and their reward margins
SAMPLES_META = "control_samples.json"  # written last: the signature the samples were drawn with, counts, seconds
SAMPLE_CHUNK = 16  # prompts per generation call; chunk c is drawn by rank c % world_size with its own seed
VALIDATION_EVERY = 20  # every 20th prompt's examples are held out for eval/loss


class ControlCodeLoader(fdata.ClassificationLoader):
    """:class:`finetune.data.ClassificationLoader` over ``(ids, prefix_length)`` pairs that yields
    causal-LM batches: ``labels`` ``(B, T)`` = ``input_ids`` with −100 on the code prefix and padding."""

    def __iter__(self):
        for batch in super().__iter__():
            prefix = batch.pop("labels")
            labels = batch["input_ids"].clone()
            before = torch.arange(labels.shape[1])[None] < prefix[:, None]
            labels[before | (batch["attention_mask"] == 0)] = -100
            batch["labels"] = labels
            yield batch


def control_examples(tok, sc, texts: list[str], labels: list[str], eos: int | None) -> list[tuple[list[int], int]]:
    """``(code + text tokens [+ EOS], code length)`` per row whose label maps to positive/negative
    (:func:`polarity_of`; e.g. ``neutral`` rows are left out), truncated to ``control_max_length``."""
    codes = {p: code_ids(tok, c) for p, c in sc.control_codes.items()}
    keep = [(t, polarity_of(y)) for t, y in zip(texts, labels) if polarity_of(y)]
    if not keep:
        raise DataError(f"{sc.data}: no label maps to positive/negative (labels: {sorted(set(labels))[:10]})")
    enc = tok([t for t, _ in keep], add_special_tokens=False)["input_ids"]
    out = []
    for ids, (_, p) in zip(enc, keep):
        c = codes[p]
        body = ids[: max(1, sc.control_max_length - len(c) - 1)] + ([eos] if eos is not None else [])
        out.append((c + body, len(c)))
    return out


def samples_signature(sc) -> dict[str, Any]:
    """What the self-generated control data depends on (compared key by key before reuse)."""
    keys = ("policy", "reward", "reward_text", "control_prompts", "control_k", "control_sources", "seed", "data", "split_seed",
            "validation_fraction", "test_fraction", "prompt_kinds", "prompt_min_tokens", "prompt_max_tokens",
            "tweet_min_tokens", "tweet_max_tokens", "context_min_tokens", "context_max_tokens",
            "response_min_tokens", "response_max_tokens", "temperature", "top_k", "top_p", "target_label")
    dumped = sc.model_dump(mode="json")
    return {k: dumped[k] for k in keys}


def polarity_indices(labels: dict[int, str], sc) -> tuple[int, int]:
    """The reward classifier's class indices for positive and negative (``target_label`` names the
    target's class when the synonyms do not find it).

    Raises:
        ConfigError: a polarity maps to none of the classifier's labels."""
    from zerolm.finetune.sentiment import resolve_target_label

    idx = {p: resolve_target_label(labels, p, sc.target_label if p == sc.target else None, f"the reward model {sc.reward}")
           for p in ("positive", "negative")}
    return idx["positive"], idx["negative"]


def draw_samples(model, tok, sc, rank: int, world: int) -> list[dict[str, Any]]:
    """Sample ``control_k`` continuations of each of ``control_prompts`` training prompts
    (:func:`finetune.sentiment_prompts.prompt_pool`, validation split: never a report prompt) and score them
    with the reward classifier; every rank draws its chunks and all ranks get every record.

    Chunk ``c`` (:data:`SAMPLE_CHUNK` prompts) is drawn by rank ``c % world`` with a generator seeded
    by ``(seed, c)``, so the records are the same on any number of ranks. Each continuation has
    ``response_min_tokens``–``response_max_tokens`` tokens (one length per prompt, seeded).

    Returns:
        One record per prompt, in prompt order: ``kind``, ``prompt`` (token ids), ``responses`` (``k``
        lists of token ids), ``margins`` (``k`` floats: the reward's positive − negative logit on the
        ``reward_text``; > 0 reads positive).
    """
    prompts = prompt_pool(sc, tok, "validation", sc.control_prompts, np.random.default_rng(sc.seed + 11))
    lengths = np.random.default_rng(sc.seed + 13).integers(sc.response_min_tokens, sc.response_max_tokens + 1,
                                                           size=len(prompts)).tolist()
    reward = S.RewardModel(sc.reward, sc.target, sc.target_label, "logit_margin")
    pos, neg = polarity_indices(reward.labels, sc)
    stops = S.stop_ids(model, tok)
    k = sc.control_k
    chunks = range(0, len(prompts), SAMPLE_CHUNK)
    mine: list[tuple[int, dict[str, Any]]] = []
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    for c, start in enumerate(chunks):
        if c % world != rank:
            continue
        part = prompts[start : start + SAMPLE_CHUNK]
        queries = [p.ids for p in part for _ in range(k)]
        lims = [n for n in lengths[start : start + SAMPLE_CHUNK] for _ in range(k)]
        gen = torch.Generator().manual_seed(sc.seed * 1_000_003 + c)
        resp = S.sample_responses(model, queries, lims, pad_id=tok.pad_token_id, stops=stops, temperature=sc.temperature,
                                  top_k=sc.top_k, top_p=sc.top_p, generator=gen, batch_size=len(queries),
                                  min_tokens=sc.response_min_tokens)
        cont = [tok.decode(r, skip_special_tokens=True) for r in resp]
        texts = cont if sc.reward_text == "continuation" else [tok.decode(q + r, skip_special_tokens=True)
                                                                for q, r in zip(queries, resp)]
        logits = reward.logits(texts)
        margins = (logits[:, pos] - logits[:, neg]).tolist()
        for j, p in enumerate(part):
            mine.append((start + j, {"kind": p.kind, "prompt": p.ids, "responses": resp[j * k:(j + 1) * k],
                                     "margins": [round(m, 4) for m in margins[j * k:(j + 1) * k]]}))
        if rank == 0 and (c // world) % 4 == 3:
            log.info("control samples: chunk %d of %d drawn on rank 0 (%.0f s)", c + 1, len(chunks), time.perf_counter() - t0)
    if was_training:
        model.train()
    everything = [r for part in distributed.all_gather_objects(mine) for r in part]
    return [r for _, r in sorted(everything, key=lambda x: x[0])]


def draw_from_sources(tok, sc, rank: int, world: int) -> list[dict[str, Any]]:
    """:func:`draw_samples` from each ``control_sources`` policy in turn (positive, then negative), each
    record marked with its ``source``. The sources must share ``tok``'s vocabulary: the samples are
    token ids written after the policy's code and prompt.

    Raises:
        ConfigError: a source's tokenizer differs from the policy's. DataError: a source is not a causal LM.
    """
    records: list[dict[str, Any]] = []
    for pol in ("positive", "negative"):
        path = sc.control_sources[pol]
        src, src_tok = load_policy(path)
        if src_tok.get_vocab() != tok.get_vocab():
            raise ConfigError(f"sentiment.control_sources.{pol}={path} has another tokenizer than sentiment.policy="
                              f"{sc.policy} ({len(src_tok)} vs {len(tok)} tokens): its samples cannot train the policy")
        log.info("control samples: drawing the %s code's continuations from %s", pol, path)
        records += [{**r, "source": pol} for r in draw_samples(src, tok, sc, rank, world)]
        del src
    return records


def margin_thresholds(records: list[dict[str, Any]], sc) -> tuple[float, float]:
    """``(above, below)``: a sample goes after the positive code when its margin is > ``above``, after
    the negative code when < ``below``. ``control_fraction`` = f: the (1 − f) and f quantiles of
    every sample's margin (each code gets about the same number of samples, however the classifier
    leans on the policy's text); otherwise ``±control_min_margin``."""
    if sc.control_fraction is None:
        return float(sc.control_min_margin), -float(sc.control_min_margin)
    every = np.asarray([x for r in records for x in r["margins"]], dtype=float)
    return float(np.quantile(every, 1 - sc.control_fraction)), float(np.quantile(every, sc.control_fraction))


def _picks(margins: list[float], above: float, below: float, picks: int, source: str | None = None
           ) -> list[tuple[str, int]]:
    """``(code, sample index)`` of one prompt's picks (see :func:`select_examples`); a record drawn
    from a ``control_sources`` policy (``source`` = its polarity) gives examples to that code only."""
    m = np.asarray(margins, dtype=float)
    order = np.argsort(-m, kind="stable")  # most positive first
    out = [("positive", int(j)) for j in order[:picks] if m[j] > above] if source in (None, "positive") else []
    return out + ([("negative", int(j)) for j in order[::-1][:picks] if m[j] < below] if source in (None, "negative") else [])


def select_examples(records: list[dict[str, Any]], codes: dict[str, list[int]], above: float = 0.0,
                    below: float = 0.0, picks: int = 1
                    ) -> tuple[list[tuple[list[int], int]], list[tuple[list[int], int]], dict[str, Any]]:
    """Control-code examples from :func:`draw_samples`' records: per prompt, the ``picks``
    continuations with the largest margins after the positive code, those whose margin is >
    ``above`` (0: the classifier reads it positive), and the ``picks`` with the smallest after the
    negative code, those < ``below`` (:func:`margin_thresholds`). Stricter thresholds keep fewer, more
    clearly polar examples; ``picks`` = k keeps every sample that clears them (Quark's reward bins). An example is
    ``(code + prompt + continuation, len(code + prompt))`` (the loss falls on the continuation).
    Every :data:`VALIDATION_EVERY`-th prompt's examples go to validation. A record with a ``source``
    (drawn from that polarity's ``control_sources`` policy; the sources' records list the same prompts in
    the same order) gives examples to its own code only, and its prompt's position counts within its source.

    Returns:
        ``(train, validation, counts)``; counts: examples per code, prompts, samples.
    """
    train: list[tuple[list[int], int]] = []
    val: list[tuple[list[int], int]] = []
    n = {"positive": 0, "negative": 0}
    position: dict[str | None, int] = {}
    for r in records:
        src = r.get("source")
        i = position[src] = position.get(src, -1) + 1
        for pol, j in _picks(r["margins"], above, below, picks, src):
            head = codes[pol] + list(r["prompt"])
            (val if i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else train).append((head + list(r["responses"][j]), len(head)))
            n[pol] += 1
    return train, val, {"prompts": max(position.values(), default=-1) + 1,
                        "samples": sum(len(r["margins"]) for r in records), "examples": n}


def judge_of_selection(records: list[dict[str, Any]], tok, above: float = 0.0, below: float = 0.0,
                       picks: int = 1) -> dict[str, float]:
    """VADER (the report's judge, never used to select) on the continuations: the positive rate of all
    samples and of the ones picked for the positive code, the negative rate likewise — the ceiling the
    finetuned model imitates, for the log and the export's metadata. With ``control_sources`` "all"
    means all samples of that polarity's source."""
    from zerolm.evals.judge import judge_hits, vader_compound

    text = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    every = {"positive": [], "negative": []}
    chosen = {"positive": [], "negative": []}
    for r in records:
        texts = [text(x) for x in r["responses"]]  # decoded once: without sources both rates read them
        for pol in every:
            if r.get("source") in (None, pol):
                every[pol].extend(texts)
        for pol, j in _picks(r["margins"], above, below, picks, r.get("source")):
            chosen[pol].append(text(r["responses"][j]))
    rate = lambda texts, target: float(np.mean(judge_hits(vader_compound(texts), target))) if texts else float("nan")  # noqa: E731
    return {f"vader_{pol}_{which}": rate(texts[pol], pol) for pol in ("positive", "negative")
            for which, texts in (("all", every), ("selected", chosen))}


def sampled_examples(model, tok, sc, env, run_dir: Path):
    """The ``control_data=samples`` training set: :func:`draw_samples` (or the records a previous
    start of this run kept in ``RUN_DIR``, when drawn with the same :func:`samples_signature`), then
    :func:`select_examples` with ``control_codes``.

    Returns:
        ``(train, validation, info)`` — info: counts, the judge on the selection, seconds.

    Raises:
        ConfigError: the run directory holds checkpoints and samples drawn with other settings (the
            message names each key that differs): training on would mix two datasets.
        DataError: the selection gives too few examples to train on.
    """
    sig = samples_signature(sc)
    meta_path, rows_path = run_dir / SAMPLES_META, run_dir / SAMPLES_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    records = None
    if meta is not None and rows_path.is_file():
        saved = meta.get("signature", {})  # a key newer than the saved samples counts as its default, None
        diff = {k: (saved.get(k), v) for k, v in sig.items() if saved.get(k) != v}
        if not diff:
            records = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
            log.info("control samples: %d prompts reused from %s", len(records), rows_path)
        else:
            if any((run_dir / "checkpoints").glob("*")):
                raise ConfigError(f"{run_dir} holds checkpoints trained on control samples drawn with other settings "
                                  f"(saved → now: {diff}); use a new run directory or the old settings")
            log.warning("control samples in %s were drawn with other settings (%s): drawing again", run_dir, diff)
    t0 = time.perf_counter()
    if records is None:
        records = (draw_from_sources(tok, sc, env.rank, env.world_size) if sc.control_sources
                   else draw_samples(model, tok, sc, env.rank, env.world_size))
        if env.is_main:
            write_jsonl(rows_path, records)
            write_json(meta_path, {"signature": sig, "prompts": len(records), "seconds": round(time.perf_counter() - t0, 1)})
    codes = {p: code_ids(tok, c) for p, c in sc.control_codes.items()}
    above, below = margin_thresholds(records, sc)
    train, val, counts = select_examples(records, codes, above, below, sc.control_picks)
    if not train or min(counts["examples"].values()) == 0:
        raise DataError(f"control samples: the reward found {counts['examples']} positive/negative continuations among "
                        f"{counts['samples']}: nothing to teach one of the codes (raise sentiment.control_k or control_prompts)")
    info = {**counts, "sources": sc.control_sources, "thresholds": [round(above, 4), round(below, 4)],
            "judge": judge_of_selection(records, tok, above, below, sc.control_picks), "draw_seconds": round(time.perf_counter() - t0, 1)}
    log.info("control samples: %d prompts × %d, margins > %.2f / < %.2f → %s examples (%d train, %d validation); VADER "
             "positive %.3f of all → %.3f of the positive picks, negative %.3f → %.3f", counts["prompts"], sc.control_k,
             above, below, counts["examples"], len(train),
             len(val), info["judge"]["vader_positive_all"], info["judge"]["vader_positive_selected"],
             info["judge"]["vader_negative_all"], info["judge"]["vader_negative_selected"])
    return train, val, info


def control_components(cfg: ZeroLMConfig, env, prepared: dict[str, Any]):
    """The ``build`` of :class:`pretrain.trainer.Trainer` for the control-code method: the policy as
    ``AutoModelForCausalLM``, code-prefixed training rows (validation rows for ``eval/loss``), the
    causal-LM :class:`pretrain.objectives.Objective`."""
    from zerolm.pretrain.models import flops_per_token
    from zerolm.pretrain.objectives import Objective
    from zerolm.pretrain.components import Components

    sc = cfg.sentiment
    model, tok = load_policy(sc.policy)
    model.train()
    if sc.control_data == "samples":
        train_ex, val_ex, info = sampled_examples(model, tok, sc, env, Path(cfg.train.run_dir))
        prepared["samples_info"] = info  # for train_control's export metadata
        whose = f"{sc.control_sources}'s" if sc.control_sources else "its own"
        what = (f"{len(train_ex)} examples of {whose} continuations ({sc.control_k} per prompt, best/worst by the reward, "
                f"{info['prompts']} prompts)")
    else:
        train_ex = control_examples(tok, sc, *prepared["train"], tok.eos_token_id)
        val_ex = control_examples(tok, sc, *prepared["validation"], tok.eos_token_id)
        what = f"{len(train_ex)} training rows"
    seq = max(1, round(float(np.mean([len(x) for x, _ in train_ex]))))
    micro = cfg.data.micro_batch_size
    hc = model.config.get_text_config()
    n_params = sum(p.numel() for p in model.parameters())
    n_layer = getattr(hc, "num_hidden_layers", None) or getattr(hc, "n_layer", 1)
    d_model = getattr(hc, "hidden_size", None) or getattr(hc, "n_embd", 1)
    return cfg, Components(
        model=model,
        train_loader=ControlCodeLoader(train_ex, micro, tok.pad_token_id, rank=env.rank, world_size=env.world_size,
                                       seed=cfg.data.seed, infinite=True),
        make_eval_loader=lambda: ControlCodeLoader(val_ex, micro, tok.pad_token_id, rank=env.rank,
                                                   world_size=env.world_size, infinite=False),
        objective=Objective(),
        description=f"{type(model).__name__} from {sc.policy} ({n_params / 1e6:.1f}M parameters), control codes "
                    f"{sc.control_codes}, {what}",
        flops_per_token=flops_per_token(n_params, n_layer, d_model, seq),
        tokens_per_sample=seq,
        parameters=n_params,
        job="sentiment_control",
    )


def train_control(cfg: ZeroLMConfig, reward_label: str) -> dict[str, Any]:
    """Finetune with control codes (this process's part), then on rank 0 consolidate the final
    DeepSpeed checkpoint and export it (:func:`export_policy`). Returns the trainer's summary.

    Raises:
        ConfigError: a ``control_sources`` entry is not a model folder (checked before any work)."""
    import functools

    from zerolm.hf_models import resolve_model_path

    from zerolm.pretrain.ds_checkpoint import load_checkpoint_weights, no_live_hf_deepspeed_config
    from zerolm.pretrain.trainer import train

    sc = cfg.sentiment
    for pol, path in (sc.control_sources or {}).items():  # before any work: the draw comes after the trainer's set-up
        if not (Path(resolve_model_path(path)) / "config.json").is_file():
            raise ConfigError(f"sentiment.control_sources.{pol}={path} is not a model folder (no config.json)")
    t0 = time.perf_counter()
    prepared: dict[str, Any] = {}
    if sc.control_data == "rows":
        splits = split_texts(sc)
        texts, labels = splits["train"]
        if sc.max_examples is not None and sc.max_examples < len(texts):
            keep = fdata.stratified_split(labels, 1e-9, 1e-9, sc.seed, sc.max_examples)["train"]
            texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        prepared = {**splits, "train": (texts, labels)}
    if sc.max_minutes is not None:  # the time box of the training steps (the shared trainer's train.max_minutes)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_minutes": sc.max_minutes})})
    result = train(cfg, build=functools.partial(control_components, prepared=prepared))
    info = prepared.get("samples_info")
    rows = info["examples"] if info else len(prepared["train"][0])
    if is_main_process():
        no_live_hf_deepspeed_config()
        model, tok = load_policy(sc.policy)
        load_checkpoint_weights(model, cfg.train.run_dir)
        final = {k: v for k, v in result.items() if k.startswith("eval/")}
        out = export_policy(model, tok, sc.export_dir or Path(cfg.train.run_dir) / "hf", export_meta(
            cfg, "control", reward_label, control_codes=dict(sc.control_codes), steps=result["step"],
            control_data=sc.control_data, control_samples=info, training_rows=rows,
            seconds=round(time.perf_counter() - t0, 1), final_metrics=final,
            train={"lr": cfg.train.lr, "micro_batch_size": cfg.data.micro_batch_size, "max_steps": cfg.train.max_steps}))
        result = {**result, "export_dir": str(out)}
    return result
