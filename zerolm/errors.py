"""Typed errors raised by zerolm library code.

Library code never prints or calls ``sys.exit``: it raises one of these and the CLI
(:mod:`zerolm.cli`) formats the message and chooses the exit code.
"""


class ZeroLMError(Exception):
    """Base class of every error zerolm raises on purpose."""


class ConfigError(ZeroLMError, ValueError):
    """A configuration value is unknown, of the wrong type or inconsistent.

    The message names the offending key (``data.seq_len``) or file, and is raised before any
    work starts.
    """


class DataError(ZeroLMError):
    """Input data cannot be used at all (missing path, unknown format, an empty shard).

    Individual bad documents never raise this: they are skipped and counted by reason.
    """


class TrainingError(ZeroLMError):
    """Training cannot go on (e.g. too many non-finite losses in a row); the last good checkpoint
    is left intact."""
