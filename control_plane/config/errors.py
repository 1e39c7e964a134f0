"""What can be wrong with a configuration file: issues, the error that lists them, and where.

An issue names its key path (``providers.openai.type``, ``routes[2].path``);
``_Issues`` collects every one, so a file is checked in full, never stopped at
the first problem. ``_join`` and ``_index`` build those key paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["ConfigError", "ConfigIssue"]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a file, at a key path ("" for the file itself)."""

    path: str
    message: str

    def __str__(self) -> str:
        # A root-level issue (syntax error, unreadable file) has no path to show.
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A configuration file is invalid; ``issues`` lists every problem found."""

    def __init__(self, source: str, issues: Iterable[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__(source, self.issues)  # keeps the exception picklable

    def __str__(self) -> str:
        count = _plural(len(self.issues), "error")
        return "\n".join([f"{self.source}: {count}", *(f"  {issue}" for issue in self.issues)])


@dataclass
class _Issues:
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(ConfigIssue(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ConfigIssue(path, message))


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
