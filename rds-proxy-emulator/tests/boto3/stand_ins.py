"""The Secrets Manager and Parameter Store stand-ins driven by boto3, a third-party client.

Run with the local stack's stack.env and secret.env in the environment (the Rust test
`boto3_stand_ins` does that). Exits non-zero on the first failed check.
"""

import json
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

env = os.environ
region = env["AWS_REGION"]
no_retries = Config(retries={"max_attempts": 1, "mode": "standard"})


def client(service, creds=None):
    kwargs = {}
    if creds is not None:
        kwargs = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
    # The endpoints come from AWS_ENDPOINT_URL_STS / _SECRETS_MANAGER / _SSM, as in the
    # library: boto3 reads the same standard variables.
    return boto3.client(service, region_name=region, config=no_retries, **kwargs)


def error_code(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"].get("Message", "")
    raise AssertionError("the call succeeded where it should have failed")


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


sts = client("sts")
assumed = sts.assume_role(
    RoleArn=env["DATABASE_ACCOUNT_IAM_ROLE"],
    RoleSessionName="boto3-stand-ins",
    ExternalId=env["EXTERNAL_ID"],
)["Credentials"]
arn = env["DB_SECRET_ARN"]

# Secrets Manager, with the database account role's session credentials.
sm = client("secretsmanager", assumed)
got = sm.get_secret_value(SecretId=arn)
secret = json.loads(got["SecretString"])
check(got["ARN"] == arn and got["VersionStages"] == ["AWSCURRENT"], "GetSecretValue by ARN, AWSCURRENT")
check(secret["username"] == env["DB_USERNAME"] and secret["port"] == 5432, "the secret is RDS's JSON")
check(secret["host"] == env["RDS_PROXY_APPLICATION_ENDPOINT"] and secret["dbname"] == env["DBNAME"], "host and dbname")
check(len(secret["password"]) >= 20, "a generated password")
check(hasattr(got["CreatedDate"], "year"), "CreatedDate parses as a timestamp")
code, message = error_code(lambda: sm.get_secret_value(SecretId=arn, VersionStage="AWSPENDING"))
check(code == "ResourceNotFoundException", f"no AWSPENDING version: {code}")

# The application principal's own keys are not in the secret's resource policy.
own = client("secretsmanager")
code, message = error_code(lambda: own.get_secret_value(SecretId=arn))
check(code == "AccessDeniedException", f"app principal refused: {code}")
check("is not authorized to perform: secretsmanager:GetSecretValue" in message and arn in message, message)
check("because no resource-based policy allows" in message, "AWS's wording")

# Unknown secrets, by name (looked up in the caller's account) and by ARN.
code, message = error_code(lambda: sm.get_secret_value(SecretId="connectiontest/none"))
check(code == "ResourceNotFoundException" and message == "Secrets Manager can't find the specified secret.", message)
other_region = arn.replace(f":{region}:", ":eu-west-1:")
code, _ = error_code(lambda: sm.get_secret_value(SecretId=other_region))
check(code == "ResourceNotFoundException", "an ARN of another region is not found")

# Parameter Store, with the application principal's own keys.
ssm = client("ssm")
path = env["CONFIG_PARAMETER_PATH"]
names, token, pages = [], None, 0
while True:
    kwargs = {"Path": path, "WithDecryption": True, "MaxResults": 3}
    if token:
        kwargs["NextToken"] = token
    page = ssm.get_parameters_by_path(**kwargs)
    pages += 1
    check(len(page["Parameters"]) <= 3, "pages hold at most MaxResults")
    names += [p["Name"] for p in page["Parameters"]]
    values = {p["Name"]: p for p in page["Parameters"]}
    if f"{path}/password" in values:
        check(values[f"{path}/password"]["Value"] == secret["password"], "the SecureString decrypts to the secret's password")
    token = page.get("NextToken")
    if not token:
        break
expected = {f"{path}/{n}" for n in ["hostname", "port", "database", "user", "assume_role", "external_id", "connect_address", "secret_arn", "password"]}
check(set(names) == expected and pages == 3, f"GetParametersByPath pages through all {len(expected)} parameters")
parent = path.rsplit("/", 1)[0] or "/"
check(ssm.get_parameters_by_path(Path=parent)["Parameters"] == [], "not recursive: nothing directly under the parent")
recursive = ssm.get_parameters_by_path(Path=parent, Recursive=True, MaxResults=10)
check(len(recursive["Parameters"]) == 9, "Recursive finds them from the parent")
hidden = ssm.get_parameter(Name=f"{path}/password")["Parameter"]
check(hidden["Type"] == "SecureString" and hidden["Value"] != secret["password"], "without decryption the value stays encrypted")
user = ssm.get_parameter(Name=f"{path}/user")["Parameter"]
check(user["Value"] == env["DB_USERNAME"] and user["DataType"] == "text" and user["Version"] == 1, "GetParameter fields")
both = ssm.get_parameters(Names=[f"{path}/secret_arn", f"{path}/nothing"])
check(both["Parameters"][0]["Value"] == arn and both["InvalidParameters"] == [f"{path}/nothing"], "GetParameters and InvalidParameters")
code, _ = error_code(lambda: ssm.get_parameter(Name=f"{path}/nothing"))
check(code == "ParameterNotFound", "ParameterNotFound")
code, _ = error_code(lambda: ssm.get_parameters_by_path(Path=path, MaxResults=11))
check(code == "ValidationException", "MaxResults above 10 is refused")
# The database account role may not read the application account's parameters.
code, _ = error_code(lambda: client("ssm", assumed).get_parameter(Name=f"{path}/user"))
check(code == "AccessDeniedException", "another account's role is refused")
print("boto3: all checks passed")
