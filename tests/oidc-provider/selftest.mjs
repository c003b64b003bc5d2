// End-to-end self test of server.mjs, acting as a NON-browser client (fetch with redirect:
// 'manual' and a hand-rolled cookie jar), the same way courier's Rust tests drive it.
//
//   node selftest.mjs        (exit code 0 = success)
//
// Starts its own provider child processes and a tiny relying-party HTTP server on 127.0.0.1 that
// plays the redirect_uri / post_logout_redirect_uri / backchannel_logout_uri endpoints.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const VERBOSE = process.env.SELFTEST_VERBOSE === '1';

let failures = 0;
let passes = 0;
function check(cond, what, extra) {
  if (cond) {
    passes += 1;
    console.log(`  ok   ${what}`);
  } else {
    failures += 1;
    console.log(`  FAIL ${what}${extra !== undefined ? ` -- ${typeof extra === 'string' ? extra : JSON.stringify(extra)}` : ''}`);
  }
  return cond;
}
function section(name) { console.log(`\n== ${name}`); }

// -------------------------------------------------------------------------------------------
// relying party stub (redirect targets + backchannel logout receiver)
// -------------------------------------------------------------------------------------------

const backchannelLogouts = [];
const rp = http.createServer(async (req, res) => {
  if (req.method === 'POST' && req.url === '/backchannel-logout') {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = new URLSearchParams(Buffer.concat(chunks).toString());
    backchannelLogouts.push(body.get('logout_token'));
    res.statusCode = 200;
    res.end();
    return;
  }
  res.statusCode = 200;
  res.end('rp');
});
await new Promise((resolve) => rp.listen(0, '127.0.0.1', resolve));
const RP = `http://127.0.0.1:${rp.address().port}`;
const REDIRECT_URI = `${RP}/callback`;
const POST_LOGOUT_URI = `${RP}/logged-out`;

// -------------------------------------------------------------------------------------------
// provider child process
// -------------------------------------------------------------------------------------------

const children = [];
async function startProvider(config) {
  const child = spawn(process.execPath, [path.join(here, 'server.mjs')], {
    cwd: here,
    env: { ...process.env, OIDC_CONFIG: JSON.stringify(config) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  const stderr = [];
  child.stderr.on('data', (d) => {
    stderr.push(d.toString());
    if (VERBOSE) process.stderr.write(d);
  });
  const stdoutLines = [];
  const issuer = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`provider did not become ready:\n${stderr.join('')}`)), 15000);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      stdoutLines.push(line);
      const m = /^READY (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`provider exited with ${code}:\n${stderr.join('')}`)); });
  });
  return { child, issuer, stderr, stdoutLines };
}

function stopAll() {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  rp.close();
}

// -------------------------------------------------------------------------------------------
// non-browser HTTP client: cookie jar + manual redirects
// -------------------------------------------------------------------------------------------

class CookieJar {
  #cookies = new Map(); // key name|path -> { name, value, path, expires }

  store(res) {
    for (const header of res.headers.getSetCookie()) {
      const [pair, ...attrs] = header.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let cookiePath = '/';
      let expires;
      for (const a of attrs) {
        const [k, v] = a.split('=');
        if (k.toLowerCase() === 'path') cookiePath = v;
        if (k.toLowerCase() === 'expires') expires = Date.parse(v);
        if (k.toLowerCase() === 'max-age') expires = Date.now() + Number(v) * 1000;
      }
      const key = `${name}|${cookiePath}`;
      if (!value || (expires !== undefined && expires <= Date.now())) this.#cookies.delete(key);
      else this.#cookies.set(key, { name, value, path: cookiePath, expires });
    }
  }

  header(url) {
    const p = new URL(url).pathname;
    const matching = [...this.#cookies.values()].filter((c) => (
      (c.expires === undefined || c.expires > Date.now())
      && (p === c.path || (p.startsWith(c.path) && (c.path.endsWith('/') || p[c.path.length] === '/')))
    ));
    return matching.map((c) => `${c.name}=${c.value}`).join('; ');
  }

  names() { return [...this.#cookies.values()].map((c) => `${c.name}(path=${c.path})`); }
}

function client() {
  const jar = new CookieJar();
  const trail = [];
  async function request(url, { method = 'GET', form, headers = {} } = {}) {
    const h = { ...headers };
    const cookie = jar.header(url);
    if (cookie) h.cookie = cookie;
    let body;
    if (form) {
      body = new URLSearchParams(form).toString();
      h['content-type'] = 'application/x-www-form-urlencoded';
    }
    const res = await fetch(url, { method, headers: h, body, redirect: 'manual' });
    jar.store(res);
    const text = await res.text();
    const location = res.headers.get('location');
    const step = {
      method, url, status: res.status, location: location ? new URL(location, url).href : undefined, text,
    };
    trail.push(`${method} ${url} -> ${res.status}${location ? ` Location: ${location}` : ''}`);
    if (VERBOSE) console.log(`    ${trail.at(-1)}`);
    return step;
  }
  // GET url, then keep following 30x Locations (always with GET) until a non-redirect response,
  // or until the Location starts with `stopAt` (the client's redirect_uri).
  async function follow(url, { stopAt, first } = {}) {
    let step = first ?? await request(url);
    for (let i = 0; i < 20; i += 1) {
      if (![301, 302, 303, 307, 308].includes(step.status)) return step;
      if (stopAt && step.location.startsWith(stopAt)) return step;
      step = await request(step.location);
    }
    throw new Error('too many redirects');
  }
  return { jar, trail, request, follow };
}

// -------------------------------------------------------------------------------------------
// OAuth helpers
// -------------------------------------------------------------------------------------------

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

function authUrl(issuer, { scope, prompt, clientId = 'courier', pkce = true, loginHint } = {}) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = crypto.hash ? crypto.hash('sha256', verifier, 'base64url') : crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = b64url(crypto.randomBytes(12));
  const nonce = b64url(crypto.randomBytes(12));
  const u = new URL('/auth', issuer);
  u.search = new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: REDIRECT_URI,
    scope: scope ?? 'openid profile email offline_access orders:read',
    state,
    nonce,
    ...(pkce ? { code_challenge: challenge, code_challenge_method: 'S256' } : {}),
    ...(prompt ? { prompt } : {}),
    ...(loginHint ? { login_hint: loginHint } : {}),
  }).toString();
  return {
    url: u.href, verifier, state, nonce,
  };
}

async function postForm(url, form, auth) {
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
      ...(auth ? { authorization: auth } : {}),
    },
    body: new URLSearchParams(form).toString(),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = { raw: text }; }
  return { status: res.status, json };
}

function decodeJwt(jwt) {
  const [h, p] = jwt.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), payload: JSON.parse(Buffer.from(p, 'base64url')) };
}

async function verifyJwt(jwt, jwksUri) {
  const { keys } = await (await fetch(jwksUri)).json();
  const { header } = decodeJwt(jwt);
  const jwk = keys.find((k) => k.kid === header.kid);
  if (!jwk || header.alg !== 'RS256') return false;
  const [h, p, s] = jwt.split('.');
  return crypto.verify('sha256', Buffer.from(`${h}.${p}`), crypto.createPublicKey({ key: jwk, format: 'jwk' }), Buffer.from(s, 'base64url'));
}

const inputValue = (html, name) => new RegExp(`name="${name}"[^>]*value="([^"]*)"`).exec(html)?.[1];

// The documented non-browser login: GET auth URL, follow redirects to /interaction/<uid>,
// POST the login form there, follow redirects until the Location is the redirect_uri.
async function login(http_, issuer, authReq, loginName) {
  const page = await http_.follow(authReq.url, { stopAt: REDIRECT_URI });
  if (page.status !== 200 || !/\/interaction\/[^/]+$/.test(new URL(page.url).pathname)) {
    return { callback: page, page };
  }
  const action = new URL(/<form method="post" action="([^"]+)"/.exec(page.text)[1], page.url).href;
  const posted = await http_.request(action, { method: 'POST', form: { login: loginName, password: 'x' } });
  const callback = await http_.follow(undefined, { stopAt: REDIRECT_URI, first: posted });
  return { page, posted, callback };
}

function callbackParams(step) {
  if (!step.location?.startsWith(REDIRECT_URI)) return undefined;
  return Object.fromEntries(new URL(step.location).searchParams);
}

// -------------------------------------------------------------------------------------------
// the test
// -------------------------------------------------------------------------------------------

async function main() {
  const courierClient = {
    client_id: 'courier',
    client_secret: 'courier-secret',
    redirect_uris: [REDIRECT_URI],
    post_logout_redirect_uris: [POST_LOGOUT_URI],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    backchannel_logout_uri: `${RP}/backchannel-logout`,
    backchannel_logout_session_required: true,
  };
  const { issuer, stdoutLines, stderr } = await startProvider({ clients: [courierClient] });
  console.log(`provider: ${issuer}   rp stub: ${RP}`);

  section('discovery');
  const disco = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  check(disco.issuer === issuer, 'issuer matches READY line', disco.issuer);
  for (const k of ['authorization_endpoint', 'token_endpoint', 'end_session_endpoint', 'revocation_endpoint',
    'introspection_endpoint', 'jwks_uri', 'userinfo_endpoint']) {
    check(typeof disco[k] === 'string' && disco[k].startsWith(issuer), `lists ${k}`, disco[k]);
  }
  check(JSON.stringify(disco.code_challenge_methods_supported) === '["S256"]', 'code_challenge_methods_supported = [S256]', disco.code_challenge_methods_supported);
  check(disco.backchannel_logout_supported === true, 'backchannel_logout_supported');
  for (const s of ['openid', 'profile', 'email', 'offline_access', 'orders:read', 'calendar:read', 'api:read']) {
    check(disco.scopes_supported.includes(s), `scopes_supported has ${s}`);
  }
  const jwks = await (await fetch(disco.jwks_uri)).json();
  check(jwks.keys?.length === 1 && jwks.keys[0].kty === 'RSA' && jwks.keys[0].alg === 'RS256' && !jwks.keys[0].d, 'jwks has one public RS256 key');

  section('PKCE is required');
  {
    const c = client();
    const a = authUrl(issuer, { pkce: false });
    const step = await c.request(a.url);
    const p = callbackParams(step) ?? {};
    check(p.error === 'invalid_request' && /PKCE/.test(p.error_description ?? ''), 'authorization request without code_challenge is rejected to redirect_uri', step.location);
  }

  section('authorization code flow (non-browser client)');
  const alice = client();
  const a1 = authUrl(issuer);
  const first = await alice.request(a1.url);
  check(first.status === 303 && /^\/interaction\/[\w-]+$/.test(new URL(first.location).pathname), 'GET /auth -> 303 to /interaction/<uid>', first);
  const form = await alice.follow(undefined, { first, stopAt: REDIRECT_URI });
  check(form.status === 200, 'GET /interaction/<uid> -> 200 login page');
  check(/<form method="post" action="\/interaction\/[\w-]+\/login"/.test(form.text), 'page has the login form');
  check(/<input id="login" name="login"/.test(form.text) && /<input id="password" name="password"/.test(form.text), 'inputs #login and #password');
  check(/<button id="submit" type="submit">Sign in<\/button>/.test(form.text), 'button #submit "Sign in"');
  const action = new URL(/action="([^"]+)"/.exec(form.text)[1], form.url).href;

  const empty = await alice.request(action, { method: 'POST', form: { login: '', password: 'x' } });
  check(empty.status === 400 && /id="error"/.test(empty.text) && /id="login"/.test(empty.text), 'empty login re-renders the form with an error');

  const posted = await alice.request(action, { method: 'POST', form: { login: 'alice', password: 'x' } });
  check(posted.status === 303 && new URL(posted.location).pathname.startsWith('/auth/'), 'POST login -> 303 to /auth/<uid> (resume)', posted);
  const cb = await alice.follow(undefined, { first: posted, stopAt: REDIRECT_URI });
  const cbp = callbackParams(cb) ?? {};
  check(!!cbp.code && cbp.state === a1.state && cbp.iss === issuer, 'redirected to redirect_uri with code, state and iss', cb.location);
  if (VERBOSE) console.log(alice.trail.join('\n'), '\ncookies:', alice.jar.names());

  const tokenUrl = disco.token_endpoint;
  const auth = basic('courier', 'courier-secret');
  const t1 = await postForm(tokenUrl, {
    grant_type: 'authorization_code', code: cbp.code, redirect_uri: REDIRECT_URI, code_verifier: a1.verifier,
  }, auth);
  check(t1.status === 200 && t1.json.access_token && t1.json.refresh_token && t1.json.id_token, 'token response has access_token, refresh_token, id_token', t1);
  check(t1.json.token_type === 'Bearer' && t1.json.expires_in > 3500, 'Bearer, expires_in ~3600', t1.json);
  check(t1.json.scope?.split(' ').includes('orders:read') && t1.json.scope.split(' ').includes('offline_access'), 'granted scope includes orders:read and offline_access', t1.json.scope);
  const idt = decodeJwt(t1.json.id_token).payload;
  check(await verifyJwt(t1.json.id_token, disco.jwks_uri), 'id_token RS256 signature verifies against jwks');
  check(idt.sub === 'alice' && idt.aud === 'courier' && idt.iss === issuer && idt.nonce === a1.nonce, 'id_token sub/aud/iss/nonce', idt);
  check(idt.name === 'User alice' && idt.email === 'alice@example.test' && idt.email_verified === true && idt.picture === 'https://example.test/alice.png', 'id_token profile/email claims', idt);
  check(typeof idt.sid === 'string', 'id_token has sid');


  section('userinfo + introspection');
  const ui = await fetch(disco.userinfo_endpoint, { headers: { authorization: `Bearer ${t1.json.access_token}` } });
  const uij = await ui.json();
  check(ui.status === 200 && uij.sub === 'alice' && uij.email === 'alice@example.test' && uij.name === 'User alice', 'userinfo returns claims', uij);
  const intro = await postForm(disco.introspection_endpoint, { token: t1.json.access_token }, auth);
  check(intro.json.active === true && intro.json.sub === 'alice' && intro.json.client_id === 'courier' && intro.json.scope.includes('orders:read'), 'introspection: active access token', intro.json);

  section('refresh (rotation on)');
  const r1 = await postForm(tokenUrl, { grant_type: 'refresh_token', refresh_token: t1.json.refresh_token }, auth);
  check(r1.status === 200 && r1.json.access_token && r1.json.refresh_token && r1.json.refresh_token !== t1.json.refresh_token, 'refresh returns a NEW refresh token', r1);
  check(!!r1.json.id_token, 'refresh returns an id_token');
  const oldIntro = await postForm(disco.introspection_endpoint, { token: t1.json.refresh_token }, auth);
  check(oldIntro.json.active === false, 'rotated-out refresh token is inactive', oldIntro.json);
  const r2 = await postForm(tokenUrl, { grant_type: 'refresh_token', refresh_token: r1.json.refresh_token }, auth);
  check(r2.status === 200 && r2.json.refresh_token !== r1.json.refresh_token, 'second refresh rotates again', r2);

  section('client_credentials');
  const cc = await postForm(tokenUrl, { grant_type: 'client_credentials', scope: 'api:read' }, auth);
  check(cc.status === 200 && cc.json.access_token && cc.json.scope === 'api:read' && !cc.json.refresh_token, 'client_credentials token with scope api:read', cc);
  const ccIntro = await postForm(disco.introspection_endpoint, { token: cc.json.access_token }, auth);
  check(ccIntro.json.active === true && ccIntro.json.client_id === 'courier' && !ccIntro.json.sub, 'introspection: client_credentials token active, no sub', ccIntro.json);
  const badSecret = await postForm(tokenUrl, { grant_type: 'client_credentials' }, basic('courier', 'nope'));
  check(badSecret.status === 401 && badSecret.json.error === 'invalid_client', 'wrong client secret -> 401 invalid_client', badSecret);

  section('revocation');
  const rv = await postForm(disco.revocation_endpoint, { token: r2.json.access_token, token_type_hint: 'access_token' }, auth);
  check(rv.status === 200, 'revocation endpoint -> 200');
  const rvIntro = await postForm(disco.introspection_endpoint, { token: r2.json.access_token }, auth);
  check(rvIntro.json.active === false, 'revoked access token is inactive', rvIntro.json);

  section('second authorization in the same session (SSO)');
  {
    const a2 = authUrl(issuer);
    const s = await alice.follow(a2.url, { stopAt: REDIRECT_URI });
    const p = callbackParams(s) ?? {};
    check(!!p.code && p.state === a2.state, 'same scopes: straight back to redirect_uri, no form', s);
    const a3 = authUrl(issuer, { scope: 'openid profile email offline_access orders:read calendar:read' });
    const s3 = await alice.follow(a3.url, { stopAt: REDIRECT_URI });
    const p3 = callbackParams(s3) ?? {};
    check(!!p3.code && p3.state === a3.state, 'new scope: consent interaction auto-granted on GET /interaction/<uid>', s3);
    const t3 = await postForm(tokenUrl, {
      grant_type: 'authorization_code', code: p3.code, redirect_uri: REDIRECT_URI, code_verifier: a3.verifier,
    }, auth);
    check(t3.json.scope?.split(' ').includes('calendar:read') && t3.json.refresh_token, 'new token has calendar:read and a refresh token', t3.json);
    const a4 = authUrl(issuer, { prompt: 'login' });
    const s4 = await login(alice, issuer, a4, 'alice');
    const p4 = callbackParams(s4.callback) ?? {};
    check(s4.page.status === 200 && !!p4.code, 'prompt=login shows the form again and completes', s4.callback);
  }

  section('login_hint and abort');
  {
    const c = client();
    const a = authUrl(issuer, { loginHint: 'zed' });
    const pg = await c.follow(a.url, { stopAt: REDIRECT_URI });
    check(/<input id="login" name="login" type="text" value="zed"/.test(pg.text), 'login_hint pre-fills #login');
    const ab = await c.follow(`${pg.url}/abort`, { stopAt: REDIRECT_URI });
    const p = callbackParams(ab) ?? {};
    check(p.error === 'access_denied' && p.state === a.state, 'GET /interaction/<uid>/abort -> redirect_uri?error=access_denied', ab.location);
  }

  section('authorization code replay');
  {
    const a = authUrl(issuer);
    const p = callbackParams(await alice.follow(a.url, { stopAt: REDIRECT_URI })) ?? {};
    const form_ = {
      grant_type: 'authorization_code', code: p.code, redirect_uri: REDIRECT_URI, code_verifier: a.verifier,
    };
    const wrongVerifier = await postForm(tokenUrl, { ...form_, code_verifier: b64url(crypto.randomBytes(32)) }, auth);
    check(wrongVerifier.status === 400 && wrongVerifier.json.error === 'invalid_grant', 'wrong code_verifier -> invalid_grant', wrongVerifier.json);
    const b = authUrl(issuer);
    const q = callbackParams(await alice.follow(b.url, { stopAt: REDIRECT_URI })) ?? {};
    const ok = await postForm(tokenUrl, {
      grant_type: 'authorization_code', code: q.code, redirect_uri: REDIRECT_URI, code_verifier: b.verifier,
    }, auth);
    const replay = await postForm(tokenUrl, {
      grant_type: 'authorization_code', code: q.code, redirect_uri: REDIRECT_URI, code_verifier: b.verifier,
    }, auth);
    check(ok.status === 200 && replay.status === 400 && replay.json.error === 'invalid_grant', 'authorization code cannot be reused', replay.json);
  }

  section('RP-initiated logout (non-browser) + backchannel logout');
  {
    const idTokenHint = t1.json.id_token;
    const u = new URL(disco.end_session_endpoint);
    u.search = new URLSearchParams({ id_token_hint: idTokenHint, post_logout_redirect_uri: POST_LOGOUT_URI, state: 'bye' }).toString();
    const confirmPage = await alice.request(u.href);
    check(confirmPage.status === 200 && /id="logout-confirm"/.test(confirmPage.text), 'GET /session/end -> 200 page with #logout-confirm', confirmPage.status);
    const xsrf = inputValue(confirmPage.text, 'xsrf');
    const confirmAction = new URL(/<form id="op.logoutForm" method="post" action="([^"]+)"/.exec(confirmPage.text)?.[1] ?? '/session/end/confirm', issuer).href;
    check(!!xsrf && confirmAction === `${issuer}/session/end/confirm`, 'form posts xsrf to /session/end/confirm', confirmAction);
    const before = backchannelLogouts.length;
    const done = await alice.request(confirmAction, { method: 'POST', form: { xsrf, logout: 'yes' } });
    check(done.status === 303 && done.location === `${POST_LOGOUT_URI}?state=bye`, 'POST confirm -> 303 to post_logout_redirect_uri?state=bye', done);
    check(backchannelLogouts.length === before + 1, 'backchannel logout delivered to the RP');
    const lt = backchannelLogouts.at(-1);
    if (lt) {
      const { payload } = decodeJwt(lt);
      check(await verifyJwt(lt, disco.jwks_uri) && payload.sub === 'alice' && payload.sid === idt.sid && payload.aud === 'courier'
        && payload.events?.['http://schemas.openid.net/event/backchannel-logout'], 'logout_token is signed, has sub, sid, events', payload);
    }
    const afterLogout = await postForm(tokenUrl, { grant_type: 'refresh_token', refresh_token: r2.json.refresh_token }, auth);
    check(afterLogout.json.error === 'invalid_grant', 'refresh token no longer works after logout', afterLogout.json);
    const again = await alice.follow(authUrl(issuer).url, { stopAt: REDIRECT_URI });
    check(again.status === 200 && /id="login"/.test(again.text), 'after logout a new authorization shows the login form again');
  }

  section('logout without a session (confirm page is an auto-submit form)');
  {
    const anon = client();
    const u = new URL(disco.end_session_endpoint);
    u.search = new URLSearchParams({ client_id: 'courier', post_logout_redirect_uri: POST_LOGOUT_URI }).toString();
    const pg = await anon.request(u.href);
    const xsrf = inputValue(pg.text, 'xsrf');
    const done = await anon.request(`${issuer}/session/end/confirm`, { method: 'POST', form: { xsrf, logout: 'yes' } });
    check(pg.status === 200 && !!xsrf && done.status === 303 && done.location === POST_LOGOUT_URI, 'same xsrf + logout=yes POST works', done);
  }

  section('switching account in an existing session (prompt=login, different user)');
  {
    const c = client();
    await login(c, issuer, authUrl(issuer), 'carol');
    const a = authUrl(issuer, { prompt: 'login' });
    const s = await login(c, issuer, a, 'dave');
    // the resume step answers 200 with an auto-submitting form to /session/end/confirm
    const step = s.callback;
    const xsrf = inputValue(step.text, 'xsrf');
    check(step.status === 200 && /action="[^"]*\/session\/end\/confirm"/.test(step.text) && !!xsrf, 'resume returns an auto-submit logout form (xsrf, logout=yes)', step.status);
    const done = await c.request(`${issuer}/session/end/confirm`, { method: 'POST', form: { xsrf, logout: 'yes' } });
    const fin = await c.follow(undefined, { first: done, stopAt: REDIRECT_URI });
    const p = callbackParams(fin) ?? {};
    const t = p.code && await postForm(tokenUrl, {
      grant_type: 'authorization_code', code: p.code, redirect_uri: REDIRECT_URI, code_verifier: a.verifier,
    }, auth);
    check(!!t && decodeJwt(t.json.id_token).payload.sub === 'dave', 'after posting it and following redirects: code for dave', fin);
  }

  section('stdout hygiene');
  check(stdoutLines.length === 1 && stdoutLines[0] === `READY ${issuer}`, 'stdout is exactly the READY line', stdoutLines);
  check(!stderr.join('').includes('server_error'), 'no server_error logged');

  section('second provider: fixed port, rotate_refresh_token=false, short ttls, extra_scopes');
  {
    const port = await new Promise((resolve) => {
      const s = http.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    });
    const p2 = await startProvider({
      port,
      clients: [
        { ...courierClient, backchannel_logout_uri: undefined, backchannel_logout_session_required: undefined },
        // RFC 8252 loopback redirect: native clients may use any port on http://127.0.0.1
        {
          client_id: 'native', client_secret: 'native-secret', application_type: 'native',
          redirect_uris: ['http://127.0.0.1/callback'], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
        },
      ],
      rotate_refresh_token: false,
      access_token_ttl: 120,
      id_token_ttl: 60,
      refresh_token_ttl: 600,
      extra_scopes: ['things:write'],
    });
    check(p2.issuer === `http://127.0.0.1:${port}`, 'listens on the configured port', p2.issuer);
    const d2 = await (await fetch(`${p2.issuer}/.well-known/openid-configuration`)).json();
    check(d2.scopes_supported.includes('things:write') && !d2.scopes_supported.includes('orders:read'), 'extra_scopes replaces the default extra scopes');
    const c = client();
    const a = authUrl(p2.issuer, { scope: 'openid offline_access things:write' });
    const s = await login(c, p2.issuer, a, 'erin');
    const p = callbackParams(s.callback) ?? {};
    const t = await postForm(d2.token_endpoint, {
      grant_type: 'authorization_code', code: p.code, redirect_uri: REDIRECT_URI, code_verifier: a.verifier,
    }, auth);
    check(t.json.expires_in <= 120 && t.json.scope === 'openid offline_access things:write', 'access_token_ttl and scope honoured', t.json);
    const idp = decodeJwt(t.json.id_token).payload;
    check(idp.exp - idp.iat === 60, 'id_token_ttl honoured', idp.exp - idp.iat);
    const r = await postForm(d2.token_endpoint, { grant_type: 'refresh_token', refresh_token: t.json.refresh_token }, auth);
    check(r.status === 200 && r.json.refresh_token === t.json.refresh_token, 'refresh keeps the same refresh token when rotation is off', r.json);
    const ri = await postForm(d2.introspection_endpoint, { token: t.json.refresh_token }, auth);
    check(ri.json.active === true && ri.json.exp - ri.json.iat === 600, 'refresh_token_ttl honoured', ri.json);

    const n = authUrl(p2.issuer, { clientId: 'native' });
    const ns = await c.follow(n.url, { stopAt: REDIRECT_URI });
    const np = callbackParams(ns) ?? {};
    const nt = np.code && await postForm(d2.token_endpoint, {
      grant_type: 'authorization_code', code: np.code, redirect_uri: REDIRECT_URI, code_verifier: n.verifier,
    }, basic('native', 'native-secret'));
    check(!!nt && nt.json.refresh_token && decodeJwt(nt.json.id_token).payload.sub === 'erin',
      'native client registered as http://127.0.0.1/callback accepts the RP stub port (SSO + auto-consent)', nt?.json ?? ns);
  }
}

try {
  await main();
} catch (err) {
  failures += 1;
  console.log('\nFAIL (exception)', err);
} finally {
  stopAll();
}
console.log(`\n${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
