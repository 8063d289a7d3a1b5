"""``zerolm launch slurm``: render (and submit) an sbatch script for N nodes × G GPUs.

The script is assembled from the templates in ``launch/templates/``: a header (``#SBATCH`` lines,
rendezvous on the first node of ``SLURM_JOB_NODELIST`` with ``MASTER_PORT = 20000 + job id % 10000``,
the USR1 trap), one launcher block and a footer (wait for the training step, requeue after a
preemption/time-limit warning). Three launchers start the same entry point, ``python -m zerolm.pretrain``
(or another of :data:`ENTRIES`: classification finetuning, sentiment steering; each checkpoints on
USR1 and resumes from its run directory):

* ``torchrun`` (default): ``srun`` starts one torchrun agent per node; c10d rendezvous;
* ``srun``: one Slurm task per GPU; each rank reads ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``;
* ``deepspeed``: a hostfile generated from the allocation; ``srun`` starts one ``deepspeed --no_ssh
  --node_rank=$SLURM_NODEID`` per node (no ssh or pdsh between nodes).

``cpu=True`` renders the CPU-only variant (no ``--gpus-per-node``; ``DS_ACCELERATOR=cpu``, one thread
per process); then ``gpus_per_node`` counts processes per node. The DeepSpeed JSON config is not a
hand-kept file: the trainer generates it from the zerolm config (:func:`pretrain.ds_config.build_ds_config`);
:func:`ds_config_for` renders the same dict here for review (``ds_config.json`` beside the script,
``zerolm launch ds-config``).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from zerolm.config import ZeroLMConfig, load_config
from zerolm.errors import ConfigError, ZeroLMError
from zerolm.fsutil import write_json, write_text

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
LAUNCHERS = ("torchrun", "srun", "deepspeed")
# what a job runs: the ``python -m`` module (and subcommand) of each entry point
ENTRIES = {"pretrain": "zerolm.pretrain", "finetune-classify": "zerolm.finetune classify",
           "finetune-sentiment": "zerolm.finetune sentiment"}
PORT_BASE = 20000  # the same derivation as pretrain.distributed (MASTER_PORT = 20000 + job id % 10000)

Launcher = Literal["torchrun", "srun", "deepspeed"]


@dataclass
class SlurmJob:
    """What to run and on what allocation.

    Attributes:
        config: the zerolm YAML config (made absolute).
        overrides: ``key.sub=value`` overrides passed on to the entry point.
        entry: what runs: ``pretrain`` (``python -m zerolm.pretrain``), ``finetune-classify``
            (``python -m zerolm.finetune classify``) or ``finetune-sentiment`` (``python -m zerolm.finetune
            sentiment``: the config's ``sentiment.method``; PPO checkpoints and resumes through the same
            checkpoint module as the shared trainer), so checkpoint-on-USR1 and requeue-resume work the same.
        nodes: number of nodes.
        gpus_per_node: GPUs per node (= training processes per node); with ``cpu``, processes per node.
        time: Slurm time limit (``MM``, ``HH:MM:SS``, ``D-HH:MM`` …).
        partition: Slurm partition (omitted when None: the cluster's default).
        launcher: ``torchrun`` | ``srun`` | ``deepspeed``.
        cpu: render the CPU-only variant (tests, clusters without GPUs).
        signal_lead: seconds before the time limit at which Slurm sends USR1 to the batch script.
        job_name: Slurm job name (default ``zerolm-<run dir name>``).
        cpus_per_task: ``--cpus-per-task`` (default: GPU jobs leave it to the cluster; CPU jobs ask
            one core per process).
        account, qos: optional ``--account`` / ``--qos``.
        extra_sbatch: more ``#SBATCH`` options, verbatim (``--exclusive``, ``--constraint=a100``).
        workdir: the directory the job runs in (relative config paths resolve against it).
        python: the Python interpreter of the environment with zerolm installed; ``torchrun`` and
            ``deepspeed`` are taken from the same ``bin/`` folder.
        log_dir: where Slurm writes the job log (default ``RUN_DIR/slurm``).
    """

    config: str
    overrides: list[str] = field(default_factory=list)
    entry: str = "pretrain"
    nodes: int = 1
    gpus_per_node: int = 8
    time: str = "24:00:00"
    partition: str | None = None
    launcher: Launcher = "torchrun"
    cpu: bool = False
    signal_lead: int = 300
    job_name: str | None = None
    cpus_per_task: int | None = None
    account: str | None = None
    qos: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)
    workdir: str = field(default_factory=lambda: str(Path.cwd()))
    python: str = sys.executable
    log_dir: str | None = None


@dataclass
class RenderedJob:
    """A rendered job: the sbatch script and where it, its log and its files go."""

    script: str
    script_path: Path
    log_dir: Path
    run_dir: Path
    job_name: str
    ds_config: dict[str, Any]
    world_size: int


# -- time limits ----------------------------------------------------------------------------------
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_limit(value: str) -> int:
    """Seconds in a Slurm time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS`` (sbatch ``--time`` formats).

    Raises:
        ConfigError: not one of those formats.
    """
    m = _TIME_RE.match(value.strip())
    if not m:
        raise ConfigError(f"--time {value!r}: not a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS …)")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if c is not None:  # HH:MM:SS
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:  # MM:SS
        return int(a) * 60 + int(b)
    return int(a) * 60  # MM


# -- DeepSpeed config (generated, one source of truth) --------------------------------------------
@contextmanager
def _assume_cuda(gpu: bool) -> Iterator[None]:
    """build_ds_config turns on overlap_comm/pin_memory when CUDA is present; render a GPU job's
    config as the GPU nodes will generate it, even on a login node without GPUs."""
    import torch

    real = torch.cuda.is_available
    torch.cuda.is_available = (lambda: True) if gpu else (lambda: False)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.is_available = real  # type: ignore[assignment]


def ds_config_for(cfg: ZeroLMConfig, world_size: int, gpu: bool = True) -> dict[str, Any]:
    """The DeepSpeed JSON config the trainer will generate for ``cfg`` on ``world_size`` ranks.

    Calls the trainer's own :func:`pretrain.trainer.batch_arithmetic` and
    :func:`pretrain.ds_config.build_ds_config` with the model's width, so it cannot drift from what runs —
    except for a model loaded from a folder (``model.init_from``, the finetuning jobs), whose width the
    trainer reads from the loaded model: there the ZeRO-3 bucket keys (and ZeRO-1/2's ``reduce_bucket_size``,
    which follows the parameter count) shown are DeepSpeed's defaults unless ``train.comm`` sets them.

    ``train.precision=auto`` is shown as bf16 for GPUs (Ampere and newer; the trainer falls back to fp32 on
    older ones) and fp32 for CPUs (the trainer measures whether this CPU's bf16 matmul pays).

    Raises:
        ConfigError: the batch sizes do not divide over ``world_size`` ranks.
    """
    from zerolm.pretrain.ds_config import build_ds_config
    from zerolm.pretrain.models import resolve_model_config
    from zerolm.pretrain.trainer import batch_arithmetic

    from zerolm.launch.plan import trainable_params

    if cfg.train.precision == "auto":  # the trainer decides on the device at start and logs why (resolve_precision)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16" if gpu else "fp32"})})
    micro, gas, _ = batch_arithmetic(cfg, world_size)
    width = n_params = None
    if not cfg.model.init_from:
        try:
            width = resolve_model_config(cfg.model).d_model
            # only the ZeRO-1/2/3 buckets follow the count: skip the tokenizer read and the meta build at ZeRO-0
            n_params = trainable_params(cfg) if cfg.train.zero_stage else None
        except ConfigError:  # no shape in the model section: a finetuning job's model comes from a folder
            width = n_params = None
    with _assume_cuda(gpu):
        return build_ds_config(cfg.train, micro, gas, world_size, hidden_size=width, n_params=n_params)


DS_VARIANTS: dict[str, list[str]] = {
    "zero1": ["train.zero_stage=1"],
    "zero2": ["train.zero_stage=2"],
    "zero3": ["train.zero_stage=3"],
    "zero2_offload": ["train.zero_stage=2", "train.offload_optimizer=true"],
    "zero3_offload": ["train.zero_stage=3", "train.offload_optimizer=true", "train.offload_params=true"],
}


def ds_config_variants(config: str | None, overrides: list[str], world_size: int, gpu: bool = True) -> dict[str, dict[str, Any]]:
    """ZeRO-1/2/3 and offload variants of one zerolm config, each generated as :func:`ds_config_for`
    does (``name → ds_config``; names in :data:`DS_VARIANTS`)."""
    out = {}
    for name, extra in DS_VARIANTS.items():
        out[name] = ds_config_for(load_config(config, [*overrides, *extra]), world_size, gpu)
    return out


def _ds_summary(ds: dict[str, Any]) -> str:
    z = ds["zero_optimization"]
    offload = [k.replace("offload_", "") for k in ("offload_optimizer", "offload_param") if k in z]
    precision = "bf16" if ds["bf16"]["enabled"] else "fp16" if ds["fp16"]["enabled"] else "fp32"
    return (f"ZeRO-{z['stage']}{' + offload ' + '/'.join(offload) if offload else ''}, {precision}, micro batch "
            f"{ds['train_micro_batch_size_per_gpu']} x accumulation {ds['gradient_accumulation_steps']} x "
            f"{ds['train_batch_size'] // (ds['train_micro_batch_size_per_gpu'] * ds['gradient_accumulation_steps'])} ranks"
            f" = global batch {ds['train_batch_size']}")


# -- rendering -----------------------------------------------------------------------------------
def _template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def _fill(text: str, values: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise ZeroLMError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return re.sub(r"\{\{(\w+)\}\}", sub, text)


def _check(job: SlurmJob) -> None:
    if job.entry not in ENTRIES:
        raise ConfigError(f"--entry {job.entry!r}: choose one of {', '.join(ENTRIES)}")
    if job.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {job.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if job.nodes < 1 or job.gpus_per_node < 1:
        raise ConfigError(f"--nodes ({job.nodes}) and --gpus-per-node ({job.gpus_per_node}) must be at least 1")
    limit = parse_time_limit(job.time)
    if not 0 < job.signal_lead < limit:
        raise ConfigError(f"--signal-lead {job.signal_lead} s must be positive and below the time limit "
                          f"{job.time} ({limit} s): the job needs that long to checkpoint before Slurm kills it")
    if job.cpus_per_task is not None and job.cpus_per_task < 1:
        raise ConfigError("--cpus-per-task must be at least 1")
    for opt in job.extra_sbatch:
        if not opt.startswith("--") or "\n" in opt:
            raise ConfigError(f"extra sbatch option {opt!r}: give it as --name[=value]")
    if any(c in (job.partition or "") + (job.account or "") + (job.qos or "") for c in " \n'\""):
        raise ConfigError("--partition/--account/--qos must not contain spaces or quotes")


def render_sbatch(job: SlurmJob) -> RenderedJob:
    """Render the sbatch script for ``job`` (nothing is written or submitted).

    The zerolm config is loaded and validated first (with the overrides), and the DeepSpeed config
    is generated for the job's world size, so a wrong key or an indivisible batch fails here rather
    than on the cluster.

    Raises:
        ConfigError: invalid config/overrides, time limit, signal lead, launcher or sizes.
    """
    _check(job)
    workdir = Path(job.workdir).resolve()
    config = Path(job.config)
    config = (config if config.is_absolute() else workdir / config).resolve()
    cfg = load_config(config, job.overrides)  # validates before any work
    run_dir = Path(cfg.train.run_dir)
    run_dir = run_dir if run_dir.is_absolute() else workdir / run_dir
    log_dir = Path(job.log_dir).resolve() if job.log_dir else run_dir / "slurm"
    world = job.nodes * job.gpus_per_node
    ds = ds_config_for(cfg, world, gpu=not job.cpu)
    job_name = job.job_name or f"zerolm-{run_dir.name}"
    if not re.fullmatch(r"[\w.\-]+", job_name):
        raise ConfigError(f"job name {job_name!r}: use letters, digits, '.', '_' or '-'")
    # the environment's interpreter, not resolved: a venv's bin/python is a symlink to the base Python
    python = Path(os.path.abspath(workdir / job.python)) if "/" in job.python else Path(shutil.which(job.python) or job.python)
    per_node_tasks = job.gpus_per_node if job.launcher == "srun" else 1

    resources = []
    env = []
    cpus = job.cpus_per_task
    if job.cpu:
        cpus = cpus or (1 if job.launcher == "srun" else job.gpus_per_node)
        resources.append(f"#SBATCH --cpus-per-task={cpus}")
        threads = max(1, cpus // (1 if job.launcher == "srun" else job.gpus_per_node))
        env += ["export DS_ACCELERATOR=cpu", f"export OMP_NUM_THREADS={threads}"]
    else:
        resources.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
        if job.cpus_per_task:
            resources.append(f"#SBATCH --cpus-per-task={job.cpus_per_task}")
            per_proc = job.cpus_per_task // (1 if job.launcher == "srun" else job.gpus_per_node)
            env.append(f"export OMP_NUM_THREADS={max(1, per_proc)}")
    extra = [f"#SBATCH --account={job.account}"] if job.account else []
    extra += [f"#SBATCH --qos={job.qos}"] if job.qos else []
    extra += [f"#SBATCH {opt}" for opt in job.extra_sbatch]

    train_args = ["--config", str(config), *job.overrides, f"train.run_dir={run_dir}"]
    unit = "CPU process" if job.cpu else "GPU"
    summary = (f"{job.entry}, {job.nodes} node(s) x {job.gpus_per_node} {'processes (CPU)' if job.cpu else 'GPUs'} = {world} ranks, "
               f"launcher {job.launcher}, config {config}")
    values = {
        "summary": summary,
        "script_name": f"{job_name}.sbatch",
        "signal_lead": str(job.signal_lead),
        "run_dir": str(run_dir),
        "ds_summary": _ds_summary(ds),
        "job_name": job_name,
        "nodes": str(job.nodes),
        "ntasks_per_node": str(per_node_tasks),
        "resource_lines": "".join(line + "\n" for line in resources),
        "time": job.time,
        "partition_line": f"#SBATCH --partition={job.partition}\n" if job.partition else "",
        "log_dir": str(log_dir),
        "extra_lines": "".join(line + "\n" for line in extra),
        "workdir": shlex.quote(str(workdir)),
        "env_lines": "".join(line + "\n" for line in env),
        "python": shlex.quote(str(python)),
        "bin_dir": shlex.quote(str(python.parent)),
        "nproc": str(job.gpus_per_node),
        "world": str(world),
        "unit": unit,
        "train_args": " ".join(shlex.quote(a) for a in train_args),
        "module": ENTRIES[job.entry],
        # srun does not inherit sbatch's --cpus-per-task since Slurm 22.05: pass it on
        "srun_cpus": f" --cpus-per-task={cpus}" if cpus else "",
    }
    script = "".join(_fill(_template(t), values) for t in ("sbatch_header.sh", f"launch_{job.launcher}.sh", "sbatch_footer.sh"))
    return RenderedJob(script=script, script_path=log_dir / f"{job_name}.sbatch", log_dir=log_dir, run_dir=run_dir,
                       job_name=job_name, ds_config=ds, world_size=world)


def write_job(rendered: RenderedJob) -> Path:
    """Write the script (executable) and ``ds_config.json`` into the log folder; returns the script path."""
    write_text(rendered.script_path, rendered.script)
    rendered.script_path.chmod(0o755)
    write_json(rendered.log_dir / "ds_config.json", rendered.ds_config, indent=2)
    return rendered.script_path


def submit(rendered: RenderedJob, sbatch: str = "sbatch") -> dict[str, str]:
    """Write the job's files and submit the script with ``sbatch --parsable``.

    Returns:
        ``{"job_id", "script", "log"}`` (the log path with the job id filled in).

    Raises:
        ZeroLMError: ``sbatch`` is not installed or refused the job (its message included).
    """
    exe = shutil.which(sbatch)
    if exe is None:
        raise ZeroLMError(f"{sbatch} not found: run this on a Slurm login node (or start launch/local_slurm.sh)")
    path = write_job(rendered)
    r = subprocess.run([exe, "--parsable", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ZeroLMError(f"sbatch refused {path}: {(r.stderr or r.stdout).strip()}")
    job_id = r.stdout.strip().split(";")[0]
    log_path = rendered.log_dir / f"{rendered.job_name}-{job_id}.out"
    log.debug("submitted job %s (%s); log %s", job_id, path, log_path)
    return {"job_id": job_id, "script": str(path), "log": str(log_path)}


# -- one machine ---------------------------------------------------------------------------------
def run_local(cmd: list[str], env: dict[str, str]) -> int:
    """Run a :func:`local_command` torchrun as a child process and return its exit status.

    SIGTERM and SIGUSR1 sent to this process (a scheduler, ``kill``, a Slurm step) go straight to the
    ranks — torchrun's direct children — which checkpoint at the next step boundary and exit 0, so
    torchrun ends cleanly (sent to torchrun itself, it re-raises the signal as an error and exits 1
    with a traceback after the ranks are done). Before the ranks exist, the signal goes to torchrun.
    Ctrl-C reaches torchrun through the terminal's process group; this process keeps waiting for it.
    """
    import signal

    import psutil

    proc = subprocess.Popen(cmd, env={**os.environ, **env})

    def forward(signum, _frame) -> None:
        try:
            targets = psutil.Process(proc.pid).children() or [psutil.Process(proc.pid)]
        except psutil.NoSuchProcess:
            return
        for t in targets:
            try:
                t.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # torchrun got the Ctrl-C too and stops the ranks: wait for it
                continue
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def local_command(config: str, overrides: list[str], nproc: int, python: str = sys.executable,
                  entry: str = "pretrain") -> tuple[list[str], dict[str, str]]:
    """The ``torchrun`` command line (and extra environment) that runs ``entry`` (see
    :data:`ENTRIES`) on this machine.

    ``--standalone`` rendezvous; SIGTERM and SIGUSR1 are forwarded to the ranks (they checkpoint and
    exit) with up to 300 s to do so. Without CUDA: ``DS_ACCELERATOR=cpu`` and one thread per rank
    (or cores / ranks) unless ``OMP_NUM_THREADS`` is set.

    Raises:
        ConfigError: invalid config/overrides, unknown entry or ``nproc`` < 1 (validated before starting).
    """
    if entry not in ENTRIES:
        raise ConfigError(f"--entry {entry!r}: choose one of {', '.join(ENTRIES)}")
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be at least 1")
    load_config(config, overrides)
    torchrun = str(Path(python).parent / "torchrun")
    cmd = [torchrun, "--standalone", f"--nproc-per-node={nproc}", "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
           "--shutdown-timeout=300", "-m", *ENTRIES[entry].split(), "--config", str(config), *overrides]
    env: dict[str, str] = {}
    import torch

    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return cmd, env


__all__ = [
    "DS_VARIANTS",
    "ENTRIES",
    "LAUNCHERS",
    "RenderedJob",
    "SlurmJob",
    "ds_config_for",
    "ds_config_variants",
    "local_command",
    "parse_time_limit",
    "render_sbatch",
    "submit",
    "write_job",
]
