"""The lm-evaluation-harness reference run for a zerolm task: the same documents, prompts and
few-shot examples written as an lm-eval task (``dataset_path: json`` on exported jsonl files) and scored
with ``lm_eval.simple_evaluate(model="hf")``, for agreement tests and ``bench/evals.py``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from zerolm.evals.tasks import Task, load_task

log = logging.getLogger(__name__)


def lm_eval_task_yaml(task: Task, docs_path: Path, pool_path: Path | None, task_name: str,
                      prompt_field: str | None = None) -> dict[str, Any]:
    """The lm-eval task mapping equivalent to ``task`` over exported document files.

    With ``prompt_field`` the documents carry our full prompt in that field and lm-eval is asked
    for 0 shots with ``doc_to_text: <prompt_field>``: it then scores exactly our prompts
    (used for k > 0, since lm-eval draws its examples with one generator per process).
    """
    cfg = task.config
    files = {"test": str(docs_path)}
    if pool_path is not None:
        files["train"] = str(pool_path)
    m: dict[str, Any] = {
        "task": task_name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
        "test_split": "test", "output_type": cfg.output_type,
        "doc_to_text": prompt_field or cfg.doc_to_text, "doc_to_target": cfg.doc_to_target,
        "target_delimiter": cfg.target_delimiter, "fewshot_delimiter": cfg.fewshot_delimiter,
    }
    if pool_path is not None:
        m["fewshot_split"] = "train"
    if cfg.description and not prompt_field:
        m["description"] = cfg.description
    if cfg.doc_to_choice is not None:
        m["doc_to_choice"] = cfg.doc_to_choice
    if cfg.output_type == "generate_until":
        gen = dict(cfg.generation_kwargs)
        gen.setdefault("until", [cfg.fewshot_delimiter])
        gen["do_sample"] = False
        m["generation_kwargs"] = gen
    metrics = []
    for spec in cfg.metric_list:
        if spec.name == "token_f1":
            continue  # not an lm-eval metric
        entry: dict[str, Any] = {"metric": spec.name, "aggregation": "mean", "higher_is_better": True}
        opts = dict(spec.options)
        if opts.pop("strip", False):
            opts["regexes_to_ignore"] = [r"^\s+", r"\s+$"] + list(opts.get("regexes_to_ignore") or [])
        entry.update(opts)
        metrics.append(entry)
    m["metric_list"] = metrics
    return m


def make_lm_eval_model(model: str, batch_size: int = 16):
    """lm-eval's ``HFLM`` for ``model`` (fp32, CPU unless CUDA), as ``simple_evaluate(model="hf")``
    builds it.

    Workaround: lm-eval 0.4.13 bounds generation with ``max_length`` (prompt + ``max_gen_toks``),
    but transformers 5 lets a ``max_new_tokens`` in the model's ``generation_config.json`` (our
    exports write 64) take precedence, so lm-eval would generate past ``max_gen_toks``. We clear
    ``generation_config.max_new_tokens`` on the loaded model.
    """
    from lm_eval.models.huggingface import HFLM

    from zerolm.hf_models import resolve_model_path

    hflm = HFLM(pretrained=resolve_model_path(model), dtype="float32", batch_size=batch_size,
                device="cuda" if torch.cuda.is_available() else "cpu")
    hflm.model.generation_config.max_new_tokens = None
    return hflm


def lm_eval_reference(model: str, task_name: str, k: int, limit: int | None, work_dir: str | Path,
                      batch_size: int = 16, seed: int = 1234, lm_eval_model=None) -> dict[str, Any]:
    """Score a task with lm-evaluation-harness (``lm_eval.simple_evaluate``, ``model="hf"``) on the
    same documents and prompts as :func:`run_fewshot`.

    Our loaded documents are written as JSON lines under ``work_dir`` and an lm-eval task YAML
    pointing at them (``dataset_path: json``) is generated from our task definition. At k = 0 lm-eval
    renders the prompts from the same templates; at k > 0 the documents carry our prompts (see
    :func:`lm_eval_task_yaml`). Offline: ``TaskManager(include_path=…, include_defaults=False)``.

    Args:
        model: folder or built-in name (resolved with :func:`zerolm.hf_models.resolve_model_path`).
        lm_eval_model: an already built ``lm_eval.models.huggingface.HFLM`` to reuse (else
            :func:`make_lm_eval_model` builds one).

    Returns:
        ``{"metrics": {name: value}, "stderr": {...}, "items": [{"doc_id", "context", "lls" |
        "generation"}], "seconds": wall time of simple_evaluate (task set-up, data loading from the
        exported files, scoring, metrics), "n"}``.
    """
    import lm_eval
    import yaml
    from lm_eval.tasks import TaskManager

    task = load_task(task_name)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    n = len(task.test_docs) if limit is None else min(limit, len(task.test_docs))
    lname = f"zerolm_ref_{task.name}_{k}"
    prompt_field = None
    docs = [dict(d) for d in task.test_docs[:n]]
    if k > 0:
        prompt_field = "zerolm_prompt"
        for i, d in enumerate(docs):
            d[prompt_field] = task.build_context(i, k, seed)
    docs_path = work / f"{lname}_test.jsonl"
    docs_path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    pool_path = None
    if task.fewshot_mode != "same_split" and k == 0:
        pool_path = work / f"{lname}_fewshot.jsonl"
        pool_path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in task.fewshot_docs),
                             encoding="utf-8")
    spec = lm_eval_task_yaml(task, docs_path, pool_path, lname, prompt_field)
    (work / f"{lname}.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    lm_obj = lm_eval_model if lm_eval_model is not None else make_lm_eval_model(model, batch_size)
    manager = TaskManager(include_path=str(work), include_defaults=False)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=lm_obj, tasks=[lname], num_fewshot=0, limit=n, batch_size=batch_size,
        task_manager=manager, log_samples=True,
        bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    seconds = time.perf_counter() - t0
    raw = res["results"][lname]
    metrics = {key.split(",")[0]: v for key, v in raw.items()
               if key.endswith(",none") and "_stderr" not in key}
    stderr = {key.split("_stderr")[0]: v for key, v in raw.items() if "_stderr," in key}
    items = []
    for s in sorted(res["samples"][lname], key=lambda s: s["doc_id"]):
        if task.config.output_type == "multiple_choice":
            items.append({"doc_id": s["doc_id"], "lls": [float(r[0]) for r in s["filtered_resps"]],
                          "context": s["arguments"][0][0]})
        else:
            resp = s["filtered_resps"]
            items.append({"doc_id": s["doc_id"], "generation": resp[0] if isinstance(resp, list) else resp,
                          "context": s["arguments"][0][0]})
    return {"metrics": metrics, "stderr": stderr, "items": items, "seconds": seconds, "n": n}
