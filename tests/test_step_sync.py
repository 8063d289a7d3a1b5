"""The training loop synchronises once per optimizer step, not per micro-batch: the losses and the
non-finite flags stay on the device until the last micro-batch, then one all-reduce carries the step's
loss sum, non-finite count and token count (issue 18). Counted on 2 real ranks with gradient
accumulation 4 by wrapping ``torch.distributed.all_reduce`` (``tests/count_collectives.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_one_all_reduce_per_optimizer_step_whatever_the_accumulation(prepared_corpus, trained_tokenizer, tmp_path):
    runs = [{"run_dir": str(tmp_path / f"z{stage}_{steps}"), "family": "gpt2", "zero_stage": stage, "steps": steps}
            for stage in (0, 2) for steps in (3, 6)]
    spec = {"runs": runs, "corpus_dir": str(prepared_corpus), "tokenizer_dir": str(trained_tokenizer), "seq_len": 32}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "counts.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled"}
    r = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(REPO / "tests/count_collectives.py"),
                        str(tmp_path / "spec.json"), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    counts = json.loads(out.read_text())
    for stage in (0, 2):
        short, long = counts[str(tmp_path / f"z{stage}_3")], counts[str(tmp_path / f"z{stage}_6")]
        # the runs differ only by 3 optimizer steps of 4 micro-batches each (logging, evaluation and the
        # checkpoint happen once, at the last step, in both): per-micro-batch reductions would add 15
        assert long - short == 3, (stage, short, long)
