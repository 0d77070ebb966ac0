"""Verify avemint app JWTs in Python with PyJWT (pip install "PyJWT[crypto]")."""
import json
import os
import sys

import jwt

ISSUER = os.environ["AVEMINT_URL"]  # avemint's public URL: the tokens' `iss`
AUDIENCE = os.environ["API_AUDIENCE"]  # your API: the tokens' `aud`
# Fetches and caches avemint's keys by `kid`; an unknown `kid` (a rotated key) triggers a re-fetch.
JWKS = jwt.PyJWKClient(f"{ISSUER}/.well-known/jwks.json")
# A delegated token (avemint's token service) names the API that asked for it in `act.sub`: accept only these.
TRUSTED_ACTORS = [a for a in os.environ.get("API_TRUSTED_ACTORS", "").split(",") if a]


def verify_app_jwt(token: str) -> dict:
    if jwt.get_unverified_header(token).get("typ") != "at+jwt":
        raise jwt.InvalidTokenError("not an app JWT: header typ is not at+jwt")
    key = JWKS.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        issuer=ISSUER,
        audience=AUDIENCE,
        options={"require": ["exp", "iss", "aud", "sub"]},
    )
    if "act" in claims and claims["act"].get("sub") not in TRUSTED_ACTORS:
        raise jwt.InvalidTokenError("delegated by an untrusted API")
    return claims


if __name__ == "__main__":
    # `python3 verify.py < token.txt` prints the claims, or why the token was refused (exit status 1).
    try:
        print(json.dumps(verify_app_jwt(sys.stdin.read().strip())))
    except jwt.PyJWTError as e:
        print(type(e).__name__, file=sys.stderr)
        sys.exit(1)
