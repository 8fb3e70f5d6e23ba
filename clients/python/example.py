"""Verifies a token with keys from keyrelay and prints its claims as JSON.

python example.py 127.0.0.1:50051 acme TOKEN [--audience api] [--issuer https://...]
    [--access-token krt_...]   (or KEYRELAY_ACCESS_TOKEN), for tenants that require one
"""

import argparse
import json
import os
import sys

import jwt
from keyrelay_client import KeyWatcher


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="keyrelay gRPC address, host:port")
    parser.add_argument("tenant")
    parser.add_argument("token")
    parser.add_argument("--provider", default="")
    parser.add_argument("--audience")
    parser.add_argument("--issuer")
    parser.add_argument("--access-token", default=os.environ.get("KEYRELAY_ACCESS_TOKEN"))
    args = parser.parse_args()

    watcher = KeyWatcher(args.target, args.tenant, args.provider, args.access_token)
    if not watcher.wait_synced():
        print("no key sets from keyrelay within 10 s", file=sys.stderr)
        return 2
    try:
        claims = watcher.verify(args.token, audience=args.audience, issuer=args.issuer)
    except jwt.PyJWTError as err:
        print(f"token refused: {err}", file=sys.stderr)
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
