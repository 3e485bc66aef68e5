"""S3 keys per use: the policy files of the dev overlay, enforced by a real S3 server.

k8s/overlays/dev/platform/minio-policies/*.json are what the MinIO setup Job attaches to the
three users (and, with the bucket renamed, what docs/deploy.md attaches to IAM users on AWS).
Here a moto server (its own process, IAM authorization switched on after the setup) enforces
them: each key can do what its use needs and nothing else, in particular no key can delete the
DVC remote or another use's objects. (moto checks actions and resources; the ``s3:prefix``
condition of ListBucket it does not evaluate, so listing is not asserted here.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.support import BIN, REPO
from tests.support.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.s3]

POLICIES = REPO / "k8s" / "overlays" / "dev" / "platform" / "minio-policies"
BUCKET = "egnet"
OBJECTS = ["dvc/files/md5/ab/cdef", "runs/job1/checkpoints/ckpt_1.pt", "locks/egnet-nightcity.lock",
           "mlflow/1/run/artifacts/model.pt", "elsewhere/notes.txt"]


def test_the_policies_name_the_dev_bucket_and_are_aws_iam_documents():
    config = yaml.safe_load((POLICIES.parent / "platform-config.yaml").read_text())
    assert config["data"]["S3_BUCKET"] == BUCKET
    names = sorted(p.stem for p in POLICIES.glob("*.json"))
    assert names == ["egnet-mlflow-artifacts", "egnet-operator", "egnet-pipeline"]
    for path in POLICIES.glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["Version"] == "2012-10-17"
        for st in doc["Statement"]:
            assert st["Effect"] == "Allow" and "*" not in " ".join(st["Action"]), path.name
            assert all(r == f"arn:aws:s3:::{BUCKET}" or r.startswith(f"arn:aws:s3:::{BUCKET}/")
                       for r in st["Resource"]), path.name
            assert f"arn:aws:s3:::{BUCKET}/*" not in st["Resource"], "whole-bucket object access"


@pytest.fixture(scope="module")
def s3():
    """A moto server process; yields (endpoint, client factory)."""
    import boto3

    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "root", "AWS_SECRET_ACCESS_KEY": "root"}
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)

        def client(service: str, key: tuple[str, str] = ("root", "root")):
            return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id=key[0], aws_secret_access_key=key[1])

        yield endpoint, client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def keys(s3) -> dict[str, tuple[str, str]]:
    """Bucket, seed objects and one IAM user per policy file (as the setup Job does), then IAM
    authorization on: from here every request is checked against the user's policy."""
    endpoint, client = s3
    root = client("s3")
    root.create_bucket(Bucket=BUCKET)
    for key in OBJECTS:
        root.put_object(Bucket=BUCKET, Key=key, Body=b"seed")
    iam = client("iam")
    out = {}
    for path in sorted(POLICIES.glob("*.json")):
        iam.create_user(UserName=path.stem)
        iam.put_user_policy(UserName=path.stem, PolicyName=path.stem, PolicyDocument=path.read_text())
        ak = iam.create_access_key(UserName=path.stem)["AccessKey"]
        out[path.stem] = (ak["AccessKeyId"], ak["SecretAccessKey"])
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})  # not a form: moto reads the body
    urllib.request.urlopen(req, timeout=10).close()
    return out


def allowed(client, op: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        if op == "get":
            client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        elif op == "put":
            client.put_object(Bucket=BUCKET, Key=key, Body=b"new")
        else:
            client.delete_object(Bucket=BUCKET, Key=key)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("AccessDenied", "403"):
            return False
        raise


#: use -> prefix -> the operations it may do there (everything else is refused)
EXPECTED = {
    "egnet-pipeline": {"dvc/": {"get"}, "runs/": {"get", "put", "delete"},
                       "locks/": {"get", "put", "delete"}},
    "egnet-mlflow-artifacts": {"mlflow/": {"get", "put", "delete"}},
    "egnet-operator": {"dvc/": {"get", "put"}, "locks/": {"get", "put", "delete"}},
}


@pytest.mark.parametrize("use", sorted(EXPECTED))
def test_each_key_does_what_its_use_needs_and_nothing_else(s3, keys, use):
    _, client = s3
    c = client("s3", keys[use])
    for obj in OBJECTS:
        prefix = obj.split("/", 1)[0] + "/"
        may = EXPECTED[use].get(prefix, set())
        for op in ("get", "put", "delete"):
            target = obj if op != "put" else f"{prefix}{use}-new.bin"
            assert allowed(c, op, target) == (op in may), f"{use}: {op} {target}"
            if op == "delete" and op in may:  # put the seed back for the next key
                client("s3", keys[use]).put_object(Bucket=BUCKET, Key=obj, Body=b"seed")
    # a key with no policy at all gets nothing
    with pytest.raises(Exception, match="InvalidAccessKeyId|AccessDenied|403"):
        client("s3", ("AKIANOSUCHKEY0000000", "x" * 40)).get_object(Bucket=BUCKET, Key=OBJECTS[0])


def test_the_aws_example_is_the_same_policy_with_the_bucket_renamed():
    doc = (REPO / "docs" / "deploy.md").read_text()
    start = doc.index("```json\n") + len("```json\n")
    example = json.loads(doc[start:doc.index("```", start)])
    renamed = json.loads((POLICIES / "egnet-pipeline.json").read_text().replace(
        "arn:aws:s3:::egnet", "arn:aws:s3:::egnet-prod-example"))
    for st in renamed["Statement"]:
        st.pop("Sid", None)
    assert example == renamed
