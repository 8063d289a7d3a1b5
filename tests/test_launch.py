"""Cluster launch: the sbatch renderer, pretrain.distributed's srun branch, and real jobs on a one-node
Slurm cluster started on localhost from Debian's packages (launch/local_slurm.sh).

The real-Slurm tests need root (the daemons and jobs run as root) and, when Slurm is not installed
yet, apt-get; elsewhere they skip and say why — except under CI (``CI=true``), where a missing
prerequisite fails them. They submit the rendered script with `zerolm launch
slurm` and poll `scontrol show job` (accounting is off: no sacct; `sbatch --wait` polls slowly).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from zerolm.launch.slurm import SlurmJob, parse_time_limit, render_sbatch
from zerolm.pretrain.distributed import detect, first_host
from zerolm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "launch" / "local_slurm.sh"
TINY = REPO / "configs" / "pretrain" / "tiny_gpt.yaml"
GPT = REPO / "configs" / "pretrain" / "quickstart_gpt.yaml"
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "squeue")


# -- pretrain.distributed.detect: the srun branch (fake environments) --------------------------------
def test_detect_reads_plain_srun_variables():
    env = {"SLURM_PROCID": "13", "SLURM_NTASKS": "32", "SLURM_LOCALID": "5", "SLURM_STEP_TASKS_PER_NODE": "8(x4)",
           "SLURM_JOB_NODELIST": "gpu[012-015]", "SLURM_JOB_ID": "4242"}
    d = detect(env, set_env=False)
    assert (d.launcher, d.rank, d.world_size, d.local_rank, d.local_world_size) == ("slurm", 13, 32, 5, 8)
    assert (d.master_addr, d.master_port) == ("gpu012", 20000 + 4242 % 10000)
    assert not d.is_main and detect({**env, "SLURM_PROCID": "0"}, set_env=False).is_main
    # SLURM_NTASKS_PER_NODE when the step variable is absent; job ids wrap at 10000
    d = detect({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost",
                "SLURM_JOB_ID": "123456"}, set_env=False)
    assert (d.rank, d.world_size, d.local_world_size, d.master_addr, d.master_port) == (1, 2, 2, "localhost", 23456)
    # an explicit rendezvous (the sbatch script exports it) wins over the derived one
    d = detect({**env, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29400"}, set_env=False)
    assert (d.master_addr, d.master_port) == ("10.0.0.7", 29400)


def test_detect_prefers_torchrun_and_deepspeed_variables_inside_srun():
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "n[1-4]", "SLURM_JOB_ID": "7"}
    tr = detect({**slurm, "RANK": "9", "WORLD_SIZE": "32", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
                 "TORCHELASTIC_RUN_ID": "7", "MASTER_ADDR": "n1", "MASTER_PORT": "20007"}, set_env=False)
    assert (tr.launcher, tr.rank, tr.world_size, tr.local_rank, tr.local_world_size) == ("torchrun", 9, 32, 1, 8)
    ds = detect({**slurm, "RANK": "17", "WORLD_SIZE": "32", "LOCAL_RANK": "1", "LOCAL_SIZE": "8", "MASTER_ADDR": "n1",
                 "MASTER_PORT": "20007"}, set_env=False)
    assert (ds.launcher, ds.rank, ds.local_world_size) == ("deepspeed", 17, 8)
    one = detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, set_env=False)
    assert (one.launcher, one.world_size) == ("single", 1), "a 1-task srun step is a single process"


def test_first_host_of_slurm_nodelists():
    assert first_host("gpu[012-015,020],cpu7") == "gpu012"
    assert first_host("node3,node1") == "node3"
    assert first_host("localhost") == "localhost"
    assert first_host("a-b[9]") == "a-b9"


# -- rendering ---------------------------------------------------------------------------------------
def test_parse_time_limit_accepts_sbatch_formats():
    assert parse_time_limit("30") == 1800
    assert parse_time_limit("10:30") == 630
    assert parse_time_limit("12:00:00") == 43200
    assert parse_time_limit("2-00") == 172800
    assert parse_time_limit("1-02:03") == 93780
    assert parse_time_limit("1-02:03:04") == 93784
    with pytest.raises(ConfigError, match="not a Slurm time limit"):
        parse_time_limit("1h")


def test_render_validates_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="signal-lead"):
        render_sbatch(SlurmJob(config=str(GPT), time="5", signal_lead=300, workdir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"train\.max_stepz"):
        render_sbatch(SlurmJob(config=str(GPT), overrides=["train.max_stepz=3"], workdir=str(tmp_path)))
    with pytest.raises(ConfigError, match="not divisible"):  # 100 sequences over 4 x 8 ranks
        render_sbatch(SlurmJob(config=str(GPT), overrides=["train.global_batch_size=100"], nodes=4, workdir=str(tmp_path)))
    with pytest.raises(ConfigError, match="launcher"):
        render_sbatch(SlurmJob(config=str(GPT), launcher="mpirun", workdir=str(tmp_path)))  # type: ignore[arg-type]


def _sbatch_options(script: str) -> dict[str, str]:
    opts = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            k, _, v = line[len("#SBATCH "):].partition("=")
            opts[k] = v
    return opts


def _fake_cluster(tmp: Path, n_nodes: int = 4) -> tuple[Path, Path]:
    """A PATH folder with fake `srun`/`scontrol`/`scancel` for an allocation of `n_nodes` nodes, and a fake Python
    environment whose torchrun/deepspeed/`python -m zerolm.pretrain` record their arguments and environment."""
    fake = tmp / "fakebin"
    venv = tmp / "venv" / "bin"
    rec = tmp / "records"
    for d in (fake, venv, rec):
        d.mkdir(parents=True)
    recorder = f"""#!{sys.executable}
import json, os, sys, uuid
keep = ("SLURM", "MASTER_", "DS_", "OMP_", "PYTHONPATH")
json.dump({{"exe": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
           "env": {{k: v for k, v in os.environ.items() if k.startswith(keep)}}}},
          open(os.path.join({str(rec)!r}, uuid.uuid4().hex + ".json"), "w"))
"""
    for name in ("torchrun", "deepspeed"):
        (venv / name).write_text(recorder)
    (venv / "record.py").write_text(recorder)
    # the fake python records `-m zerolm.pretrain`, anything else (the script's result.json check) is real Python
    (venv / "python").write_text(f'#!/bin/bash\nif [[ "$1 $2" == "-m zerolm.pretrain" ]]; then shift 2; exec {venv}/record.py "$@"; fi\n'
                                 f'exec {sys.executable} "$@"\n')
    numbers = " ".join(str(i) for i in range(1, n_nodes + 1))
    (fake / "scontrol").write_text(f'#!/bin/bash\nif [[ $1 == show && $2 == hostnames ]]; then printf "gpu%03d\\n" {numbers}; '
                                   f'else echo "$@" >> {rec}/scontrol.log; fi\n')
    (fake / "scancel").write_text(f'#!/bin/bash\necho "$@" >> {rec}/scancel.log\n')
    # srun: --ntasks-per-node=K tasks on each node, with the variables Slurm sets per task
    (fake / "srun").write_text(f"""#!{sys.executable}
import os, subprocess, sys
args = sys.argv[1:]
per_node = 1
while args and args[0].startswith("--"):
    if args[0].startswith("--ntasks-per-node="):
        per_node = int(args[0].split("=")[1])
    args.pop(0)
nodes = {[f"gpu{i:03d}" for i in range(1, n_nodes + 1)]!r}
rc = 0
for nid, node in enumerate(nodes):
    for lid in range(per_node):
        env = dict(os.environ, SLURM_NODEID=str(nid), SLURMD_NODENAME=node, SLURM_LOCALID=str(lid),
                   SLURM_PROCID=str(nid * per_node + lid), SLURM_NTASKS=str(len(nodes) * per_node),
                   SLURM_STEP_TASKS_PER_NODE=f"{{per_node}}(x{{len(nodes)}})", SLURM_STEP_NUM_NODES=str(len(nodes)))
        rc |= subprocess.call(args, env=env)
sys.exit(rc)
""")
    for d in (fake, venv):
        for f in d.iterdir():
            f.chmod(f.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return fake, venv / "python"


def _run_rendered(tmp: Path, launcher: str, n_nodes: int = 4) -> tuple[str, list[dict]]:
    """Render the 4 nodes x 8 GPUs script and run it against a fake allocation of `n_nodes` nodes (4: as
    submitted; another count: as a requeued job whose node count was changed)."""
    fake, python = _fake_cluster(tmp, n_nodes)
    rendered = render_sbatch(SlurmJob(config=str(GPT), overrides=["train.zero_stage=3"], nodes=4, gpus_per_node=8,
                                      time="12:00:00", partition="gpu", launcher=launcher, workdir=str(tmp),
                                      python=str(python), log_dir=str(tmp / "logs")))
    script = tmp / "job.sbatch"
    script.write_text(rendered.script)
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{fake}:{env['PATH']}", SLURM_JOB_ID="12345", SLURM_JOB_NODELIST=f"gpu[001-{n_nodes:03d}]",
               SLURM_JOB_NUM_NODES=str(n_nodes))
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    records = [json.loads(p.read_text()) for p in sorted((tmp / "records").glob("*.json"))]
    return rendered.script, records


@pytest.mark.parametrize("launcher", ["torchrun", "srun", "deepspeed"])
def test_a_requeued_job_runs_on_the_nodes_it_gets(tmp_path, launcher):
    """A job submitted for 4 nodes and requeued onto 2 (`scontrol update JobId=… NumNodes=2` while it
    waits, or `sbatch --nodes=2` of the same script) starts 16 ranks on the 2 nodes it has: nothing in the
    script fixes the node count, so the trainer sees the new world size and resumes elastically."""
    script, records = _run_rendered(tmp_path, launcher, n_nodes=2)
    if launcher == "torchrun":
        assert len(records) == 2 and all("--nnodes=2" in r["argv"] for r in records), [r["argv"] for r in records]
    elif launcher == "srun":
        envs = [detect(r["env"], set_env=False) for r in records]
        assert sorted(e.rank for e in envs) == list(range(16)) and {e.world_size for e in envs} == {16}
    else:
        assert (tmp_path / "runs/quickstart/gpt/slurm/hostfile-12345").read_text() == "gpu001 slots=8\ngpu002 slots=8\n"
        assert len(records) == 2


def _train_args_ok(argv: list[str], run_dir: Path) -> None:
    i = argv.index("--config")
    assert argv[i + 1] == str(GPT)
    assert "train.zero_stage=3" in argv and f"train.run_dir={run_dir}" in argv


@pytest.mark.parametrize("launcher", ["torchrun", "srun", "deepspeed"])
def test_rendered_4x8_gpu_script_rendezvous_hostfile_and_ranks(tmp_path, launcher):
    """The 4 nodes x 8 GPUs script, run by bash against a fake 4-node allocation (gpu[001-004],
    job 12345): every launcher reaches 32 ranks with the rendezvous on gpu001:22345."""
    script, records = _run_rendered(tmp_path, launcher)
    opts = _sbatch_options(script)
    assert opts["--nodes"] == "4" and opts["--gpus-per-node"] == "8" and opts["--time"] == "12:00:00"
    assert opts["--partition"] == "gpu" and opts["--signal"] == "B:USR1@300" and "--requeue" in opts
    assert opts["--ntasks-per-node"] == ("8" if launcher == "srun" else "1")
    assert opts["--output"] == f"{tmp_path}/logs/%x-%j.out" and opts["--open-mode"] == "append"
    assert "DS_ACCELERATOR" not in script, "the GPU variant leaves the accelerator to DeepSpeed"
    assert "ZeRO-3" in script and "global batch 256" in script  # quickstart micro batch 8 x 32 ranks
    run_dir = tmp_path / "runs" / "quickstart" / "gpt"
    master = ("gpu001", "22345")  # first node; 20000 + 12345 % 10000
    for r in records:
        assert (r["env"]["MASTER_ADDR"], r["env"]["MASTER_PORT"]) == master
        _train_args_ok(r["argv"], run_dir)
    if launcher == "torchrun":
        assert [r["exe"] for r in records] == ["torchrun"] * 4, "one torchrun agent per node"
        for r in records:
            a = r["argv"]
            assert {"--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu001:22345",
                    "--rdzv-id=12345", "--max-restarts=0"} <= set(a)
            assert a[a.index("-m") + 1] == "zerolm.pretrain"
        assert sorted(r["env"]["SLURM_NODEID"] for r in records) == ["0", "1", "2", "3"]
    elif launcher == "srun":
        assert len(records) == 32, "one task per GPU"
        envs = [detect(r["env"], set_env=False) for r in records]  # what each rank's trainer computes
        assert sorted(e.rank for e in envs) == list(range(32))
        assert {(e.world_size, e.local_world_size, e.launcher) for e in envs} == {(32, 8, "slurm")}
        for e, r in zip(envs, records):
            assert e.local_rank == int(r["env"]["SLURM_PROCID"]) % 8 and e.rank // 8 == int(r["env"]["SLURM_NODEID"])
            assert (e.master_addr, e.master_port) == ("gpu001", 22345)
    else:
        hostfile = run_dir / "slurm" / "hostfile-12345"
        assert hostfile.read_text() == "".join(f"gpu{i:03d} slots=8\n" for i in (1, 2, 3, 4))
        assert [r["exe"] for r in records] == ["deepspeed"] * 4, "one deepspeed launcher per node"
        from deepspeed.launcher.runner import fetch_hostfile

        pool = fetch_hostfile(str(hostfile))
        assert list(pool.items()) == [(f"gpu{i:03d}", 8) for i in (1, 2, 3, 4)]
        ranks = []
        for r in records:
            a = r["argv"]
            node_rank = int(a[0].removeprefix("--node_rank="))
            assert node_rank == int(r["env"]["SLURM_NODEID"]) and list(pool)[node_rank] == r["env"]["SLURMD_NODENAME"]
            assert {f"--hostfile={hostfile}", "--no_ssh", "--master_addr=gpu001", "--master_port=22345"} <= set(a)
            assert a[a.index("--module") + 1] == "zerolm.pretrain"
            ranks += [node_rank * 8 + i for i in range(8)]  # deepspeed.launcher.launch's global rank mapping
        assert sorted(ranks) == list(range(32))
    assert not (tmp_path / "records" / "scontrol.log").exists(), "no requeue without a preemption signal"


@pytest.mark.parametrize("launcher", ["torchrun", "srun", "deepspeed"])
def test_finetune_entry_runs_the_finetune_module(tmp_path, launcher):
    classify = REPO / "configs" / "finetune" / "classify.yaml"
    script = render_sbatch(SlurmJob(config=str(classify), entry="finetune-classify", launcher=launcher, nodes=2,
                                    workdir=str(tmp_path))).script
    flag = "--module" if launcher == "deepspeed" else "-m"
    assert f"{flag} zerolm.finetune classify --config {classify}" in script
    assert f"{flag} pretrain" not in script
    assert "requeue" in script  # the same preemption path: the classifier trains in the shared trainer
    with pytest.raises(ConfigError, match="--entry"):
        render_sbatch(SlurmJob(config=str(classify), entry="finetune-dance", workdir=str(tmp_path)))


def test_cpu_variant_and_cli_dry_run():
    r = subprocess.run([sys.executable, "-m", "zerolm", "launch", "slurm", "--dry-run", "--cpu", "--nodes", "2",
                        "--gpus-per-node", "2", "--launcher", "srun", "--time", "10", "--signal-lead", "60",
                        str(TINY), "train.max_steps=5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    opts = _sbatch_options(r.stdout)
    assert "--gpus-per-node" not in opts and opts["--cpus-per-task"] == "1" and opts["--ntasks-per-node"] == "2"
    assert "export DS_ACCELERATOR=cpu" in r.stdout and "export OMP_NUM_THREADS=1" in r.stdout
    assert opts["--signal"] == "B:USR1@60" and "train.max_steps=5" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "zerolm", "launch", "slurm", "--dry-run", "--time", "5", str(TINY)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "signal-lead" in bad.stdout and "Traceback" not in bad.stderr


def test_ds_config_is_generated_from_the_zerolm_config(tmp_path):
    from zerolm.launch.slurm import ds_config_for
    from zerolm.pretrain.ds_config import build_ds_config
    from zerolm.config import load_config

    r = subprocess.run([sys.executable, "-m", "zerolm", "launch", "ds-config", "--world-size", "32", "--cpu", str(GPT),
                        "train.zero_stage=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cfg = load_config(GPT, ["train.zero_stage=3"])
    # the quickstart GPT is the small preset, d_model 256: the width the ZeRO-3 bucket keys follow
    # train.precision=auto (the quickstart's default) is shown as fp32 for CPUs and bf16 for GPUs
    fp32 = cfg.train.model_copy(update={"precision": "fp32"})
    assert json.loads(r.stdout) == build_ds_config(fp32, 8, 1, 32, hidden_size=256) == ds_config_for(cfg, 32, gpu=False)
    gpu = ds_config_for(cfg, 32, gpu=True)
    assert gpu["zero_optimization"]["overlap_comm"] is True and gpu["train_batch_size"] == 256
    assert gpu["bf16"]["enabled"] is True and json.loads(r.stdout)["bf16"]["enabled"] is False
    r = subprocess.run([sys.executable, "-m", "zerolm", "launch", "ds-config", "--world-size", "16", "--variants",
                        str(tmp_path / "ds"), str(GPT)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    v = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "ds").glob("*.json")}
    assert {k: c["zero_optimization"]["stage"] for k, c in v.items()} == {
        "zero1": 1, "zero2": 2, "zero3": 3, "zero2_offload": 2, "zero3_offload": 3}
    assert v["zero2_offload"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert v["zero3_offload"]["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "offload_optimizer" not in v["zero3"]["zero_optimization"]


def test_train_comm_keys_reach_deepspeed_as_its_parser_reads_them():
    """``train.comm`` → ``zero_optimization``: DeepSpeed's own config model (not our mapping) reads each
    value back under its field; "auto" overlap follows CUDA; a bad size fails at load, naming the key."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from zerolm.config import load_config
    from zerolm.launch.slurm import ds_config_for

    over = ["train.zero_stage=3", "train.comm.overlap_comm=off", "train.comm.contiguous_gradients=false",
            "train.comm.reduce_bucket_size=2e7", "train.comm.allgather_bucket_size=30000000",
            "train.comm.prefetch_bucket_size=123456", "train.comm.param_persistence_threshold=0"]
    zero = ds_config_for(load_config(GPT, over), 8, gpu=True)["zero_optimization"]
    parsed = DeepSpeedZeroConfig(**zero)
    assert (parsed.stage, parsed.overlap_comm, parsed.contiguous_gradients) == (3, False, False)
    assert (parsed.reduce_bucket_size, parsed.allgather_bucket_size) == (20_000_000, 30_000_000)
    assert (parsed.prefetch_bucket_size, parsed.param_persistence_threshold) == (123456, 0)
    default = DeepSpeedZeroConfig(**ds_config_for(load_config(GPT, ["train.zero_stage=2"]), 8, gpu=False)["zero_optimization"])
    # unset at ZeRO-2: the model's parameter count (5.2M for the quickstart GPT), not DeepSpeed's 5e8
    from zerolm.launch.plan import trainable_params

    assert default.reduce_bucket_size == trainable_params(load_config(GPT)) < DeepSpeedZeroConfig(stage=2).reduce_bucket_size
    # ZeRO-3 unset: from the quickstart GPT's width, d_model 256 (d² with a 2**22 floor, at most N = 5.2M; 0.9·d²,
    # 10·d); a train.comm value still wins
    z3 = DeepSpeedZeroConfig(**ds_config_for(load_config(GPT, ["train.zero_stage=3"]), 8, gpu=False)["zero_optimization"])
    assert trainable_params(load_config(GPT)) > 2**22
    assert (z3.reduce_bucket_size, z3.prefetch_bucket_size, z3.param_persistence_threshold) == (2**22, 58982, 2560)
    assert parsed.reduce_bucket_size == 20_000_000 and parsed.param_persistence_threshold == 0
    for gpu in (True, False):
        auto = ds_config_for(load_config(GPT, ["train.zero_stage=2"]), 8, gpu=gpu)["zero_optimization"]
        assert auto["overlap_comm"] is gpu
        on = ds_config_for(load_config(GPT, ["train.zero_stage=2", "train.comm.overlap_comm=on"]), 8, gpu=gpu)
        assert on["zero_optimization"]["overlap_comm"] is True
    with pytest.raises(ConfigError, match="reduce_bucket_size"):
        load_config(GPT, ["train.comm.reduce_bucket_size=0"])


def test_launch_local_dry_run_prints_torchrun():
    r = subprocess.run([sys.executable, "-m", "zerolm", "launch", "local", "--nproc", "2", "--dry-run", str(TINY),
                        "train.max_steps=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "torchrun --standalone --nproc-per-node=2" in r.stdout and "SIGUSR1" in r.stdout
    assert "-m zerolm.pretrain --config" in r.stdout and "train.max_steps=3" in r.stdout
    r = subprocess.run([sys.executable, "-m", "zerolm", "launch", "local", "--entry", "finetune-classify", "--dry-run",
                        str(REPO / "configs" / "finetune" / "classify.yaml")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "-m zerolm.finetune classify --config" in r.stdout


# -- a real Slurm on localhost ---------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_API_KEY": "",
            "HF_TOKEN": ""}


def test_launch_local_forwards_sigterm_to_the_ranks(data_args, tmp_path):
    """`zerolm launch local --nproc 2` runs torchrun; SIGTERM to the launcher (what a scheduler or
    `kill` sends) reaches both ranks, which checkpoint at the next step boundary and stop (status
    preempted), and everything exits cleanly (status 0, no traceback, no rank left behind)."""
    run_dir = tmp_path / "local"
    common = [*data_args, f"train.run_dir={run_dir}", "train.save_every=100000", "train.eval_every=100000",
              "train.log_every=1", "tracking.wandb_mode=disabled"]
    launch = [sys.executable, "-m", "zerolm", "launch", "local", "--nproc", "2", str(TINY)]
    log = tmp_path / "launch.log"
    metrics = run_dir / "metrics.jsonl"
    with open(log, "w") as out:
        p = subprocess.Popen([*launch, *common, "train.max_steps=100000"], cwd=REPO, env=_env(), stdout=out,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and p.poll() is None and (
                not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
            time.sleep(0.05)
        assert p.poll() is None, f"the launcher ended before training started:\n{log.read_text()[-4000:]}"
        assert metrics.exists(), f"training did not start within 180 s:\n{log.read_text()[-4000:]}"
        ranks = [c for c in psutil.Process(p.pid).children(recursive=True)
                 if "zerolm.pretrain" in " ".join(c.cmdline()) and "torchrun" not in " ".join(c.cmdline())]
        assert len(ranks) == 2, "the launcher's torchrun runs the 2 ranks"
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=180) == 0, log.read_text()[-4000:]
    finally:
        if p.poll() is None:  # a failed test must not leave the launcher or its ranks running
            procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            for proc in procs:
                proc.kill()
            psutil.wait_procs(procs, timeout=30)
    text = log.read_text()
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "preempted", text[-4000:]
    stopped = res["step"]
    assert 3 <= stopped < 100000
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    assert (run_dir / "checkpoints" / f"step_{stopped:08d}" / "zerolm_complete.json").is_file()
    assert f"stopping at step {stopped} (preempted)" in text
    assert "Traceback" not in text and "SignalException" not in text, text[-4000:]
    def alive(proc: psutil.Process) -> bool:
        try:
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    assert not any(alive(r) for r in ranks), "ranks outlived the launcher"
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "train/loss" in line]
    assert logged == list(range(1, stopped + 1)), "every step up to the signal's checkpoint trained once and logged"
    # (running the same command again resumes from that checkpoint: the trainer's auto-resume, the same under
    # any launcher; test_usr1_checkpoints_requeues_and_resumes_to_the_same_final_step runs it through Slurm)


def _skip_reason() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "real-Slurm tests need root: the local cluster's daemons and jobs run as root"
    if not all(shutil.which(b) for b in SLURM_BINARIES) and not shutil.which("apt-get"):
        return "real-Slurm tests need Slurm installed or apt-get to install it (Debian/Ubuntu)"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster on localhost (launch/local_slurm.sh), stopped at the end even when a
    test fails. Yields the environment for clients and jobs (SLURM_CONF)."""
    reason = _skip_reason()
    if reason:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"CI={os.environ['CI']}: the real-Slurm tests must run in CI, but {reason}")
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    try:
        r = subprocess.run(["bash", str(LOCAL_SLURM), "start", str(d)], capture_output=True, text=True, timeout=600, env=env)
        if r.returncode != 0:
            pytest.fail(f"local Slurm did not start ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        env.update(SLURM_CONF=str(d / "slurm.conf"), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", WANDB_MODE="offline",
                   HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",                    WANDB_API_KEY="", HF_TOKEN="")
        yield env
    finally:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop", str(d)], capture_output=True, text=True, timeout=120, env=env)
        left = []
        for name in ("slurmctld", "slurmd"):
            pidfile = d / "run" / f"{name}.pid"
            if pidfile.is_file():
                pid = pidfile.read_text().strip()
                try:
                    left += [f"{name} {pid}"] if Path(f"/proc/{pid}/comm").read_text().strip() == name else []
                except OSError:
                    pass
        assert not left, f"daemons still running after stop: {left}"


@pytest.fixture(scope="module")
def data_args(prepared_corpus, trained_tokenizer):
    return [
        f"data.tokenizer_dir={trained_tokenizer}",
        f"data.sources=[{{name: corpus, paths: ['{prepared_corpus}/train/*.jsonl']}}]",
        f"data.validation_sources=[{{name: corpus, paths: ['{prepared_corpus}/validation/*.jsonl']}}]",
        "tracking.wandb_mode=offline",
    ]


def _submit(env, run_dir: Path, launcher: str, *overrides: str) -> tuple[str, Path]:
    r = subprocess.run([sys.executable, "-m", "zerolm", "launch", "slurm", "--cpu", "--nodes", "1", "--gpus-per-node", "2",
                        "--launcher", launcher, "--time", "10", "--signal-lead", "60", str(TINY),
                        f"train.run_dir={run_dir}", *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    job = re.search(r"submitted job (\d+)", r.stdout).group(1)
    log = Path(re.search(r"log: (\S+)", r.stdout).group(1))
    return job, log


def _job(env, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _wait(env, job: str, log: Path, until, timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _job(env, job)
        if until(info):
            return info
        if info.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
            break
        time.sleep(0.5)
    else:
        subprocess.run(["scancel", job], env=env, timeout=30)
    tail = log.read_text()[-6000:] if log.exists() else "(no log)"
    raise AssertionError(f"job {job}: {info.get('JobState')} ExitCode={info.get('ExitCode')} Restarts={info.get('Restarts')}\n{tail}")


@pytest.mark.parametrize("launcher", ["srun", "deepspeed"])
def test_two_rank_job_trains_and_checkpoints(slurm, data_args, tmp_path, launcher):
    """srun: a 2-task job, each task one rank (SLURM_PROCID/SLURM_NTASKS). deepspeed: one task running
    the deepspeed launcher on the hostfile generated from the allocation, which starts 2 ranks."""
    run_dir = tmp_path / launcher
    t0 = time.time()
    job, log = _submit(slurm, run_dir, launcher, *data_args, "train.max_steps=6", "train.save_every=3", "train.eval_every=6")
    info = _wait(slurm, job, log, lambda i: i.get("JobState") == "COMPLETED")
    print(f"\n2-rank {launcher} job {job}: submitted to COMPLETED in {time.time() - t0:.1f} s")
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "0"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and res["step"] == 6 and res["eval/perplexity"] > 1
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    marker = json.loads((run_dir / "checkpoints" / "step_00000006" / "zerolm_complete.json").read_text())
    assert marker["world_size"] == 2, "two Slurm tasks formed one data-parallel job"
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "step_00000006").glob("*optim_states.pt"))
    assert len(shards) == 2, f"one ZeRO-2 optimizer shard per rank: {shards}"
    text = log.read_text()
    assert "rendezvous localhost:" in text and "× 2 ranks" in text and "requeue" not in text
    assert info["NumTasks"] == ("2" if launcher == "srun" else "1")
    if launcher == "deepspeed":
        assert (run_dir / "slurm" / f"hostfile-{job}").read_text() == "localhost slots=2\n"
        assert "node_rank=0" in text and "dist_world_size=2" in text


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_final_step(slurm, data_args, tmp_path):
    """USR1 to the batch script mid-run (as `--signal=B:USR1@…` sends it before the time limit): the
    torchrun ranks checkpoint and exit 0, the script requeues the job, the requeued job resumes from
    that checkpoint and completes max_steps."""
    run_dir = tmp_path / "preempt"
    steps = 120
    job, log = _submit(slurm, run_dir, "torchrun", *data_args, f"train.max_steps={steps}", "train.save_every=1000",
                       "train.eval_every=1000", "train.log_every=1")
    metrics = run_dir / "metrics.jsonl"
    _wait(slurm, job, log, lambda i: metrics.exists() and len(metrics.read_text().splitlines()) >= 5, timeout=240)
    t_signal = time.time()
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True, timeout=30)
    info = _wait(slurm, job, log, lambda i: i.get("Restarts") == "1")
    t_requeued = time.time()
    deadline = time.time() + 240
    while "resumed from" not in log.read_text() and time.time() < deadline:
        time.sleep(0.5)
    t_resumed = time.time()
    info = _wait(slurm, job, log, lambda i: i.get("JobState") == "COMPLETED" and i.get("Restarts") == "1")
    print(f"\nUSR1 -> requeued (Restarts=1) {t_requeued - t_signal:.1f} s, -> training resumed "
          f"{t_resumed - t_signal:.1f} s, -> completed {time.time() - t_signal:.1f} s")
    assert info["ExitCode"] == "0:0"
    text = log.read_text()
    m = re.search(r"stopping at step (\d+) \(preempted\)", text)
    assert m, text[-4000:]
    stopped = int(m.group(1))
    assert 5 <= stopped < steps
    assert f"run status 'preempted', checkpoint step_{stopped:08d}: requeueing job {job}" in text
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped:08d}'} (step {stopped}" in text
    assert text.count(f"job {job} (restart 0)") == 1 and text.count(f"job {job} (restart 1)") == 1
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and res["step"] == steps and res["tokens_seen"] == steps * 8 * 64
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "train/loss" in line]
    assert sorted(logged) == list(range(1, steps + 1)), "every step trained exactly once across the requeue"
    assert (run_dir / "checkpoints" / f"step_{stopped:08d}" / "zerolm_complete.json").is_file()
