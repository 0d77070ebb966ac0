// The Node + jose peer of avemint's `POST /auth/token` for bench/load.sh: the same job, written the way a team
// would with Node's http module and jose. Sessions live in a Map keyed by the session cookie (as avemint's
// in-process session cache answers a warm session); the request must carry `X-CSRF: 1` and a known
// `__Host-avemint` cookie (else 401); the answer is the same JSON (`access_token`, `token_type`, `expires_in`)
// with the same claims as avemint's benchmark profile (registered claims, `sid`, `client_id`, roles, email, name,
// handle), signed ES256 with a key imported once.
//
//   node server.mjs --sessions 64 --cookies FILE [--port 0]
//
// Prints `url=…` and `signed_in=N` (what bench/load.sh waits for) and serves until SIGTERM.
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import http from "node:http";
import { SignJWT, generateKeyPair } from "jose";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const count = Number(args.sessions ?? 64);
const { privateKey } = await generateKeyPair("ES256");
const sessions = new Map();
const cookies = [];
for (let n = 0; n < count; n++) {
  const cookie = randomBytes(32).toString("base64url");
  sessions.set(cookie, {
    sub: `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`,
    sid: randomBytes(16).toString("base64url"),
    email: `user${n}@example.com`,
    name: `User ${n}`,
    handle: `user${n}`,
  });
  cookies.push(cookie);
}
if (args.cookies) writeFileSync(args.cookies, cookies.join("\n") + "\n");

const COOKIE = "__Host-avemint=";
function sessionOf(header) {
  if (!header) return undefined;
  for (const crumb of header.split(";")) {
    const c = crumb.trim();
    if (c.startsWith(COOKIE)) return sessions.get(c.slice(COOKIE.length));
  }
  return undefined;
}

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), "cache-control": "no-store" });
  res.end(text);
}

const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", async () => {
    if (req.method !== "POST" || req.url !== "/auth/token") return answer(res, 404, { error: "not_found" });
    if (req.headers["x-csrf"] !== "1") return answer(res, 403, { error: "csrf" });
    const s = sessionOf(req.headers.cookie);
    if (!s) return answer(res, 401, { error: "login_required" });
    const token = await new SignJWT({ sid: s.sid, client_id: "app_bench", roles: ["reader"], email: s.email, name: s.name, handle: s.handle })
      .setProtectedHeader({ alg: "ES256", typ: "at+jwt", kid: "bench" })
      .setIssuer("http://127.0.0.1")
      .setSubject(s.sub)
      .setAudience("https://api.example.com")
      .setIssuedAt()
      .setExpirationTime("300s")
      .setJti(randomBytes(16).toString("base64url"))
      .sign(privateKey);
    answer(res, 200, { access_token: token, token_type: "Bearer", expires_in: 300 });
  });
});
server.keepAliveTimeout = 75_000;
server.listen(Number(args.port ?? 0), "127.0.0.1", () => {
  console.log(`url=http://127.0.0.1:${server.address().port}`);
  console.log(`signed_in=${count}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
