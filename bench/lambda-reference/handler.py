"""The reference handler: what the original Python sample did, pointed at the local stack.

boto3 sts.assume_role (AWS_ENDPOINT_URL_STS -> the STS stand-in), rds.generate_db_auth_token
with the assumed role's credentials, psycopg2 with sslmode=require to the RDS Proxy
stand-in (hostaddr from DB_CONNECT_HOST, since the endpoint name does not resolve here),
one SELECT, then the sample's answer.
"""
import os

import boto3
import psycopg2


def lambda_handler(event, context):
    role_arn = os.environ["DATABASE_ACCOUNT_IAM_ROLE"]
    endpoint = os.environ["RDS_PROXY_APPLICATION_ENDPOINT"]
    db_user = os.environ["DB_USERNAME"]
    db_name = os.environ["DBNAME"]
    port = int(os.environ.get("DB_PORT", "5432"))
    region = os.environ["AWS_REGION"]
    addr, _, listen_port = os.environ["DB_CONNECT_HOST"].rpartition(":")

    sts = boto3.client("sts")
    creds = sts.assume_role(
        RoleArn=role_arn,
        RoleSessionName="connection-test",
        ExternalId=os.environ["EXTERNAL_ID"],
    )["Credentials"]
    rds = boto3.client(
        "rds",
        region_name=region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    token = rds.generate_db_auth_token(
        DBHostname=endpoint, Port=port, DBUsername=db_user, Region=region
    )
    conn = psycopg2.connect(
        host=endpoint,
        hostaddr=addr,
        port=int(listen_port),
        user=db_user,
        password=token,
        dbname=db_name,
        sslmode="require",
        connect_timeout=10,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
    finally:
        conn.close()
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": "Database connection was successful!",
    }
