"""Test helper (run as a subprocess): train tiny models for a step or two with DeepSpeed and save real
checkpoints in the run-dir layout the trainer writes, for ``tests/test_export.py``.

Usage: ``python tests/make_ds_checkpoint.py SPEC_JSON``, where the JSON file holds
``{"runs": [{"run_dir", "family", "zero_stage", "tie_word_embeddings", "steps"}], "corpus_dir",
"tokenizer_dir", "seq_len"}``. For each run it writes::

    run_dir/config.yaml
    run_dir/checkpoints/latest                       (the tag)
    run_dir/checkpoints/<tag>/...                    (engine.save_checkpoint(..., save_latest=False))
    run_dir/checkpoints/<tag>/zerolm_complete.json   (written last)
    run_dir/expected.json + run_dir/eval_batch.pt    (the engine's eval loss on a fixed batch)

One process per rank for all runs (deepspeed is imported once); torch AdamW as the client optimizer
so nothing JIT-compiles. The environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK,
DS_ACCELERATOR=cpu) is set by the caller; every rank trains on its own data shard, rank 0 writes the
run files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(spec_path: str) -> None:
    import deepspeed
    import torch.distributed as dist

    from data_pipeline.loader import PackedDataLoader
    from data_pipeline.tokenizer import load_pipeline_tokenizer
    from pretrain.models import build_model, objective_of, resolve_model_config, special_ids_of
    from zerolm.config import load_config, save_config

    # deepspeed 0.19.8's TorchBackend JIT-builds its shared-memory allreduce op in every
    # init_distributed on Linux (~40-80 s with an empty TORCH_EXTENSIONS_DIR); these tiny runs need
    # none: without it DeepSpeed uses plain gloo collectives, as on platforms without the op.
    # (sys.modules: `import deepspeed.comm.torch as m` gives the torch package, which deepspeed.comm
    # re-exports under that name.)
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    spec = json.loads(Path(spec_path).read_text())
    deepspeed.init_distributed("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = load_pipeline_tokenizer(spec["tokenizer_dir"])
    corpus = spec["corpus_dir"]
    for run in spec["runs"]:
        run_dir = Path(run["run_dir"])
        objective = objective_of(run["family"])
        cfg = load_config(
            None,
            [
                f"tokenizer.corpus_dir={corpus}",
                f"tokenizer.out_dir={spec['tokenizer_dir']}",
                f"data.tokenizer_dir={spec['tokenizer_dir']}",
                f"data.sources=[{{name: bundled, paths: ['{corpus}/train/*.jsonl']}}]",
                f"data.validation_sources=[{{name: bundled, paths: ['{corpus}/validation/*.jsonl']}}]",
                f"data.objective={objective}",
                f"data.seq_len={spec['seq_len']}",
                "data.micro_batch_size=2",
                "data.num_workers=0",
                f"model.family={run['family']}",
                "model.preset=tiny",
                f"model.tie_word_embeddings={str(run.get('tie_word_embeddings', True)).lower()}",
                f"train.run_dir={run_dir}",
                f"train.zero_stage={run['zero_stage']}",
                "tracking.wandb_mode=disabled",
            ],
        )
        cfg.model = resolve_model_config(cfg.model)  # the trainer saves the resolved config
        torch.manual_seed(0)
        model = build_model(cfg.model, vocab_size=tok.vocab_size, seq_len=cfg.data.seq_len, special_ids=special_ids_of(tok))
        ds_config = {
            "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": run["zero_stage"]},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), config=ds_config
        )
        train = iter(PackedDataLoader(cfg.data, split="train", rank=rank, world_size=world, tokenizer=tok))
        steps = int(run.get("steps", 2))
        for _ in range(steps):
            b = next(train)
            loss = engine(input_ids=b["input_ids"], labels=b["labels"], attention_mask=b["attention_mask"]).loss
            engine.backward(loss)
            engine.step()
        # the same batch on every rank (a ZeRO-3 forward needs all ranks: they gather the shards)
        eval_batch = next(iter(PackedDataLoader(cfg.data, split="validation", tokenizer=tok)))
        eval_batch = {k: eval_batch[k] for k in ("input_ids", "labels", "attention_mask")}
        engine.eval()
        with torch.no_grad():
            eval_loss = engine(**eval_batch).loss.item()
        engine.train()

        ckpt = run_dir / "checkpoints"
        tag = f"step_{steps:08d}"
        if rank == 0:
            save_config(cfg, run_dir / "config.yaml")
        engine.save_checkpoint(str(ckpt), tag=tag, save_latest=False)
        dist.barrier()
        del engine, model
        if rank != 0:
            continue
        tag_dir = ckpt / tag
        files = {str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*")) if p.is_file()}
        metrics = {"eval/loss": eval_loss, "eval/perplexity": float(torch.tensor(eval_loss).exp())}
        if objective == "mlm":
            metrics["eval/accuracy"] = 0.0
        complete = {
            "tag": tag,
            "step": steps,
            "tokens_seen": steps * 2 * world * cfg.data.seq_len,
            "metrics": metrics,
            "files": files,
        }
        (tag_dir / "zerolm_complete.json").write_text(json.dumps(complete, indent=2))
        (ckpt / "latest").write_text(tag)
        torch.save(eval_batch, run_dir / "eval_batch.pt")
        (run_dir / "expected.json").write_text(json.dumps({"eval_loss": eval_loss, "tag": tag, "world_size": world}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    from pretrain.distributed import exit_process

    exit_process(0)  # skip the interpreter teardown that can SIGABRT after destroy_process_group
