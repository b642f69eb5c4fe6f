"""An S3-compatible server on 127.0.0.1 for the Rust tests: moto's server mode with
signature checking on.

moto checks signatures and IAM policies only after its first
``INITIAL_NO_AUTH_ACTION_COUNT`` requests (counted across all services). This script
spends exactly those first requests, unsigned-but-accepted, on creating an IAM user with
an allow-all inline policy and an access key; from then on every request must be signed
with that key, so a wrong secret is refused with ``SignatureDoesNotMatch`` and an
unknown key id with ``InvalidAccessKeyId``, as on AWS.

Protocol (see tests/src/s3.rs): prints one JSON line
``{"endpoint": ..., "access_key_id": ..., "secret_access_key": ...}`` to stdout once the
server is ready, then serves until its stdin reaches EOF (the test process exited or
closed the pipe).
"""

import json
import logging
import os
import sys

# The bootstrap requests below: CreateUser, PutUserPolicy, CreateAccessKey. moto reads
# this variable when it is imported, so it must be set first.
BOOTSTRAP_REQUESTS = 3
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_REQUESTS)

import boto3  # noqa: E402
import botocore.config  # noqa: E402
import botocore.exceptions  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

USER = "flowlog-test"
REGION = "us-east-1"
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def client(service, endpoint, key_id, secret):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        # A retry would spend a bootstrap request.
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def main():
    # werkzeug logs one line per request on stderr; keep only problems.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    # The bootstrap: these requests are not authenticated (any key will do).
    iam = client("iam", endpoint, "bootstrap", "bootstrap")
    iam.create_user(UserName=USER)
    iam.put_user_policy(
        UserName=USER, PolicyName="allow-all", PolicyDocument=json.dumps(ALLOW_ALL)
    )
    key = iam.create_access_key(UserName=USER)["AccessKey"]
    key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]

    # Self-test: the key works and a wrong secret is refused, i.e. checking is on.
    client("s3", endpoint, key_id, secret).list_buckets()
    try:
        client("s3", endpoint, key_id, secret + "x").list_buckets()
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        if code != "SignatureDoesNotMatch":
            sys.exit(f"s3_server.py: a wrong secret was refused with {code!r}")
    else:
        sys.exit("s3_server.py: moto accepted a wrong secret; signature checking is off")

    print(
        json.dumps(
            {"endpoint": endpoint, "access_key_id": key_id, "secret_access_key": secret}
        ),
        flush=True,
    )

    # Serve until the parent closes our stdin (or dies).
    for _ in sys.stdin:
        pass
    server.stop()


if __name__ == "__main__":
    main()
