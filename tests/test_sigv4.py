"""The built-in SigV4 presigner matches botocore's byte for byte, and works against the real S3."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from triton_rollout.release.s3 import ObjectReader, sigv4_presign


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("http://127.0.0.1:8333/models/prod/llm/1/llm/tok%20en%2Bx.json", None),
        ("https://models.s3.eu-west-1.amazonaws.com/prod/llm/1/manifest.json", "tok/en+=="),
        ("http://127.0.0.1:8333/models?list-type=2&max-keys=1&prefix=prod%2Fllm%2F1%2F", None),
    ],
)
def test_matches_botocore(url: str, token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = datetime(2026, 11, 28, 9, 30, 5, tzinfo=UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    request = AWSRequest(method="GET", url=url)
    botocore.auth.S3SigV4QueryAuth(Credentials("AKIDEXAMPLE", "secret/key+x", token), "s3", "eu-west-1",
                                   expires=900).add_auth(request)
    theirs = request.prepare().url
    ours = sigv4_presign(url, access_key="AKIDEXAMPLE", secret_key="secret/key+x", session_token=token,
                         region="eu-west-1", expires=900, now=now)
    assert _params(ours) == _params(theirs)


def _params(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    return {"_path": parts.path, **dict(parse_qsl(parts.query))}


def test_real_server_accepts_it_and_rejects_a_wrong_secret(s3_client, bucket: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    s3_client.put_object(Bucket=bucket, Key="a dir/obj+1.bin", Body=b"0123456789")
    reader = ObjectReader(bucket)
    assert reader.get_bytes("a dir/obj+1.bin") == b"0123456789"
    assert reader.key_count("a dir/") == 1
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    from triton_rollout.errors import S3AccessDenied

    with pytest.raises(S3AccessDenied, match="obj"):
        ObjectReader(bucket).get_bytes("a dir/obj+1.bin")
