"""Smoke test of the real S3 server: bucket and object round trip, authentication enforced."""

from __future__ import annotations

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

pytestmark = pytest.mark.s3

PATH_STYLE = AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1})


async def test_bucket_and_object_round_trip(s3_config, unique_name):
    bucket, key, body = unique_name("smoke"), "dir/object.bin", bytes(range(256)) * 40
    async with get_session().create_client("s3", config=PATH_STYLE, **s3_config) as s3:
        await s3.create_bucket(Bucket=bucket)
        await s3.put_object(Bucket=bucket, Key=key, Body=body)

        got = await s3.get_object(Bucket=bucket, Key=key)
        async with got["Body"] as stream:
            assert await stream.read() == body

        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
        assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(key, len(body))]

        await s3.delete_object(Bucket=bucket, Key=key)
        assert (await s3.list_objects_v2(Bucket=bucket)).get("KeyCount") == 0
        await s3.delete_bucket(Bucket=bucket)
        names = {b["Name"] for b in (await s3.list_buckets())["Buckets"]}
        assert bucket not in names


@pytest.mark.parametrize(
    ("field", "codes"),
    [
        ("aws_secret_access_key", {"SignatureDoesNotMatch"}),
        ("aws_access_key_id", {"InvalidAccessKeyId"}),
    ],
)
async def test_wrong_credentials_are_refused(s3_config, field, codes):
    wrong = {**s3_config, field: "not-the-" + s3_config[field]}
    async with get_session().create_client("s3", config=PATH_STYLE, **wrong) as s3:
        with pytest.raises(ClientError) as refused:
            await s3.list_buckets()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.response["Error"]["Code"] in codes
