"""Reading YAML: config files, the presets shipped with the package, and ``key=value`` overrides.

Torch-free, so that the command line lists presets and parses flags without loading torch;
:mod:`softintrovae.config` builds validated configs on top of it. Every document is read with a
safe loader that also refuses a mapping holding a key twice (plain YAML keeps the last one
silently, so a typo'd copy of a key would win without a word).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader names it itself
                    continue
                if first is not None:
                    where = f"line {line}" if first == line else f"lines {first} and {line}"
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice ({where})", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, what: str) -> Any:
    """The YAML document ``text`` as plain data (safe: no tags that build objects); one line naming
    ``what`` (e.g. ``config file 'c.yaml'``), the line and the problem when it is not valid YAML."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f": {problem}" if problem and "twice" in problem else ""
        raise UserError(f"{what} is not valid YAML{where}{detail}") from None
    finally:
        loader.dispose()


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a config file (or a run's config.yaml) holds, unvalidated; one line when it cannot be read."""
    what = f"config file {str(path)!r}"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} is not a UTF-8 text file") from None
    data = load_yaml(text, what)
    if not isinstance(data, dict):
        raise UserError(f"{what} must hold a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with a YAML-typed value (``1e-4``, ``true``, ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like section.key=value")
    value = load_yaml(raw, f"the value of override {text!r}") if raw.strip() else ""
    if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``method.beta_kl``) in nested plain data; unknown keys fail at build time."""
    result = deep_merge(data, {})
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {dotted!r}: {part!r} is not a config section")
            node[part] = child = dict(child)
            node = child
        node[leaf] = value
    return result


def _preset_files() -> list[Any]:
    folder = resources.files("softintrovae") / "presets"
    return sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)


def load_presets() -> dict[str, dict[str, Any]]:
    """All presets by name, unvalidated; each preset file holds ``defaults`` and a ``presets`` mapping."""
    presets: dict[str, dict[str, Any]] = {}
    for path in _preset_files():
        content = load_yaml(path.read_text(), f"preset file {path.name!r}")
        defaults = content.get("defaults", {})
        for name, body in content["presets"].items():
            presets[name] = deep_merge(deep_merge(defaults, body), {"name": name})
    return presets


__all__ = ["apply_overrides", "deep_merge", "load_presets", "load_yaml", "parse_override", "read_config_file"]
