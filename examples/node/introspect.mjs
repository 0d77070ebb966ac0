// Ask avemint whether an app JWT's session is still live (RFC 7662), Node 18+ (no package needed).
const url = new URL('/oauth/introspect', process.env.AVEMINT_URL);
const basic = (id, secret) => // RFC 6749 §2.3.1: each part form-urlencoded, then base64
  'Basic ' + Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64');
const auth = basic(process.env.INTROSPECTION_PROFILE, process.env.INTROSPECTION_SECRET);

export async function introspect(token) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { authorization: auth },
    body: new URLSearchParams({ token }),
  });
  if (!res.ok) throw new Error(`introspection failed: ${res.status}`);
  return res.json(); // {active: false} or {active: true, sub, sid, exp, ...}
}

// `node introspect.mjs < token.txt` prints the answer; exit status 1 when the token is not active.
let token = '';
for await (const chunk of process.stdin) token += chunk;
const answer = await introspect(token.trim());
console.log(JSON.stringify(answer));
process.exit(answer.active ? 0 : 1);
