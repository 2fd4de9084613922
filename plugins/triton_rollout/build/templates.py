"""Filling config.pbtxt templates: the serving image's own (tensorrtllm_backend's all_models) or a builder's own.

tensorrtllm_backend's ``tools/fill_template.py`` (v0.17.0, the release NGC 25.01 ships) replaces ``${name}``
anywhere in the text by safe substitution, gives ``max_queue_size`` the value 0 unless told otherwise, and
leaves every placeholder it has no value for as the literal ``${name}``; the image's model code then reads
such a literal parameter as unset (tests/data/tensorrtllm_backend_facts.json records how each one does).

Here the same substitution runs, with two differences that make a release fail at build time rather than
at load time:

- a placeholder the config cannot do without has no default: one outside a parameter's ``string_value``
  (``max_batch_size: ${...}``, ``data_type: ${...}``, ``backend: "${...}"``: Triton cannot even parse the
  config without it) or a parameter the builder names as required (read unconditionally, or needing a
  real value) left unfilled is an error naming it;
- an unfilled optional parameter is left out of the config instead of kept as ``${name}``: the image's code
  reads a missing parameter exactly as it reads the literal (facts file), and the project's loader refuses
  any ``${`` in a config (triton.config.validate_version).

Templates the project writes itself (``required_parameters=None``: the CPU demo's) have no optional parts:
every placeholder needs a value and the text is kept as written.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from triton_rollout.errors import BuildError

# tools/fill_template.py at v0.17.0 starts its substitutions from this (a value given wins).
FILL_DEFAULTS = {"max_queue_size": "0"}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ANY_PLACEHOLDER = re.compile(r"\$\{[^}]*\}?")
# A parameter whose whole value is one placeholder: the only place a placeholder may stay unfilled.
_WHOLE_VALUE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def strip_comments(text: str) -> str:
    """pbtxt without its ``#`` comments (a ``#`` inside a quoted string stays)."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        quote, escaped = "", False
        for i, ch in enumerate(line):
            if escaped:
                escaped = False
            elif quote:
                escaped = ch == "\\"
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                line = line[:i] + ("\n" if line.endswith("\n") else "")
                break
        out.append(line)
    return "".join(out)


def fill_template(text: str, values: Mapping[str, str], *, source: str,
                  required_parameters: Collection[str] | None = None) -> str:
    """``text`` with every ``${name}`` filled; see the module docstring for what may stay unfilled.

    ``required_parameters`` None: a template of the project's own, every placeholder required, text kept.
    Otherwise an image template: parameters not named in it are optional, and the result is the parsed
    config written back (the image's comments dropped, with a line naming ``source`` instead).
    """
    if required_parameters is None:
        missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1) not in values})
        if missing:
            raise BuildError(f"{source}: template variable(s) {', '.join(missing)} have no value",
                             hint="add them to the build spec / template values; an unfilled ${...} is never shipped")
        rendered = _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
        check_no_placeholders(rendered, source=source)
        return rendered
    return _fill_image_template(strip_comments(text), {**FILL_DEFAULTS, **values}, source=source,
                                required=frozenset(required_parameters))


def _fill_image_template(text: str, values: Mapping[str, str], *, source: str, required: frozenset[str]) -> str:
    from triton_rollout.triton.config import parse_config, to_text

    missing = {m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1) not in values}
    elsewhere = sorted(name for name in missing if _outside_string_values(name, text))
    if elsewhere:
        raise BuildError(f"{source}: required template placeholder(s) {', '.join(elsewhere)} have no value "
                         "(outside a parameter's string_value Triton cannot parse the config without them)",
                         hint="give them a value in the builder's template values (BuildSpec.template_values)")
    filled = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    cfg = parse_config(filled, source=f"filled {source}")
    unfilled = {key: m.group(1) for key, p in cfg.parameters.items()
                if (m := _WHOLE_VALUE.fullmatch(p.string_value)) and m.group(1) in missing}
    needed = sorted(f"{key} (${{{name}}})" for key, name in unfilled.items() if key in required)
    if needed:
        raise BuildError(f"{source}: required parameter(s) {', '.join(needed)} have no value",
                         hint="the image's model code reads them unconditionally or needs a real value; give the "
                              "placeholder a value in the builder's template values (BuildSpec.template_values)")
    for key in unfilled:
        del cfg.parameters[key]  # read as unset by the image's code, like upstream's leftover literal
    rendered = f"# {cfg.name or source}: filled by triton_rollout build from {source}\n" + to_text(cfg)
    check_no_placeholders(rendered, source=source)
    return rendered


def _outside_string_values(name: str, text: str) -> bool:
    """Whether ``${name}`` occurs anywhere but as a parameter's whole string_value."""
    placeholder = re.escape(f"${{{name}}}")
    anywhere = len(re.findall(placeholder, text))
    return anywhere > len(re.findall(rf'string_value\s*:\s*"{placeholder}"', text))


def check_no_placeholders(text: str, *, source: str) -> None:
    left = sorted(set(_ANY_PLACEHOLDER.findall(text)))
    if left:
        raise BuildError(f"{source}: unfilled placeholder(s) {', '.join(left)} after rendering",
                         hint="fix the template or the value that contains '${'; Triton would keep it as text")
