"""Progress bars for long library work (evaluation items, PPO steps, report prompts, export stages).

The CLI passes ``progress=not args.quiet`` to the library function; the library opens its bar with
:func:`progress_bar`, which draws it (tqdm, on stderr) only when all three hold:

* the caller asked for it (``enabled``),
* this is the main process (:func:`zerolm.pretrain.distributed.is_main_process`: one bar per job,
  not one per rank),
* stderr is a terminal (tqdm's ``disable=None``: nothing lands in log files or pipes).

Otherwise the bar is a disabled tqdm object: ``update``/``set_postfix_str``/``close`` do nothing
and nothing is written. The libraries draw bars of their own (transformers' "Loading weights",
huggingface_hub's downloads, datasets' map): :func:`quiet_library_bars` turns those off for ``--quiet``.
"""

from __future__ import annotations

from typing import Any


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool, **kwargs: Any):
    """A tqdm bar of ``total`` ``unit`` named ``desc``, drawn on stderr under the rules above.

    Args:
        total: the number of units the work will take (None: unknown, the bar counts up).
        desc: what the work is (shown left of the bar), e.g. ``"fewshot"``.
        unit: the counted unit, e.g. ``"items"``, ``"steps"``, ``"prompts"``.
        enabled: the caller's ``progress`` flag (``False``: never drawn).
        **kwargs: passed on to ``tqdm`` (e.g. ``file`` to draw on another stream).

    Returns:
        A ``tqdm`` object (a context manager); use ``update(n)`` and ``close()``.
    """
    from tqdm.auto import tqdm

    from zerolm.pretrain.distributed import is_main_process

    disable = None if enabled and is_main_process() else True
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)


def quiet_library_bars() -> None:
    """Turn off the progress bars transformers, huggingface_hub and datasets draw on their own, for the
    rest of this process and its children (what ``--quiet`` asks of a command): the libraries' environment
    switches (``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_DATASETS_DISABLE_PROGRESS_BARS``, read when they are
    imported) and, for those already imported, their own functions."""
    import os
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    for module, switch in (("huggingface_hub.utils", "disable_progress_bars"),
                           ("transformers.utils.logging", "disable_progress_bar"),
                           ("datasets.utils.tqdm", "disable_progress_bars")):
        if module in sys.modules:
            getattr(sys.modules[module], switch)()
