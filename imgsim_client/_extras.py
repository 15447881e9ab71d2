"""Optional stacks of the client (extras): a missing one says which extra to install."""

from __future__ import annotations

from typing import NoReturn


def missing_extra(error: ModuleNotFoundError, extra: str, what: str, modules: set[str]) -> NoReturn:
    """Re-raise `error`: with the install command when the missing module is one of the
    extra's `modules` (top-level names), unchanged when it is a deeper breakage. Stays a
    ModuleNotFoundError, so callers that catch ImportError still do (dask-style)."""
    if (error.name or "").split(".")[0] not in modules:
        raise error
    raise ModuleNotFoundError(
        f'{error}\n\n  {what} needs the [{extra}] extra: python -m pip install "imgsim[{extra}]"',
        name=error.name,
    ) from error
