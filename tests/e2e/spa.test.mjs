// The example SPA in a real browser: Debian's Chromium (/usr/bin/chromium), driven by
// playwright-core, against courier, two node-oidc-providers and two demo APIs started here on
// random loopback ports with a fresh database. Sign in on the provider's real page, see the
// user, call a service, connect the second provider, call it, sign out. Keeps a screenshot in
// target/e2e/.
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

test('sign in, call services, connect a second provider, sign out — in Chromium', { timeout: 120_000 }, async (t) => {
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
  const mainIssuer = await startProvider({ clients: [client('main')] });
  const calendarIssuer = await startProvider({ clients: [client('calendar')] });

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
`);
  start(join(root, 'target/debug/courier'), ['serve', '--config', config], {
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  await waitFor(`${app}/readyz`);

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  t.after(() => browser.close());
  const page = await browser.newPage();

  // Sign in on the provider's own page.
  await page.goto(app);
  await page.click('#sign-in');
  await page.waitForURL(`${mainIssuer}/interaction/**`);
  await page.fill('#login', 'alice');
  await page.fill('#password', 'secret');
  await page.click('#submit');
  await page.waitForURL(`${app}/`);
  await page.waitForSelector('#user:not([hidden])');
  assert.equal(await page.textContent('#user'), 'User alice');
  assert.match(await page.textContent('#me'), /"email": "alice@example.test"/);

  // The session cookie is HttpOnly: the page's script cannot read it.
  assert.equal(await page.evaluate(() => document.cookie), '');

  // Call a service with the login provider's token.
  await page.click('tr[data-service="orders"] button.call');
  await page.waitForFunction(() => document.querySelector('#answer').textContent.includes('"sub": "alice"'));
  assert.match(await page.textContent('#answer'), /"path": "\/orders\/hello"/);

  // Connect the calendar provider, then call the calendar service with that account's token.
  assert.equal(await page.textContent('tr[data-service="calendar"] .status'), 'not_connected');
  await page.click('tr[data-service="calendar"] button.connect');
  await page.waitForURL(`${calendarIssuer}/interaction/**`);
  await page.fill('#login', 'alice-calendar');
  await page.fill('#password', 'secret');
  await page.click('#submit');
  await page.waitForURL(`${app}/`);
  await page.waitForSelector('tr[data-service="calendar"] .status-connected');
  await page.click('tr[data-service="calendar"] button.call');
  await page.waitForFunction(() => document.querySelector('#answer').textContent.includes('"sub": "alice-calendar"'));

  mkdirSync(join(root, 'target/e2e'), { recursive: true });
  await page.screenshot({ path: join(root, 'target/e2e/spa.png'), fullPage: true });

  // Sign out: courier ends the session, the provider ends its own, and we come back.
  await page.click('#sign-out');
  await page.waitForURL(`${mainIssuer}/session/end**`);
  // The provider's sign-out page asks for a confirmation (or submits it by itself).
  const back = page.waitForURL(`${app}/`);
  const confirm = page.locator('#logout-confirm');
  if (await confirm.isVisible().catch(() => false)) await confirm.click().catch(() => {});
  await back;
  await page.waitForSelector('#sign-in:not([hidden])');
  const me = await page.evaluate(async () => (await fetch('/api/me', { headers: { 'X-CSRF': '1' } })).status);
  assert.equal(me, 401);
});
