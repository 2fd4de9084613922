"""Reading the models config file: YAML or JSON, ``${VAR}`` references expanded, defaults merged into each model.

Every error names the file and the field, because the DAG factory loads this at parse time and a bad
file shows up as a DAG import error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from triton_rollout.config.model import ModelDeployment, ProjectConfig, ReconcileSettings
from triton_rollout.config.validators import check_keys, fail, field_names, load_section, mapping
from triton_rollout.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
# Far beyond any real models file; a YAML alias counts each time it is used, so a "billion laughs" document
# (a few lines of nested aliases) is refused instead of keeping the DAG processor busy for minutes.
MAX_VALUES = 100_000
MAX_DEPTH = 64


def load_project(data: object) -> ProjectConfig:
    """``{"defaults", "models", "reconcile"}``: the models (see load_models) plus the reconcile settings."""
    root = mapping(data, "<root>")
    reconcile = load_section(ReconcileSettings, root.get("reconcile", {}), "reconcile")
    return ProjectConfig(models=load_models({k: v for k, v in root.items() if k != "reconcile"}),
                         reconcile=reconcile)


def load_models(data: object) -> list[ModelDeployment]:
    """``{"defaults": {...}, "models": [...]}``: each model's settings override ``defaults`` (deep merge).

    ``defaults`` takes the same keys as a model except name (release_prefix, triton_url, schedule,
    kubernetes, smoke, ...).
    """
    root = mapping(data, "<root>")
    check_keys(root, {"defaults", "models"}, "<root>")
    defaults = dict(mapping(root.get("defaults", {}), "defaults"))
    # Older files put only the kubernetes block under defaults; both forms are accepted.
    model_keys = field_names(ModelDeployment) - {"name"}
    if defaults and not set(defaults) & model_keys:
        defaults = {"kubernetes": defaults}
    check_keys(defaults, model_keys, "defaults")
    models = root.get("models")
    if not isinstance(models, list) or not models:
        raise fail("models", "must be a non-empty list")
    out: list[ModelDeployment] = []
    seen: set[str] = set()
    for i, raw in enumerate(models):
        raw = _deep_merge(defaults, mapping(raw, f"models[{i}]"))
        model = ModelDeployment.from_dict(raw, f"models[{i}]")
        if model.name in seen:
            raise fail(f"models[{i}].name", f"duplicate model name {model.name!r}")
        seen.add(model.name)
        out.append(model)
    return out


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def expand_env(value: Any, path: str = "<root>", environ: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed config document.

    One config file then serves the local stack (whose ports are chosen at start) and a real cluster.
    A string that is exactly one reference and expands to "" becomes null (the field's default), so
    ``endpoint_url: ${AWS_ENDPOINT_URL:-}`` means "AWS itself" when the variable is unset.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, Mapping):
        return {k: expand_env(v, f"{path}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            raise fail(path, f"refers to ${{{name}}}, which is not set in the environment "
                             f"(set it, or give a default: ${{{name}:-value}})")
        return default

    out = _ENV_REF.sub(sub, value)
    if _ENV_REF.fullmatch(value):
        if out == "":
            return None
        # A whole-value reference keeps YAML's scalar types: "30" is a number, "true" a boolean.
        with contextlib.suppress(ValueError):
            typed = json.loads(out)
            if isinstance(typed, int | float | bool):
                return typed
    return out


def _check_shape(data: object, file: Path) -> None:
    """Refuse a document with more than MAX_VALUES values or nested deeper than MAX_DEPTH (one pass, no
    recursion, stops at the first excess)."""
    count = 0
    pending: list[tuple[object, int]] = [(data, 0)]
    while pending:
        node, depth = pending.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise ConfigError(f"{file} holds more than {MAX_VALUES} values or nests deeper than {MAX_DEPTH} levels "
                              "(YAML aliases count each time they are used): not a models config file")
        if isinstance(node, Mapping):
            pending.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            pending.extend((v, depth + 1) for v in node)


def read_config_file(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> ProjectConfig:
    """Load the models config file (YAML or JSON), expanding environment references (from ``environ``,
    default the process environment); errors name the file."""
    file = Path(path)
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the models config file {file}: {exc}",
                          hint="set TRITON_ROLLOUT_MODELS to the config file's path") from exc
    try:
        if file.suffix in (".yaml", ".yml"):
            # Imported here: PyYAML is not one of the pod image's declared dependencies (pyproject.toml).
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(str(exc)) from exc
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{file} is not valid {file.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from exc
    except RecursionError:  # both parsers recurse per nesting level
        raise ConfigError(f"{file} is nested too deeply to be a models config file") from None
    _check_shape(data, file)
    try:
        return load_project(expand_env(data, environ=environ))
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc.message}", hint=exc.hint) from exc
