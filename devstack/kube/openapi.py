"""OpenAPI v3 documents for the group-versions the emulator serves, and server-side field validation.

kubectl 1.32 reads ``/openapi/v3`` (an index of group-version documents) and, for ``apply`` / ``create``
with the default ``--validate=strict``, looks in the document for a PATCH operation carrying the object's
``x-kubernetes-group-version-kind`` and a ``fieldValidation`` query parameter (k8s.io/cli-runtime
pkg/resource/query_param_verifier_v3.go). Finding one, it skips client-side validation and sends
``fieldValidation=Strict``, so the server must reject unknown fields, as the real one does with
``strict decoding error: unknown field "spec.containers[0].imagee"``
(k8s.io/apimachinery pkg/runtime/serializer/json strict decoding).

The schemas come offline from the kubernetes-validate package (the upstream JSON schemas, converted to
JSON Schema: ``$defs`` refs and ``["string", "null"]`` types); they are turned back into OpenAPI v3
components here, and only for the kinds this emulator serves.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from functools import cache
from pathlib import Path
from typing import Any

from .store import ApiError, Obj

SCHEMA_VERSION = "v1.31.0"  # matches what /version reports

# Documents are built once per process; the lock keeps two first requests from building them twice.
_lock = threading.Lock()


def _schema_dir() -> Path:
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or spec.origin is None:
        raise ApiError(503, "ServiceUnavailable", "kubernetes-validate is not installed: no OpenAPI schemas")
    return Path(spec.origin).parent / "kubernetes-json-schema" / f"{SCHEMA_VERSION}-local"


@cache
def definitions() -> dict[str, Obj]:
    """Upstream definitions by name (io.k8s.api.core.v1.Pod, ...), as OpenAPI v3 schemas."""
    raw = json.loads((_schema_dir() / "_definitions.json").read_text())["$defs"]
    return {name: _to_openapi(schema) for name, schema in raw.items()}


def _to_openapi(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_to_openapi(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: Obj = {}
    for key, value in schema.items():
        if key == "$ref":
            continue
        if key == "type" and isinstance(value, list):
            kinds = [t for t in value if t != "null"]
            if len(kinds) == 1:
                out["type"] = kinds[0]
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {k: _to_openapi(v) for k, v in value.items()}
        else:
            out[key] = _to_openapi(value)
    if "$ref" in schema:
        # Real v3 documents wrap a described ref in allOf (kube-openapi builder3).
        out["allOf"] = [{"$ref": schema["$ref"].replace("#/$defs/", "#/components/schemas/")}]
    if "oneOf" in out and all(len(o) == 1 and "type" in o for o in out["oneOf"]):
        # IntOrString / Quantity: upstream marks them x-kubernetes-int-or-string / a string format.
        types = {o["type"] for o in out.pop("oneOf")}
        if types == {"string", "integer"}:
            out.update({"x-kubernetes-int-or-string": True, "format": "int-or-string"})
        else:
            out.update({"type": "string", "format": "quantity"} if "number" in types else {})
    return out


def _ref_name(schema: Obj) -> str | None:
    for sub in schema.get("allOf") or []:
        ref = sub.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            return ref.rsplit("/", 1)[1]
    return None


@cache
def definition_for(group: str, version: str, kind: str) -> str | None:
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            if (gvk.get("group"), gvk.get("version"), gvk.get("kind")) == (group, version, kind):
                return name
    return None


def _reachable(names: list[str]) -> dict[str, Obj]:
    defs = definitions()
    seen: dict[str, Obj] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen[name] = defs[name]

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str):
                    todo.append(ref.rsplit("/", 1)[1])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(defs[name])
    return dict(sorted(seen.items()))


def _param(name: str, where: str = "query", type_: str = "string", required: bool = False) -> Obj:
    return {"name": name, "in": where, "required": required, "schema": {"type": type_, "uniqueItems": True}}


_JSON = ("application/json", "application/yaml")
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json")


def _op(action: str, gvk: Obj, schema_ref: str, op_id: str, params: list[Obj], body: str | None = None) -> Obj:
    ref = {"$ref": f"#/components/schemas/{schema_ref}"}
    op: Obj = {
        "operationId": op_id, "parameters": params, "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "responses": {"200": {"description": "OK", "content": {t: {"schema": ref} for t in _JSON}},
                      "401": {"description": "Unauthorized"}},
    }
    if body == "object":
        op["requestBody"] = {"required": True, "content": {"*/*": {"schema": ref}}}
    elif body == "patch":
        patch_ref = {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}
        op["requestBody"] = {"required": True, "content": {t: {"schema": patch_ref} for t in _PATCH_TYPES}}
    if action in ("post", "put"):
        op["responses"]["201"] = op["responses"]["200"]
    return op


def group_version_doc(group: str, version: str, resources: dict[str, tuple[str, bool, bool]]) -> Obj:
    """The document for one group-version: its paths (with the write parameters kubectl probes for) and
    every schema they reach. ``resources``: plural -> (kind, namespaced, read_only)."""
    prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    paths: Obj = {}
    roots: list[str] = ["io.k8s.apimachinery.pkg.apis.meta.v1.Status",
                        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
                        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"]
    write = [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]
    for plural, (kind, namespaced, read_only) in resources.items():
        name = definition_for(group, version, kind)
        list_name = definition_for(group, version, f"{kind}List")
        gvk = {"group": group, "version": version, "kind": kind}
        if name is not None and list_name is None:
            # Create-only kinds (SelfSubjectAccessReview, ...): just the POST, as upstream serves them.
            roots.append(name)
            paths[f"{prefix}/{plural}"] = {"post": _op("post", gvk, name, f"create{kind}", write, "object"),
                                           "parameters": []}
            continue
        if name is None or list_name is None:
            continue
        roots += [name, list_name]
        base = f"{prefix}/namespaces/{{namespace}}/{plural}" if namespaced else f"{prefix}/{plural}"
        scope = [_param("namespace", "path", required=True)] if namespaced else []
        item_params = [*scope, _param("name", "path", required=True)]
        tag = kind + ("Namespaced" if namespaced else "")
        collection: Obj = {"get": _op("list", gvk, list_name, f"list{tag}",
                                      [_param("labelSelector"), _param("fieldSelector"),
                                       _param("resourceVersion"), _param("watch", type_="boolean")])}
        item: Obj = {"get": _op("get", gvk, name, f"read{tag}", [])}
        if not read_only:
            collection["post"] = _op("post", gvk, name, f"create{tag}", write, "object")
            item["put"] = _op("put", gvk, name, f"replace{tag}", write, "object")
            item["patch"] = _op("patch", gvk, name, f"patch{tag}", [*write, _param("force", type_="boolean")],
                                "patch")
            item["delete"] = _op("delete", gvk, "io.k8s.apimachinery.pkg.apis.meta.v1.Status", f"delete{tag}",
                                 [_param("dryRun"), _param("gracePeriodSeconds", type_="integer")])
        paths[base] = {**collection, "parameters": scope}
        paths[f"{base}/{{name}}"] = {**item, "parameters": item_params}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SCHEMA_VERSION},
            "paths": paths, "components": {"schemas": _reachable(roots)}}


class OpenApi:
    """Serves /openapi/v3 and its documents, built once on first use (the schemas take ~0.3 s to load)."""

    def __init__(self, group_versions: dict[str, dict[str, tuple[str, bool, bool]]]) -> None:
        self.group_versions = group_versions  # "api/v1", "apis/storage.k8s.io/v1" -> resources
        self._docs: dict[str, bytes] = {}

    def _doc(self, gv_path: str) -> bytes:
        with _lock:
            if gv_path not in self._docs:
                parts = gv_path.split("/")
                group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
                doc = group_version_doc(group, version, self.group_versions[gv_path])
                self._docs[gv_path] = json.dumps(doc, separators=(",", ":")).encode()
            return self._docs[gv_path]

    def index(self) -> Obj:
        paths = {}
        for gv_path in self.group_versions:
            digest = hashlib.sha512(self._doc(gv_path)).hexdigest()[:128].upper()
            paths[gv_path] = {"serverRelativeURL": f"/openapi/v3/{gv_path}?hash={digest}"}
        return {"paths": paths}

    def document(self, path: str) -> bytes | None:
        """The document for /openapi/v3/<gv path>, or None when this emulator does not serve it."""
        gv_path = path.removeprefix("/openapi/v3/")
        return self._doc(gv_path) if gv_path in self.group_versions else None


def unknown_fields(group: str, version: str, kind: str, obj: Obj) -> list[str]:
    """Paths of the fields in obj that the kind's schema does not know, as strict decoding names them."""
    name = definition_for(group, version, kind)
    if name is None:
        return []
    defs = definitions()
    found: list[str] = []

    def resolve(schema: Obj) -> Obj:
        ref = _ref_name(schema)
        return defs.get(ref, schema) if ref else schema

    def walk(schema: Obj, value: Any, path: str) -> None:
        schema = resolve(schema)
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        if isinstance(value, dict):
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, sub in value.items():
                where = f"{path}.{key}" if path else key
                if props is not None and key in props:
                    walk(props[key], sub, where)
                elif isinstance(extra, dict):
                    walk(extra, sub, where)
                elif props is not None and extra is None:
                    found.append(where)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, sub in enumerate(value):
                walk(schema["items"], sub, f"{path}[{i}]")

    walk(defs[name], obj, "")
    return found
