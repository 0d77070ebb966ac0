// Verify avemint app JWTs in Node with `jose` (npm install jose).
import { pathToFileURL } from 'node:url';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const issuer = process.env.AVEMINT_URL; // avemint's public URL: the tokens' `iss`
const audience = process.env.API_AUDIENCE; // your API: the tokens' `aud`
// Fetches and caches avemint's keys; an unknown `kid` (a rotated key) triggers a rate-limited re-fetch.
const jwks = createRemoteJWKSet(new URL('/.well-known/jwks.json', issuer));

export async function verifyAppJwt(token) {
  const { payload } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    algorithms: ['ES256'],
    typ: 'at+jwt',
    requiredClaims: ['exp', 'sub'],
  });
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
