"""Who am I in the job: rank, world size and local rank from torchrun, the deepspeed launcher,
plain ``srun`` or nothing (one process), and the process group's start and clean shutdown.

The launchers set different variables:

* torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR/PORT``
  (and ``TORCHELASTIC_RUN_ID``);
* the deepspeed launcher: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_SIZE``,
  ``MASTER_ADDR/PORT`` (and passes ``--local_rank``);
* ``srun`` without either: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
  ``SLURM_NTASKS_PER_NODE``/``SLURM_STEP_TASKS_PER_NODE``, ``SLURM_JOB_NODELIST``, ``SLURM_JOB_ID``;
  the rendezvous is the first node of the allocation on a port derived from the job id.

:func:`detect` turns any of these into the ``env://`` variables torch.distributed reads. Also here: the
job-wide helpers every rank calls together — :func:`all_reduce_values` (a few numbers over all ranks),
:func:`gather_to_main` (small objects to rank 0), :func:`collective_rates` (how fast the links are) and :func:`lock_run_dir` (one job per run directory) — and :func:`stop_with_launcher` (a rank does not
outlive its launcher).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerolm.errors import TrainingError

log = logging.getLogger(__name__)

_DEFAULT_PORT_BASE = 20000
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# the launcher that started this process, read as early as possible (this module is imported by the
# CLI before any heavy import): a later os.getppid() that differs means the launcher is gone
_PARENT_AT_START = os.getppid()


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "torchrun" | "deepspeed" | "slurm" | "single"
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the process that logs, tracks and writes shared files)."""
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first hostname of a Slurm node list (``gpu[012-015,020],cpu7`` → ``gpu012``)."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_of(environ: dict[str, str] | None = None) -> int:
    """This process's global rank as :func:`detect` reads it (0 when no launcher set one), without
    touching the environment or opening a port: what code that only needs "am I rank 0" calls."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"])
    return 0


def is_main_process(environ: dict[str, str] | None = None) -> bool:
    """True on global rank 0 (the process that prints, tracks and writes shared files)."""
    return rank_of(environ) == 0


def detect(environ: dict[str, str] | None = None, set_env: bool = True) -> DistEnv:
    """Read the launcher's variables and (with ``set_env``) export the ``env://`` ones.

    Args:
        environ: the environment to read (default ``os.environ``).
        set_env: write ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
            back so that ``torch.distributed`` / DeepSpeed initialise from them.

    Returns:
        The :class:`DistEnv`.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "deepspeed" if "LOCAL_SIZE" in env and "TORCHELASTIC_RUN_ID" not in env else "torchrun"
        local_world = int(env.get("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE", env["WORLD_SIZE"])))
        d = DistEnv(
            rank_of(env), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), local_world, launcher,
            env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)),
        )
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0"))
        tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_NTASKS_PER_NODE", env["SLURM_NTASKS"]))
        local_world = int(re.match(r"\d+", tasks_per_node).group(0))
        d = DistEnv(
            rank_of(env), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), local_world, "slurm",
            env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1"))),
            int(env.get("MASTER_PORT") or _DEFAULT_PORT_BASE + job % 10000),
        )
    else:
        d = DistEnv(0, 1, 0, 1, "single", env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT") or _free_port()))
    if set_env and environ is None:
        os.environ.update(
            RANK=str(d.rank), WORLD_SIZE=str(d.world_size), LOCAL_RANK=str(d.local_rank),
            LOCAL_WORLD_SIZE=str(d.local_world_size), MASTER_ADDR=d.master_addr, MASTER_PORT=str(d.master_port),
        )
    return d


def init(env: DistEnv) -> None:
    """Start the process group: NCCL when CUDA is present, else gloo (through the engine wrapper,
    :func:`zerolm.pretrain.engine.init_distributed`, the one place that imports DeepSpeed).

    One thread per process when ranks share a node's cores (measured here: two ranks with two
    threads each on 2 cores ran 0.247 s/step against 0.155 s with one thread each).
    """
    import torch

    if not torch.cuda.is_available():
        cores = os.cpu_count() or 1
        if env.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, cores // env.local_world_size))
    stop_with_launcher(env)
    from zerolm.pretrain.engine import init_distributed

    init_distributed(env.local_rank)


def stop_with_launcher(env: DistEnv) -> bool:
    """Have the kernel send this rank SIGTERM when its launcher process dies, so that a ``kill -9`` of
    ``torchrun`` (or of the deepspeed launcher's ``launch.py``, or a dying ``slurmstepd``) does not leave
    orphaned ranks training and holding the run directory's lock: the trainer's SIGTERM handler
    checkpoints at the next step boundary and exits (before the loop the default action ends the rank;
    nothing trained is lost then). torchrun starts each worker in its own session, so nothing else
    reaches them.

    Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (prctl(2)): the signal comes when the *thread* that
    forked this process exits; torchrun and ``launch.py`` start workers from their main thread, which
    lives as long as they do. Measured here under torchrun 2.13: both ranks got SIGTERM within 1 ms of
    ``kill -9`` of the agent, and twice (the kernel first hands an orphan to another live thread of the
    dying parent, and signals again when that one exits; the handler only sets a flag); they saved and
    exited about 2.5 s later. Forked children (loader workers) do not inherit the setting.
    When the launcher already died before the call (``os.getppid()`` differs from the parent seen at
    import), the rank sends itself the signal. The ``deepspeed`` command runs ``launch.py`` as a child:
    killing only the outer command leaves ``launch.py`` and its ranks running, as before.

    Args:
        env: this process's place in the job; one process (``launcher == "single"``) has no launcher
            to follow and is left alone.

    Returns:
        True when the death signal is armed; False for one process, off Linux (debug log) or when the
        call fails (warning).
    """
    if env.launcher == "single":
        return False
    if not sys.platform.startswith("linux"):
        log.debug("not Linux: ranks are not stopped when their launcher dies")
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:
        log.warning("cannot ask for SIGTERM when the launcher dies (%s): a killed launcher leaves this rank running", e)
        return False
    if os.getppid() != _PARENT_AT_START:  # the launcher died before the request: nobody will signal us
        log.warning("launcher (pid %d) is gone: stopping", _PARENT_AT_START)
        os.kill(os.getpid(), signal.SIGTERM)
    return True


class StopRequests:
    """The signals that ask a running job to checkpoint at the next step boundary and stop.

    - SIGTERM and SIGUSR1: a scheduler's notice (Slurm's ``--signal``, preemption, ``scancel``) or the
      kernel's when the launcher died (:func:`stop_with_launcher`): :attr:`preempt`, run status
      ``preempted``; the sbatch script requeues the job.
    - SIGINT (Ctrl-C; torchrun forwards it to its ranks, which run in sessions of their own):
      :attr:`interrupt`, run status ``interrupted``. A second SIGINT raises ``KeyboardInterrupt`` at once:
      nothing more is saved, and the newest complete checkpoint stays the one to resume from.

    Without these handlers Ctrl-C raised ``KeyboardInterrupt`` in each rank wherever it was: the ranks
    left their collectives at different points, torchrun waited its shutdown timeout and killed them, and
    every step since the last checkpoint was lost.

    The flags are this process's; a training loop all-reduces them with its step's one collective so
    that every rank stops at the same step (:meth:`flags`, :meth:`status`). Install with :meth:`install`
    (main thread only, as :func:`signal.signal` requires) and put the previous handlers back with
    :meth:`restore` (in a ``finally``, so that an error leaves no handler of a finished loop behind).

    Args:
        logger: where "received SIGTERM: …" is written (the loop's own logger).
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.preempt = self.interrupt = False
        self._log = logger or log
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopRequests":
        for name in ("SIGTERM", "SIGUSR1", "SIGINT"):
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.interrupt:
                self._log.warning("second SIGINT: stopping now without a checkpoint (the newest saved one is kept)")
                raise KeyboardInterrupt
            self.interrupt = True
            self._log.warning("received SIGINT: will checkpoint at the next step boundary and exit "
                              "(press Ctrl-C again to stop at once without a checkpoint)")
        else:
            self.preempt = True
            self._log.warning("received %s: will checkpoint at the next step boundary and exit", signal.Signals(signum).name)

    def flags(self) -> list[float]:
        """``[preempt, interrupt]`` as 0.0/1.0, for the step's all-reduce (sum: > 0 when any rank got one)."""
        return [float(self.preempt), float(self.interrupt)]

    @staticmethod
    def status(preempt_any: float, interrupt_any: float) -> str | None:
        """The run status for the all-reduced :meth:`flags`: ``preempted`` (a scheduler's notice wins, so
        that the job is requeued), ``interrupted``, or None (no stop requested)."""
        if preempt_any > 0:
            return "preempted"
        return "interrupted" if interrupt_any > 0 else None


def scheduled_test_signal(rank: int) -> tuple[int, int] | None:
    """Test hook (the signal tests' only way to know the step a signal arrives in):
    ``ZEROLM_TEST_SIGNAL_AT_STEP=STEP:SIGNAME[:RANK]`` makes the process (of rank RANK, or every
    rank) send itself SIGNAME as optimizer step STEP begins, as a scheduler's signal would arrive
    mid-step. Unset in normal use. Used by the pretraining loop and the PPO loop.

    Returns:
        ``(step, signal number)`` for this rank, or None.
    """
    spec = os.environ.get("ZEROLM_TEST_SIGNAL_AT_STEP")
    if not spec:
        return None
    step, name, *who = spec.split(":")
    if who and int(who[0]) != rank:
        return None
    return int(step), int(getattr(signal, name))


def exit_process(code: int) -> None:
    """End a process that ran a process group: flush, then ``os._exit``.

    After ``destroy_process_group`` a rank still aborted now and then at interpreter exit with
    ``terminate called without an active exception`` (SIGABRT from a C++ thread torn down during
    static destruction; seen here in ~1 of 12 runs without the shutdown, and still under load with
    it). All work and files are finished by then, so the process skips the interpreter's teardown —
    except the ``weakref.finalize`` callbacks a normal exit runs (``atexit=True``): temporary
    directories clean up through them, and wandb makes two at import (``wandb-media``,
    ``wandb-artifacts``) that every process would otherwise leave in the temp folder.
    """
    import logging
    import sys
    import weakref

    try:  # the same call Python's own atexit hook makes for weakref finalizers
        weakref.finalize._exitfunc()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a finalizer's error must not change the exit status
        pass
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not change the exit status
            pass
    os._exit(code)


def shutdown() -> None:
    """Barrier and destroy the process group (without it a 2-process run was seen to abort with
    ``terminate called without an active exception`` about once in twelve exits)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def compute_device():
    """The device this process computes on: its GPU when CUDA is present (the one :func:`init` made
    current: ``cuda:LOCAL_RANK``), else the CPU. For loops that place their own models (the RL loop);
    the DeepSpeed engine places the trainer's."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collective_device():
    """The device a tensor must be on for this process group's collectives: this process's GPU
    under NCCL (which has no CPU tensors: an all-reduce of a CPU tensor fails there), else the CPU
    (gloo)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_tensor(t, op: str = "sum"):
    """``t`` reduced over every rank (``op``: ``"sum"``, ``"min"`` or ``"max"``), returned on ``t``'s
    own device; ``t`` itself when no process group (or one process) runs. Moved to
    :func:`collective_device` for the collective when it lives elsewhere (a CPU tensor under NCCL).
    One collective call; no host synchronisation when ``t`` is already on the collective's device."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    dev = collective_device()
    work = t if t.device == dev else t.to(dev)
    dist.all_reduce(work, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return work if work is t else work.to(t.device)


def all_reduce_values(values: list[float], op: str = "sum") -> list[float]:
    """A few Python numbers reduced over every rank (``op``: ``"sum"``, ``"min"`` or ``"max"``), as
    float64; returned as they are when no process group (or one process) runs. One collective call
    (on the GPU under NCCL, see :func:`all_reduce_tensor`)."""
    import torch

    return all_reduce_tensor(torch.tensor(values, dtype=torch.float64), op).tolist()


#: The collectives :func:`collective_rates` times, with nccl-tests' bus-bandwidth factor for ``n`` ranks: the
#: share of the message each rank must send in a ring algorithm (NVIDIA nccl-tests, doc/PERFORMANCE.md).
COLLECTIVE_BUS_FACTOR = {"all_reduce": lambda n: 2.0 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
                         "reduce_scatter": lambda n: (n - 1) / n}


def collective_rates(nbytes: int = 16 << 20, small_bytes: int = 4096, rounds: int = 3) -> dict[str, Any] | None:
    """Time this process group's all-reduce, all-gather and reduce-scatter, for the plan's communication
    term (:func:`zerolm.launch.ds_costs.comm_seconds`). All ranks must call it together; ~0.3 s with gloo on
    2 CPU ranks, milliseconds with NCCL.

    Each collective runs on fp32 tensors on :func:`collective_device` at ``small_bytes`` and at ``nbytes``
    (the full message: the all-reduced tensor, the all-gather's output, the reduce-scatter's input), the best of
    ``rounds`` after a warm-up, each timing the slowest rank's (a collective ends when its last rank does).
    It is modelled as ``t(S) = latency + S · factor(n) / bus_bandwidth`` (the α–β model; ``factor`` is
    :data:`COLLECTIVE_BUS_FACTOR`, so the bus bandwidth carries over to another number of ranks on the same
    links, as nccl-tests reports it): ``latency`` = t(``small_bytes``), ``bus_bandwidth`` from t(``nbytes``).

    Returns:
        None without a process group or with one rank; else ``{"backend", "world_size", "bytes",
        "all_reduce" | "all_gather" | "reduce_scatter": {"latency_s", "bus_bytes_per_s", "seconds"}}``
        (``seconds``: the measured t(``nbytes``)).
    """
    import time

    import torch
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    n, dev = dist.get_world_size(), collective_device()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        fn()
        sync()
        best = float("inf")
        for _ in range(rounds):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def ops(size: int) -> dict[str, Any]:
        elems = max(n, size // 4 // n * n)  # divisible by the ranks
        whole, part = torch.ones(elems, device=dev), torch.empty(elems // n, device=dev)
        return {"all_reduce": lambda: dist.all_reduce(whole),
                "all_gather": lambda: dist.all_gather_into_tensor(whole, part),
                "reduce_scatter": lambda: dist.reduce_scatter_tensor(part, whole)}

    small, large = ops(small_bytes), ops(nbytes)
    names = list(COLLECTIVE_BUS_FACTOR)
    local = [timed(small[k]) for k in names] + [timed(large[k]) for k in names]
    slowest = all_reduce_values(local, op="max")
    out: dict[str, Any] = {"backend": dist.get_backend(), "world_size": n, "bytes": int(nbytes)}
    for i, k in enumerate(names):
        lat, big = slowest[i], slowest[len(names) + i]
        out[k] = {"latency_s": lat, "seconds": big,
                  "bus_bytes_per_s": nbytes * COLLECTIVE_BUS_FACTOR[k](n) / max(big - lat, 1e-9)}
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's (picklable, small) ``obj`` collected on rank 0 as a list in rank order; other
    ranks get None. Without a process group (or with one process): ``[obj]``. One collective call."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    rank = dist.get_rank()
    out: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's (picklable, small) ``obj`` on every rank; what the other ranks pass is ignored (rank 0
    decides, e.g. from files only it reads). Without a process group (or with one process): ``obj``.
    One collective call."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's (picklable, small) ``obj`` on every rank, as a list in rank order. Without a
    process group (or with one process): ``[obj]``. One collective call."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def lock_run_dir(run_dir: Path, env: DistEnv):
    """Hold an exclusive lock on ``RUN_DIR/.zerolm.lock`` (rank 0) for the life of the process, so two
    jobs started on one run directory fail at once instead of interleaving checkpoints. Released when
    the process exits, however it exits. File systems without ``flock`` support only get a warning.

    Raises:
        TrainingError: another live process holds the lock (its pid is in the message).
    """
    import fcntl

    held = None
    ok = 1.0
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        held = open(run_dir / ".zerolm.lock", "a+")
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.seek(0)
            held.truncate()
            held.write(f"{os.getpid()} {socket.gethostname()}\n")
            held.flush()
        except BlockingIOError:
            ok = 0.0
        except OSError as e:  # e.g. ENOLCK on a file system without flock
            log.warning("cannot lock %s (%s): nothing stops a second run from using the same run directory", run_dir, e)
    if all_reduce_values([ok], "min")[0] < 1:
        owner = (run_dir / ".zerolm.lock").read_text().strip() if env.is_main else "another process"
        raise TrainingError(f"run directory {run_dir} is in use by another zerolm run (pid/host: {owner}); "
                            "wait for it to finish or choose another train.run_dir")
    return held
