"""``s3://bucket/key`` data sources through boto3 (credentials from boto3's standard chain)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from skinadv.data.dataset import DataError

log = logging.getLogger(__name__)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise DataError(f"{uri}: expected s3://bucket/key")
    return bucket, key


def fetch(uri: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """Download an S3 object once into the cache (keyed by its ETag); return the local path.

    ``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL`` select an S3-compatible endpoint.
    A partial download is never left in the cache.
    """
    import boto3
    import botocore.exceptions

    from skinadv.data.io import atomic_write_bytes
    from skinadv.data.sources import default_cache_dir

    bucket, key = parse_s3_uri(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        etag = head["ETag"].strip('"')
        name = Path(key).name
        digest = hashlib.sha256(f"{bucket}/{key}:{etag}".encode()).hexdigest()[:16]
        local = Path(cache_dir or default_cache_dir()) / "s3" / digest / name
        if local.is_file() and local.stat().st_size == head["ContentLength"]:
            return str(local)
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.BotoCoreError as exc:
        raise DataError(f"{uri}: S3 error ({type(exc).__name__}: {exc})") from exc
    except botocore.exceptions.ClientError as exc:
        raise DataError(f"{uri}: S3 error ({exc.response.get('Error', {}).get('Code')})") from exc
    if len(body) != head["ContentLength"]:
        raise DataError(f"{uri}: short download ({len(body)} of {head['ContentLength']} bytes)")
    if "-" not in etag and hashlib.md5(body).hexdigest() != etag:  # single-part ETag = MD5
        raise DataError(f"{uri}: checksum mismatch after download")
    atomic_write_bytes(local, body)
    log.info("fetched %s (%d bytes) to %s", uri, len(body), local)
    return str(local)
