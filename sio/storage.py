"""Where shard sets live: a local folder or an ``s3://bucket/prefix``.

Producers write files into ``staging`` and ``publish`` each one when it is complete; small JSON
files (progress records, the manifest) go through ``write_json``/``read_json``. For S3 the
client takes its endpoint from ``AWS_ENDPOINT_URL`` and credentials the usual boto3 way, and
retries transient errors (botocore's standard retry mode, ``SIO_S3_ATTEMPTS`` attempts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sio.files import write_json_atomic


def is_s3(url: str | Path) -> bool:
    return str(url).startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{url}: an S3 URL is s3://bucket/prefix")
    return bucket, key.strip("/")


def s3_client():
    import boto3
    from botocore.config import Config

    attempts = int(os.environ.get("SIO_S3_ATTEMPTS", "8"))
    retries = {"max_attempts": attempts, "mode": "standard"}
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(retries=retries),
    )


class LocalFolder:
    """Files are written in place: publishing is a no-op."""

    def __init__(self, path: str | Path):
        self.url = str(path)
        self.staging = Path(path)
        self.staging.mkdir(parents=True, exist_ok=True)

    def publish(self, name: str) -> None:
        pass

    def exists(self, name: str) -> bool:
        return (self.staging / name).is_file()

    def write_json(self, name: str, data) -> None:
        (self.staging / name).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.staging / name, data)

    def read_json(self, name: str):
        return json.loads((self.staging / name).read_text())


class S3Folder:
    """Files are staged locally, uploaded when complete, and deleted locally after upload."""

    def __init__(self, url: str, staging: str | Path):
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_s3(url)
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.client = s3_client()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def publish(self, name: str) -> None:
        local = self.staging / name
        self.client.upload_file(str(local), self.bucket, self._key(name))
        local.unlink()

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def write_json(self, name: str, data) -> None:
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=body)

    def read_json(self, name: str):
        response = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        return json.loads(response["Body"].read())


def open_destination(url: str | Path, staging: str | Path | None = None):
    """A LocalFolder for a path, an S3Folder (staging in ``staging``) for ``s3://``."""
    if is_s3(url):
        if staging is None:
            bucket, prefix = split_s3(str(url))
            staging = Path.home() / ".cache" / "sio" / "staging" / bucket / prefix
        return S3Folder(str(url), staging)
    return LocalFolder(url)
