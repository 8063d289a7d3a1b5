"""PPO is a long job like pretraining: checkpoints, signals, exact resume, refusal of an incompatible resume.

Tiny random GPT policy (our tokenizer) and a tiny untrained BERT classifier as the reward (a fixed
function of the text is all a resume test needs), real Rotten Tomatoes prompts, the CLI as a user
runs it (one process, then two under torchrun/gloo). The reference for "exact" is an uninterrupted
run of the same 4 steps: an interrupted run (a signal during step 2 through the trainer's test hook
``ZEROLM_TEST_SIGNAL_AT_STEP``) resumed to step 4 must end with the same weight digest per rank and
the same metrics at every step (timings aside), and its checkpoints must follow the checkpoint
module's rules (a completion record, retention, damaged ones skipped, incompatible ones refused).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_finetune_sentiment import BIN, REPO, _env
from zerolm.pretrain import checkpoint as ckpt

TIMING = ("ppo/tokens_per_second", "ppo/step_time_s", "ppo/rollout_time_s")
ARGS = ["sentiment.steps=4", "sentiment.batch_size=4", "sentiment.mini_batch_size=2", "sentiment.ppo_epochs=2",
        "sentiment.response_min_tokens=2", "sentiment.response_max_tokens=4", "sentiment.prompt_max_tokens=4",
        "sentiment.trainable_layers=null", "sentiment.max_minutes=null", "sentiment.lr=5e-3", "sentiment.save_every=1",
        "sentiment.keep_last=2", "tracking.wandb_mode=disabled"]


@pytest.fixture(scope="module")
def untrained_reward(tiny_bert, tmp_path_factory):
    """A tiny BERT sequence classifier with a random head and the labels fresh/rotten, as a folder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2, id2label={0: "fresh", 1: "rotten"},
                                                          label2id={"fresh": 0, "rotten": 1})
    out = tmp_path_factory.mktemp("reward")
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(out))
    return out


def ppo(run, policy, reward, *extra, nproc=1, signal_at=None, ok=True):
    """`python -m zerolm.finetune sentiment --method ppo` (torchrun with ``nproc`` > 1); ``signal_at``:
    ``STEP:SIGNAME[:RANK]`` for the trainer's test hook. Returns ``(result.json or None, process)``."""
    launcher = [sys.executable, "-m", "zerolm.finetune"] if nproc == 1 else \
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "zerolm.finetune"]
    env = _env()
    env.pop("ZEROLM_TEST_SIGNAL_AT_STEP", None)
    if signal_at:
        env["ZEROLM_TEST_SIGNAL_AT_STEP"] = signal_at
    r = subprocess.run([*launcher, "sentiment", "--method", "ppo", "--policy", str(policy), "--reward", str(reward),
                        "--run-dir", str(run), "--quiet", *ARGS, *extra], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    if ok and r.returncode != 0:
        raise AssertionError(f"ppo failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    path = run / "result.json"
    return (json.loads(path.read_text()) if path.is_file() else None), r


def rows(run):
    """metrics.jsonl without the timings (the only values two identical runs may differ in)."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_training(a, b):
    for w in ("first", "final"):
        assert {k: v for k, v in a[w].items() if k not in TIMING} == {k: v for k, v in b[w].items() if k not in TIMING}, w
    assert a["rank_weight_sha256"] == b["rank_weight_sha256"]


@pytest.fixture(scope="module")
def one_process(tiny_gpt, untrained_reward, tmp_path_factory):
    """One process: 4 uninterrupted steps; and 4 steps with SIGTERM during step 2, then resumed."""
    base = tmp_path_factory.mktemp("ppo1")
    full, run = base / "full", base / "run"
    ref, _ = ppo(full, tiny_gpt, untrained_reward)
    first, stopped = ppo(run, tiny_gpt, untrained_reward, "--report", signal_at="2:SIGTERM")
    tags_at_stop = ckpt.list_tags(run / "checkpoints")
    rows_at_stop = rows(run)
    second, _ = ppo(run, tiny_gpt, untrained_reward)
    return {"ref": ref, "full": full, "first": first, "tags_at_stop": tags_at_stop, "rows_at_stop": rows_at_stop,
            "second": second, "run": run, "stopped_log": stopped.stdout + stopped.stderr,
            "report_at_stop": (run / "sentiment_report.json").exists()}


def test_sigterm_checkpoints_the_step_and_resume_is_exact(one_process):
    p = one_process
    root = p["run"] / "checkpoints"
    # stopped during step 2: step 2 finished, checkpointed (complete), status preempted
    assert p["first"]["status"] == "preempted" and p["first"]["steps"] == 2
    assert p["tags_at_stop"] == ["step_00000001", "step_00000002"]
    assert [r["step"] for r in p["rows_at_stop"]] == [1, 2]
    # --report is put off after a preemption (the grace period is for the checkpoint)
    assert "report" not in p["first"] and not p["report_at_stop"]
    assert "preempted at step 2: no report now" in p["stopped_log"]
    # resumed from it, finished, and equals the uninterrupted run bitwise (weights and every step's metrics)
    assert p["second"]["status"] == "completed" and p["second"]["steps"] == 4
    assert p["second"]["resumed_from"] == "step_00000002" and p["ref"]["resumed_from"] is None
    same_training(p["second"], p["ref"])
    assert rows(p["run"]) == rows(p["full"])
    assert p["rows_at_stop"] == rows(p["full"])[:2]
    # retention (keep_last=2) over the whole line, the interrupted part's checkpoints included
    assert ckpt.list_tags(root) == ["step_00000003", "step_00000004"] and ckpt.latest_tag(root) == "step_00000004"
    assert all(ckpt.check(root, t) is None for t in ckpt.list_tags(root))
    rec = ckpt.read_record(root, "step_00000004")
    assert rec["step"] == 4 and rec["run"]["settings"]["sentiment.batch_size"] == 4
    assert {"zerolm_shared_state.pt", "zerolm_client_rank0.pt", "config.yaml"} <= set(rec["files"])


def test_completed_run_only_exports_again(one_process, tiny_gpt, untrained_reward):
    run = one_process["run"]
    before = rows(run)
    again, _ = ppo(run, tiny_gpt, untrained_reward)
    assert again["status"] == "completed" and again["steps"] == 4 and again["resumed_from"] == "step_00000004"
    same_training(again, one_process["ref"])
    assert rows(run) == before  # no step was trained
    assert ckpt.list_tags(run / "checkpoints") == ["step_00000003", "step_00000004"]


def test_incompatible_resume_stops_before_any_work(one_process, tiny_gpt, untrained_reward):
    run = one_process["run"]
    root = run / "checkpoints"
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".zerolm.lock"}
    _, r = ppo(run, tiny_gpt, untrained_reward, "sentiment.batch_size=2", ok=False)
    assert r.returncode == 2, r.stderr[-3000:]
    out = " ".join((r.stdout + r.stderr).split())  # the console wraps long lines
    assert "sentiment.batch_size 4 → 2" in out and "set sentiment.batch_size=4" in out, out[-3000:]
    assert "step 1/" not in out  # no PPO step ran
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".zerolm.lock"} == files
    assert ckpt.latest_tag(root) == "step_00000004"


def test_damaged_newest_checkpoint_falls_back_to_the_previous(one_process, tiny_gpt, untrained_reward, tmp_path):
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(one_process["run"], run)
    (run / "result.json").unlink()
    shared = run / "checkpoints" / "step_00000004" / ckpt.SHARED_STATE
    shared.write_bytes(shared.read_bytes()[:1000])  # truncated: the record's size no longer matches
    res, r = ppo(run, tiny_gpt, untrained_reward)
    assert "step_00000004 is not usable" in " ".join(r.stderr.split())
    assert res["resumed_from"] == "step_00000003" and res["status"] == "completed" and res["steps"] == 4
    same_training(res, one_process["ref"])  # step 4 trained again from step 3 gives the same weights
    assert rows(run) == rows(one_process["full"])
    root = run / "checkpoints"
    assert ckpt.check(root, "step_00000004") is None  # rewritten; the damaged one kept aside, not deleted
    assert (root / "step_00000004.unloadable" / ckpt.COMPLETE).is_file()


def test_two_processes_resume_exactly(tiny_gpt, untrained_reward, tmp_path):
    """torchrun × 2 (gloo): SIGUSR1 reaches rank 1 only, during step 2; both ranks stop after it (the
    step's all-reduce carries the flag), and the resumed run equals the uninterrupted one on both ranks."""
    ref, _ = ppo(tmp_path / "full", tiny_gpt, untrained_reward, nproc=2)
    run = tmp_path / "run"
    first, _ = ppo(run, tiny_gpt, untrained_reward, nproc=2, signal_at="2:SIGUSR1:1")
    assert first["status"] == "preempted" and first["steps"] == 2
    root = run / "checkpoints"
    assert ckpt.latest_tag(root) == "step_00000002" and ckpt.check(root, "step_00000002") is None
    assert {"zerolm_client_rank0.pt", "zerolm_client_rank1.pt"} <= set(ckpt.read_record(root, "step_00000002")["files"])
    second, _ = ppo(run, tiny_gpt, untrained_reward, nproc=2)
    assert second["status"] == "completed" and second["resumed_from"] == "step_00000002"
    assert len(ref["rank_weight_sha256"]) == 2 and len(set(ref["rank_weight_sha256"])) == 1
    same_training(second, ref)
    assert rows(run) == rows(tmp_path / "full")
    # the checkpoint module refuses it on one process (what train_ppo asks it before any work), naming the world size
    saved = ckpt.read_record(root, "step_00000004")["run"]
    plan = ckpt.plan_resume(root, {**saved, "world_size": 1})
    assert not plan.candidates and "data-parallel world size 2 → 1" in plan.error(root)
    assert ckpt.plan_resume(root, saved).candidates == ["step_00000004", "step_00000003"]


def test_prompt_stream_and_settings_units():
    """Units: the prompt stream continues exactly from its state and refuses another pool; a job
    setting compared by the checkpoint module names the key, None included (trainable_layers=null)."""
    from zerolm.errors import TrainingError
    from zerolm.finetune.ppo import PromptStream

    pool = [[i, i + 1] for i in range(10)]
    a = PromptStream(pool, 4, 1, 5, seed=3, rank=1, world=2)
    for _ in range(4):
        a.next()
    state = a.state_dict()
    b = PromptStream(pool, 4, 1, 5, seed=99, rank=1, world=2)
    b.load_state_dict(state)
    assert [a.next() for _ in range(5)] == [b.next() for _ in range(5)]
    other = PromptStream([[i, i + 2] for i in range(10)], 4, 1, 5, seed=3, rank=1, world=2)
    with pytest.raises(TrainingError, match="prompt pool"):
        other.load_state_dict(state)

    def sig(layers):
        return ckpt.run_signature(world_size=1, micro_batch_size=None, gradient_accumulation_steps=None,
                                  global_batch_size=None, zero_stage=None, objective=None, precision="fp32",
                                  model_config=None, shapes=None, data_layout=None,
                                  settings={"sentiment.trainable_layers": layers})

    assert ckpt.incompatibilities(sig(None), sig(None)) == []
    assert ckpt.incompatibilities(sig(None), sig(8)) == [("sentiment.trainable_layers null → 8",
                                                          "set sentiment.trainable_layers=null")]


def test_slurm_entry_runs_sentiment(tmp_path):
    """`zerolm launch slurm --entry finetune-sentiment` starts `python -m zerolm.finetune sentiment` under
    the script whose USR1 trap and requeue serve pretraining."""
    from zerolm.launch.slurm import SlurmJob, local_command, render_sbatch

    config = REPO / "configs" / "finetune" / "sentiment_ppo.yaml"
    script = render_sbatch(SlurmJob(config=str(config), entry="finetune-sentiment", nodes=1, gpus_per_node=2, cpu=True,
                                    time="30", signal_lead=120, workdir=str(tmp_path))).script
    assert f"-m zerolm.finetune sentiment --config {config}" in script
    assert "trap on_usr1 USR1" in script and "scontrol requeue" in script
    cmd, _ = local_command(str(config), [], 2, entry="finetune-sentiment")
    assert cmd[cmd.index("-m") + 1:cmd.index("-m") + 3] == ["zerolm.finetune", "sentiment"]


def test_bf16_precision_autocasts_the_policy_passes_not_the_reward_or_the_weights(tiny_gpt, untrained_reward):
    """``sentiment.precision=bf16``: the rollout's sampling and log-prob passes and the updates' forward
    passes compute in bf16 (seen at the LM head), the reward model scores in fp32 (equal to scoring the
    same texts outside any autocast), and the weights and Adam state stay fp32 — while fp32 runs no bf16."""
    from types import SimpleNamespace

    import torch

    from zerolm.finetune import sentiment as S
    from zerolm.finetune.rl_algo import PolicyWithValueHead, ppo_update, rloo_step_advantages, rollout

    lm, tok = S.load_policy(str(tiny_gpt))
    ref, _ = S.load_policy(str(tiny_gpt))
    reward = S.RewardModel(str(untrained_reward), "positive", reward_type="logit_margin")
    model = PolicyWithValueHead(lm).eval()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    heads = []
    lm.lm_head.register_forward_hook(lambda m, i, o: heads.append(o.dtype))
    queries = [tok(t, add_special_tokens=False)["input_ids"] for t in ("The film is", "The film is", "A story of", "A story of")]
    for precision, want in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        sc = SimpleNamespace(temperature=1.0, top_k=0, top_p=1.0, response_min_tokens=2, reward_text="continuation",
                             precision=precision, ppo_epochs=1, method="rloo", vf_coef=0.0, cliprange=0.2,
                             cliprange_value=0.2, grad_clip=1.0)
        heads.clear()
        ro = rollout(model, ref, reward, tok, S.stop_ids(lm, tok), queries, [4] * 4, sc, torch.Generator().manual_seed(0))
        assert heads and set(heads) == {want}, (precision, heads)  # sampling steps + policy and reference passes
        texts = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(ro.batch["response"], ro.mask)]
        assert torch.equal(ro.scores, reward.score(texts)) and ro.scores.dtype == torch.float32
        assert ro.logp.dtype == ro.ref_logp.dtype == ro.values.dtype == torch.float32
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        heads.clear()
        _, _, adv, returns = rloo_step_advantages(ro, 0.1, 2)
        ppo_update(model, model, opt, ro, adv, returns, sc, 2, torch.Generator().manual_seed(1))
        assert heads and set(heads) == {want}, (precision, heads)
        changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
        assert changed and all(p.dtype == torch.float32 for p in model.parameters())
        assert all(t.dtype == torch.float32 for s in opt.state.values() for t in s.values() if t.is_floating_point()
                   and t.dim() > 0)
