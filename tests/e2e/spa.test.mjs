// The example SPA in a real browser: Debian's Chromium (/usr/bin/chromium), driven by
// playwright-core, against courier, three node-oidc-providers (two login providers, "main" and
// "partner", and "calendar" for a linked account) and two demo APIs, all started here on random
// loopback ports with a fresh database.
//
// It signs in on the providers' real pages with each login provider, calls a service, connects
// the calendar provider, lists the sessions of one user signed in from two browser contexts, ends
// the other one from the first (the second's next call gets a 401 and the page shows the
// signed-out view), signs out everywhere else, opens a live connection (a WebSocket to the demo
// API through courier: the hello names the user, a message comes back; an EventSource gets its
// events) and signs out in another tab (courier closes the first tab's WebSocket with 4401 and
// that page shows the signed-out view), signs in silently in a fresh tab while the provider's
// session is alive and shows the sign-in buttons without a loop when it is not, and signs out. Screenshots go to target/e2e/.
//
//   cargo build -p courier -p demo-api && (cd tests/e2e && npm ci && npm test)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shots = join(root, 'target/e2e');
const admin = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const children = [];

function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function start(command, args, options = {}) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'], ...options });
  children.push(child);
  return child;
}

/** Starts a test provider; resolves with its issuer. */
function startProvider(config) {
  const child = start('node', ['server.mjs'], {
    cwd: join(root, 'tests/oidc-provider'),
    env: { ...process.env, OIDC_CONFIG: JSON.stringify(config) },
  });
  return new Promise((resolve, reject) => {
    let buffer = '';
    child.stdout.on('data', (chunk) => {
      buffer += chunk;
      const match = /READY (\S+)/.exec(buffer);
      if (match) resolve(match[1]);
    });
    child.on('exit', (code) => reject(new Error(`provider exited (${code})`)));
  });
}

async function waitFor(url) {
  for (let i = 0; i < 200; i += 1) {
    try {
      if ((await fetch(url)).ok) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} never answered`);
}

function psql(sql) {
  execFileSync('psql', [admin, '-qc', sql], { stdio: 'inherit' });
}

test('the example SPA in Chromium: sign in with each provider, services, sessions, silent sign-in, sign out', { timeout: 300_000 }, async (t) => {
  const port = await freePort();
  const app = `http://127.0.0.1:${port}`;
  const database = `courier_e2e_${randomBytes(4).toString('hex')}`;
  psql(`CREATE DATABASE ${database}`);
  t.after(() => {
    for (const child of children) child.kill('SIGKILL');
    psql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  });

  const client = (provider, extra = {}) => ({
    client_id: 'courier',
    client_secret: 'e2e-secret',
    redirect_uris: [`${app}/auth/callback/${provider}`],
    post_logout_redirect_uris: [`${app}/`],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...extra,
  });
  const [mainIssuer, partnerIssuer, calendarIssuer] = await Promise.all([
    // main keeps the user's consent when courier revokes its refresh token at logout, as many
    // providers do: a silent sign-in can then succeed while the provider's session lives.
    startProvider({ clients: [client('main')], keep_grant_on_revocation: true }),
    startProvider({ clients: [client('partner')] }),
    startProvider({ clients: [client('calendar')] }),
  ]);

  const demos = {};
  for (const [name, issuer] of [['orders', mainIssuer], ['calendar', calendarIssuer]]) {
    const demoPort = await freePort();
    start(join(root, 'target/debug/demo-api'), [
      '--listen', `127.0.0.1:${demoPort}`,
      '--introspection-endpoint', `${issuer}/token/introspection`,
      '--client-id', 'courier',
    ], { env: { ...process.env, DEMO_API_CLIENT_SECRET: 'e2e-secret' } });
    demos[name] = `http://127.0.0.1:${demoPort}`;
  }

  const work = mkdtempSync(join(tmpdir(), 'courier-e2e-'));
  const config = join(work, 'courier.toml');
  writeFileSync(config, `
[server]
listen = "127.0.0.1:${port}"
public_url = "${app}"
static_dir = "${join(root, 'examples/spa')}"

[database]
url = "postgres://postgres@127.0.0.1:5432/${database}"

[security]
encryption_keys = ["${randomBytes(32).toString('base64')}"]

[[providers]]
id = "main"
issuer = "${mainIssuer}"
client_id = "courier"
client_secret = "e2e-secret"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
display_name = "Example ID"

[[providers]]
id = "partner"
issuer = "${partnerIssuer}"
client_id = "courier"
client_secret = "e2e-secret"
scopes = ["openid", "profile", "email", "offline_access"]
login = true
display_name = "Partner ID"

[[providers]]
id = "calendar"
issuer = "${calendarIssuer}"
client_id = "courier"
client_secret = "e2e-secret"
scopes = ["openid", "offline_access"]

[[services]]
name = "orders"
base_url = "${demos.orders}/orders/"
provider = "main"

[[services]]
name = "calendar"
base_url = "${demos.calendar}/calendar/"
provider = "calendar"
scopes = ["calendar:read"]

[[services]]
name = "live"
base_url = "${demos.orders}/_demo/"
provider = "main"
websocket = true
allowed_paths = ["/ws", "/events"]
`);
  start(join(root, 'target/debug/courier'), ['serve', '--config', config], {
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  await waitFor(`${app}/readyz`);
  mkdirSync(shots, { recursive: true });

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  t.after(() => browser.close());

  // Every page's script errors, and every navigation to /auth/login, per page.
  const scriptErrors = [];
  const logins = new Map();
  async function newPage(context) {
    const page = await context.newPage();
    logins.set(page, []);
    page.on('pageerror', (error) => scriptErrors.push(error.message));
    page.on('request', (request) => {
      if (request.isNavigationRequest() && request.url().startsWith(`${app}/auth/login`)) {
        logins.get(page).push(new URL(request.url()));
      }
    });
    return page;
  }
  const newContext = () => browser.newContext({ viewport: { width: 1200, height: 900 } });

  /** Fills in the provider's own login form. */
  async function providerLogin(page, issuer, login) {
    await page.waitForURL(`${issuer}/interaction/**`);
    await page.fill('#login', login);
    await page.fill('#password', 'secret');
    await page.click('#submit');
  }

  /** Opens the app with no provider session: one silent attempt comes back, the buttons show. */
  async function openSignedOut(page) {
    await page.goto(app);
    await page.waitForSelector('#signed-out:not([hidden])');
    await page.waitForSelector('#providers button');
    const attempts = logins.get(page);
    assert.equal(attempts.length, 1, 'exactly one silent sign-in attempt');
    assert.equal(attempts[0].searchParams.get('prompt'), 'none');
    // The provider's answer was taken off the URL; the page stays put (no loop).
    await page.waitForTimeout(300);
    assert.equal(page.url(), `${app}/`);
    assert.equal(logins.get(page).length, 1);
    assert.equal(await page.isVisible('#notice'), false, 'a failed silent sign-in says nothing');
  }

  async function signInWith(page, provider, issuer, login) {
    await page.click(`#providers button[data-provider="${provider}"]`);
    await providerLogin(page, issuer, login);
    await page.waitForURL(`${app}/`);
    await page.waitForSelector('#signed-in:not([hidden])');
  }

  const apiStatus = (page, method, path) => page.evaluate(async ([m, p]) => (
    await fetch(p, { method: m, headers: { 'X-CSRF': '1' } })).status, [method, path]);

  const sessionRows = (page) => page.$$eval('#sessions li.session', (rows) => rows.map((row) => ({
    id: row.dataset.sessionId,
    current: row.dataset.current === 'true',
    text: row.textContent,
  })));

  // --- /auth/providers, as the SPA reads it.
  const providers = await (await fetch(`${app}/auth/providers`)).json();
  assert.deepEqual(providers, { providers: [{ id: 'main', name: 'Example ID' }, { id: 'partner', name: 'Partner ID' }] });

  // --- First browser: no provider session, so the silent attempt fails quietly; sign in with main.
  const first = await newContext();
  const page = await newPage(first);
  await openSignedOut(page);
  const buttons = await page.$$eval('#providers button', (all) => all.map((b) => [b.dataset.provider, b.querySelector('strong').textContent]));
  assert.deepEqual(buttons, [['main', 'Example ID'], ['partner', 'Partner ID']]);
  assert.equal(await page.getAttribute('#providers button[data-provider="main"] .provider-mark', 'aria-hidden'), 'true');
  await page.screenshot({ path: join(shots, 'sign-in.png'), fullPage: true });

  await signInWith(page, 'main', mainIssuer, 'alice');
  assert.equal(await page.textContent('#user'), 'User alice');
  assert.equal(await page.textContent('#profile-name'), 'User alice');
  assert.equal(await page.textContent('#profile-email'), 'alice@example.test');
  assert.equal(await page.textContent('#profile-provider'), 'Example ID');
  // The picture (example.test) does not load here: the initials stand in.
  assert.equal(await page.textContent('#profile .avatar-initials'), 'UA');
  // The claims are behind "Details".
  assert.equal(await page.isVisible('#me'), false);
  await page.click('#profile summary');
  assert.match(await page.textContent('#me'), /"email": "alice@example.test"/);
  await page.click('#profile summary');
  // The session cookie is HttpOnly: the page's script cannot read it.
  assert.equal(await page.evaluate(() => document.cookie), '');

  // --- Services: human-readable states; call one with the login provider's token.
  await page.waitForSelector('li[data-service="orders"]');
  assert.equal(await page.textContent('li[data-service="orders"] .status'), 'Connected');
  assert.equal(await page.textContent('li[data-service="calendar"] .status'), 'Not connected');
  await page.click('li[data-service="orders"] button.call');
  await page.waitForFunction(() => document.querySelector('#answer').textContent.includes('"sub": "alice"'));
  assert.match(await page.textContent('#answer'), /"path": "\/orders\/hello"/);
  assert.match(await page.textContent('#answer .pill'), /^200/);

  // The form: another method and a long path; the answer wraps instead of scrolling sideways.
  const long = `echo/${'x'.repeat(300)}?q=${'y'.repeat(200)}`;
  await page.selectOption('#call-service', 'orders');
  await page.selectOption('#call-method', 'POST');
  await page.fill('#call-path', long);
  await page.fill('#call-body', '{"order": 42}');
  await page.click('#call-submit');
  await page.waitForFunction(() => document.querySelector('#answer').textContent.includes('"method": "POST"'));
  const overflow = await page.$eval('#answer .answer-body', (pre) => pre.scrollWidth - pre.clientWidth);
  assert.ok(overflow <= 1, `the answer scrolls sideways by ${overflow}px`);
  const pageOverflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(pageOverflow <= 1, `the page scrolls sideways by ${pageOverflow}px`);
  await page.selectOption('#call-method', 'GET');
  await page.fill('#call-path', 'hello?from=spa');

  // --- Connect the calendar provider, then call the calendar service with that account's token.
  await page.click('li[data-service="calendar"] button.connect');
  await providerLogin(page, calendarIssuer, 'alice-calendar');
  await page.waitForURL(`${app}/`);
  await page.waitForSelector('li[data-service="calendar"] .status-connected');
  assert.equal(await page.textContent('li[data-service="calendar"] .status'), 'Connected');
  await page.click('li[data-service="calendar"] button.call');
  await page.waitForFunction(() => document.querySelector('#answer').textContent.includes('"sub": "alice-calendar"'));

  // A failed connect gets words, not a code.
  await page.goto(`${app}/?connect_error=account_linked_elsewhere&service=calendar`);
  await page.waitForSelector('#notice:not([hidden])');
  assert.equal(await page.textContent('#notice .notice-text'), 'That calendar account is already connected to another user.');
  assert.equal(page.url(), `${app}/`, 'the error is taken off the URL');

  // --- A second browser: the same user signs in again; both see two sessions.
  const second = await newContext();
  const other = await newPage(second);
  await openSignedOut(other);
  await signInWith(other, 'main', mainIssuer, 'alice');
  await other.waitForSelector('#sessions li.session');
  let seen = await sessionRows(other);
  assert.equal(seen.length, 2);
  assert.deepEqual(seen.map((s) => s.current), [true, false]);
  assert.match(seen[0].text, /This device/);
  assert.match(seen[0].text, /via Example ID/);

  const loginsBefore = logins.get(page).length;
  await page.reload();
  await page.waitForSelector('#signed-in:not([hidden])');
  await page.waitForFunction(() => document.querySelectorAll('#sessions li.session').length === 2);
  seen = await sessionRows(page);
  assert.deepEqual(seen.map((s) => s.current), [true, false]);
  assert.match(seen[0].text, /This device.*Signed in (just now|\d+ minutes? ago)/s);
  assert.equal(await page.isVisible('#sessions li.session[data-current="true"] button.end-session'), false);
  assert.equal(await page.textContent('#sign-out-others'), 'Sign out everywhere else (1)');
  assert.equal(logins.get(page).length, loginsBefore, 'a reload with a live session tries no sign-in');
  await page.click('li[data-service="calendar"] button.call');
  await page.waitForFunction(() => document.querySelector('#answer').textContent.includes('"sub": "alice-calendar"'));
  await page.screenshot({ path: join(shots, 'spa.png'), fullPage: true });

  // --- End the second browser's session from the first.
  await page.click('#sessions li.session[data-current="false"] button.end-session');
  await page.waitForFunction(() => document.querySelectorAll('#sessions li.session').length === 1);
  assert.match(await page.textContent('#notice .notice-text'), /is signed out\.$/);
  assert.equal(await page.isDisabled('#sign-out-others'), true);
  // The second browser's next call is refused, and its page says so.
  await other.click('li[data-service="orders"] button.call');
  await other.waitForSelector('#signed-out:not([hidden])');
  assert.equal(await other.textContent('#notice .notice-text'), 'Your session has ended. Please sign in again.');
  assert.equal(await apiStatus(other, 'GET', '/api/me'), 401);
  assert.equal(logins.get(other).length, 2, 'the silent attempt and the click: no silent sign-in after the session was ended');
  await other.screenshot({ path: join(shots, 'session-ended.png'), fullPage: true });

  // --- "Sign out everywhere else": the second browser signs in again (its provider session is
  // alive, so no form), the first ends every other session at once.
  await other.click('#providers button[data-provider="main"]');
  await other.waitForURL(`${app}/`);
  await other.waitForSelector('#signed-in:not([hidden])');
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll('#sessions li.session').length === 2);
  await page.click('#sign-out-others');
  await page.waitForFunction(() => document.querySelectorAll('#sessions li.session').length === 1);
  assert.equal(await page.textContent('#notice .notice-text'), 'Your other session is signed out.');
  assert.equal(await apiStatus(other, 'GET', '/api/me'), 401);
  assert.equal(await apiStatus(page, 'GET', '/api/me'), 200);

  // When courier wants a fresh login for it (401 reauth_required), the page explains and offers
  // one with prompt=login and max_age=0. (The answer is made up here: the real one needs a login 10 minutes old.)
  await page.route(`${app}/api/sessions`, (route) => (route.request().method() === 'DELETE'
    ? route.fulfill({
      status: 401,
      contentType: 'application/problem+json',
      body: JSON.stringify({ type: 'about:blank', title: 'Sign in again', status: 401, code: 'reauth_required' }),
    })
    : route.continue()));
  await page.$eval('#sign-out-others', (b) => { b.disabled = false; });
  await page.click('#sign-out-others');
  await page.waitForSelector('#sessions-reauth:not([hidden])');
  assert.equal(await page.isVisible('#signed-in'), true, 'reauth_required there does not sign the page out');
  const reauth = page.waitForRequest((r) => r.url().startsWith(`${app}/auth/login`));
  await page.click('#reauth');
  const reauthUrl = new URL((await reauth).url());
  assert.equal(reauthUrl.searchParams.get('prompt'), 'login');
  assert.equal(reauthUrl.searchParams.get('max_age'), '0');
  assert.equal(reauthUrl.searchParams.get('provider'), 'main');
  await providerLogin(page, mainIssuer, 'alice');
  await page.waitForURL(`${app}/#sessions-section`);
  await page.unroute(`${app}/api/sessions`);
  await page.waitForSelector('#signed-in:not([hidden])');

  // --- A live connection: a WebSocket to the demo API through courier, with the user's token.
  await page.waitForSelector('#live-section:not([hidden])');
  assert.equal(await page.getAttribute('#live-state', 'data-state'), 'closed');
  assert.equal(await page.isDisabled('#live-send'), true);
  await page.click('#live-open');
  await page.waitForSelector('#live-state[data-state="open"]');
  await page.waitForFunction(() => document.querySelector('#live-sub').textContent === 'alice');
  assert.match(await page.textContent('#live-log'), /sees you as alice \(Bearer <redacted>\)/);
  await page.fill('#live-input', 'hello over the wire');
  await page.click('#live-send');
  await page.waitForSelector('#live-log li.live-in:has-text("hello over the wire")');
  assert.equal(await page.inputValue('#live-input'), '');
  await page.screenshot({ path: join(shots, 'live.png'), fullPage: true });
  // Server-sent events through courier from the page: Chromium sends no Origin on a
  // same-origin EventSource, only Sec-Fetch-Site, and courier lets that through.
  const events = await page.evaluate(() => new Promise((resolve, reject) => {
    const seen = [];
    const source = new EventSource('/api/services/live/events?count=3&interval_ms=50');
    source.onmessage = (e) => {
      seen.push(JSON.parse(e.data).n);
      if (seen.length === 3) { source.close(); resolve(seen); }
    };
    source.onerror = () => { source.close(); reject(new Error(`EventSource failed after ${seen.length} events`)); };
  }));
  assert.deepEqual(events, [0, 1, 2]);

  // Signed out at courier only, in another tab of the same browser (the provider's session lives
  // on, for the silent sign-in below): courier closes the first tab's WebSocket with 4401 within
  // a second, and that page shows the signed-out view as after a 401.
  const elsewhere = await newPage(first);
  await elsewhere.goto(app);
  await elsewhere.waitForSelector('#signed-in:not([hidden])');
  assert.equal(await apiStatus(elsewhere, 'POST', '/auth/logout'), 200);
  await page.waitForSelector('#live-state[data-state="closed"][data-code="4401"]', { state: 'attached', timeout: 5000 });
  assert.equal(await page.textContent('#live-state'), 'Closed (4401: session ended)');
  await page.waitForSelector('#signed-out:not([hidden])', { timeout: 5000 });
  assert.equal(await page.textContent('#notice .notice-text'), 'Your session has ended. Please sign in again.');
  assert.equal(await apiStatus(page, 'GET', '/api/me'), 401);
  await elsewhere.close();

  // --- Silent sign-in: signed out at courier only (above; the provider's session lives on), a
  // fresh tab signs in by itself, once.
  const fresh = await newPage(first);
  await fresh.goto(app);
  await fresh.waitForSelector('#signed-in:not([hidden])');
  assert.equal(await fresh.textContent('#profile-name'), 'User alice');
  assert.equal(logins.get(fresh).length, 1);
  assert.equal(logins.get(fresh)[0].searchParams.get('prompt'), 'none');
  assert.equal(logins.get(fresh)[0].searchParams.get('provider'), 'main', 'the provider used last');

  // --- Sign out for real: courier ends the session, the provider ends its own, and we come back
  // to a notice and the sign-in buttons, with no silent sign-in.
  await fresh.click('#sign-out');
  await fresh.waitForURL(`${mainIssuer}/session/end**`);
  // The provider's sign-out page asks for a confirmation (or submits it by itself).
  const back = fresh.waitForURL(`${app}/`);
  const confirm = fresh.locator('#logout-confirm');
  if (await confirm.isVisible().catch(() => false)) await confirm.click().catch(() => {});
  await back;
  await fresh.waitForSelector('#signed-out:not([hidden])');
  assert.equal(await fresh.textContent('#notice .notice-text'), 'You are signed out.');
  assert.equal(logins.get(fresh).length, 1, 'no silent sign-in right after signing out');
  assert.equal(await apiStatus(fresh, 'GET', '/api/me'), 401);
  await fresh.screenshot({ path: join(shots, 'signed-out.png'), fullPage: true });

  // With no provider session left, another fresh tab tries once and shows the buttons.
  await openSignedOut(await newPage(first));

  // A login_error other than the silent ones gets a friendly message, and no silent attempt.
  const cancelled = await newPage(await newContext());
  await cancelled.goto(`${app}/?login_error=access_denied`);
  await cancelled.waitForSelector('#signed-out:not([hidden])');
  assert.equal(await cancelled.textContent('#notice .notice-text'), 'Sign-in was cancelled.');
  assert.equal(logins.get(cancelled).length, 0);
  // Only codes are repeated: a link cannot make the page say a sentence of its choosing.
  await cancelled.goto(`${app}/?login_error=${encodeURIComponent('Your account is locked, call +1 555 0100')}`);
  await cancelled.waitForSelector('#signed-out:not([hidden])');
  assert.equal(await cancelled.textContent('#notice .notice-text'), 'Sign-in did not work (unknown_error). Please try again.');

  // Without /auth/providers the page still offers one "Sign in", to the default provider.
  await cancelled.route(`${app}/auth/providers`, (route) => route.fulfill({ status: 503, body: 'down' }));
  await cancelled.reload();
  await cancelled.waitForSelector('#signed-out:not([hidden]) #sign-in');
  assert.deepEqual(await cancelled.$$eval('#providers button', (all) => all.map((b) => b.textContent)), ['Sign in']);
  assert.equal(logins.get(cancelled).length, 0, 'the tab had its attempt: no silent sign-in on reload');
  const fallback = cancelled.waitForRequest((r) => r.url().startsWith(`${app}/auth/login`));
  await cancelled.click('#sign-in');
  const fallbackUrl = new URL((await fallback).url());
  assert.equal(fallbackUrl.searchParams.get('provider'), null);
  assert.equal(fallbackUrl.searchParams.get('return_to'), '/');
  await cancelled.close();

  // --- The second login provider: another user (partner's alice is not main's alice), whose
  // orders service is a linked account to connect.
  const third = await newContext();
  const partner = await newPage(third);
  await openSignedOut(partner);
  await signInWith(partner, 'partner', partnerIssuer, 'alice');
  assert.equal(await partner.textContent('#profile-provider'), 'Partner ID');
  const me = await partner.evaluate(async () => (await fetch('/api/me', { headers: { 'X-CSRF': '1' } })).json());
  assert.equal(me.provider, 'partner');
  await partner.waitForSelector('li[data-service="orders"]');
  assert.equal(await partner.textContent('li[data-service="orders"] .status'), 'Not connected');
  seen = await sessionRows(partner);
  assert.equal(seen.length, 1);
  assert.match(seen[0].text, /via Partner ID/);

  // Five minutes before the session's end the page warns (the end is brought near here by
  // rewriting /api/me's answer; the session itself lasts days).
  await partner.route(`${app}/api/me`, async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    body.session = { ...body.session, expires_at: new Date(Date.now() + 120_000).toISOString(), expires_in: 120 };
    await route.fulfill({ response, json: body });
  });
  await partner.reload();
  await partner.waitForSelector('#expiry:not([hidden])');
  assert.equal(await partner.textContent('#expiry-text'), 'Your session ends in 2 minutes. Sign in again to keep working.');
  assert.equal(await partner.textContent('#expiry-action'), 'Sign in again');
  await partner.unroute(`${app}/api/me`);
  await partner.reload();
  await partner.waitForSelector('#signed-in:not([hidden])');
  assert.equal(await partner.isVisible('#expiry'), false);

  // On a phone.
  await partner.setViewportSize({ width: 390, height: 844 });
  await partner.click('#call-submit');
  await partner.waitForSelector('#answer .answer-body');
  const phoneOverflow = await partner.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(phoneOverflow <= 1, `on a phone the page scrolls sideways by ${phoneOverflow}px`);
  await partner.screenshot({ path: join(shots, 'phone.png'), fullPage: true });

  assert.deepEqual(scriptErrors, []);
});
