"""Ask avemint whether an app JWT's session is still live (RFC 7662), standard library only."""
import base64
import json
import os
import sys
import urllib.parse
import urllib.request

URL = os.environ["AVEMINT_URL"] + "/oauth/introspect"
# RFC 6749 §2.3.1: the profile name and its secret, each form-urlencoded, then base64.
CREDENTIALS = ":".join(
    urllib.parse.quote_plus(os.environ[name]) for name in ("INTROSPECTION_PROFILE", "INTROSPECTION_SECRET")
)
AUTH = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()


def introspect(token: str) -> dict:
    body = urllib.parse.urlencode({"token": token}).encode()
    request = urllib.request.Request(URL, data=body, headers={"Authorization": AUTH})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)  # {"active": False} or {"active": True, "sub": ..., "sid": ...}


if __name__ == "__main__":
    # `python3 introspect.py < token.txt` prints the answer; exit status 1 when the token is not active.
    answer = introspect(sys.stdin.read().strip())
    print(json.dumps(answer))
    sys.exit(0 if answer["active"] else 1)
