"""Error types. Every error a user can cause names what to fix: the file, line and field, or the config key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path


class CausalNegError(Exception):
    """Base class for errors raised by causalneg on bad input or configuration."""


class DataError(CausalNegError):
    """Malformed input data. ``str()`` reads ``<path>:<line>: field '<field>': <message>``."""

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        what = f"field '{self.field}': " if self.field is not None else ""
        return f"{where}{what}{self.message}"

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str | None, int | None, str | None]]:
        return (DataError, (self.message, self.path, self.line, self.field))


class ConfigError(CausalNegError):
    """A configuration value is missing or invalid; the message names the key."""


class MissingDependencyError(CausalNegError):
    """An optional dependency is not installed; the message gives the command that installs it."""

    def __init__(self, package: str, extra: str | None = None, hint: str | None = None) -> None:
        install = f"pip install 'causalneg[{extra}]'" if extra else f"pip install {package}"
        message = f"'{package}' is required for this feature but is not installed; run: {install}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


def reject_unknown_keys(values: Mapping[str, object], known: Iterable[str], where: str) -> None:
    """Raise :class:`ConfigError` naming the keys of ``values`` (config group ``where``) that are not ``known``."""
    known = sorted(known)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {where} keys {unknown}; known: {known}")
