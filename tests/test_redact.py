"""The one secret redactor (zerolm.redact): which keys are credentials (a hand-written table, both
directions), which environment values are secrets, and what a redacted config / text looks like."""

from __future__ import annotations

import pytest

from zerolm.redact import MASK, env_secrets, is_secret_key, redact, redact_text

SECRET_KEYS = [
    "hf_token", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "token", "use_auth_token", "access_token", "accessToken",
    "github_pat", "api_key", "apiKey", "APIKEY", "WANDB_API_KEY", "password", "db_password", "PASSWD", "passphrase",
    "secret", "client_secret", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "access_key", "private_key",
    "ssh_key", "secret_key", "credentials", "GOOGLE_CREDENTIALS", "auth", "http_auth", "authorization",
    "session_cookie", "wandb.api_key", "hub-token",
]
ORDINARY_KEYS = [
    "tokenizer", "tokenizer_dir", "tokenize_batch_size", "prompt_min_tokens", "prompt_max_tokens",
    "response_min_tokens", "max_tokens", "tokens_seen", "max_new_tokens", "bos_token_id", "eos_token_id",
    "pad_token_id", "token_type_ids", "bos_token", "pad_token", "mask_token", "unk_token", "cls_token",
    "tokenizer.pad_token", "num_tokens", "keys", "key", "sort_key", "metric_key", "public_key", "primary_key",
    "AWS_ACCESS_KEY_ID", "auth_type", "author", "keep_last", "TOKENIZERS_PARALLELISM", "SSH_AUTH_SOCK", "PWD",
    "run_name", "project", "tags", "path", "monkey", "passage", "secretariat",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_credential_keys_are_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_ordinary_keys_are_not_secret(key):
    assert not is_secret_key(key)


def test_env_secrets_are_values_of_credential_variables():
    env = {"HF_TOKEN": "hf_abcdefghijklmnop", "WANDB_API_KEY": "0123456789abcdef0123", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
           "TOKENIZERS_PARALLELISM": "false-but-long-enough", "HOME": "/root/a-long-home", "PASSWORD": "short",
           "GITHUB_TOKEN": ""}
    assert env_secrets(env) == ["wJalrXUtnFEMI/K7MDENG", "0123456789abcdef0123", "hf_abcdefghijklmnop"]


def test_redact_config_keeps_settings_and_masks_credentials(monkeypatch):
    token = "hf_FAKEredactToken0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    cfg = {
        "tracking": {"hf_token": "abc", "wandb_api_key": "k", "project": "p", "client_secret": "s", "api_key": None,
                     "run_name": f"run-{token}", "tags": ["a", token]},
        "db": [{"password": "pw", "user": "u"}],
        "data": {"tokenizer_dir": "data/tok", "tokenize_batch_size": 64, "bos_token_id": 1, "tokens_seen": 5,
                 "sources": [{"paths": [f"https://host/x.jsonl?sig={token}"]}]},
        "sentiment": {"prompt_min_tokens": 2, "max_tokens": 16, "shuffle": False},
    }
    out = redact(cfg)
    assert out["tracking"] == {"hf_token": MASK, "wandb_api_key": MASK, "project": "p", "client_secret": MASK,
                               "api_key": None, "run_name": f"run-{MASK}", "tags": ["a", MASK]}
    assert out["db"] == [{"password": MASK, "user": "u"}]
    assert out["data"] == {"tokenizer_dir": "data/tok", "tokenize_batch_size": 64, "bos_token_id": 1, "tokens_seen": 5,
                           "sources": [{"paths": [f"https://host/x.jsonl?sig={MASK}"]}]}
    assert out["sentiment"] == cfg["sentiment"]
    assert cfg["tracking"]["hf_token"] == "abc", "the input is not modified"
    # the text form: environment secrets and explicit extras, longest first
    assert redact_text(f"a {token} b {token}xyz") == f"a {MASK} b {MASK}xyz"
    assert redact_text("login with tok_12345 failed", extra=["tok_12345", None, ""]) == f"login with {MASK} failed"
    assert redact_text("false true") == "false true", "short/ordinary environment values are never masked"


def test_cli_log_lines_and_error_messages_never_carry_an_environment_token(tmp_path, monkeypatch):
    """The CLI's log handler masks environment secrets (W&B captures log lines into output.log), and
    so does its error printer: a config error that quotes a path holding the token."""
    import os
    import subprocess
    import sys

    token = "hf_FAKElogToken0123456789"
    env = {**os.environ, "HF_TOKEN": token}
    missing = tmp_path / f"corpus-{token}"
    # `data inspect` on a corpus folder that does not exist: the error names the path (and so the token)
    r = subprocess.run([sys.executable, "-m", "zerolm", "data", "inspect", "--data", str(missing), "--log-level", "INFO"],
                       env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-2000:]
    assert str(tmp_path) in out and token not in out and MASK in out, out[-2000:]

    import logging

    from zerolm.redact import RedactingFilter

    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "reading %s from %s", ("shard", f"s3://b/{token}/x"), None)
    monkeypatch.setenv("HF_TOKEN", token)
    assert RedactingFilter().filter(rec) is True
    assert rec.getMessage() == f"reading shard from s3://b/{MASK}/x"
