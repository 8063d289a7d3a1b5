"""The checkpoint layout, in one place: writing, completeness, discovery, compatibility, retention.

Layout (``RUN_DIR/checkpoints``)::

    latest                              the newest complete tag (written last, atomically)
    step_00000040/                      DeepSpeed engine state (model, optimizer, LR schedule)
        zerolm_client_rank{r}.pt        per rank: RNG states (and, for a job without the engine,
                                        its per-rank streams: PPO's generators and prompt position)
        zerolm_shared_state.pt          a job that trains without the DeepSpeed engine (PPO,
                                        :mod:`zerolm.finetune.ppo`): what every rank shares (model,
                                        optimizer, controller state, metric history), rank 0 writes it
        zerolm_data.json                every rank's data-loader state (rank 0 writes it; merged, it
                                        resumes the data on any world size the global batch allows)
        universal/                      DeepSpeed's universal copy of the engine state, converted
                                        once when a run resumes on another world size
        config.yaml                     the resolved config of the run
        hf_config.json                  the model's ``transformers`` config (runs continued from an
                                        existing model, ``model.init_from``: export rebuilds the
                                        architecture from it, not from the shape keys)
        zerolm_complete.json            written after every rank saved: step, tokens, metrics,
                                        the run's shape (``run``: world size, batch arithmetic,
                                        ZeRO stage, objective, model tensor shapes, data layout,
                                        a job's own ``settings`` such as ``sentiment.batch_size``)
                                        and the size of every file (truncation check)
    step_00000040.unloadable/           a checkpoint zerolm could not load, moved aside (never
                                        deleted) when this run line reached the same step
    step_00000040.rolled_back/          a checkpoint a loss-spike recovery rolled back over (kept
                                        until the line has a good checkpoint of that step or later)
    zerolm_recoveries.json              the loss-spike recoveries of the run (:func:`add_recovery`):
                                        where each rolled back to and the data state it continues
                                        from, so that a resume from that checkpoint skips the same data

Resume rules (:func:`plan_resume`):

* A **damaged** checkpoint (no completion record, an unreadable one, a listed file missing or of
  another size) is skipped with a warning: the newest intact one before it is used.
* A different data-parallel world size or number of loader workers is not an incompatibility when
  the job's data loader is elastic (pretraining's logical shards): the global batch is kept
  (gradient accumulation is re-derived), the engine loads a universal checkpoint and the data
  continues exactly (``train.elastic_resume=false`` forbids it).
* An **intact but incompatible** checkpoint (another global batch, ZeRO stage, objective, model
  shape, data stream or job setting; another world size for a non-elastic loader) is never skipped: the run stops before any work,
  with an error that names what differs and what to do. This is decided from the completion record
  (and, for checkpoints written before it carried ``run``, the checkpoint's ``config.yaml``), never
  by catching DeepSpeed's exceptions.
* A run directory that holds checkpoints never starts again from step 0: when none of them can be
  loaded the run stops with an error naming each and why.

Retention (:func:`prune`, after each completed save): a checkpoint is deleted only when it belongs
to this run line (the checkpoint it resumed from, the ones before it, and the ones it wrote) and
``keep_last`` newer checkpoints of the line exist; damaged checkpoints are never deleted, and
checkpoints newer than the resumed one that this line did not write are never counted nor deleted
(:func:`set_aside` moves one out of the way when the line reaches its step). Debris of an
interrupted save (a folder without completion record) is deleted only once a good checkpoint of a
later or the same step has been completed. ``keep_before`` keeps one checkpoint old enough for a
loss-spike recovery to roll back to, however small ``keep_last`` is.

Loss-spike recoveries (:mod:`zerolm.pretrain.spikes`): a recovery is recorded (:func:`add_recovery`)
before anything is moved; then the checkpoints it rolls back over are set aside
(:func:`discard_rolled_back`). A run killed in between finishes that on restart
(:func:`apply_recoveries`), and a resume from the checkpoint a recovery rolled back to continues the
data from the recovery's data state (:func:`recovery_for`), past the skipped batches.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zerolm.errors import DataError
from zerolm.fsutil import write_json, write_text, write_with

log = logging.getLogger(__name__)

COMPLETE = "zerolm_complete.json"
DATA_STATE = "zerolm_data.json"
SHARED_STATE = "zerolm_shared_state.pt"
LATEST = "latest"
SET_ASIDE = ".unloadable"
ROLLED_BACK = ".rolled_back"
RECOVERIES = "zerolm_recoveries.json"
HF_CONFIG = "hf_config.json"
_TAG = re.compile(r"^step_(\d{8})$")
_ANY_TAG = re.compile(r"^step_(\d{8})(\.(unloadable|rolled_back)(\.\d+)?)?$")


def tag_for(step: int) -> str:
    """The checkpoint tag of an optimizer step: ``step_00000040``."""
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    """The optimizer step of a tag (``step_00000040`` → 40; also of a set-aside folder name)."""
    m = _ANY_TAG.match(tag)
    if not m:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(m.group(1))


# -- writing ------------------------------------------------------------------------------------
def client_state_file(root: Path, tag: str, rank: int) -> Path:
    """Where a rank's client state lives."""
    return root / tag / f"zerolm_client_rank{rank}.pt"


def save_client_state(root: Path, tag: str, rank: int, state: dict[str, Any]) -> None:
    """Write one rank's client state (temp file + rename)."""
    path = client_state_file(root, tag, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda p: torch.save(state, p))


def save_shared_state(root: Path, tag: str, state: dict[str, Any]) -> None:
    """On rank 0, for a job that trains without the DeepSpeed engine (PPO): the state every rank
    holds alike (model and optimizer ``state_dict``s, controller values, metric history), one file
    (temp file + rename). The completion record (:func:`mark_complete`) lists it like any file."""
    path = root / tag / SHARED_STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda p: torch.save(state, p))


def load_shared_state(root: Path, tag: str) -> dict[str, Any]:
    """Read what :func:`save_shared_state` wrote (on CPU)."""
    return torch.load(root / tag / SHARED_STATE, map_location="cpu", weights_only=False)


def save_hf_config(root: Path, tag: str, hf_config: dict[str, Any]) -> None:
    """On rank 0: the model's ``transformers`` config (``config.to_dict()``) beside the engine state."""
    write_json(root / tag / HF_CONFIG, hf_config, indent=2)


def read_hf_config(tag_dir: str | Path) -> dict[str, Any] | None:
    """The ``transformers`` config a checkpoint saved (:func:`save_hf_config`), or None if it has none.

    Raises:
        DataError: the file exists but is not a JSON object (names the file).
    """
    path = Path(tag_dir) / HF_CONFIG
    if not path.is_file():
        return None
    try:
        out = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable model config: {e}") from e
    if not isinstance(out, dict) or "model_type" not in out:
        raise DataError(f"{path}: not a transformers config (no model_type)")
    return out


def save_data_state(root: Path, tag: str, states: list[dict[str, Any]]) -> None:
    """On rank 0: every rank's data-loader ``state_dict()`` (rank order) as one JSON file."""
    write_json(root / tag / DATA_STATE, {"ranks": states})


def load_data_state(root: Path, tag: str) -> list[dict[str, Any]] | None:
    """The data-loader states :func:`save_data_state` wrote (rank order), or None for a checkpoint
    written before zerolm kept them there (its per-rank client states hold them)."""
    path = root / tag / DATA_STATE
    if not path.is_file():
        return None
    return json.loads(path.read_text())["ranks"]


def rng_state() -> dict[str, Any]:
    """This process's random-number generator states (torch, CUDA, numpy, Python) for its client state."""
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (the CUDA states only where CUDA is present)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_client_state(root: Path, tag: str, rank: int) -> dict[str, Any]:
    """Read one rank's client state."""
    return torch.load(client_state_file(root, tag, rank), map_location="cpu", weights_only=False)


def mark_complete(root: Path, tag: str, record: dict[str, Any]) -> None:
    """On rank 0, after every rank saved: write the completion record with the size of every
    file, then point ``latest`` at ``tag``. Retention is separate (:func:`prune`)."""
    d = root / tag
    files = {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file() and p.name != COMPLETE}
    write_text(d / COMPLETE, json.dumps({**record, "tag": tag, "files": files}, indent=1, sort_keys=True))
    write_text(root / LATEST, tag + "\n")


BYTES_PER_PARAMETER_ESTIMATE = 16  # weights (≤ 4) + fp32 master (4) + Adam's two moments (8)
SPACE_MARGIN = 1.1  # ask for 10 % more than the estimate


def free_bytes(path: Path) -> int:
    """Bytes free to this user on the file system that holds ``path`` (``shutil.disk_usage``).

    Test hook (a small disk without mounting one): ``ZEROLM_TEST_DISK_BYTES=N`` answers as if ``path``
    were alone on a disk of ``N`` bytes: ``N`` minus the bytes of the files under it."""
    fake = os.environ.get("ZEROLM_TEST_DISK_BYTES")
    if fake:
        return max(0, int(float(fake)) - sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:  # before the first checkpoint: its parent's disk
        existing = existing.parent
    return shutil.disk_usage(existing).free


def expected_bytes(root: Path, parameters: int) -> tuple[int, str]:
    """How many bytes the next checkpoint under ``root`` will take, and where the figure comes from: the
    files of the newest intact checkpoint (their sizes from its completion record), or, before the
    run's first checkpoint, :data:`BYTES_PER_PARAMETER_ESTIMATE` bytes per parameter."""
    for tag in reversed(list_tags(root)):
        if check(root, tag) is None:
            sizes = (read_record(root, tag).get("files") or {}).values()
            return int(sum(int(v or 0) for v in sizes)), f"the size of {tag}"
    return BYTES_PER_PARAMETER_ESTIMATE * parameters, f"{BYTES_PER_PARAMETER_ESTIMATE} bytes per parameter"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def space_problem(root: Path, tag: str, parameters: int) -> str | None:
    """Why ``root/tag`` should not be written now (not enough free space for it, with
    :data:`SPACE_MARGIN`), or None. Checked before any rank writes, so that a full disk stops the run
    with this message and the newest complete checkpoint intact, instead of a checkpoint half-written
    by some ranks (whose error, from ``torch.save``, names neither the disk nor the space).
    Retention removes old checkpoints only after a newer one is complete: the disk must hold
    ``train.keep_last`` + 1 of them."""
    need, source = expected_bytes(root, parameters)
    free = free_bytes(root)
    if free >= need * SPACE_MARGIN:
        return None
    newest = next((t for t in reversed(list_tags(root)) if check(root, t) is None), None)
    return (f"not enough disk space to write checkpoint {tag} under {root}: it needs about {_mib(need)} ({source}), "
            f"{_mib(free)} are free there. Nothing of {tag} was written"
            f"{f'; the newest complete checkpoint, {newest}, is intact' if newest else ''}. Free space (retention "
            "keeps train.keep_last checkpoints and deletes the oldest only once a newer one is complete) or lower "
            "train.keep_last, then run the same command to resume")


def set_aside(root: Path, tag: str, suffix: str = SET_ASIDE) -> Path:
    """Move the folder ``root/tag`` (a checkpoint this run could not load, or debris of an
    interrupted save; with ``suffix=ROLLED_BACK`` one a loss-spike recovery rolled back over) out of
    the way to ``<tag><suffix>`` (``<suffix>.2`` … if taken), so that a new checkpoint of the same
    step can be written without overwriting it. Returns the new path."""
    dest, n = root / (tag + suffix), 1
    while dest.exists():
        n += 1
        dest = root / f"{tag}{suffix}.{n}"
    (root / tag).rename(dest)
    return dest


# -- discovery and completeness ------------------------------------------------------------------
def list_tags(root: Path) -> list[str]:
    """All ``step_NNNNNNNN`` directories (complete or not), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _TAG.match(p.name))


def check(root: Path, tag: str) -> str | None:
    """Why ``root/tag`` is damaged, or None when it is complete and intact.

    Damaged: no completion record (interrupted while saving), an unreadable record, a file the record
    lists that is missing or has another size than was written.
    """
    rec_path = root / tag / COMPLETE
    if not rec_path.is_file():
        return "no completion record (interrupted while saving)"
    try:
        rec = json.loads(rec_path.read_text())
        if not isinstance(rec, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"unreadable completion record: {e}"
    for name, size in (rec.get("files") or {}).items():
        p = root / tag / name
        if not p.is_file():
            return f"missing file {name}"
        if size is not None and p.stat().st_size != int(size):
            return f"{name} has {p.stat().st_size} bytes, {size} were written (truncated or changed)"
    return None


def read_record(root: Path, tag: str) -> dict[str, Any]:
    """The completion record of a checkpoint (``check`` it first)."""
    return json.loads((root / tag / COMPLETE).read_text())


def latest_tag(root: Path) -> str | None:
    """The tag the ``latest`` pointer names, or None when there is no (or an empty) pointer."""
    p = root / LATEST
    if not p.is_file():
        return None
    return p.read_text().strip() or None


def resolve(run_dir: str | Path, tag: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A complete, intact checkpoint of a run directory, for reading it (export, finetuning).

    Args:
        run_dir: the run directory (holds ``checkpoints/``).
        tag: a checkpoint tag (``step_00000040``); ``None`` = the one ``checkpoints/latest`` names.

    Returns:
        ``(tag_dir, record)``: the checkpoint folder and its parsed completion record.

    Raises:
        DataError: no ``latest`` pointer, no such tag folder, or the checkpoint is damaged
            (:func:`check`); the message names the path.
    """
    root = Path(run_dir) / "checkpoints"
    if tag is None:
        tag = latest_tag(root)
        if tag is None:
            raise DataError(f"no checkpoint pointer {root / LATEST} (or it is empty): the run has no complete "
                            "checkpoint (or pass a tag)")
    tag_dir = root / tag
    if not tag_dir.is_dir():
        have = list_tags(root)
        raise DataError(f"checkpoint {tag_dir} not found (tags in {root}: {have or 'none'})")
    why = check(root, tag)
    if why is not None:
        raise DataError(f"checkpoint {tag_dir} is incomplete or damaged: {why}")
    record = read_record(root, tag)
    if record.get("tag") not in (None, tag):
        log.warning("%s names tag %r, but it is in folder %r", tag_dir / COMPLETE, record.get("tag"), tag)
    return tag_dir, record


# -- compatibility -------------------------------------------------------------------------------
_MODEL_FIELDS = ("family", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "max_position_embeddings",
                 "tie_word_embeddings")
_DATA_FIELDS = ("format", "seq_len", "sources", "logical_shards", "shuffle_window")  # compared
_DATA_KEPT = (*_DATA_FIELDS, "num_workers", "elastic")  # recorded
_OLD_PACKED_FORMAT = "zerolm-data-state/1"  # data layouts recorded before the format was


def model_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """``{parameter name: shape}`` of a model (DeepSpeed's full shape for ZeRO-3 partitions)."""
    return {n: list(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}


def run_signature(*, world_size: int, micro_batch_size: int, gradient_accumulation_steps: int,
                  global_batch_size: int, zero_stage: int, objective: str, precision: str,
                  model_config: dict[str, Any] | None, shapes: dict[str, list[int]] | None,
                  data_layout: dict[str, Any] | None, elastic_resume: bool = True,
                  settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed by a run (stored as ``run`` in its record).

    Args:
        world_size: data-parallel size. micro_batch_size, gradient_accumulation_steps,
            global_batch_size: the batch arithmetic (global = micro × accumulation × world size).
        zero_stage: 0–3. objective: ``clm``/``mlm`` (or a finetuning objective's name).
        precision: ``fp32``/``bf16``/``fp16`` (recorded, not compared).
        model_config: the resolved ``model`` section (readable names for a shape change).
        shapes: :func:`model_shapes` of the model. data_layout: the data loader's layout
            (``format``, ``seq_len``, ``sources``, ``logical_shards``, ``num_workers``, ``elastic``:
            its ``state_dict()`` fields). elastic_resume: whether this run may resume a checkpoint
            of another world size (``train.elastic_resume``).
        settings: a job's own config keys that a resume must keep, ``{"sentiment.batch_size": 16, …}``
            (a job outside the batch arithmetic above, e.g. PPO, passes None for those fields and
            names its keys here); compared key by key, ``None`` values included.
    """
    return {
        "world_size": world_size, "micro_batch_size": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps, "global_batch_size": global_batch_size,
        "zero_stage": zero_stage, "objective": objective, "precision": precision,
        "model_config": {k: (model_config or {}).get(k) for k in _MODEL_FIELDS},
        "model_shapes": shapes,
        "data_layout": {k: v for k, v in (data_layout or {}).items() if k in _DATA_KEPT},
        "elastic_resume": elastic_resume,
        **({"settings": dict(settings)} if settings is not None else {}),
    }


def saved_signature(root: Path, tag: str) -> dict[str, Any]:
    """The run signature of an intact checkpoint: its record's ``run``; for records written before
    zerolm stored it, rebuilt from the record's ``world_size`` and the checkpoint's ``config.yaml``
    (model tensor shapes are then unknown: the model section is compared instead)."""
    rec = read_record(root, tag)
    if isinstance(rec.get("run"), dict):
        return rec["run"]
    import yaml

    cfg_path = root / tag / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    data, train, model = cfg.get("data") or {}, cfg.get("train") or {}, cfg.get("model") or {}
    world = rec.get("world_size")
    micro = data.get("micro_batch_size")
    gas, glob = train.get("gradient_accumulation_steps"), train.get("global_batch_size")
    if world and micro:
        if gas is None and glob is None:
            gas = 1
        if glob is None:
            glob = micro * gas * world
        elif gas is None:
            gas = glob // (micro * world)
    return run_signature(world_size=world, micro_batch_size=micro, gradient_accumulation_steps=gas,
                         global_batch_size=glob, zero_stage=train.get("zero_stage"), objective=data.get("objective"),
                         precision=train.get("precision"), model_config=model, shapes=None,
                         data_layout={k: data.get(k) for k in ("seq_len", "num_workers")})


def _as_override(v: Any) -> str:
    """A recorded value as a ``key=value`` override writes it (YAML: ``null``, ``true``/``false``, JSON-style
    lists), so that the fix an error names can be pasted onto the command line as it is."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def incompatibilities(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str]]:
    """What differs between the run that saved a checkpoint and this one, as ``(what differs, what to
    set to resume)`` pairs; empty when the checkpoint can be resumed. Values unknown on either side
    (an older record) are not compared. A different micro-batch size and gradient accumulation with
    the same global batch is compatible; so is another world size or number of loader workers when
    both runs' data loaders are elastic and ``current["elastic_resume"]`` is not False. A job's
    ``settings`` are compared for every key both runs recorded (``None`` is a value there)."""
    out: list[tuple[str, str]] = []

    def known(k: str) -> bool:
        return saved.get(k) is not None and current.get(k) is not None and saved[k] != current[k]

    s_data, c_data = saved.get("data_layout") or {}, current.get("data_layout") or {}
    if known("world_size"):
        a = saved["world_size"]
        run_on = f"run on {a} data-parallel ranks (e.g. torchrun --nproc_per_node {a})"
        if current.get("elastic_resume") is False:
            fix = f"{run_on}, or allow an elastic resume with train.elastic_resume=true"
        elif not c_data.get("elastic"):
            fix = (f"{run_on}: this job's data stream (its loader, or the RL loop's prompt stream) resumes only on "
                   "the world size it was saved with")
        elif not s_data.get("elastic"):
            fix = f"{run_on}: the checkpoint's data state (written by an older zerolm) cannot be resharded"
        else:
            fix = ""
        if fix:
            out.append((f"data-parallel world size {a} → {current['world_size']}", fix))
    if known("global_batch_size"):
        a = saved["global_batch_size"]
        out.append((f"global batch {a} → {current['global_batch_size']}", f"set train.global_batch_size={a}"))
    if known("zero_stage"):
        a = saved["zero_stage"]
        out.append((f"ZeRO stage {a} → {current['zero_stage']}",
                    f"set train.zero_stage={a} (a ZeRO checkpoint loads only into its own stage)"))
    if known("objective"):
        a = saved["objective"]
        out.append((f"objective {a} → {current['objective']}", f"set data.objective={a}"))
    s_shapes, c_shapes = saved.get("model_shapes"), current.get("model_shapes")
    s_model, c_model = saved.get("model_config") or {}, current.get("model_config") or {}
    named = [f"{k} {_as_override(s_model[k])} → {_as_override(c_model[k])}" for k in _MODEL_FIELDS
             if s_model.get(k) is not None and c_model.get(k) is not None and s_model[k] != c_model[k]]
    if s_shapes is not None and c_shapes is not None:
        if s_shapes != c_shapes:
            if not named:
                diff = sorted(set(s_shapes) ^ set(c_shapes))
                if diff:
                    named = [f"tensor {diff[0]} {'only in the checkpoint' if diff[0] in s_shapes else 'only in this run'}"]
                else:
                    k = next(k for k in sorted(s_shapes) if s_shapes[k] != c_shapes[k])
                    named = [f"tensor {k} {tuple(s_shapes[k])} → {tuple(c_shapes[k])}"]
            out.append((f"model shape ({', '.join(named)})",
                        "use the model section (and tokenizer) of the checkpoint's config.yaml"))
    elif named:
        out.append((f"model shape ({', '.join(named)})", "use the model section of the checkpoint's config.yaml"))
    if "sources" in s_data and "format" not in s_data:
        s_data = {**s_data, "format": _OLD_PACKED_FORMAT}
    for k in _DATA_FIELDS:
        if s_data.get(k) is not None and c_data.get(k) is not None and s_data[k] != c_data[k]:
            if k == "format":
                out.append((f"data-pipeline state format {s_data[k]} → {c_data[k]}",
                            "resume it with the zerolm version that wrote it (its data state cannot be read by this one)"))
            elif k == "logical_shards":  # the global batch; reported above when the record has it
                if not known("global_batch_size"):
                    out.append((f"data logical shards (global batch) {s_data[k]} → {c_data[k]}",
                                f"set train.global_batch_size={s_data[k]}"))
            else:
                a = _as_override(s_data[k])
                out.append((f"data.{k} {a} → {_as_override(c_data[k])}", f"set data.{k}={a}"))
    s_set, c_set = saved.get("settings") or {}, current.get("settings") or {}
    for k in sorted(set(s_set) & set(c_set)):
        if s_set[k] != c_set[k]:
            a = _as_override(s_set[k])
            out.append((f"{k} {a} → {_as_override(c_set[k])}", f"set {k}={a}"))
    return out


@dataclass
class ResumePlan:
    """What rank 0 decided about a run directory's checkpoints (before any DeepSpeed load).

    Attributes:
        candidates: intact, compatible tags to try, newest first (an older one only if a newer
            one fails to load).
        damaged: ``{tag: why}`` for the damaged tags passed over (newer than the candidates).
        blocked: ``(tag, message)`` of the newest intact checkpoint that this run cannot resume
            (incompatible), if reached; ``message`` is the full error for the user.
        existing: every ``step_*`` tag found (a non-empty list means: never start from step 0).
    """

    candidates: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    blocked: tuple[str, str] | None = None
    existing: list[str] = field(default_factory=list)

    def error(self, root: Path, failed: dict[str, str] | None = None) -> str | None:
        """The error that stops the run when no candidate is left (``failed``: candidates that did
        not load, with why), or None when the run may start (from a candidate or, with no
        checkpoints at all, from step 0)."""
        if self.blocked is not None:
            return self.blocked[1]
        if not self.existing:
            return None
        reasons = {**self.damaged, **(failed or {})}
        lines = "; ".join(f"{t}: {reasons.get(t, 'not tried')}" for t in sorted(reasons, reverse=True))
        return (f"{root} holds checkpoints, but none of them can be loaded ({lines}). zerolm does not start a "
                "run directory with checkpoints again from step 0, and deletes nothing it could not load: "
                "repair or move the damaged checkpoints away, or choose another train.run_dir.")


def plan_resume(root: Path, current: dict[str, Any]) -> ResumePlan:
    """Decide, from completion records only, which checkpoints of ``root`` this run may resume from.

    Walks the tags newest first: damaged ones are passed over with a warning; the first intact one
    is checked against ``current`` (a :func:`run_signature`): if compatible it is the first
    candidate, and the older intact compatible ones follow (fallbacks should it fail to load); the
    first incompatible intact one ends the walk as ``blocked`` (an older checkpoint is never used
    in place of an intact newer one this run cannot continue).
    """
    plan = ResumePlan(existing=list_tags(root))
    for tag in reversed(plan.existing):
        why = check(root, tag)
        if why is not None:
            if not plan.candidates:
                plan.damaged[tag] = why
                log.warning("checkpoint %s is not usable (%s); falling back to an older one", root / tag, why)
            continue
        diffs = incompatibilities(saved_signature(root, tag), current)
        if diffs:
            plan.blocked = (tag, (
                f"cannot resume from checkpoint {root / tag}: it is intact, but this run differs from the run "
                f"that saved it: {', '.join(d for d, _ in diffs)}. To continue it: "
                f"{'; '.join(fix for _, fix in diffs)}. To start afresh, choose another train.run_dir. "
                f"Nothing in {root.parent} was changed."))
            break
        plan.candidates.append(tag)
    return plan


def notes_on_resume(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Compatible changes worth a log line: the data-parallel world size and loader workers of an
    elastic resume, micro-batch size and gradient accumulation traded at an unchanged global batch."""
    notes = []
    s_data, c_data = saved.get("data_layout") or {}, current.get("data_layout") or {}
    pairs = ((saved, current, "world_size", "data-parallel world size"),
             (s_data, c_data, "num_workers", "data.num_workers"),
             (saved, current, "micro_batch_size", "micro-batch size"),
             (saved, current, "gradient_accumulation_steps", "gradient accumulation steps"))
    for a, b, k, name in pairs:
        if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]:
            notes.append(f"{name} {a[k]} → {b[k]}")
    return notes


def newest_intact_signature(root: Path) -> dict[str, Any] | None:
    """The run signature of the newest intact checkpoint under ``root`` (the one a resume starts
    from, or is stopped by), or None when there is none. Read before the batch arithmetic: a resume
    keeps that run's global batch."""
    for tag in reversed(list_tags(root)):
        if check(root, tag) is None:
            return saved_signature(root, tag)
    return None


# -- retention -----------------------------------------------------------------------------------
def lineage(root: Path, resumed: str | None) -> set[str]:
    """The tags a run that resumed from ``resumed`` descends from: it and every older tag."""
    if resumed is None:
        return set()
    return {t for t in list_tags(root) if t <= resumed}


def prune(root: Path, keep_last: int, line: set[str], newest: str, keep_before: int | None = None) -> list[str]:
    """Retention after ``newest`` (a tag of this run line) was completed.

    Deletes a checkpoint only when it is in ``line`` (this run line's tags), is intact, and
    ``keep_last`` newer complete checkpoints of the line exist; and debris of interrupted saves (a
    ``step_*`` folder, or one set aside, without completion record) of a step not after ``newest``,
    and checkpoints a loss-spike recovery rolled back over (``.rolled_back``) of a step not after
    ``newest``. Checkpoints outside the line (newer than the one the line resumed from, not written
    by it) and damaged ones are never deleted. With ``keep_before``, the newest checkpoint of the
    line at a step ≤ ``keep_before`` is kept too (the one a loss-spike recovery would roll back to).
    Returns the deleted folder names.
    """
    removed = []
    ours = sorted(t for t in line if (root / t / COMPLETE).is_file())
    old_enough = [t for t in ours if keep_before is not None and step_of(t) <= keep_before]
    protected = {old_enough[-1]} if old_enough else set()
    for t in ours[:-keep_last] if keep_last > 0 else []:
        if t in protected:
            continue
        why = check(root, t)
        if why is None:
            shutil.rmtree(root / t, ignore_errors=True)
            removed.append(t)
        else:
            log.warning("keeping damaged checkpoint %s (%s): zerolm deletes only intact checkpoints", root / t, why)
    limit = step_of(newest)
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if (p.is_dir() and p.name != newest and _ANY_TAG.match(p.name) and step_of(p.name) <= limit
                and (not (p / COMPLETE).exists() or ROLLED_BACK in p.name)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


# -- loss-spike recoveries -----------------------------------------------------------------------
def read_recoveries(root: Path) -> list[dict[str, Any]]:
    """The recovery records of a run (oldest first; ``[]`` when there are none).

    Raises:
        DataError: the records file exists but is not a JSON list (names the file).
    """
    path = root / RECOVERIES
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable loss-spike recovery records: {e}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of recovery records, got {type(data).__name__}")
    return data


def add_recovery(root: Path, record: dict[str, Any]) -> None:
    """Append one recovery record (rank 0, before anything is rolled back; atomic). ``record`` holds
    at least ``rolled_back_to`` (a tag), ``data_step`` (global batches drawn when it happened) and
    ``data_states`` (every rank's data-loader state after the skipped batches)."""
    write_json(root / RECOVERIES, [*read_recoveries(root), record])


def recovery_for(root: Path, tag: str) -> dict[str, Any] | None:
    """The newest recovery that rolled back to ``tag`` (a resume from ``tag`` continues its data), or None."""
    found = [r for r in read_recoveries(root) if r.get("rolled_back_to") == tag]
    return found[-1] if found else None


def discard_rolled_back(root: Path, target: str, data_step: int) -> list[str]:
    """Set aside (``.rolled_back``) the complete checkpoints newer than ``target`` that were written
    before a recovery at ``data_step`` (their record's ``data_step`` ≤ it): the run continues from
    ``target`` and they hold the weights it rolled back over. Checkpoints the line wrote after the
    recovery (a larger ``data_step``) stay. Idempotent; returns the tags set aside."""
    moved = []
    for tag in list_tags(root):
        if tag <= target or not (root / tag / COMPLETE).is_file():
            continue
        try:
            rec = read_record(root, tag)
        except (OSError, ValueError):
            continue
        if int(rec.get("data_step", rec.get("step", 0))) <= data_step:
            set_aside(root, tag, ROLLED_BACK)
            moved.append(tag)
    if moved:
        write_text(root / LATEST, target + "\n")
    return moved


def apply_recoveries(root: Path) -> list[str]:
    """Finish recoveries a killed run recorded but did not carry out (rank 0, before a resume is
    planned): set aside what each rolled back over (:func:`discard_rolled_back`). Returns the tags
    set aside (normally none)."""
    moved = []
    for r in read_recoveries(root):
        moved += discard_rolled_back(root, r["rolled_back_to"], int(r["data_step"]))
    return moved
