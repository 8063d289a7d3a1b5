"""``zerolm publish EXPORT_DIR --repo-id OWNER/NAME``: a ``zerolm export`` folder → the Hugging Face Hub.

Two steps, so that ``--dry-run`` shows exactly what the upload would do:

1. :func:`plan_publish` reads the export (``README.md`` card, ``zerolm_export.json``), completes the
   card's Hub metadata with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` —
   ``license``, ``language``, ``datasets``, ``tags``, ``library_name``, ``pipeline_tag`` and a
   ``model-index`` of :class:`~huggingface_hub.EvalResult` (validation loss and perplexity from the
   export's metrics) — checks it (:func:`validate_card`), and lists one
   :class:`~huggingface_hub.CommitOperationAdd` per file of the folder (the README replaced by the
   completed card).
2. :func:`publish` creates the repository (``create_repo(exist_ok=True)``), the branch when a
   revision is given, and makes one commit (``create_commit``) with those operations.

The card is composed by the one card module (:mod:`zerolm.card`: front matter, title, the evaluation
sections after its mark, redaction). The token comes from ``HF_TOKEN`` or the cached ``hf auth login``
(``huggingface_hub.get_token``); it is passed to the API only and redacted (:mod:`zerolm.redact`) from the
card and from every message.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zerolm import card as modelcard
from zerolm.errors import ConfigError, DataError, ZeroLMError
from zerolm.redact import redact_text

log = logging.getLogger(__name__)

EXPORT_META = "zerolm_export.json"
CARD = modelcard.CARD_FILE
REQUIRED_FILES = (CARD, EXPORT_META, "config.json")

# Hub license identifiers (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++
osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2
llama3.3 llama4 gemma unknown other
""".split())

PIPELINE_TAGS = {"clm": "text-generation", "mlm": "fill-mask"}

# The bundled corpus sources (data_pipeline.corpus) → the Hub datasets their text comes from.
SOURCE_DATASETS = {
    "wikipedia_boolq": "google/boolq",
    "wikipedia_quac": "allenai/quac",
    "bbc_xsum": "EdinburghNLP/xsum",
    "legal_multilexsum": "allenai/multi_lexsum",
}


@dataclass
class PublishPlan:
    """Everything one upload does: the repository, the completed card and the files.

    ``files`` lists ``{"path": path in the repo, "size": bytes, "source": local path or "<generated card>"}``;
    ``operations`` are the matching :class:`huggingface_hub.CommitOperationAdd` (same order).
    """

    repo_id: str
    export_dir: Path
    private: bool
    revision: str | None
    card: str
    metadata: dict[str, Any]
    files: list[dict[str, Any]]
    operations: list[Any]
    commit_message: str
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Bytes the commit uploads."""
        return sum(f["size"] for f in self.files)


# -- the card --------------------------------------------------------------------------------------
def _hub_token() -> str | None:
    """The Hub token (``HF_TOKEN`` or the cached login), only to redact it; None when there is none."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - an unreadable token cache means: nothing extra to redact
        return None


def _datasets_from_export(meta: dict[str, Any]) -> list[str]:
    """Hub dataset ids of the corpus the run trained on (the bundled sources' origins), if known."""
    cfg = meta.get("config") or {}
    names: list[str] = []
    manifest = Path(((cfg.get("tokenizer") or {}).get("corpus_dir")) or "") / "manifest.json"
    if manifest.is_file():
        try:
            names = [s.get("name", "") for s in json.loads(manifest.read_text()).get("sources", [])]
        except (ValueError, AttributeError):
            names = []
    return sorted({SOURCE_DATASETS[n] for n in names if n in SOURCE_DATASETS})


def _eval_results(meta: dict[str, Any], model_name: str, pipeline_tag: str) -> list[Any]:
    from huggingface_hub import EvalResult

    metrics = meta.get("metrics") or {}
    step = meta.get("step")
    common = dict(
        task_type=pipeline_tag,
        dataset_type="zerolm-validation",
        dataset_name="zerolm corpus (held-out validation split)",
        dataset_split="validation",
    )
    out = []
    for key, metric_type, name in (("eval/loss", "loss", "Validation loss (nats/token)"),
                                   ("eval/perplexity", "perplexity", "Validation perplexity"),
                                   ("eval/accuracy", "accuracy", "Masked-token accuracy")):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(EvalResult(metric_type=metric_type, metric_value=round(float(value), 4),
                                  metric_name=name + (f" at step {step}" if step is not None else ""), **common))
    return out


def validate_card(card: str) -> list[str]:
    """Problems with a model card's Hub metadata (an empty list when it is valid).

    Offline checks with ``huggingface_hub``: the front matter parses into :class:`ModelCardData`
    (``ignore_metadata_errors=False``: a malformed ``model-index`` is an error) and survives a round
    trip through :class:`ModelCard`; the license is a Hub license id (``other`` needs
    ``license_name``); ``library_name``, ``pipeline_tag`` and ``language`` are present; every eval
    result has a task, dataset, metric type and a finite value. (``ModelCard.validate`` asks the Hub
    and needs the network; the upload itself is validated by the Hub again.)
    """
    from huggingface_hub import ModelCard, ModelCardData

    problems: list[str] = []
    try:
        meta, _ = modelcard.split_front_matter(card)
    except yaml.YAMLError as e:
        return [f"front matter is not YAML: {e}"]
    if not meta:
        return ["no YAML front matter (--- … ---) with metadata"]
    try:
        data = ModelCardData(**meta, ignore_metadata_errors=False)
        parsed = ModelCard(card, ignore_metadata_errors=False).data.to_dict()
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises ValueError/KeyError/TypeError here
        return [f"metadata does not parse as ModelCardData: {type(e).__name__}: {e}"]
    if parsed != data.to_dict():
        problems.append("metadata changes in a ModelCard round trip")
    lic = data.license
    if not lic:
        problems.append("no license")
    elif lic not in HUB_LICENSES:
        problems.append(f"license {lic!r} is not a Hub license id")
    elif lic == "other" and not getattr(data, "license_name", None):
        problems.append("license 'other' needs license_name")
    if data.license_name and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", data.license_name):
        problems.append(f"license_name {data.license_name!r}: use lowercase letters, digits, '.' and '-'")
    if not data.library_name:
        problems.append("no library_name")
    if not data.pipeline_tag:
        problems.append("no pipeline_tag")
    langs = [data.language] if isinstance(data.language, str) else (data.language or [])
    if not langs:
        problems.append("no language")
    for lang in langs:
        if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)*", str(lang)):
            problems.append(f"language {lang!r} is not an ISO 639 code")
    for ds in data.datasets or []:
        if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", ds):
            problems.append(f"dataset {ds!r} is not a Hub dataset id")
    if data.eval_results:
        if not data.model_name:
            problems.append("eval results need model_name")
        for r in data.eval_results:
            if not (r.task_type and r.dataset_type and r.dataset_name and r.metric_type):
                problems.append(f"eval result {r.metric_type!r} lacks task/dataset/metric")
            if not isinstance(r.metric_value, (int, float)) or not math.isfinite(r.metric_value):
                problems.append(f"eval result {r.metric_type!r} has value {r.metric_value!r}")
    return problems


def build_card(export_dir: str | Path, repo_id: str, *, license: str | None = None, datasets: list[str] | None = None,
               extra_tags: list[str] | None = None) -> tuple[str, dict[str, Any], list[str]]:
    """The export's model card with Hub metadata completed for ``repo_id``.

    Keeps the export's metadata and body; renames the model in the body from the folder name to
    ``repo_id`` (title and usage snippet); sets ``license`` (the argument, else the export's; ``other``
    gets a ``license_name``), ``language``, ``library_name``, ``pipeline_tag``, ``datasets`` (the
    argument, else the bundled corpus' origins), ``tags`` (+ ``zerolm``, ``extra_tags``) and
    ``model-index`` with the export's validation metrics.

    Returns:
        ``(card_text, metadata_dict, warnings)``.

    Raises:
        DataError: the card or ``zerolm_export.json`` is unreadable.
    """
    from huggingface_hub import ModelCardData

    export_dir = Path(export_dir)
    try:
        meta = json.loads((export_dir / EXPORT_META).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{export_dir / EXPORT_META}: unreadable export metadata: {e}") from e
    text = modelcard.read_card(export_dir)
    try:
        front, body = modelcard.split_front_matter(text)
    except yaml.YAMLError as e:
        raise DataError(f"{export_dir / CARD}: unreadable model card: {e}") from e
    warnings: list[str] = []
    name = repo_id.split("/")[-1]
    old = modelcard.title_of(body) or export_dir.resolve().name  # the export's name: title and usage snippet
    body = modelcard.retitle(body, name).replace(f'"{old}"', f'"{repo_id}"')

    objective = meta.get("objective") or ("mlm" if front.get("pipeline_tag") == "fill-mask" else "clm")
    pipeline_tag = front.get("pipeline_tag") or PIPELINE_TAGS.get(objective, "text-generation")
    lic = license or front.get("license") or "other"
    tags = list(dict.fromkeys([*(front.get("tags") or []), "zerolm", *(extra_tags or [])]))
    ds = datasets if datasets else (front.get("datasets") or _datasets_from_export(meta))
    keep = {k: v for k, v in front.items() if k not in {
        "license", "license_name", "license_link", "language", "library_name", "pipeline_tag", "tags", "datasets",
        "model-index", "model_name", "eval_results"}}
    data = ModelCardData(
        license=lic,
        language=front.get("language") or "en",
        library_name=front.get("library_name") or "transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=ds or None,
        model_name=name,
        eval_results=_eval_results(meta, name, pipeline_tag) or None,
        **keep,
    )
    if lic == "other":
        data.license_name = front.get("license_name") or "mixed-training-data-licenses"
        if front.get("license_link"):
            data.license_link = front["license_link"]
        warnings.append("license is 'other' (the training sources have different licenses; see the card's Data "
                        "section): pass --license to choose a Hub license id")
    if not data.datasets:
        warnings.append("no training datasets named (no corpus manifest of the bundled sources): pass --dataset HUB_ID")
    if not data.eval_results:
        warnings.append("the export has no validation metrics: the card has no model-index")
    return modelcard.render(data, body, extra_secrets=[_hub_token()]), data.to_dict(), warnings


# -- the plan and the upload -----------------------------------------------------------------------
def _export_files(export_dir: Path) -> list[Path]:
    files = []
    for p in sorted(export_dir.rglob("*")):
        rel = p.relative_to(export_dir)
        if any(part.startswith(".") for part in rel.parts):  # .cache, .git, temp files of an export
            continue
        if p.is_file():
            files.append(p)
    return files


def plan_publish(export_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                 license: str | None = None, datasets: list[str] | None = None, extra_tags: list[str] | None = None,
                 commit_message: str | None = None, eval_dirs: list[str | Path] | None = None) -> PublishPlan:
    """Check an export folder and plan its upload (nothing touches the network).

    ``eval_dirs``: results folders of ``zerolm eval fewshot|bias``; their sections are appended to the
    card (replacing those of an earlier publish) and their JSON/PNG files are uploaded under
    ``evals/<folder name>/``.

    Raises:
        ConfigError: ``repo_id`` is not ``OWNER/NAME``, the license is not a Hub id, or the completed
            card does not validate (:func:`validate_card`; the problems are listed).
        DataError: not a ``zerolm export`` folder (missing ``README.md``, ``zerolm_export.json``,
            ``config.json`` or weights).
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"--repo-id {repo_id!r}: {e}") from e
    if repo_id.count("/") != 1:
        raise ConfigError(f"--repo-id {repo_id!r}: give OWNER/NAME (a user or organisation, and the model name)")
    if license is not None and license not in HUB_LICENSES:
        raise ConfigError(f"--license {license!r} is not a Hub license id (e.g. apache-2.0, mit, cc-by-4.0, other)")
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise DataError(f"export folder {export_dir} not found")
    missing = [f for f in REQUIRED_FILES if not (export_dir / f).is_file()]
    if missing:
        raise DataError(f"{export_dir} is not a `zerolm export` folder: missing {', '.join(missing)}")
    if not any(export_dir.glob("*.safetensors")) and not any(export_dir.glob("*.bin")):
        raise DataError(f"{export_dir} holds no weights (*.safetensors)")
    card, metadata, warnings = build_card(export_dir, repo_id, license=license, datasets=datasets, extra_tags=extra_tags)
    eval_files: list[tuple[str, Path]] = []
    if eval_dirs:
        from zerolm.evals.card import evals_card_sections

        sections, paths = evals_card_sections(list(eval_dirs))
        card = modelcard.set_evals(card, sections, extra_secrets=[_hub_token()])
        eval_files = [(f"evals/{p.parent.name}/{p.name}", p) for p in paths]
    problems = validate_card(card)
    if problems:
        raise ConfigError("the model card's Hub metadata is invalid:\n  " + "\n  ".join(problems))
    card_bytes = card.encode("utf-8")
    files, operations = [], []
    for p in _export_files(export_dir):
        rel = p.relative_to(export_dir).as_posix()
        if rel == CARD:
            files.append({"path": rel, "size": len(card_bytes), "source": "<generated card>"})
            operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=card_bytes))
        else:
            files.append({"path": rel, "size": p.stat().st_size, "source": str(p)})
            operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(p)))
    for rel, p in eval_files:
        files.append({"path": rel, "size": p.stat().st_size, "source": str(p)})
        operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(p)))
    meta = json.loads((export_dir / EXPORT_META).read_text())
    message = commit_message or f"zerolm: {meta.get('family', 'model')} at step {meta.get('step')} ({meta.get('tag', '')})".strip()
    return PublishPlan(repo_id=repo_id, export_dir=export_dir, private=private, revision=revision, card=card,
                       metadata=metadata, files=files, operations=operations, commit_message=message, warnings=warnings)


def publish(plan: PublishPlan, api: Any = None) -> dict[str, Any]:
    """Upload a planned export: ``create_repo`` (exist_ok), ``create_branch`` for a revision, one
    ``create_commit`` with the plan's operations.

    Args:
        plan: from :func:`plan_publish`.
        api: an ``HfApi`` (default: ``HfApi(token=…)`` with the token from ``HF_TOKEN`` or the cached login).

    Returns:
        ``{"repo_id", "repo_url", "commit_url", "commit_oid", "revision"}``.

    Raises:
        ZeroLMError: no token, offline mode, or the Hub refused (its message, token redacted).
    """
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ZeroLMError("HF_HUB_OFFLINE is set: unset it to publish (or use --dry-run)")
    token = get_token()
    if not token:
        raise ZeroLMError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = api or HfApi(token=token)
    try:
        repo_url = api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type="model", exist_ok=True)
        commit = api.create_commit(plan.repo_id, plan.operations, commit_message=plan.commit_message,
                                   repo_type="model", revision=plan.revision)
    except Exception as e:  # noqa: BLE001 - HTTP/validation errors of the Hub, reported without the token
        raise ZeroLMError(redact_text(f"upload to {plan.repo_id} failed: {type(e).__name__}: {e}", [token])) from None
    log.info("published %s: %d files, %d bytes", plan.repo_id, len(plan.files), plan.total_bytes)
    return {"repo_id": plan.repo_id, "repo_url": str(repo_url), "commit_url": getattr(commit, "commit_url", ""),
            "commit_oid": getattr(commit, "oid", ""), "revision": plan.revision or "main"}


__all__ = ["HUB_LICENSES", "PublishPlan", "build_card", "plan_publish", "publish", "validate_card"]
