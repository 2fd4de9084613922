"""Authentication, impersonation and RBAC authorization, as the apiserver's filter chain does them.

- Authentication: the admin token the emulator's kubeconfig carries (and, as the apiserver's old
  insecure port did, a request without credentials on the plain-HTTP port) is ``devstack-admin`` in
  ``system:masters``; without credentials on the TLS port (``serving_cert``) it is system:anonymous.
  ServiceAccount tokens come from the TokenRequest API (``serviceaccounts/<name>/token``): opaque random
  strings mapped to ``system:serviceaccount:<ns>:<name>`` with the groups ``system:serviceaccounts``,
  ``system:serviceaccounts:<ns>`` and ``system:authenticated``; a token stops working when its
  ServiceAccount is deleted (as bound tokens do), and one bound to a pod (``boundObjectRef``, what the
  kubelet asks for a pod's projected token) also when that pod is gone. Any other token is 401 Unauthorized.
- Impersonation (``Impersonate-User`` / ``Impersonate-Group``), checked with the ``impersonate`` verb
  (apiserver pkg/endpoints/filters/impersonation.go).
- Authorization: ``system:masters`` is allowed everything (the privileged-groups authorizer); everyone
  else gets what Roles / ClusterRoles bound by RoleBindings / ClusterRoleBindings grant
  (plugin/pkg/auth/authorizer/rbac/rbac.go and rbac/v1 evaluation helpers). Denials are 403 Forbidden
  with the apiserver's message (responsewriters/errors.go forbiddenMessage, apierrors.NewForbidden).
- authorization.k8s.io/v1 SelfSubjectAccessReview, SelfSubjectRulesReview and SubjectAccessReview,
  which is what ``kubectl auth can-i`` (and ``--list``) asks.

Not covered: privilege-escalation checks on writing Roles / bindings (escalate / bind verbs), aggregated
ClusterRoles (aggregationRule), the default admin / edit / view ClusterRoles, client certificates, token
expiry and audiences, Impersonate-Uid / Impersonate-Extra-*, LocalSubjectAccessReview.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from .store import ApiError, Obj, Store

ADMIN_TOKEN = "devstack-emulator"  # what KubeEmulator.write_kubeconfig puts in the admin kubeconfig
ADMIN = "devstack-admin"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
SA_PREFIX = "system:serviceaccount:"
RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


ADMIN_USER = User(ADMIN, (MASTERS, AUTHENTICATED))


def sa_user(namespace: str, name: str) -> User:
    # apiserver pkg/authentication/serviceaccount: MakeUsername / MakeGroupNames
    return User(f"{SA_PREFIX}{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED))


@dataclass
class Attributes:
    """authorizer.Attributes: what the request asks, from the path alone (apiserver request.RequestInfo)."""

    user: User
    verb: str
    resource_request: bool
    path: str = ""
    namespace: str = ""
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_attributes(method: str, path: str, q: dict[str, str], user: User) -> Attributes:
    """apiserver pkg/endpoints/request/requestinfo.go NewRequestInfo: /api/v1/... and /apis/<g>/<v>/...
    are resource requests (shorter paths, such as /api/v1 itself, are non-resource), the verb follows the
    method, a collection turns get into list / watch and delete into deletecollection."""
    parts = [p for p in path.split("/") if p]
    non_resource = Attributes(user, method.lower(), False, path=path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    group = ""
    rest = parts[1:]
    if parts[0] == "apis":
        if len(rest) < 3:
            return non_resource
        group, rest = rest[0], rest[1:]
    rest = rest[1:]  # the version
    attrs = Attributes(user, _VERBS.get(method, method.lower()), True, path=path, api_group=group)
    if rest[0] == "namespaces" and len(rest) > 1:
        attrs.namespace = rest[1]  # also the namespace object's own: /api/v1/namespaces/<ns>
        if len(rest) > 2:
            rest = rest[2:]  # /namespaces/<ns>/<resource>/...
    attrs.resource = rest[0]
    if len(rest) > 1:
        attrs.name = rest[1]
    if len(rest) > 2:
        attrs.subresource = rest[2]
    if not attrs.name:
        if method == "GET":
            attrs.verb = "watch" if (q.get("watch") or "").lower() in ("true", "1") else "list"
        elif method == "DELETE":
            attrs.verb = "deletecollection"
        if attrs.verb in ("list", "watch", "deletecollection"):
            # A list narrowed to one name by fieldSelector=metadata.name=x is about that name.
            sel = q.get("fieldSelector") or ""
            if sel.startswith("metadata.name=") and "," not in sel:
                attrs.name = sel.removeprefix("metadata.name=")
    return attrs


def serving_cert(state_dir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost (made once per state dir) for the TLS port:
    kubectl and client-go send credentials only over TLS (clientcmd ClientConfig reads a kubeconfig's
    user only when IsConfigTransportTLS), so ServiceAccount kubeconfigs point there."""
    cert, key = state_dir / "apiserver.crt", state_dir / "apiserver.key"
    if cert.exists() and key.exists():
        return cert, key
    from cryptography import x509  # imported here: only the TLS port needs it
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devstack-kube")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(private, hashes.SHA256()))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key.chmod(0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


# -- rule evaluation (pkg/apis/rbac/v1/evaluation_helpers.go) -----------------------------------------

def _verb_matches(rule: Obj, verb: str) -> bool:
    return any(v in ("*", verb) for v in rule.get("verbs") or [])


def _group_matches(rule: Obj, group: str) -> bool:
    return any(g in ("*", group) for g in rule.get("apiGroups") or [])


def _resource_matches(rule: Obj, combined: str, sub: str) -> bool:
    for r in rule.get("resources") or []:
        if r in ("*", combined):
            return True
        if sub and r == f"*/{sub}":  # "*/log": that subresource of every resource
            return True
    return False


def _name_matches(rule: Obj, name: str) -> bool:
    names = rule.get("resourceNames") or []
    return not names or name in names


def _url_matches(rule: Obj, path: str) -> bool:
    for u in rule.get("nonResourceURLs") or []:
        if u == "*" or u == path or (u.endswith("*") and path.startswith(u[:-1])):
            return True
    return False


def rule_allows(attrs: Attributes, rule: Obj) -> bool:
    if attrs.resource_request:
        combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        return (_verb_matches(rule, attrs.verb) and _group_matches(rule, attrs.api_group)
                and _resource_matches(rule, combined, attrs.subresource) and _name_matches(rule, attrs.name))
    return _verb_matches(rule, attrs.verb) and _url_matches(rule, attrs.path)


def _applies_to(user: User, subject: Obj, binding_ns: str) -> bool:
    """plugin/pkg/auth/authorizer/rbac/subject_locator.go appliesToUser."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns  # a RoleBinding's SA subject defaults to its namespace
        return bool(ns) and user.name == f"{SA_PREFIX}{ns}:{name}"
    return False


def _describe_subject(subject: Obj, binding_ns: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_ns}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


class Rbac:
    """Tokens, the authorizer over the store's RBAC objects, and the review APIs."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # token -> (namespace, name, ServiceAccount uid, bound pod (name, uid) or None)
        self._tokens: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {}
        self._lock = threading.Lock()

    # -- authentication --------------------------------------------------------------------------------

    def authenticate(self, headers: Message, secure: bool) -> User:
        """The caller. Without credentials: the admin on the plain-HTTP port (as the apiserver's old
        insecure port skipped authentication and authorization; kubectl sends no token over plain HTTP),
        system:anonymous on the TLS port."""
        auth = headers.get("Authorization") or ""
        if not auth:
            return User("system:anonymous", (UNAUTHENTICATED,)) if secure else ADMIN_USER
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token == ADMIN_TOKEN:
            return ADMIN_USER
        with self._lock:
            found = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if found is not None:
            ns, name, uid, bound = found
            sa = self.store.find("serviceaccounts", ns, name)
            pod = self.store.find("pods", ns, bound[0]) if bound else None
            # pkg/serviceaccount/claims.go Validate: the ServiceAccount, and a bound pod, must still be there.
            if sa is not None and sa["metadata"].get("uid") == uid and \
                    (bound is None or (pod is not None and pod["metadata"].get("uid") == bound[1])):
                return sa_user(ns, name)
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def token_request(self, ns: str, name: str, body: Obj | None) -> Obj:
        """POST serviceaccounts/<name>/token (authentication.k8s.io/v1 TokenRequest)."""
        sa = self.store.get("serviceaccounts", ns, name)
        spec = dict((body or {}).get("spec") or {})
        bound = _bound_pod(self.store, ns, spec.get("boundObjectRef"))
        token = "devstack-sa-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (ns, name, sa["metadata"]["uid"], bound)
        spec.setdefault("expirationSeconds", 3600)
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": None}, "spec": spec,
                "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}}

    def impersonate(self, user: User, headers: Message) -> User:
        """apiserver pkg/endpoints/filters/impersonation.go: each impersonated name and group must be
        allowed the ``impersonate`` verb; an impersonated ServiceAccount without groups gets its groups,
        and every non-anonymous impersonated user gets system:authenticated."""
        name = headers.get("Impersonate-User")
        groups = list(headers.get_all("Impersonate-Group") or [])
        if not name:
            if groups:
                raise ApiError(500, "InternalError", "requested user:   without impersonating a user")
            return user
        checks = []
        if name.startswith(SA_PREFIX) and name.count(":") == 3:
            sa_ns, sa_name = name.removeprefix(SA_PREFIX).split(":")
            checks.append(Attributes(user, "impersonate", True, namespace=sa_ns, resource="serviceaccounts",
                                     name=sa_name))
            if not groups:
                groups = list(sa_user(sa_ns, sa_name).groups[:2])
        else:
            checks.append(Attributes(user, "impersonate", True, resource="users", name=name))
        checks += [Attributes(user, "impersonate", True, resource="groups", name=g) for g in groups]
        for attrs in checks:
            allowed, reason = self.authorize(attrs)
            if not allowed:
                raise forbidden(attrs, reason)
        if name != "system:anonymous" and not {AUTHENTICATED, UNAUTHENTICATED} & set(groups):
            groups.append(AUTHENTICATED)
        return User(name, tuple(groups))

    # -- authorization ---------------------------------------------------------------------------------

    def _bindings(self, namespace: str) -> list[tuple[Obj, Obj | None, str]]:
        """(binding, its role or None when missing, description prefix) that apply in namespace."""
        out = []
        crbs, _ = self.store.list("clusterrolebindings", None)
        for b in crbs:
            ref = b.get("roleRef") or {}
            role = self.store.find("clusterroles", "", ref.get("name", ""))
            out.append((b, role, f'ClusterRoleBinding "{b["metadata"]["name"]}" of ClusterRole "{ref.get("name")}"'))
        if namespace:
            rbs, _ = self.store.list("rolebindings", namespace)
            for b in rbs:
                ref = b.get("roleRef") or {}
                if ref.get("kind") == "ClusterRole":
                    role = self.store.find("clusterroles", "", ref.get("name", ""))
                else:
                    role = self.store.find("roles", namespace, ref.get("name", ""))
                out.append((b, role, f'RoleBinding "{b["metadata"]["name"]}/{namespace}" of '
                                     f'{ref.get("kind")} "{ref.get("name")}"'))
        return out

    def authorize(self, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason) as the RBAC authorizer's Authorize answers (rbac.go): the reason names the
        binding that allowed it; a denial's reason lists only the bindings whose role is missing."""
        if MASTERS in attrs.user.groups:
            return True, ""
        errors = []
        for binding, role, describe in self._bindings(attrs.namespace if attrs.resource_request else ""):
            ns = binding["metadata"].get("namespace", "")
            subject = next((s for s in binding.get("subjects") or [] if _applies_to(attrs.user, s, ns)), None)
            if subject is None:
                continue
            if role is None:
                ref = binding.get("roleRef") or {}
                kind = "clusterrole" if ref.get("kind") == "ClusterRole" else "role"
                errors.append(f'{kind}.{RBAC_GROUP} "{ref.get("name")}" not found')
                continue
            if any(rule_allows(attrs, r) for r in role.get("rules") or []):
                return True, f"RBAC: allowed by {describe} to {_describe_subject(subject, ns)}"
        return False, f"RBAC: [{', '.join(errors)}]" if errors else ""

    def check(self, attrs: Attributes) -> None:
        allowed, reason = self.authorize(attrs)
        if not allowed:
            raise forbidden(attrs, reason)

    def rules_for(self, user: User, namespace: str) -> tuple[list[Obj], list[Obj]]:
        """(resource rules, non-resource rules) that apply to user in namespace (rule_resolver VisitRulesFor)."""
        resource_rules, url_rules = [], []
        for binding, role, _ in self._bindings(namespace):
            ns = binding["metadata"].get("namespace", "")
            if role is None or not any(_applies_to(user, s, ns) for s in binding.get("subjects") or []):
                continue
            for r in role.get("rules") or []:
                if r.get("nonResourceURLs"):
                    url_rules.append({"verbs": r.get("verbs") or [], "nonResourceURLs": r["nonResourceURLs"]})
                else:
                    rule = {"verbs": r.get("verbs") or [], "apiGroups": r.get("apiGroups") or [],
                            "resources": r.get("resources") or []}
                    if r.get("resourceNames"):
                        rule["resourceNames"] = r["resourceNames"]
                    resource_rules.append(rule)
        return resource_rules, url_rules

    # -- authorization.k8s.io/v1 reviews -----------------------------------------------------------------

    def review(self, resource: str, caller: User, body: Obj | None) -> Obj:
        body = body if isinstance(body, dict) else {}
        spec = dict(body.get("spec") or {})
        kind = REVIEWS[resource]
        out: Obj = {"kind": kind, "apiVersion": "authorization.k8s.io/v1",
                    "metadata": {"creationTimestamp": None}, "spec": spec}
        if resource == "selfsubjectrulesreviews":
            # From RBAC alone (system:masters' "*" comes from the seeded cluster-admin binding).
            rules, urls = self.rules_for(caller, spec.get("namespace") or "")
            out["status"] = {"resourceRules": rules, "nonResourceRules": urls, "incomplete": False}
            return out
        if resource == "subjectaccessreviews":
            if not spec.get("user") and not spec.get("groups"):
                raise ApiError(422, "Invalid", 'SubjectAccessReview.authorization.k8s.io "" is invalid: '
                               "spec.user: Invalid value: \"\": at least one of user or group must be specified")
            subject = User(spec.get("user") or "", tuple(spec.get("groups") or []))
        else:
            subject = caller
        res, url = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if res is not None:
            attrs = Attributes(subject, res.get("verb") or "", True, namespace=res.get("namespace") or "",
                               api_group=res.get("group") or "", resource=res.get("resource") or "",
                               subresource=res.get("subresource") or "", name=res.get("name") or "")
        elif url is not None:
            attrs = Attributes(subject, url.get("verb") or "", False, path=url.get("path") or "")
        else:
            raise ApiError(422, "Invalid", f'{kind}.authorization.k8s.io "" is invalid: spec: Invalid value: '
                           '"null": exactly one of nonResourceAttributes or resourceAttributes must be specified')
        allowed, reason = self.authorize(attrs)
        out["status"] = {"allowed": allowed, **({"reason": reason} if reason else {})}
        return out


REVIEWS = {"selfsubjectaccessreviews": "SelfSubjectAccessReview",
           "selfsubjectrulesreviews": "SelfSubjectRulesReview",
           "subjectaccessreviews": "SubjectAccessReview"}


def _bound_pod(store: Store, ns: str, ref: Obj | None) -> tuple[str, str] | None:
    """The pod a TokenRequest binds its token to (pkg/registry/core/serviceaccount/storage/token.go: the
    object must exist, with the uid given); only Pod references are emulated."""
    if not ref:
        return None
    if ref.get("kind") != "Pod":
        raise ApiError(400, "BadRequest", f'cannot bind token to object of kind "{ref.get("kind", "")}": the '
                       "emulator binds tokens to Pods only")
    pod = store.get("pods", ns, ref.get("name", ""))
    uid = pod["metadata"]["uid"]
    if ref.get("uid") and ref["uid"] != uid:
        raise ApiError(409, "Conflict", f"the UID in the bound object reference ({ref['uid']}) does not match the "
                       "UID in record. The object might have been deleted and then recreated")
    return pod["metadata"]["name"], uid


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """403 as responsewriters.Forbidden writes it: apierrors.NewForbidden(<group resource>, <name>, msg)."""
    who = attrs.user.name
    if not attrs.resource_request:
        msg = f'User "{who}" cannot {attrs.verb} path "{attrs.path}"'
        return ApiError(403, "Forbidden", f"forbidden: {msg}" + (f": {reason}" if reason else ""), {})
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    msg = f'User "{who}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.api_group}" {scope}'
    if reason:
        msg += f": {reason}"
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    head = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    details: dict[str, Any] = {"kind": attrs.resource, **({"name": attrs.name} if attrs.name else {}),
                               **({"group": attrs.api_group} if attrs.api_group else {})}
    return ApiError(403, "Forbidden", f"{head} is forbidden: {msg}", details)


# -- the default roles a cluster starts with (plugin/pkg/auth/authorizer/rbac/bootstrappolicy) -------------

_DISCOVERY_URLS = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                   "/readyz", "/version", "/version/"]
_BOOTSTRAP_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}


@dataclass
class _Default:
    name: str
    rules: list[Obj]
    groups: list[str] = field(default_factory=list)


DEFAULT_ROLES = [
    _Default("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                               {"nonResourceURLs": ["*"], "verbs": ["*"]}], [MASTERS]),
    _Default("system:discovery", [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}], [AUTHENTICATED]),
    _Default("system:public-info-viewer",
             [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}],
             [AUTHENTICATED, UNAUTHENTICATED]),
    _Default("system:basic-user", [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}],
        [AUTHENTICATED]),
]


def default_objects() -> list[tuple[str, Obj]]:
    """(resource, object) for the bootstrap ClusterRoles and the ClusterRoleBindings to their groups."""
    out: list[tuple[str, Obj]] = []
    for d in DEFAULT_ROLES:
        meta = {"name": d.name, "labels": dict(_BOOTSTRAP_LABELS),
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}
        out.append(("clusterroles", {"metadata": meta, "rules": d.rules}))
        out.append(("clusterrolebindings", {
            "metadata": meta, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": d.name},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in d.groups]}))
    return out


def validate(resource: str, obj: Obj, current: Obj | None = None) -> None:
    """What RBAC validation refuses that clients hit (pkg/apis/rbac/validation): a binding needs a roleRef
    of kind Role / ClusterRole, and it cannot change on update."""
    if resource not in ("rolebindings", "clusterrolebindings"):
        return
    kind = "RoleBinding" if resource == "rolebindings" else "ClusterRoleBinding"
    name = (obj.get("metadata") or {}).get("name", "")
    ref = obj.get("roleRef") or {}
    allowed = ("Role", "ClusterRole") if resource == "rolebindings" else ("ClusterRole",)
    if ref.get("kind") not in allowed or not ref.get("name"):
        raise ApiError(422, "Invalid", f'{kind}.{RBAC_GROUP} "{name}" is invalid: roleRef.kind: Unsupported '
                       f'value: "{ref.get("kind", "")}": supported values: ' + ", ".join(f'"{k}"' for k in allowed))
    if current is not None and (current.get("roleRef") or {}) != ref:
        raise ApiError(422, "Invalid", f'{kind}.{RBAC_GROUP} "{name}" is invalid: roleRef: Invalid value: '
                       f"{ref}: cannot change roleRef")
