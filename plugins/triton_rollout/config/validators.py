"""The config validators: each checks one value and names it by its path in the source document.

A config file is edited by hand, so every error names the field the way it is written there
(``models[2].kubernetes.resources.sync.limits.memory``). The build spec (build/spec.py) uses the same
functions, so its errors read the same. This module imports nothing of the package but the errors:
anything may import it without an import circle.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from triton_rollout.errors import ConfigError

# RFC 1123 label (namespaces, service accounts) and subdomain (secrets, PVC claims) names.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A Kubernetes resource quantity: 500m, 2, 1.5, 4Gi, 100M, 1e3.
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
# A Kubernetes label key's name part, and a label value (which may be empty).
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# registry/repo[:tag][@digest]; no whitespace, no shell characters.
IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[a-f0-9]{64})?$")
IAM_ROLE = re.compile(r"^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")
# A container resource name: cpu, memory, nvidia.com/gpu.
RESOURCE_NAME = re.compile(r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")


def fail(path: str, message: str) -> ConfigError:
    """The error for the field at ``path``; the caller raises it (``raise fail(...)``)."""
    return ConfigError(f"config field '{path}': {message}")


def mapping(value: object, path: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping (a YAML/JSON object)."""
    if not isinstance(value, Mapping):
        raise fail(path, f"must be a mapping, got {type(value).__name__}")
    return value


def check_keys(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    """Refuse keys outside ``allowed``: a misspelt key must not silently fall back to a default."""
    # YAML keys may be numbers, booleans, dates or null: sort by repr so they can be named, not compared.
    unknown = sorted(set(data) - allowed, key=repr)
    if unknown:
        raise fail(path, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def field_names(cls: type) -> set[str]:
    """The keys a config document may set on dataclass ``cls``: its fields less the underscored internals."""
    return {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def load_section(cls: type, data: object, path: str) -> Any:
    """An instance of a small settings dataclass from a mapping of its fields, rejecting unknown keys."""
    data = mapping(data, path)
    check_keys(data, field_names(cls), path)
    return cls(**dict(data), _path=path)


def string(value: object, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    """A non-empty string, matching ``pattern`` (described as ``what`` in the error) when given."""
    if not isinstance(value, str) or not value:
        raise fail(path, f"must be a non-empty string, got {value!r}")
    # fullmatch: the patterns' '$' would also accept a trailing newline.
    if pattern is not None and not pattern.fullmatch(value):
        raise fail(path, f"{value!r} is not a valid {what}")
    return value


def integer(value: object, path: str, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool) in ``[minimum, maximum]``; no upper bound when ``maximum`` is None."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise fail(path, f"must be {bound}, got {value}")
    return value


def number(value: object, path: str, minimum: float, maximum: float | None = None) -> float:
    """An int or float (not a bool) in ``[minimum, maximum]``, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(path, f"must be a number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum:g}" if maximum is None else f"between {minimum:g} and {maximum:g}"
        raise fail(path, f"must be {bound}, got {value!r}")
    return float(value)


def boolean(value: object, path: str) -> bool:
    """A real bool: YAML's ``yes`` / ``1`` are refused rather than guessed."""
    if not isinstance(value, bool):
        raise fail(path, f"must be true or false, got {value!r}")
    return value


def labels(value: object, path: str) -> dict[str, str]:
    """A mapping of Kubernetes label keys (``[prefix/]name``) to label values (node selectors)."""
    out: dict[str, str] = {}
    for key, val in mapping(value, path).items():
        prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        if not name or not LABEL_NAME.fullmatch(name) or (prefix and not DNS_SUBDOMAIN.fullmatch(prefix)):
            raise fail(f"{path}.{key}", "is not a valid Kubernetes label key")
        if not isinstance(val, str) or not LABEL_VALUE.fullmatch(val):
            raise fail(f"{path}.{key}", f"label value {val!r} is not valid (<= 63 chars, alphanumeric, -_.)")
        out[key] = val
    return out


def url(value: object, path: str) -> str:
    """An http(s) URL with a host, without its trailing slashes."""
    text = string(value, path)
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise fail(path, f"must be an http(s) URL, got {text!r}")
    return text.rstrip("/")
