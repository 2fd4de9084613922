"""RBAC from the project's own k8s/rbac.yaml, enforced by the API-server emulator, with the real kubectl and
the kubernetes client: ServiceAccount tokens, 403s with the apiserver's messages, `kubectl auth can-i`
(impersonation, --list), and a Role missing a verb failing as it would on a cluster.

k8s/rbac.yaml binds Role triton/airflow-pod-launcher to ServiceAccount airflow/airflow-worker (the Airflow
worker launching pods); triton/triton-rollout is what those pods run as and is granted nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from devstack.kube import KubeEmulator
from tests.helpers import run_kubectl

ROOT = Path(__file__).resolve().parents[1]
RBAC_YAML = ROOT / "k8s" / "rbac.yaml"
NS = "triton"
WORKER = "system:serviceaccount:airflow:airflow-worker"
ROLLOUT = "system:serviceaccount:triton:triton-rollout"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    state = tmp_path_factory.mktemp("rbac")
    emulator = KubeEmulator(state / "emu", namespaces=[NS, "airflow", "other"]).start()
    try:
        out = kubectl(emulator, emulator.kubeconfig, "apply", "-f", str(RBAC_YAML))
        assert "role.rbac.authorization.k8s.io/airflow-pod-launcher created" in out.stdout, out.stdout
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def worker(emu: KubeEmulator) -> Path:
    """The Airflow worker's ServiceAccount kubeconfig (a TokenRequest token)."""
    return emu.service_account_kubeconfig("airflow", "airflow-worker")


def kubectl(emu: KubeEmulator, kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True,
            ns: str = NS) -> subprocess.CompletedProcess[str]:
    return run_kubectl(kubeconfig, ns, *args, stdin=stdin, check=check)


def pod_yaml(name: str, script: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{suite: rbac}}}}
spec:
  serviceAccountName: triton-rollout
  restartPolicy: Never
  containers:
  - name: main
    image: example/sync:1
    command: [python, -c, "{script}"]
"""


def core(kubeconfig: Path) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))


def forbidden(user: str, verb: str, resource: str, ns: str | None, name: str = "", group: str = "") -> str:
    """The apiserver's text (responsewriters/errors.go forbiddenMessage inside apierrors.NewForbidden)."""
    scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
    qualified = f"{resource.split('/')[0]}.{group}" if group else resource.split("/")[0]
    head = f'{qualified} "{name}"' if name else qualified
    return (f'{head} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{group}" '
            f"{scope}")


# -- 1. the RBAC API group ---------------------------------------------------------------------------------

def test_rbac_objects_are_served(emu: KubeEmulator) -> None:
    admin = emu.kubeconfig
    resources = kubectl(emu, admin, "api-resources", "--api-group=rbac.authorization.k8s.io").stdout
    for plural in ("roles", "rolebindings", "clusterroles", "clusterrolebindings"):
        assert plural in resources
    role = json.loads(kubectl(emu, admin, "get", "role", "airflow-pod-launcher", "-o", "json").stdout)
    assert role["rules"][1] == {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}
    bindings = kubectl(emu, admin, "get", "rolebindings", "-o", "wide").stdout
    assert "Role/airflow-pod-launcher" in bindings and "airflow:airflow-worker" in bindings
    assert "ROLE" in bindings.splitlines()[0] and "SERVICEACCOUNTS" in bindings.splitlines()[0]
    roles = kubectl(emu, admin, "get", "clusterroles").stdout
    assert "CREATED AT" in roles.splitlines()[0]
    assert "system:discovery" in roles and "cluster-admin" in roles
    # Re-applying is unchanged; a binding's roleRef cannot change (RBAC validation).
    assert "unchanged" in kubectl(emu, admin, "apply", "-f", str(RBAC_YAML)).stdout
    patch = json.dumps({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                    "name": "cluster-admin"}})
    out = kubectl(emu, admin, "patch", "rolebinding", "airflow-pod-launcher", "--type=merge", "-p", patch,
                  check=False)
    assert out.returncode != 0 and "cannot change roleRef" in out.stderr


# -- 2. what the Airflow worker's ServiceAccount may do ------------------------------------------------------

def test_worker_runs_the_project_pod_operations(emu: KubeEmulator, worker: Path) -> None:
    out = kubectl(emu, worker, "apply", "-f", "-", stdin=pod_yaml("rbac-ok", "print('hello from rbac')"))
    assert "pod/rbac-ok created" in out.stdout
    v1 = core(worker)
    deadline = time.monotonic() + 30
    while v1.read_namespaced_pod("rbac-ok", NS).status.phase != "Succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "rbac-ok" in kubectl(emu, worker, "get", "pods", "-l", "suite=rbac").stdout
    names = [e["object"].metadata.name for e in watch.Watch().stream(
        v1.list_namespaced_pod, NS, label_selector="suite=rbac", timeout_seconds=1)]
    assert "rbac-ok" in names
    assert "hello from rbac" in kubectl(emu, worker, "logs", "rbac-ok").stdout
    assert v1.list_namespaced_event(NS).items  # events get/list/watch
    kubectl(emu, worker, "label", "pod", "rbac-ok", "done=yes")  # patch
    assert 'pod "rbac-ok" deleted' in kubectl(emu, worker, "delete", "pod", "rbac-ok", "--wait=false").stdout


def test_worker_is_forbidden_everything_else(emu: KubeEmulator, worker: Path) -> None:
    out = kubectl(emu, worker, "get", "secrets", check=False)
    assert out.returncode == 1
    assert f"Error from server (Forbidden): {forbidden(WORKER, 'list', 'secrets', NS)}" in out.stderr
    out = kubectl(emu, worker, "apply", "-f", "-", stdin=pod_yaml("elsewhere", "print(1)"), ns="other",
                  check=False)
    assert forbidden(WORKER, "get", "pods", "other", "elsewhere") in out.stderr  # apply reads first
    out = kubectl(emu, worker, "create", "-f", "-", stdin=pod_yaml("elsewhere", "print(1)"), ns="other",
                  check=False)
    assert forbidden(WORKER, "create", "pods", "other") in out.stderr
    out = kubectl(emu, worker, "delete", "namespace", NS, check=False)
    assert forbidden(WORKER, "delete", "namespaces", NS, NS) in out.stderr
    out = kubectl(emu, worker, "get", "clusterroles", check=False)
    assert forbidden(WORKER, "list", "clusterroles", None, group="rbac.authorization.k8s.io") in out.stderr
    out = kubectl(emu, worker, "exec", "x", "--", "true", check=False)  # a get on a missing pod is allowed
    assert "NotFound" in out.stderr or "not found" in out.stderr
    with pytest.raises(ApiException) as err:
        core(worker).read_namespaced_secret("anything", NS)
    assert err.value.status == 403
    body = json.loads(err.value.body)
    assert body["reason"] == "Forbidden" and body["details"] == {"name": "anything", "kind": "secrets"}
    assert body["message"] == forbidden(WORKER, "get", "secrets", NS, "anything")
    # Discovery and OpenAPI work for any authenticated identity (system:discovery).
    assert "pods" in kubectl(emu, worker, "api-resources").stdout
    # Impersonation needs the impersonate verb.
    out = kubectl(emu, worker, "get", "pods", "--as=someone", check=False)
    assert 'users "someone" is forbidden: User "system:serviceaccount:airflow:airflow-worker" cannot ' \
           'impersonate resource "users" in API group "" at the cluster scope' in out.stderr


def test_unknown_token_is_unauthorized(emu: KubeEmulator, tmp_path: Path) -> None:
    bad = emu.write_kubeconfig(tmp_path / "bad", token="not-a-token", tls=True)
    out = kubectl(emu, bad, "get", "pods", check=False)
    assert out.returncode == 1 and "error: You must be logged in to the server" in out.stderr  # a 401
    with pytest.raises(ApiException) as err:
        core(bad).list_namespaced_pod(NS)
    assert err.value.status == 401 and json.loads(err.value.body)["reason"] == "Unauthorized"
    # A token stops working once its ServiceAccount is gone (bound tokens are checked against it).
    gone = emu.service_account_kubeconfig("other", "short-lived")
    assert kubectl(emu, gone, "auth", "can-i", "get", "pods", ns="other", check=False).stdout.strip() == "no"
    kubectl(emu, emu.kubeconfig, "delete", "serviceaccount", "short-lived", ns="other")
    assert "You must be logged in" in kubectl(emu, gone, "get", "pods", ns="other", check=False).stderr


# -- 3. kubectl auth can-i ---------------------------------------------------------------------------------

def test_can_i_as_the_service_accounts(emu: KubeEmulator, worker: Path) -> None:
    admin = emu.kubeconfig

    def can_i(*args: str, kubeconfig: Path = admin) -> tuple[int, str]:
        out = kubectl(emu, kubeconfig, "auth", "can-i", *args, check=False)
        return out.returncode, out.stdout.strip()

    assert can_i("create", "pods") == (0, "yes")  # the admin
    assert can_i("create", "pods", f"--as={WORKER}") == (0, "yes")
    assert can_i("get", "pods/log", f"--as={WORKER}") == (0, "yes")
    assert can_i("delete", "secrets", f"--as={WORKER}") == (1, "no")
    assert can_i("create", "pods", "-n", "other", f"--as={WORKER}")[1] == "no"
    assert can_i("create", "pods", f"--as={ROLLOUT}") == (1, "no")  # the pods' own SA is granted nothing
    assert can_i("delete", "pods", kubeconfig=worker) == (0, "yes")  # the SA asking for itself
    assert can_i("list", "secrets", kubeconfig=worker) == (1, "no")
    assert can_i("get", "/version", kubeconfig=worker) == (0, "yes")
    listed = kubectl(emu, admin, "auth", "can-i", "--list", f"--as={WORKER}").stdout
    lines = {line.split()[0]: line for line in listed.splitlines()[1:]}
    # airflow-pod-launcher's verbs, and list from the read-only airflow-fleet-reader (the Triton models view).
    assert set(lines["pods"].rsplit("[", 1)[1].rstrip("]").split()) == {"create", "get", "list", "watch", "delete",
                                                                      "patch"}
    assert lines["pods/log"].endswith("[get]") and lines["events"].endswith("[get list watch]")
    assert "secrets" not in lines and "selfsubjectaccessreviews.authorization.k8s.io" in lines
    assert "/version" in listed and "/api/*" in listed


def test_sar_for_another_user(emu: KubeEmulator) -> None:
    """SubjectAccessReview through the client (kubectl create -f would validate against /openapi/v2,
    which the emulator does not serve: create-only kinds have no PATCH for the v3 verifier to find)."""
    authz = client.AuthorizationV1Api(config.new_client_from_config(config_file=str(emu.kubeconfig)))
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=WORKER, groups=["system:serviceaccounts", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(namespace=NS, verb="delete", resource="pods")))
    status = authz.create_subject_access_review(review).status
    assert status.allowed is True
    assert status.reason == ('RBAC: allowed by RoleBinding "airflow-pod-launcher/triton" of Role '
                             '"airflow-pod-launcher" to ServiceAccount "airflow-worker/airflow"')
    review.spec.resource_attributes.resource = "secrets"
    assert authz.create_subject_access_review(review).status.allowed is False


# -- 4. a missing verb fails, as it would on a cluster -------------------------------------------------------

def test_role_without_delete_forbids_the_delete(emu: KubeEmulator, worker: Path) -> None:
    ns = "nodelete"
    docs = list(yaml.safe_load_all(RBAC_YAML.read_text()))  # SA, Role, RoleBinding; subject unchanged
    for doc in docs:
        doc["metadata"]["namespace"] = ns
        if doc["kind"] == "Role" and doc["metadata"]["name"] == "airflow-pod-launcher":
            doc["rules"][0]["verbs"].remove("delete")
    admin = emu.kubeconfig
    emu.create_namespace(ns)
    kubectl(emu, admin, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs), ns=ns)
    kubectl(emu, worker, "apply", "-f", "-", stdin=pod_yaml("stays", "print(1)"), ns=ns)
    out = kubectl(emu, worker, "delete", "pod", "stays", ns=ns, check=False)
    assert out.returncode == 1
    assert f"Error from server (Forbidden): {forbidden(WORKER, 'delete', 'pods', ns, 'stays')}" in out.stderr
    with pytest.raises(ApiException) as err:
        core(worker).delete_namespaced_pod("stays", ns)
    assert err.value.status == 403
    assert kubectl(emu, admin, "auth", "can-i", "delete", "pods", "-n", ns, f"--as={WORKER}",
                   check=False).stdout.strip() == "no"
    kubectl(emu, admin, "delete", "pod", "stays", "--wait=false", ns=ns)


# -- 5. the authorizer's matching rules, without a server -----------------------------------------------------

def test_request_attributes_and_rule_matching() -> None:
    from devstack.kube.rbac import User, request_attributes, rule_allows

    user = User(WORKER)
    log = request_attributes("GET", "/api/v1/namespaces/triton/pods/p/log", {}, user)
    assert (log.verb, log.namespace, log.resource, log.subresource, log.name) == ("get", NS, "pods", "log", "p")
    assert rule_allows(log, {"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]})
    assert not rule_allows(log, {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]})
    watch_one = request_attributes("GET", "/api/v1/namespaces/triton/pods",
                                   {"watch": "true", "fieldSelector": "metadata.name=p"}, user)
    assert (watch_one.verb, watch_one.name) == ("watch", "p")
    assert rule_allows(watch_one, {"apiGroups": [""], "resources": ["pods"], "resourceNames": ["p"],
                                   "verbs": ["watch"]})
    assert not rule_allows(watch_one, {"apiGroups": [""], "resources": ["pods"], "resourceNames": ["q"],
                                       "verbs": ["watch"]})
    assert request_attributes("DELETE", "/api/v1/namespaces/triton/pods", {}, user).verb == "deletecollection"
    roles = request_attributes("PUT", "/apis/rbac.authorization.k8s.io/v1/clusterroles/x", {}, user)
    assert (roles.verb, roles.api_group, roles.namespace, roles.name) == ("update", "rbac.authorization.k8s.io",
                                                                          "", "x")
    discovery = request_attributes("GET", "/apis/storage.k8s.io/v1", {}, user)
    assert not discovery.resource_request and discovery.verb == "get"
    assert rule_allows(discovery, {"nonResourceURLs": ["/apis/*"], "verbs": ["get"]})
    assert not rule_allows(discovery, {"nonResourceURLs": ["/api/*"], "verbs": ["get"]})
