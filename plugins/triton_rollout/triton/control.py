"""Talking to Triton (explicit model-control mode) through tritonclient's HTTP client.

Every call has a timeout: a python-backend load can hang forever on a misconfigured server, and a
Triton that is down must produce a clear error after a deadline, not a stuck task. Errors become
TritonError naming the server, model and version.

Version pinning: each load sends the whole config (an override, not a patch) with version_policy
``specific`` listing exactly the versions that must be served, so what Triton serves never depends on
which directories happen to be on the PVC.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from triton_rollout.errors import ConfigError, TritonError
from triton_rollout.triton.config import ModelConfig, to_json

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
# A TRT-LLM engine load can take minutes on a GPU (a python-backend model on the CPU loads in ~1.5 s).
DEFAULT_LOAD_TIMEOUT = 600.0
# A DNS name (labels of 1-63 letters, digits, '-') or an IPv4/IPv6 address (urlsplit drops IPv6's brackets).
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
                   r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


def normalize_url(url: str) -> str:
    """tritonclient wants host:port; people paste http://host:port/. Anything else is refused here: tritonclient
    would fail deep in gevent with a ValueError ("Port could not be cast") or UnicodeError (an empty label)."""
    hostport = url.strip().rstrip("/")
    for scheme in ("http://", "https://"):
        if hostport.startswith(scheme):
            hostport = hostport[len(scheme):]
            break
    parts = urlsplit("//" + hostport)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    # A base path (host:port/prefix, behind a proxy) is tritonclient's own documented form; the rest is not.
    extra = parts.query or parts.fragment or parts.username is not None or parts.netloc.endswith(":")
    if not port_ok or extra or not _HOST.fullmatch(parts.hostname or ""):
        raise ConfigError(f"Triton URL {url!r} is not host:port[/path] or http(s)://host:port[/path]",
                          hint="pass e.g. --triton-url http://triton:8000 (or set TRITON_URL)")
    return hostport


def infer_url(base_url: str, model: str, version: int | str) -> str:
    """The conventional infer endpoint of one model version: ``/v2/models/{name}/versions/{version}/infer``."""
    return f"{base_url.rstrip('/')}/v2/models/{model}/versions/{version}/infer"


def _text(exc: BaseException) -> str:
    """tritonclient's exceptions carry the server's message in .message(); others in str()."""
    msg = getattr(exc, "message", None)
    return str(msg() if callable(msg) else exc)


@dataclass
class ModelState:
    name: str
    version: str
    state: str
    reason: str = ""


class TritonControl:
    """A thin, timeout-everywhere wrapper around ``tritonclient.http.InferenceServerClient``."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 load_timeout: float = DEFAULT_LOAD_TIMEOUT) -> None:
        import tritonclient.http as httpclient

        self.url = normalize_url(url)
        self.timeout = timeout
        self.load_timeout = load_timeout
        self._client = httpclient.InferenceServerClient(
            self.url, connection_timeout=timeout, network_timeout=timeout
        )
        # Loads block until the model is ready, so they get a client with a longer network timeout.
        self._load_client = httpclient.InferenceServerClient(
            self.url, connection_timeout=timeout, network_timeout=load_timeout
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.url}"

    def close(self) -> None:
        # An open keep-alive connection holds Triton's shutdown for --exit-timeout-secs.
        for c in (self._client, self._load_client):
            with contextlib.suppress(Exception):
                c.close()

    def __enter__(self) -> TritonControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, what: str, **ctx: Any) -> Iterator[None]:
        try:
            yield
        except TritonError:
            raise
        except Exception as exc:
            where = " ".join(f"{k}={v}" for k, v in ctx.items() if v is not None)
            raise TritonError(f"Triton at {self.url}: {what} failed{' (' + where + ')' if where else ''}: "
                              f"{type(exc).__name__}: {_text(exc)}") from exc

    # -- server -----------------------------------------------------------------------------------

    def is_live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except Exception:
            return False

    def is_server_ready(self) -> bool:
        """/v2/health/ready: live, and (--strict-readiness) every loaded model ready."""
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def wait_live(self, deadline_s: float) -> None:
        """Wait for the server; a Triton that stays down is a TritonError after ``deadline_s``."""
        end = time.monotonic() + deadline_s
        while True:
            if self.is_live():
                return
            if time.monotonic() >= end:
                raise TritonError(
                    f"Triton at {self.url} did not answer /v2/health/live within {deadline_s:.0f}s; "
                    "nothing was changed",
                    hint="check that Triton is running and TRITON_URL / --triton-url points at its HTTP port",
                )
            time.sleep(0.2)

    def request_count(self) -> int:
        """Inference requests this server has finished, every model and version (its statistics extension):
        a count that stops moving means no client is sending here."""
        with self._errors("inference statistics"):
            stats = self._client.get_inference_statistics()
        total = 0
        for m in stats.get("model_stats", []):
            inference = m.get("inference_stats", {})
            total += int(inference.get("success", {}).get("count", 0)) + int(inference.get("fail", {}).get("count", 0))
        return total

    # -- models -----------------------------------------------------------------------------------

    def repository_index(self) -> list[ModelState]:
        with self._errors("repository index"):
            index = self._client.get_model_repository_index()
        return [
            ModelState(name=m.get("name", ""), version=str(m.get("version", "")), state=m.get("state", ""),
                       reason=m.get("reason", ""))
            for m in index
        ]

    def is_version_ready(self, model: str, version: int | str) -> bool:
        # Triton answers 400 "not ready" for a version it does not serve; the client returns False.
        with self._errors("readiness check", model=model, version=version):
            return bool(self._client.is_model_ready(model, str(version)))

    def ready_versions(self, model: str) -> list[int]:
        return sorted(int(m.version) for m in self.repository_index()
                      if m.name == model and m.state == "READY" and m.version.isdigit())

    def wait_ready(self, model: str, version: int, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while True:
            if self.is_version_ready(model, version):
                return
            if time.monotonic() >= end:
                raise TritonError(
                    f"model {model!r} version {version} not ready on {self.url} within {deadline_s:.0f}s"
                    f"{self._reason(model, version)}",
                    hint="read the Triton log for the model's load error",
                )
            time.sleep(0.1)

    def _reason(self, model: str, version: int) -> str:
        with contextlib.suppress(Exception):
            for m in self.repository_index():
                if m.name == model and m.version == str(version) and m.reason:
                    return f" ({m.state}: {m.reason})"
        return ""

    def load(self, model: str, config: ModelConfig) -> None:
        """Load (or reload) ``model`` with ``config`` as the full override. Synchronous in Triton."""
        t0 = time.monotonic()
        try:
            self._load_client.load_model(model, config=to_json(config))
        except Exception as exc:
            raise TritonError(
                f"Triton at {self.url} refused to load model {model!r} versions "
                f"{list(config.version_policy.specific.versions)}: {_text(exc)}",
                hint="the previously loaded versions keep serving; read the Triton log and fix the release",
            ) from exc
        log.info("loaded %s versions %s in %.2fs", model, list(config.version_policy.specific.versions),
                 time.monotonic() - t0)

    def load_from_disk(self, model: str) -> None:
        """Load ``model`` from its config.pbtxt in the repository (no override)."""
        try:
            self._load_client.load_model(model)
        except Exception as exc:
            raise TritonError(
                f"Triton at {self.url} refused to load model {model!r} from its repository config: {_text(exc)}",
                hint="the previously loaded versions keep serving; read the Triton log and fix the release",
            ) from exc

    def unload(self, model: str, *, wait_s: float = 0.0) -> None:
        """Unload every version of ``model``; unload is asynchronous, optionally wait for it."""
        with self._errors("unload", model=model):
            self._client.unload_model(model)
        end = time.monotonic() + wait_s
        while wait_s and time.monotonic() < end:
            if not self.ready_versions(model):
                return
            time.sleep(0.1)

    def model_metadata(self, model: str, version: int | str = "") -> dict[str, Any]:
        with self._errors("metadata", model=model, version=version or None):
            return dict(self._client.get_model_metadata(model, str(version)))

    def model_config(self, model: str, version: int | str = "") -> dict[str, Any]:
        with self._errors("config", model=model, version=version or None):
            return dict(self._client.get_model_config(model, str(version)))

    def infer(self, model: str, version: int | str, inputs: list[Any], outputs: list[Any] | None = None) -> Any:
        with self._errors("infer", model=model, version=version):
            return self._client.infer(model, inputs, model_version=str(version), outputs=outputs)

    def generate(self, model: str, payload: dict[str, Any], version: int | str | None = None) -> dict[str, Any]:
        """POST the generate extension (tritonclient has no wrapper for it) with a timeout."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/generate"
        req = urllib.request.Request(
            self.base_url + path, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise TritonError(f"Triton at {self.url}: POST {path} {json.dumps(payload)} -> {exc.code}: {body}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TritonError(f"Triton at {self.url}: POST {path} failed: {exc}") from exc
