// Get app JWTs from avemint's token service in Node with `oauth4webapi` (npm install oauth4webapi).
import { pathToFileURL } from 'node:url';
import * as oauth from 'oauth4webapi';

const issuer = new URL(process.env.AVEMINT_URL); // avemint's public URL
// Plain http is for a local avemint on loopback only; production is https.
const options = issuer.protocol === 'http:' ? { [oauth.allowInsecureRequests]: true } : {};
const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, options));
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';

async function exchange(client, auth, subjectToken, subjectTokenType, audience) {
  const parameters = { subject_token: subjectToken, subject_token_type: subjectTokenType, audience };
  const response = await oauth.genericTokenEndpointRequest(as, client, auth, TOKEN_EXCHANGE, parameters, options);
  return oauth.processGenericTokenEndpointResponse(as, client, response);
}

// A native app or CLI: its Ave access token (`access_token_jwt`) for an app JWT of `audience`. No secret.
export function exchangeAveToken(aveClientId, aveAccessTokenJwt, audience) {
  const type = 'urn:ietf:params:oauth:token-type:jwt';
  return exchange({ client_id: aveClientId }, oauth.None(), aveAccessTokenJwt, type, audience);
}

// An API holding an app JWT of its profile asks for another API's token for the same user (delegation).
export function delegate(profile, secret, appJwt, audience) {
  const type = 'urn:ietf:params:oauth:token-type:access_token';
  return exchange({ client_id: profile }, oauth.ClientSecretBasic(secret), appJwt, type, audience);
}

// A background job: a service profile's own token (client credentials).
export async function serviceToken(profile, secret) {
  const client = { client_id: profile };
  const auth = oauth.ClientSecretBasic(secret);
  const response = await oauth.clientCredentialsGrantRequest(as, client, auth, {}, options);
  return oauth.processClientCredentialsResponse(as, client, response);
}

// `node token-service.mjs ave CLIENT_ID AUDIENCE < ave_token`, `… delegate PROFILE AUDIENCE < app_jwt` (secret in
// TOKEN_SERVICE_SECRET) or `… service PROFILE`: prints the token response, or the OAuth error (exit status 1).
if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [grant, id, audience] = process.argv.slice(2);
  let input = '';
  if (grant !== 'service') for await (const chunk of process.stdin) input += chunk;
  const secret = process.env.TOKEN_SERVICE_SECRET;
  try {
    const answer = grant === 'ave' ? await exchangeAveToken(id, input.trim(), audience)
      : grant === 'delegate' ? await delegate(id, secret, input.trim(), audience)
      : await serviceToken(id, secret);
    console.log(JSON.stringify(answer));
  } catch (e) {
    console.error(e.error || e.code || e.name);
    process.exit(1);
  }
}
