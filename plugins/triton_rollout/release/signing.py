"""Signed releases: who published a release, checked before a byte of it reaches the PVC.

A publisher signs the exact bytes of ``manifest.json`` with an Ed25519 key and writes the signature as
``manifest.json.sig`` next to it, before the manifest (a complete release is always a signed one). The
manifest lists every file's sha256, so one signature over it covers the whole release.

``manifest.json.sig`` is a small JSON document::

    {"schema": 1, "algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64, 64 bytes>"}

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key, so it names the key and
cannot be chosen by whoever writes a signature. Public keys are written ``ed25519:<base64 of the raw 32
bytes>``, one line, as ``keygen`` prints them and models.yaml takes them (``signing.trusted_keys``).
Private keys are PKCS#8 PEM files, mode 0600.

``cryptography`` is imported only where a key is used, so unsigned syncs start no slower.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triton_rollout.errors import ConfigError, SignatureError

SIGNATURE_NAME = "manifest.json.sig"
SIGNATURE_SCHEMA = 1
ALGORITHM = "ed25519"
_KEY_PREFIX = "ed25519:"
_RAW_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
# Larger than any signature document; a bigger object is not one.
SIGNATURE_MAX_BYTES = 4096
# Where the publish CLI and the engine build find the private key when no flag names one (the build pod
# mounts it from a Secret).
SIGNING_KEY_ENV = "TRITON_ROLLOUT_SIGNING_KEY_FILE"
# The key of models[].signing.build_key_secret that holds the build's private key PEM.
BUILD_KEY_SECRET_KEY = "signing-key.pem"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, as models.yaml names it."""

    raw: bytes

    def __repr__(self) -> str:
        return f"PublicKey({self.text!r})"

    @classmethod
    def parse(cls, text: object, field_name: str) -> PublicKey:
        """``ed25519:<base64>``; anything else is a ConfigError naming ``field_name``."""
        if not isinstance(text, str) or not text.startswith(_KEY_PREFIX):
            raise ConfigError(f"{field_name}: must be an Ed25519 public key written "
                              f"'{_KEY_PREFIX}<base64>', got {text!r}",
                              hint="paste the public_key line that `python -m triton_rollout keygen` printed")
        try:
            raw = base64.b64decode(text[len(_KEY_PREFIX):].strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{field_name}: {text!r} is not valid base64: {exc}") from exc
        if len(raw) != _RAW_KEY_BYTES:
            raise ConfigError(f"{field_name}: an Ed25519 public key is {_RAW_KEY_BYTES} bytes, "
                              f"{text!r} decodes to {len(raw)}")
        return cls(raw)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    @property
    def text(self) -> str:
        return _KEY_PREFIX + base64.b64encode(self.raw).decode()

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key loaded from its PEM file."""

    def __init__(self, private_key: Any, source: str) -> None:
        self._key = private_key
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"signing key {p}: cannot read it: {exc.strerror}",
                              hint="pass the private key file `keygen` wrote") from exc
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"signing key {p}: not an unencrypted PEM private key ({exc})",
                              hint="pass the private key file `keygen` wrote") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"signing key {p}: a {type(key).__name__}, not an Ed25519 key",
                              hint="create one with `python -m triton_rollout keygen`")
        return cls(key, str(p))

    @property
    def public_key(self) -> PublicKey:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return PublicKey(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def signature_document(self, manifest_bytes: bytes) -> bytes:
        """``manifest.json.sig`` for exactly these manifest bytes."""
        doc = {"schema": SIGNATURE_SCHEMA, "algorithm": ALGORITHM, "key_id": self.public_key.key_id,
               "signature": base64.b64encode(self._key.sign(manifest_bytes)).decode()}
        return (json.dumps(doc, sort_keys=True) + "\n").encode()


def generate_key(path: str | os.PathLike[str]) -> PublicKey:
    """A new key pair: the private key to ``path`` (PEM, mode 0600, never over an existing file)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        # O_EXCL: an existing key is never replaced; the mode is set at creation, never world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists; keygen never overwrites a key",
                          hint="choose another --out file, or delete the old key on purpose") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return SigningKey(key, str(path)).public_key


def signing_key_from_env() -> SigningKey | None:
    """The key named by $TRITON_ROLLOUT_SIGNING_KEY_FILE, or None when it is unset."""
    path = os.environ.get(SIGNING_KEY_ENV)
    return SigningKey.load(path) if path else None


def verify_manifest(what: str, manifest_bytes: bytes, signature: bytes | None,
                    trusted: Sequence[PublicKey]) -> str:
    """Check ``signature`` (the ``manifest.json.sig`` bytes, None when absent) over ``manifest_bytes``
    against ``trusted``; return the signing key id, or raise SignatureError naming the key ids."""
    trusted_ids = ", ".join(k.key_id for k in trusted)
    if signature is None:
        raise SignatureError(
            f"{what} is not signed (no {SIGNATURE_NAME}) but this model requires a signature by one of the "
            f"trusted keys [{trusted_ids}]; nothing was written to the PVC",
            hint="publish it with `python -m triton_rollout publish --signing-key FILE` (an engine built in the "
                 f"cluster: give the build pod the key through ${SIGNING_KEY_ENV}); nothing was written to the PVC",
        )
    try:
        doc = json.loads(signature)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        schema, algorithm, key_id = doc.get("schema"), doc.get("algorithm"), doc.get("key_id")
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SignatureError(f"{what}: {SIGNATURE_NAME} is not a valid signature document ({exc}); "
                             "nothing was written to the PVC") from exc
    if schema != SIGNATURE_SCHEMA or algorithm != ALGORITHM or len(sig) != _SIGNATURE_BYTES:
        raise SignatureError(f"{what}: {SIGNATURE_NAME} has schema {schema!r}, algorithm {algorithm!r} and a "
                             f"{len(sig)}-byte signature; expected schema {SIGNATURE_SCHEMA}, {ALGORITHM}, "
                             f"{_SIGNATURE_BYTES} bytes; nothing was written to the PVC")
    key = next((k for k in trusted if k.key_id == key_id), None)
    if key is None:
        raise SignatureError(
            f"{what} is signed by key {key_id!r}, which is not trusted for this model (trusted: "
            f"[{trusted_ids}]); nothing was written to the PVC",
            hint="if that key is yours, add its public key to the model's signing.trusted_keys; otherwise the "
                 "release was not published by you: investigate who wrote it",
        )
    if not key.verifies(sig, manifest_bytes):
        raise SignatureError(
            f"{what}: the signature by trusted key {key_id} does not match manifest.json (the manifest was "
            "changed after signing, or the signature was forged); nothing was written to the PVC",
            hint="do not deploy this release: investigate who changed it, then re-publish it signed",
        )
    return key.key_id
