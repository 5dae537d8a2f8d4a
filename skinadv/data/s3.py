"""``s3://bucket/key`` data sources through boto3 (credentials from boto3's standard chain).

The object is downloaded once into the cache, under a folder keyed by bucket, key and
ETag, so a changed object is fetched again and an unchanged one never is. A download is
checked (length, and MD5 against a single-part ETag) before it is written, atomically:
a partial or corrupt file never enters the cache. ``AWS_ENDPOINT_URL`` (or
``MLFLOW_S3_ENDPOINT_URL``) selects an S3-compatible endpoint (MinIO, moto). Error
messages name the bucket, key and endpoint, never a credential.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from skinadv.data.dataset import DataError
from skinadv.data.io import atomic_write_bytes, default_cache_dir

log = logging.getLogger(__name__)

_NOT_FOUND = ("404", "NoSuchKey", "NoSuchBucket", "NotFound")
_DENIED = ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise DataError(f"{uri}: expected s3://bucket/key (one object)")
    return bucket, key


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint from the environment (None: AWS itself)."""
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
        or None
    )


def _client():
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint())


def _explain(client, bucket: str, key: str, code: str) -> str:
    """A plain reason for a failed request (which of bucket and key is missing)."""
    import botocore.exceptions

    where = f" at {s3_endpoint()}" if s3_endpoint() else ""
    if code in _NOT_FOUND:
        if code == "NoSuchBucket":
            return f"no bucket {bucket!r}{where}"
        try:  # HEAD answers a bare 404 for both: ask the bucket
            client.head_bucket(Bucket=bucket)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return f"no bucket {bucket!r}{where} (or no access to it)"
        return f"no object {key!r} in bucket {bucket!r}{where}"
    if code in _DENIED:
        return (
            f"access denied to s3://{bucket}/{key}{where} (S3 error {code}; check the "
            "credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws)"
        )
    return f"S3 error {code}{where}"


def fetch(uri: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """Download an S3 object once into the cache (keyed by its ETag); return the local path.

    Args:
        uri: ``s3://bucket/key``.
        cache_dir: cache root (default ``$SKINADV_CACHE_DIR`` or ``~/.cache/skinadv``); the
            file lands in ``CACHE/s3/<digest of bucket, key, ETag>/<key's file name>``.

    Returns:
        The local path (the cached copy when the object has not changed).

    Raises:
        DataError: bad URI, no such bucket or object, access denied, no credentials,
            endpoint unreachable, or a download that fails its length or MD5 check.
    """
    import botocore.exceptions

    bucket, key = parse_s3_uri(uri)
    client = _client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        etag = head["ETag"].strip('"')
        size = head["ContentLength"]
        digest = hashlib.sha256(f"{bucket}/{key}:{etag}".encode()).hexdigest()[:16]
        local = Path(cache_dir or default_cache_dir()) / "s3" / digest / Path(key).name
        if local.is_file() and local.stat().st_size == size:
            log.debug("%s: cached at %s", uri, local)
            return str(local)
        # IfMatch: the object must still be the one the HEAD described
        body = client.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"].read()
    except botocore.exceptions.NoCredentialsError:
        raise DataError(
            f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)"
        ) from None
    except botocore.exceptions.EndpointConnectionError:
        raise DataError(f"{uri}: cannot reach the S3 endpoint {s3_endpoint() or '(AWS)'}") from None
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        if code in ("412", "PreconditionFailed"):
            raise DataError(
                f"{uri}: the object changed while it was being fetched; try again"
            ) from None
        raise DataError(f"{uri}: {_explain(client, bucket, key, code)}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise DataError(f"{uri}: S3 error ({type(exc).__name__})") from None
    if len(body) != size:
        raise DataError(f"{uri}: short download ({len(body)} of {size} bytes)")
    # a single-part, unencrypted or SSE-S3 object's ETag is its MD5 (not multipart: "-N",
    # not SSE-KMS or SSE-C, whose ETags are opaque)
    md5_etag = (
        "-" not in etag
        and not head.get("SSECustomerAlgorithm")
        and not str(head.get("ServerSideEncryption", "")).startswith("aws:kms")
    )
    if md5_etag and hashlib.md5(body).hexdigest() != etag:
        raise DataError(f"{uri}: checksum mismatch after download (MD5 is not the ETag {etag})")
    atomic_write_bytes(local, body)
    log.info("fetched %s (%d bytes) to %s", uri, len(body), local)
    return str(local)
