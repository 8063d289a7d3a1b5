"""CLI wiring of ``zerolm launch`` (slurm, local, ds-config) and ``zerolm publish``.

The commands parse arguments, call the library (:mod:`launch.slurm`, :mod:`launch.publish`) and
print (through :data:`zerolm.console.console`, shared with :mod:`zerolm.cli`, which registers these
commands); the library raises :class:`zerolm.errors.ZeroLMError` subclasses, which ``zerolm.cli.main``
turns into one-line messages.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zerolm.console import console, human_bytes


# -- zerolm launch slurm ---------------------------------------------------------------------------
def _cmd_slurm(args: argparse.Namespace) -> int:
    from zerolm.launch.slurm import SlurmJob, render_sbatch, submit

    job = SlurmJob(
        config=args.config, overrides=list(args.overrides), entry=args.entry, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        time=args.time, partition=args.partition, launcher=args.launcher, cpu=args.cpu, signal_lead=args.signal_lead,
        job_name=args.job_name, cpus_per_task=args.cpus_per_task, account=args.account, qos=args.qos,
        extra_sbatch=list(args.sbatch_option or []), python=args.python or sys.executable, log_dir=args.log_dir,
    )
    rendered = render_sbatch(job)
    if args.dry_run:
        sys.stdout.write(rendered.script)  # verbatim: no markup, pipe it into a file or `sbatch`
        return 0
    if args.write_script:
        Path(args.write_script).write_text(rendered.script)
        Path(args.write_script).chmod(0o755)
        print(f"wrote {args.write_script}")
        return 0
    res = submit(rendered)
    print(f"submitted job {res['job_id']}\nscript: {res['script']}\nlog: {res['log']}")  # plain: paths never wrap
    return 0


# -- zerolm launch local ---------------------------------------------------------------------------
def _cmd_local(args: argparse.Namespace) -> int:
    import shlex

    from zerolm.launch.slurm import local_command, run_local

    cmd, env = local_command(args.config, list(args.overrides), args.nproc, python=args.python or sys.executable,
                             entry=args.entry)
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + " ".join(shlex.quote(c) for c in cmd)
    if args.dry_run:
        print(line.strip())
        return 0
    console.print(f"running: {line.strip()}", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    return run_local(cmd, env)  # SIGTERM/SIGUSR1 go to the ranks: they checkpoint and exit cleanly


# -- zerolm launch ds-config -----------------------------------------------------------------------
def _cmd_ds_config(args: argparse.Namespace) -> int:
    from zerolm.launch.slurm import ds_config_for, ds_config_variants
    from zerolm.config import load_config

    gpu = not args.cpu
    if args.variants:
        out = Path(args.variants)
        out.mkdir(parents=True, exist_ok=True)
        for name, ds in ds_config_variants(args.config, list(args.overrides), args.world_size, gpu).items():
            (out / f"{name}.json").write_text(json.dumps(ds, indent=2) + "\n")
            console.print(f"wrote {out / (name + '.json')}", highlight=False, soft_wrap=True)
        return 0
    ds = ds_config_for(load_config(args.config, list(args.overrides)), args.world_size, gpu)
    text = json.dumps(ds, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        console.print(f"wrote {args.out}", highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(text)
    return 0


# -- zerolm publish --------------------------------------------------------------------------------
def _cmd_publish(args: argparse.Namespace) -> int:
    from zerolm.launch.publish import plan_publish, publish
    from zerolm.errors import ConfigError

    if args.overrides:
        raise ConfigError(f"publish takes no key=value overrides (got {' '.join(args.overrides)})")
    plan = plan_publish(
        args.export_dir, args.repo_id, private=args.private, revision=args.revision, license=args.license,
        datasets=args.dataset, extra_tags=args.tag, commit_message=args.message, eval_dirs=args.evals,
    )
    con = console
    if args.dry_run:
        con.rule("model card (README.md)")
        sys.stdout.write(plan.card)
        if not plan.card.endswith("\n"):
            sys.stdout.write("\n")
        con.rule("files")
        for op in plan.files:
            print(f"{op['size']:>14,d}  {human_bytes(op['size']):>10}  {op['path']}")
        print(f"{plan.total_bytes:>14,d}  {human_bytes(plan.total_bytes):>10}  total ({len(plan.files)} files)")
        for w in plan.warnings:
            con.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
        con.print(
            f"dry run: would create {'private' if plan.private else 'public'} model repo {plan.repo_id} (if missing) and "
            f"commit {len(plan.files)} files to {plan.revision or 'main'}; nothing was uploaded",
            highlight=False, soft_wrap=True,
        )
        return 0
    for w in plan.warnings:
        con.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    res = publish(plan)
    con.print(f"published {res['repo_id']} ({len(plan.files)} files, {human_bytes(plan.total_bytes)}) at {res['commit_url']}",
              highlight=False, soft_wrap=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``launch`` and ``publish`` subcommands to the ``zerolm`` parser."""
    launch = subparsers.add_parser("launch", help="run pretraining or finetuning on Slurm (sbatch) or on this machine (torchrun)")
    sub = launch.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser(
        "slurm",
        help="render an sbatch script for N nodes x G GPUs and submit it",
        description="Render an sbatch script that runs `python -m zerolm.pretrain CONFIG [overrides]` (or, with --entry finetune-classify / finetune-sentiment, `python -m zerolm.finetune classify|sentiment …`) on N nodes x G GPUs "
        "(srun + torchrun with c10d rendezvous on the first node, plain srun tasks, or the deepspeed launcher with a "
        "hostfile from the allocation), asks Slurm for USR1 before the time limit, checkpoints, requeues itself and "
        "resumes. Prints the script with --dry-run, else submits it with sbatch and prints the job id and log path.",
    )
    p.add_argument("config", help="zerolm YAML config")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument("--entry", choices=["pretrain", "finetune-classify", "finetune-sentiment"], default="pretrain",
                   help="what to run: pretraining, classification finetuning or sentiment steering (default pretrain)")
    p.add_argument("--nodes", "-N", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpus-per-node", "-G", type=int, default=8, help="GPUs (= ranks) per node; with --cpu: processes per node (default 8)")
    p.add_argument("--time", "-t", default="24:00:00", help="time limit, sbatch --time format (default 24:00:00)")
    p.add_argument("--partition", "-p", default=None, help="partition (default: the cluster's default)")
    p.add_argument("--launcher", choices=["torchrun", "srun", "deepspeed"], default="torchrun",
                   help="torchrun (default): one agent per node, c10d rendezvous; srun: one task per rank; "
                   "deepspeed: the deepspeed launcher with a hostfile from the allocation")
    p.add_argument("--cpu", action="store_true", help="CPU-only variant (no GPUs requested; DS_ACCELERATOR=cpu)")
    p.add_argument("--signal-lead", type=int, default=300, help="seconds before the time limit that USR1 arrives (default 300)")
    p.add_argument("--job-name", default=None, help="job name (default zerolm-<run dir name>)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="--cpus-per-task for each srun task")
    p.add_argument("--account", "-A", default=None, help="account to charge")
    p.add_argument("--qos", default=None, help="quality of service")
    p.add_argument("--sbatch-option", action="append", metavar="--OPT[=VALUE]",
                   help="extra #SBATCH option, repeatable (e.g. --sbatch-option=--exclusive)")
    p.add_argument("--python", default=None, help="Python of the environment on the nodes (default: this one)")
    p.add_argument("--log-dir", default=None, help="folder for the script, ds_config.json and job logs (default RUN_DIR/slurm)")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    p.add_argument("--write-script", default=None, metavar="FILE", help="write the script to FILE instead of submitting it")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=_cmd_slurm)

    p = sub.add_parser(
        "local",
        help="train on this machine with torchrun (N processes)",
        description="Run `torchrun --standalone --nproc-per-node N -m zerolm.pretrain CONFIG [overrides]` on this machine "
        "(SIGTERM/SIGUSR1 are forwarded: the ranks checkpoint and exit; run it again to resume).",
    )
    p.add_argument("config", help="zerolm YAML config")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument("--entry", choices=["pretrain", "finetune-classify", "finetune-sentiment"], default="pretrain",
                   help="what to run: pretraining, classification finetuning or sentiment steering (default pretrain)")
    p.add_argument("--nproc", "-n", type=int, default=1, help="processes (ranks) on this machine (default 1)")
    p.add_argument("--python", default=None, help="Python whose torchrun to use (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=_cmd_local)

    p = sub.add_parser(
        "ds-config",
        help="print the DeepSpeed JSON config the trainer generates for a config and world size",
        description="Generate the DeepSpeed config exactly as the trainer will (pretrain.ds_config.build_ds_config), "
        "for review or for tools that want a file. --variants DIR writes ZeRO-1/2/3 and offload variants.",
    )
    p.add_argument("config", help="zerolm YAML config")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.add_argument("--world-size", "-w", type=int, default=1, help="data-parallel ranks (default 1)")
    p.add_argument("--cpu", action="store_true", help="as generated on a machine without CUDA (no overlap_comm, no pinned memory)")
    p.add_argument("--out", "-o", default=None, help="write to this file instead of stdout")
    p.add_argument("--variants", default=None, metavar="DIR", help="write zero1/zero2/zero3/zero2_offload/zero3_offload.json into DIR")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    p.set_defaults(func=_cmd_ds_config)

    p = subparsers.add_parser(
        "publish",
        help="upload an exported model folder to the Hugging Face Hub",
        description="Upload a `zerolm export` folder to the Hugging Face Hub (create_repo + one create_commit). The "
        "model card is the export's, with Hub metadata added and checked (license, language, datasets, tags, "
        "library_name, pipeline_tag, model-index with the validation loss/perplexity). The token comes from HF_TOKEN "
        "or the cached `hf auth login`, and is never printed. --dry-run prints the card and the files and sizes.",
    )
    p.add_argument("export_dir", help="folder written by `zerolm export`")
    p.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    p.add_argument("--license", default=None, help="Hub license id, replacing the card's (e.g. apache-2.0)")
    p.add_argument("--evals", action="append", default=None, metavar="DIR",
                   help="results folder of `zerolm eval fewshot|bias`, repeatable: its tables go into the card and its "
                   "JSON/PNG files under evals/ in the repo")
    p.add_argument("--dataset", action="append", default=None, metavar="HUB_DATASET_ID",
                   help="training dataset on the Hub, repeatable (default: the bundled corpus sources' origins)")
    p.add_argument("--tag", action="append", default=None, help="extra tag, repeatable")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print the card and the files that would be uploaded")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=_cmd_publish, overrides=[])
