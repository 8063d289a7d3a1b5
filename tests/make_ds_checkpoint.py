"""Test helper (run as one process per rank): train several tiny runs with zerolm's own trainer in one
process group, so ``tests/test_export.py`` exports the checkpoints the trainer really writes.

Usage: ``python tests/make_ds_checkpoint.py SPEC_JSON``, where the JSON file holds
``{"runs": [{"run_dir", "family", "zero_stage", "tie_word_embeddings", "steps"}], "corpus_dir",
"tokenizer_dir", "seq_len"}``. The caller sets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
LOCAL_RANK. Each run is a :class:`zerolm.pretrain.trainer.Trainer` (micro-batch 2, evaluation on 2
validation batches per rank and a checkpoint at the last step); the process group and DeepSpeed are
started once for all runs, which is what keeps this faster than one ``torchrun`` per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EVAL_BATCHES = 2
MICRO_BATCH = 2


def overrides(spec: dict, run: dict) -> list[str]:
    """The config overrides of one run (also used by the tests to rebuild its validation batches)."""
    from zerolm.pretrain.models import objective_of

    corpus, steps = spec["corpus_dir"], int(run.get("steps", 2))
    return [
        f"tokenizer.corpus_dir={corpus}",
        f"tokenizer.out_dir={spec['tokenizer_dir']}",
        f"data.tokenizer_dir={spec['tokenizer_dir']}",
        f"data.sources=[{{name: bundled, paths: ['{corpus}/train/*.jsonl']}}]",
        f"data.validation_sources=[{{name: bundled, paths: ['{corpus}/validation/*.jsonl']}}]",
        f"data.objective={objective_of(run['family'])}",
        f"data.seq_len={spec['seq_len']}",
        f"data.micro_batch_size={MICRO_BATCH}",
        "data.num_workers=0",
        f"model.family={run['family']}",
        "model.preset=tiny",
        f"model.tie_word_embeddings={str(run.get('tie_word_embeddings', True)).lower()}",
        f"train.run_dir={run['run_dir']}",
        f"train.zero_stage={run['zero_stage']}",
        f"train.max_steps={steps}",
        f"train.save_every={steps}",
        f"train.eval_every={steps}",
        f"train.eval_batches={EVAL_BATCHES}",
        "train.lr=1e-2",
        "train.warmup_steps=0",
        "train.peak_flops=1e12",  # skip the matmul-peak measurement
        # fp32: the export must reproduce the logged loss to 1e-5 (a bf16 run logs its bf16 working weights'
        # loss; the export holds the fp32 master weights) and the tests read fp32 ZeRO file names
        "train.precision=fp32",
        "tracking.wandb_mode=disabled",
        "tracking.emissions.enabled=false",  # not what these runs test (tests/test_emissions.py does)
    ]


def main(spec_path: str) -> None:
    from zerolm.config import load_config
    from zerolm.pretrain import distributed
    from zerolm.pretrain.trainer import Trainer

    spec = json.loads(Path(spec_path).read_text())
    env = distributed.detect()
    distributed.init(env)
    for run in spec["runs"]:
        trainer = Trainer(load_config(None, overrides(spec, run)), env)
        try:
            trainer.run()
        finally:
            trainer.release()
        del trainer
    distributed.shutdown()


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1])
    from zerolm.pretrain.distributed import exit_process

    exit_process(0)  # skip the interpreter teardown that can SIGABRT after destroy_process_group
