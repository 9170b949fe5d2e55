"""Read Kubernetes manifests from files and directories (multi-document YAML or JSON)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ManifestError", "load_documents"]

_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A file that cannot be read as manifests; the message names the file and line."""


def _files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and child.suffix in _SUFFIXES:
                yield child
    elif path.is_file():
        yield path
    else:
        raise ManifestError(f"{path}: no such file or directory")


def load_documents(paths: list[str]) -> list[dict[str, Any]]:
    """Every mapping document in the given files/dirs, in a stable (sorted path) order."""
    docs: list[dict[str, Any]] = []
    for raw in paths:
        for file in _files(Path(raw)):
            try:
                loaded = list(yaml.safe_load_all(file.read_text()))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f":{mark.line + 1}" if mark is not None else ""
                raise ManifestError(f"{file}{where}: not valid YAML: {exc}") from exc
            for i, doc in enumerate(loaded):
                if doc is None:
                    continue
                if not isinstance(doc, dict):
                    raise ManifestError(f"{file}: document {i + 1} is not a mapping")
                docs.append(doc)
    return docs
