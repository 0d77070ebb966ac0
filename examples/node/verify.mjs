// Verify avemint app JWTs in Node with `jose` (npm install jose).
import { pathToFileURL } from 'node:url';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const issuer = process.env.AVEMINT_URL; // avemint's public URL: the tokens' `iss`
const audience = process.env.API_AUDIENCE; // your API: the tokens' `aud`
// Fetches and caches avemint's keys; an unknown `kid` (a rotated key) triggers a rate-limited re-fetch.
const jwks = createRemoteJWKSet(new URL('/.well-known/jwks.json', issuer));
// A delegated token (avemint's token service) names the API that asked for it in `act.sub`: accept only these.
const trustedActors = (process.env.API_TRUSTED_ACTORS || '').split(',').filter(Boolean);

export async function verifyAppJwt(token) {
  const { payload } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ['ES256'],
    typ: 'at+jwt',
    requiredClaims: ['exp', 'sub'],
  });
  if (payload.act !== undefined && !trustedActors.includes(payload.act.sub)) {
    throw Object.assign(new Error('delegated by an untrusted API'), { code: 'ERR_UNTRUSTED_ACTOR' });
  }
  return payload;
}

// `node verify.mjs < token.txt` prints the claims, or why the token was refused (exit status 1).
if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  let token = '';
  for await (const chunk of process.stdin) token += chunk;
  try {
    console.log(JSON.stringify(await verifyAppJwt(token.trim())));
  } catch (e) {
    console.error(e.code || e.name);
    process.exit(1);
  }
}
