"""A Python program connecting through the auth proxy as any program would: psycopg 3
with libpq's defaults (sslmode=prefer: it asks for TLS, the proxy answers N and the session
goes on in the clear) and no password. Prints one JSON line with what it read.

    python client.py HOST PORT USER DBNAME

Run by tests/languages.rs with the project's .venv (make proxy-clients installs psycopg).
"""

import json
import os
import sys

import psycopg


def sslmode(conn: psycopg.Connection) -> str:
    for option in conn.pgconn.info:
        if option.keyword == b"sslmode":
            return (option.val or option.compiled or b"").decode()
    return ""


def main() -> None:
    host, port, user, dbname = sys.argv[1:5]
    # The point is that no password is needed: refuse to run with one at hand, so a pass
    # here cannot come from one.
    if os.environ.get("PGPASSWORD"):
        sys.exit("PGPASSWORD is set: this client must connect without a password")
    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, connect_timeout=20) as conn:
        (current_user,) = conn.execute("SELECT current_user").fetchone()
        # Server-side parameters (extended protocol), as psycopg 3 sends them.
        (plus_one,) = conn.execute("SELECT %s::int + 1", (41,)).fetchone()
        conn.commit()
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE proxy_client_rows (id int, name text)")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO proxy_client_rows VALUES (%s, %s)",
                    [(1, "alpha"), (2, "beta")],
                )
            rows = conn.execute("SELECT id, name FROM proxy_client_rows ORDER BY id").fetchall()
        print(
            json.dumps(
                {
                    "client": f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()})",
                    "current_user": current_user,
                    "plus_one": plus_one,
                    "rows": [[i, n] for i, n in rows],
                    "ssl": bool(conn.pgconn.ssl_in_use),
                    # libpq's effective setting (the default unless something set it).
                    "sslmode": sslmode(conn),
                }
            )
        )


if __name__ == "__main__":
    main()
