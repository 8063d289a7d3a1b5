"""The one secret redactor of zerolm: what counts as a secret, and how it is hidden.

Two rules, nothing else:

1. **Credential keys.** A mapping key names a credential when one of its words (the key split at
   ``_ - . /``, spaces and camelCase boundaries, lower-cased) says so — see :func:`is_secret_key`:
   ``hf_token``, ``WANDB_API_KEY``, ``password``, ``client_secret``, ``AWS_SECRET_ACCESS_KEY``,
   ``private_key``, ``accessToken`` are; ``tokenizer``, ``tokenizer_dir``, ``tokenize_batch_size``,
   ``prompt_min_tokens``, ``max_tokens``, ``bos_token_id``, ``pad_token``, ``sort_key`` are not. The
   value under such a key becomes :data:`MASK`.
2. **Secrets of the environment.** The values of environment variables whose *name* is a credential key
   by rule 1 (``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, ``WANDB_API_KEY``, ``AWS_SECRET_ACCESS_KEY``
   …), at least :data:`MIN_SECRET_LEN` characters long, are replaced by :data:`MASK` wherever they occur
   inside any string (a run name, a URL, a log line, a model card).

Used for everything zerolm writes that may leave the machine: the W&B run (config, name, tags, command
line), exported model cards and ``zerolm_export.json``, and what ``zerolm publish`` shows or uploads.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable, Mapping

MASK = "***"
MIN_SECRET_LEN = 8  # shorter environment values ("1", "true", "cpu") would mask ordinary text

# A word that makes a key a credential wherever it stands in the key.
_ANYWHERE = frozenset({
    "secret", "secrets", "password", "passwords", "passwd", "passphrase", "credential", "credentials",
    "apikey", "accesskey", "secretkey", "privatekey", "authtoken", "accesstoken",
})
# A word that makes a key a credential when it is the key's last word (``hf_token`` but not ``token_id``).
_LAST = frozenset({"token", "auth", "authorization", "cookie", "pat"})
# Tokenizer fields whose last word is "token" but that hold a vocabulary entry, not a credential.
_VOCAB_TOKENS = frozenset({"bos", "eos", "pad", "unk", "mask", "sep", "cls", "special", "start", "end", "image",
                           "audio", "video", "boi", "eoi"})
# ``<qualifier>_key`` is a credential for these qualifiers (``api_key``, ``access_key``, ``ssh_key``), while
# ``sort_key``, ``metric_key``, ``public_key`` or a bare ``key`` are not.
_KEY_QUALIFIERS = frozenset({
    "api", "access", "secret", "private", "auth", "signing", "encryption", "ssh", "client", "account", "master",
    "service", "license", "session", "storage", "subscription", "deploy", "app", "admin", "write", "read", "hub",
})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEP = re.compile(r"[^A-Za-z0-9]+")


def key_words(key: str) -> list[str]:
    """The lower-case words of a key: split at non-alphanumerics and camelCase boundaries
    (``"WANDB_API_KEY"`` → ``["wandb", "api", "key"]``, ``"accessToken"`` → ``["access", "token"]``)."""
    return [w.lower() for part in _SEP.split(str(key)) for w in _CAMEL.split(part) if w]


def is_secret_key(key: str) -> bool:
    """True when ``key`` names a credential (rule 1 of the module docstring).

    A key is a credential when any word is a secret word (``secret``, ``password``, ``passphrase``,
    ``credentials``, ``apikey`` …), or its last word is ``token``/``auth``/``authorization``/``cookie``/
    ``pat`` (not a tokenizer's ``bos_token``/``pad_token``…), or its last word is ``key`` after a qualifier
    such as ``api``, ``access``, ``private``, ``ssh``. Plurals and longer words do not count:
    ``tokens``, ``tokenizer``, ``tokenize``, ``keys`` are ordinary words.
    """
    words = key_words(key)
    if not words:
        return False
    if any(w in _ANYWHERE for w in words):
        return True
    last, prev = words[-1], (words[-2] if len(words) > 1 else None)
    if last in _LAST:
        return not (last == "token" and prev in _VOCAB_TOKENS)
    return last == "key" and prev in _KEY_QUALIFIERS


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment's credential variables (rule 2), longest first (so that a secret that
    contains another is masked whole); values shorter than :data:`MIN_SECRET_LEN` are left out."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if v and len(v) >= MIN_SECRET_LEN and is_secret_key(k)}
    return sorted(found, key=len, reverse=True)


def _secrets(extra: Iterable[str | None]) -> list[str]:
    more = {s for s in extra if s}
    return sorted(set(env_secrets()) | more, key=len, reverse=True)


def _mask_text(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


def redact_text(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every environment secret and every non-empty string of ``extra`` (e.g. a token read
    from a login cache) replaced by :data:`MASK`."""
    return _mask_text(text, _secrets(extra))


def redact(obj: Any, extra: Iterable[str | None] = ()) -> Any:
    """A redacted copy of a JSON-like value (nested dicts, lists, tuples, strings, numbers).

    Values under credential keys become :data:`MASK` (``None`` and ``""`` are kept: they show that no
    secret was set); environment secrets and ``extra`` strings are masked inside every string value.
    Keys, numbers and booleans under ordinary keys are returned unchanged.
    """
    secrets = _secrets(extra)

    def walk(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: (MASK if is_secret_key(str(k)) and v2 not in (None, "") else walk(v2)) for k, v2 in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        if isinstance(v, str):
            return _mask_text(v, secrets)
        return v

    return walk(obj)


class RedactingFilter(logging.Filter):
    """A logging filter that masks environment secrets (and ``extra`` strings) in every record's
    message, so that log lines — which W&B also captures into the run's ``output.log`` — never carry
    a token. Attach it to a handler: ``handler.addFilter(RedactingFilter())``."""

    def __init__(self, extra: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.extra = [s for s in extra if s]

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        secrets = _secrets(self.extra)
        if secrets:
            text = record.getMessage()
            masked = _mask_text(text, secrets)
            if masked != text:
                record.msg, record.args = masked, None
        return True


__all__ = ["MASK", "RedactingFilter", "MIN_SECRET_LEN", "env_secrets", "is_secret_key", "key_words", "redact", "redact_text"]
