"""Create or correct the converter's login role and database (run by the converter_postgresql role as root).

Usage: python3 -c "$(cat ensure_role_and_db.py)" '{"psql": [...], "user": "converter", "db": "converter",
"check": false}' <<<"$PASSWORD"

The password comes on stdin, so it is on no command line. psql runs as the postgres superuser over the local
socket and gets its statements on stdin. The password reaches the server only as a SCRAM-SHA-256 verifier computed
here (as psql's \\password does), so it is in no statement text and no server log. An existing role's verifier is
checked against the password: an unchanged password is not set again, so a second run changes nothing.

Prints one JSON object: {"changed": [what was done, or with "check" what would be done]}.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import unicodedata

SCRAM_ITERATIONS = 4096
ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


def psql(args, sql):
    argv = args["psql"] + [f"--set=user={args['user']}", f"--set=db={args['db']}"]
    done = subprocess.run(argv, input=sql, text=True, capture_output=True, cwd="/", check=False)
    if done.returncode != 0:
        sys.exit(f"psql exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def salted(password, salt, iterations):
    # PostgreSQL runs SASLprep on the password; for ASCII (generated passwords) that is the identity.
    return hashlib.pbkdf2_hmac("sha256", unicodedata.normalize("NFKC", password).encode(), salt, iterations)


def keys(salted_password):
    client_key = hmac.new(salted_password, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted_password, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def verifier(password):
    salt = os.urandom(16)
    stored_key, server_key = keys(salted(password, salt, SCRAM_ITERATIONS))
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def matches(stored, password):
    """Whether a pg_authid.rolpassword SCRAM verifier is the one of this password."""
    try:
        method, rest = stored.split("$", 1)
        iterations_salt, stored_keys = rest.split("$", 1)
        iterations, salt = iterations_salt.split(":", 1)
        stored_key, server_key = (base64.b64decode(part) for part in stored_keys.split(":", 1))
    except (AttributeError, ValueError):
        return False  # no password, or an md5 one: set it again (as SCRAM)
    if method != "SCRAM-SHA-256":
        return False
    mine = keys(salted(password, base64.b64decode(salt), int(iterations)))
    return hmac.compare_digest(mine[0], stored_key) and hmac.compare_digest(mine[1], server_key)


def main():
    args = json.loads(sys.argv[1])
    password = sys.stdin.read().rstrip("\n")
    state = json.loads(psql(args, """
        SELECT json_build_object(
          'role', (SELECT json_build_object(
                     'attributes', rolcanlogin AND NOT rolsuper AND NOT rolcreatedb AND NOT rolcreaterole
                                   AND NOT rolreplication AND NOT rolbypassrls AND rolinherit,
                     'password', rolpassword)
                   FROM pg_authid WHERE rolname = :'user'),
          'db', (SELECT json_build_object('owner', pg_get_userbyid(datdba))
                 FROM pg_database WHERE datname = :'db'));
    """))
    changed, statements = [], []
    role = state["role"]
    if role is None:
        changed.append(f"create role {args['user']}")
        statements.append(f"CREATE ROLE :\"user\" {ROLE_ATTRIBUTES} PASSWORD '{verifier(password)}';")
    elif not role["attributes"] or not matches(role["password"], password):
        changed.append(f"set the attributes and password of role {args['user']}")
        statements.append(f"ALTER ROLE :\"user\" WITH {ROLE_ATTRIBUTES} PASSWORD '{verifier(password)}';")
    db = state["db"]
    if db is None:
        changed.append(f"create database {args['db']} owned by {args['user']}")
        statements.append("CREATE DATABASE :\"db\" OWNER :\"user\" TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8';")
    elif db["owner"] != args["user"]:
        changed.append(f"make {args['user']} the owner of database {args['db']} (was {db['owner']})")
        statements.append("ALTER DATABASE :\"db\" OWNER TO :\"user\";")
    if statements and not args.get("check"):
        psql(args, "\n".join(statements) + "\n")
    print(json.dumps({"changed": changed}))


if __name__ == "__main__":
    main()
