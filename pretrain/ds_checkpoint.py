"""DeepSpeed checkpoint folders as files: the universal conversion an elastic resume loads, and the fp32
consolidation export and finetuning read. Part of the engine wrapper (:mod:`zerolm.pretrain.engine` drives
the engine; this module reads and converts what it wrote), so DeepSpeed stays behind those two modules.

* :func:`convert_to_universal` / :func:`ensure_universal_checkpoint`: DeepSpeed's ``ds_to_universal`` in-process
  into ``<tag>/universal`` (staged, renamed into place), which :meth:`zerolm.pretrain.engine.Engine.load` loads
  at another data-parallel world size; :func:`saved_param_groups` reads the per-group hyper-parameters back.
* :func:`consolidated_state_dict`: one fp32 state dict from a ZeRO 0–3 checkpoint (``zero_to_fp32`` or the
  ZeRO-0 ``module``); :func:`load_weights` loads it strictly, keeping ties; :func:`load_checkpoint_weights`
  does both for a run's latest (or named) checkpoint.

The checkpoint *layout* (completion record, discovery, retention) is :mod:`zerolm.pretrain.checkpoint`'s.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from zerolm.errors import DataError, TrainingError
from zerolm.fsutil import staged_dir, write_text

log = logging.getLogger(__name__)

UNIVERSAL_DIR = "universal"


def saved_param_groups(universal: Path) -> list[dict[str, Any]] | None:
    """The optimizer param groups (hyper-parameters per group, in order) recorded in a universal
    checkpoint folder's ``zero/optimizer_state.pt`` (rank 0's optimizer file's groups, which the
    converter copies there for ZeRO 1–3 alike), or None when it cannot be read."""
    path = Path(universal) / "zero" / "optimizer_state.pt"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        groups = sd.get("param_groups") if isinstance(sd, dict) else None
    except Exception as e:  # noqa: BLE001 - unreadable file: the caller falls back to the configuration
        log.warning("cannot read the optimizer param groups of %s: %s", path, e)
        return None
    return [dict(g) for g in groups] if isinstance(groups, list) else None


def convert_to_universal(tag_dir: Path) -> Path:
    """Convert the DeepSpeed ZeRO 1–3 checkpoint folder ``tag_dir`` into a universal checkpoint at
    ``tag_dir/universal`` (one process, no process group: call it on one rank only).

    Uses DeepSpeed's ``ds_to_universal.main`` in-process with one extract and one merge worker (no
    child processes) and ``inject_missing_state`` (a ZeRO-1/2 checkpoint written before :meth:`Engine.save`
    recorded ``universal_checkpoint_info`` converts too). The output is built in a temporary
    sibling (``tag_dir/.universal.tmp-*``) renamed into place when complete; an existing
    ``universal`` is reused. The converter's ``latest_universal`` file (beside the output, i.e. in
    ``tag_dir``) is rewritten to name ``universal``. Its progress output goes to the debug log.

    Returns:
        ``tag_dir/universal``.

    Raises:
        TrainingError: the converter failed (e.g. a stage-0 checkpoint, missing shards, or an
            optimizer without Adam's ``exp_avg``/``exp_avg_sq``).
    """
    tag_dir = Path(tag_dir)
    out = tag_dir / UNIVERSAL_DIR
    if (out / "zero" / "optimizer_state.pt").is_file():
        log.info("reusing the universal copy %s", out)
        return out
    for stale in tag_dir.glob(f".{UNIVERSAL_DIR}.tmp-*"):  # debris of a killed conversion
        shutil.rmtree(stale, ignore_errors=True)
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    t0 = time.perf_counter()
    buf = io.StringIO()
    try:
        with staged_dir(out, what="universal checkpoint") as tmp:
            args = SimpleNamespace(input_folder=str(tag_dir), output_folder=str(tmp), num_extract_workers=1,
                                   num_merge_workers=1, keep_temp_folder=False, strict=True,
                                   inject_missing_state=True)
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):  # prints and tqdm bars
                ds_to_universal(args)
    except Exception as e:  # noqa: BLE001 - the converter asserts, raises KeyError, FileNotFoundError, ...
        raise TrainingError(f"cannot convert checkpoint {tag_dir} to a universal checkpoint (needed to resume "
                            f"at another data-parallel world size): {type(e).__name__}: {e}") from e
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                log.debug("ds_to_universal: %s", line.rstrip())
    write_text(tag_dir / "latest_universal", UNIVERSAL_DIR)  # the converter pointed it at the temp folder
    log.info("converted checkpoint %s to a universal checkpoint in %.2f s", tag_dir, time.perf_counter() - t0)
    return out


def ensure_universal_checkpoint(tag_dir: Path) -> Path:
    """:func:`convert_to_universal` on rank 0 between barriers, the outcome shared with every rank
    (collective: all ranks call it; one process without a process group converts itself).

    Returns:
        ``tag_dir/universal``.

    Raises:
        TrainingError: on every rank when the conversion failed on rank 0.
    """
    import torch.distributed as dist

    tag_dir = Path(tag_dir)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return convert_to_universal(tag_dir)
    dist.barrier()
    box: list[str | None] = [None]
    if dist.get_rank() == 0:
        try:
            convert_to_universal(tag_dir)
        except TrainingError as e:
            box[0] = str(e)
    dist.broadcast_object_list(box, src=0)
    dist.barrier()
    if box[0] is not None:
        raise TrainingError(box[0])
    return tag_dir / UNIVERSAL_DIR


# -- reading a checkpoint back as Hugging Face weights ---------------------------------------------
def no_live_hf_deepspeed_config() -> None:
    """Unset a ZeRO-3 ``HfDeepSpeedConfig`` left alive in this process (by a training that ran
    here): while it lives, ``transformers`` builds models partitioned and ``from_pretrained`` on one
    rank deadlocks. Call before building the model a checkpoint is loaded into."""
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config
    except ImportError:  # pragma: no cover
        return
    if is_deepspeed_zero3_enabled():
        log.warning("a ZeRO-3 HfDeepSpeedConfig is alive in this process; unsetting it to read the checkpoint")
        unset_hf_deepspeed_config()


def consolidated_state_dict(tag_dir: str | Path) -> tuple[dict[str, Any], str]:
    """The full fp32 state dict of a DeepSpeed checkpoint folder (one process, no process group).

    ZeRO 1–3 (any ``*_optim_states.pt``): DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``
    merges the fp32 master partitions of all ranks (shared parameters come back as one tensor under
    both names). ZeRO 0 (no optimizer shards): the ``module`` entry of ``mp_rank_00_model_states.pt``,
    cast to fp32 (a bf16/fp16 ZeRO-0 run keeps no fp32 master copy: a warning says so).

    Args:
        tag_dir: ``RUN_DIR/checkpoints/<tag>``.

    Returns:
        ``(state_dict, source)`` with ``source`` = ``"zero_to_fp32"`` or ``"module"``.

    Raises:
        DataError: the folder holds neither layout, or DeepSpeed cannot read it.
    """
    tag_dir = Path(tag_dir)
    if any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):  # zero_to_fp32 prints its progress
                sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            raise DataError(f"cannot consolidate DeepSpeed checkpoint {tag_dir}: {e}") from e
        finally:
            for line in out.getvalue().splitlines():
                log.debug("zero_to_fp32: %s", line)
        return sd, "zero_to_fp32"
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise DataError(
            f"{tag_dir} holds no DeepSpeed checkpoint (neither *_optim_states.pt nor mp_rank_00_model_states.pt)"
        )
    try:
        states = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of a damaged file
        raise DataError(f"cannot read {model_file}: {e}") from e
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict):
        raise DataError(f"{model_file} has no 'module' state dict")
    sd = {}
    for k, v in module.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float32:
            log.warning("%s: %s is %s (no fp32 master copy in a ZeRO-0 checkpoint); reading it as fp32", model_file, k, v.dtype)
            v = v.float()
        sd[k] = v
    return sd, "module"


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any]) -> None:
    """Load a consolidated state dict into a freshly built model, strictly, keeping tied weights tied.

    A key may be absent only when it names the same tensor as a present key (a tied alias such as
    ``lm_head.weight`` of ``transformer.wte.weight``); when both are present they must be equal.

    Raises:
        DataError: missing or unexpected keys, a shape mismatch (e.g. the tokenizer's vocabulary differs
            from the one the run trained with), or tied aliases with different values.
    """
    expected = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, t in expected.items():
        groups.setdefault(id(t), []).append(name)
    aliases = {name: groups[id(t)] for name, t in expected.items()}
    missing = [k for k in expected if k not in state_dict and not any(a in state_dict for a in aliases[k])]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise DataError(
            f"checkpoint does not match the model built from config.yaml: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )
    for k, v in state_dict.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise DataError(
                f"checkpoint tensor {k} has shape {tuple(v.shape)}, the model built from config.yaml expects "
                f"{tuple(expected[k].shape)} (another tokenizer/vocabulary or model shape than the run used?)"
            )
    for names in groups.values():
        present = [n for n in names if n in state_dict]
        for n in present[1:]:
            if not torch.equal(state_dict[n], state_dict[present[0]]):
                raise DataError(f"tied weights {present[0]} and {n} differ in the checkpoint")
    result = model.load_state_dict(state_dict, strict=False)
    left = [k for k in result.missing_keys if not any(a in state_dict for a in aliases[k])]
    if left or result.unexpected_keys:  # pragma: no cover - checked above
        raise DataError(f"load_state_dict: missing {left}, unexpected {result.unexpected_keys}")
    after = model.state_dict(keep_vars=True)  # load_state_dict copies in place: ties survive
    for names in groups.values():
        if any(after[n] is not after[names[0]] for n in names):  # pragma: no cover - defensive
            raise DataError(f"tied weights {names} came apart while loading")


def load_checkpoint_weights(model: torch.nn.Module, run_dir: str | Path, tag: str | None = None,
                            prefix: str = "") -> tuple[Path, dict[str, Any], str]:
    """Load a run's checkpoint (``tag``, default the ``latest`` one) into ``model`` as fp32 weights.

    Args:
        model: a freshly built model of the checkpoint's shape (build it after
            :func:`no_live_hf_deepspeed_config`).
        run_dir: the trainer's run directory.
        tag: a checkpoint tag, or None for ``checkpoints/latest``.
        prefix: only the keys starting with it are loaded, with it removed (``"model."`` when the
            trained module wrapped ``model`` as its attribute ``model``).

    Returns:
        ``(tag_dir, record, source)``: the checkpoint folder, its completion record, and where the
        weights came from (``zero_to_fp32`` or ``module``).

    Raises:
        DataError: no complete checkpoint (:func:`zerolm.pretrain.checkpoint.resolve`), or the weights
            do not fit the model (:func:`load_weights`).
    """
    from zerolm.pretrain.checkpoint import resolve

    tag_dir, record = resolve(run_dir, tag)
    sd, source = consolidated_state_dict(tag_dir)
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    load_weights(model, sd)
    return tag_dir, record, source
