// courier's example SPA: a starting point for a product team. It talks only to courier, on its
// own origin, with the HttpOnly session cookie and the `X-CSRF: 1` header; it never sees a token.
//
// What it shows:
// - sign-in: a button per login provider (`GET /auth/providers`); after a 401 from `/api/me`, one
//   silent sign-in per tab (`/auth/login?prompt=none`), never while the URL carries a
//   `login_error` (the provider's answer to that very attempt) and never right after signing out;
// - the profile (`GET /api/me`), a warning before the session times out;
// - services (`GET /api/services`), connect / reconnect / disconnect, and a form to call one;
// - a live connection: a WebSocket to the `live` service through courier, which closes it when
//   the session ends (4401: the page then shows the signed-out view);
// - the user's sessions (`GET /api/sessions`) and signing out other devices (`DELETE`);
// - sign-out: `POST /auth/logout`, then the provider's `logout_url`.

const $ = (id) => document.getElementById(id);

// Per tab (sessionStorage): the silent sign-in was tried; the user just signed out.
const SILENT_TRIED = 'courier.silent_login_tried';
const SIGNED_OUT = 'courier.signed_out';
// Per browser (localStorage): the provider used last, tried first for a silent sign-in.
const LAST_PROVIDER = 'courier.last_provider';

// The provider's answers to `prompt=none` that just mean "no session there": not worth a word.
const SILENT_ERRORS = new Set([
  'login_required', 'interaction_required', 'consent_required', 'account_selection_required',
]);

const LOGIN_ERRORS = {
  access_denied: 'Sign-in was cancelled.',
  invalid_state: 'That sign-in had expired or was already used. Please try again.',
  provider_unavailable: 'The sign-in provider cannot be reached right now. Please try again in a moment.',
  issuer_mismatch: 'The sign-in provider’s answer did not check out, so you were not signed in.',
  invalid_id_token: 'The sign-in provider’s answer did not check out, so you were not signed in.',
  invalid_userinfo: 'The sign-in provider’s answer did not check out, so you were not signed in.',
  token_exchange_failed: 'Sign-in could not be completed with the provider. Please try again.',
  unmet_authentication_requirements: 'The sign-in provider did not confirm a fresh sign-in, so you were not signed in. Please try again.',
};

const CONNECT_ERRORS = {
  access_denied: (service) => `Connecting ${service} was cancelled.`,
  account_linked_elsewhere: (service) => `That ${service} account is already connected to another user.`,
  login_required: (service) => `Please sign in first, then connect ${service}.`,
  provider_unavailable: (service) => `${service} cannot be reached right now. Please try again in a moment.`,
};

const PROBLEMS = {
  connect_required: 'Connect this service first.',
  reauth_required: 'This service needs you to sign in to it again.',
  not_allowed: 'This method or path is not allowed for this service, or the provider refused to issue a token for it.',
  service_not_found: 'There is no such service.',
  rate_limited: 'Too many requests. Wait a moment and try again.',
  upstream_unavailable: 'The service or its provider is unavailable right now.',
  upstream_timeout: 'The service took too long to answer.',
  bad_request: 'courier refused the request as malformed.',
  not_found: 'Not found.',
  internal: 'Something went wrong in courier.',
};

// A live connection's close codes: courier's own (4401, 4408, 1001, 1011) and the browser's.
const LIVE_CLOSES = {
  1000: 'closed',
  1001: 'courier restarting',
  1006: 'connection lost or refused',
  1011: 'service failed',
  4401: 'session ended',
  4408: 'idle',
};

// The service the Live panel talks to; the panel shows only when courier lists it.
const LIVE_SERVICE = 'live';

const state = {
  providers: null, // [{id, name}] from /auth/providers, or null when it could not be loaded
  me: null,
  services: [],
  sessions: [],
  expiry: null, // {absoluteAt, idleWindow, idleAt} in ms
};

// ---------------------------------------------------------------------------------------------
// plumbing

class SessionEnded extends Error {}

/** Calls courier's browser API. A 401 means the session is gone (unless `allow401`). */
async function api(method, path, { body, headers = {}, allow401 = false } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers: { 'X-CSRF': '1', ...headers },
      body,
    });
  } catch (error) {
    return { status: 0, ok: false, body: null, headers: new Headers(), error };
  }
  const type = response.headers.get('content-type') ?? '';
  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    data = text;
    if (type.includes('json')) {
      try { data = JSON.parse(text); } catch { /* keep the text */ }
    }
  }
  const result = { status: response.status, ok: response.ok, body: data, headers: response.headers };
  if (response.status === 401 && !allow401 && path.startsWith('/api/')) {
    sessionEnded();
    throw new SessionEnded();
  }
  if (response.ok && path.startsWith('/api/')) touchSession();
  return result;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

function view(name) {
  for (const id of ['loading', 'unavailable', 'signed-out', 'signed-in']) $(id).hidden = id !== name;
  $('account').hidden = name !== 'signed-in';
}

/** Shows a message at the top. `kind`: info, success, warning, error. */
function notice(text, { kind = 'info', actions = [] } = {}) {
  const box = $('notice');
  if (!text) {
    box.hidden = true;
    return;
  }
  box.className = `notice notice-${kind}`;
  box.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  box.querySelector('.notice-text').textContent = text;
  box.querySelector('.notice-actions').replaceChildren(...actions);
  box.hidden = false;
}

function here() {
  return location.pathname + location.search;
}

// `maxAge` (seconds) asks the provider for an authentication at most that old; courier then
// refuses a login whose ID token does not show one (`unmet_authentication_requirements`).
function loginUrl({ provider, prompt, maxAge, returnTo = here() } = {}) {
  const params = new URLSearchParams();
  if (provider) params.set('provider', provider);
  if (prompt) params.set('prompt', prompt);
  if (maxAge !== undefined) params.set('max_age', String(maxAge));
  params.set('return_to', returnTo);
  return `/auth/login?${params}`;
}

function providerName(id) {
  return state.providers?.find((p) => p.id === id)?.name ?? id ?? '';
}

function initials(text) {
  const words = String(text ?? '').replace(/@.*/, '').split(/[\s._-]+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] ?? '?').slice(0, 2);
  return letters.toUpperCase();
}

/** Fills an avatar: initials at once, the picture over them once (and if) it loads. */
function avatar(node, name, picture) {
  node.querySelector('.avatar-initials').textContent = initials(name);
  const img = node.querySelector('img');
  img.hidden = true;
  img.onload = () => { img.hidden = false; };
  img.onerror = () => { img.hidden = true; };
  if (typeof picture === 'string' && /^https?:\/\//.test(picture)) img.src = picture;
  else img.removeAttribute('src');
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

/** "just now", "5 minutes ago", "in 3 hours", … */
function ago(iso) {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return 'unknown';
  const seconds = Math.round((at - Date.now()) / 1000);
  if (Math.abs(seconds) < 45) return 'just now';
  const units = [['year', 31536000], ['month', 2592000], ['day', 86400], ['hour', 3600], ['minute', 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return relative.format(seconds, 'second');
}

function timeEl(iso, text) {
  const at = new Date(iso);
  return el('time', { datetime: iso, title: Number.isNaN(at.getTime()) ? undefined : at.toLocaleString() }, text);
}

function duration(ms) {
  const minutes = Math.max(1, Math.round(ms / 60000));
  if (minutes < 60) return minutes === 1 ? '1 minute' : `${minutes} minutes`;
  const hours = Math.round(minutes / 60);
  return hours === 1 ? '1 hour' : `${hours} hours`;
}

function button(text, onclick, { kind = '', ...props } = {}) {
  const handler = (event) => Promise.resolve().then(() => onclick(event)).catch(ignoreEnded);
  return el('button', { type: 'button', class: `button ${kind}`.trim(), onclick: handler, ...props }, text);
}

// ---------------------------------------------------------------------------------------------
// signing in and out

async function loadProviders() {
  try {
    const response = await fetch('/auth/providers', { credentials: 'same-origin' });
    if (!response.ok) return null;
    const { providers } = await response.json();
    return Array.isArray(providers) && providers.length ? providers : null;
  } catch {
    return null;
  }
}

function renderProviders() {
  const buttons = state.providers
    ? state.providers.map((provider) => el('button', {
      type: 'button',
      class: 'button provider-button',
      dataset: { provider: provider.id },
      onclick: () => signIn(provider.id),
    }, el('span', { class: 'provider-mark', 'aria-hidden': 'true' }, initials(provider.name)),
    el('span', {}, 'Sign in with ', el('strong', {}, provider.name))))
    // /auth/providers did not answer: one button to the default provider.
    : [button('Sign in', () => signIn(null), { id: 'sign-in', kind: 'provider-button' })];
  $('providers').replaceChildren(...buttons);
}

function signIn(provider, prompt) {
  if (provider) localStorage.setItem(LAST_PROVIDER, provider);
  location.assign(loginUrl({ provider, prompt }));
}

/** One silent sign-in per tab: returns true when the browser is on its way to the provider. */
function trySilentSignIn(params) {
  // The answer to an attempt (never loop; and this tab has had its attempt), or a message to
  // show first.
  if (params.has('login_error')) sessionStorage.setItem(SILENT_TRIED, 'answered');
  if (params.has('login_error') || params.has('connect_error')) return false;
  if (sessionStorage.getItem(SILENT_TRIED) || sessionStorage.getItem(SIGNED_OUT)) return false;
  sessionStorage.setItem(SILENT_TRIED, new Date().toISOString());
  const last = localStorage.getItem(LAST_PROVIDER);
  const provider = state.providers?.some((p) => p.id === last) ? last : null;
  location.replace(loginUrl({ provider, prompt: 'none' }));
  return true;
}

async function signOut() {
  $('sign-out').disabled = true;
  // Closed first: courier's 4401 for this very logout is not a session ended elsewhere.
  closeLive();
  // After this, no silent sign-in in this tab: the user asked to be signed out.
  sessionStorage.setItem(SIGNED_OUT, '1');
  let target = '/';
  try {
    const { status, body } = await api('POST', '/auth/logout', { allow401: true });
    if (status === 200 && typeof body?.logout_url === 'string') target = body.logout_url;
  } catch { /* signed out anyway */ }
  location.assign(target);
}

function showSignedOut(message) {
  stopExpiryTimer();
  state.me = null;
  renderProviders();
  view('signed-out');
  if (message) notice(message.text, message);
}

let ended = false;
/** A 401 from the API while the page was signed in: the session is over. */
function sessionEnded() {
  if (ended || !state.me) return;
  ended = true;
  $('expiry').hidden = true;
  showSignedOut({ text: 'Your session has ended. Please sign in again.', kind: 'warning' });
  $('sign-in-title').focus();
}

// ---------------------------------------------------------------------------------------------
// the session's expiry

let expiryTimer = null;

function stopExpiryTimer() {
  clearInterval(expiryTimer);
  expiryTimer = null;
  $('expiry').hidden = true;
}

/** From `/api/me`'s session: the absolute deadline, and the idle window that activity renews. */
function trackExpiry(session) {
  if (!session || typeof session.expires_in !== 'number') return;
  const now = Date.now();
  const earliest = session.expires_in * 1000;
  // expires_in counts to the earlier of the two; their distance comes from the timestamps.
  const gap = Date.parse(session.expires_at) - Date.parse(session.idle_expires_at);
  const absolute = Number.isNaN(gap) ? earliest : (gap >= 0 ? earliest + gap : earliest);
  const idle = Number.isNaN(gap) ? earliest : (gap >= 0 ? earliest : earliest - gap);
  state.expiry = { absoluteAt: now + absolute, idleWindow: idle, idleAt: now + idle };
  stopExpiryTimer();
  expiryTimer = setInterval(checkExpiry, 15000);
  checkExpiry();
}

/** Any answered API call counts as activity for the idle timeout. */
function touchSession() {
  if (state.expiry) state.expiry.idleAt = Date.now() + state.expiry.idleWindow;
}

async function checkExpiry() {
  const { expiry } = state;
  if (!expiry || !state.me) return;
  const idleFirst = expiry.idleAt < expiry.absoluteAt;
  const left = Math.min(expiry.idleAt, expiry.absoluteAt) - Date.now();
  const box = $('expiry');
  if (left <= 0) {
    box.hidden = true;
    // Ask courier rather than guess: a 401 switches to the signed-out view.
    try { await loadMe(); } catch { /* signed out */ }
    return;
  }
  if (left > 5 * 60 * 1000) {
    box.hidden = true;
    return;
  }
  const action = $('expiry-action');
  if (idleFirst) {
    $('expiry-text').textContent = `You will be signed out in ${duration(left)} because of inactivity.`;
    action.textContent = 'Stay signed in';
    action.onclick = async () => {
      try { await loadMe(); } catch { /* signed out */ }
    };
  } else {
    $('expiry-text').textContent = `Your session ends in ${duration(left)}. Sign in again to keep working.`;
    action.textContent = 'Sign in again';
    action.onclick = () => signIn(state.me?.provider);
  }
  box.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// profile

async function loadMe() {
  const { status, body } = await api('GET', '/api/me');
  if (status !== 200) throw new Error(`/api/me answered ${status}`);
  state.me = body;
  renderMe();
  trackExpiry(body.session);
  return body;
}

function renderMe() {
  const me = state.me;
  const name = me.name || me.email || me.sub;
  $('user').textContent = name;
  $('profile-name').textContent = name;
  $('profile-email').textContent = me.email ?? '';
  $('profile-email').hidden = !me.email;
  $('profile-provider').textContent = providerName(me.provider) || 'your provider';
  for (const node of document.querySelectorAll('.avatar')) avatar(node, name, me.picture);
  const since = me.session?.created_at;
  const parts = since ? ['Signed in ', timeEl(since, ago(since)), '.'] : [];
  const s = me.session;
  if (s && typeof s.expires_in === 'number') {
    const ends = new Date(Date.now() + s.expires_in * 1000).toISOString();
    const idleFirst = Date.parse(s.idle_expires_at) < Date.parse(s.expires_at);
    parts.push(' Your session ends ', timeEl(ends, ago(ends)), idleFirst ? ', later if you stay active.' : '.');
  }
  $('profile-session').replaceChildren(...parts);
  $('me').textContent = JSON.stringify(me.claims ?? {}, null, 2);
}

// ---------------------------------------------------------------------------------------------
// services

const STATUS_TEXT = {
  connected: 'Connected',
  not_connected: 'Not connected',
  reauth_required: 'Needs sign-in again',
};

function connectHref(service) {
  const url = new URL(service.connect_url ?? `/auth/connect/${encodeURIComponent(service.name)}`, location.origin);
  url.searchParams.set('return_to', here());
  return url.pathname + url.search;
}

async function loadServices() {
  const { status, body } = await api('GET', '/api/services');
  $('services').removeAttribute('aria-busy');
  if (status !== 200) {
    $('services').replaceChildren(el('li', { class: 'row row-empty' }, `Services could not be loaded (${status || 'no answer'}).`));
    return;
  }
  state.services = body.services ?? [];
  renderServices();
}

function renderServices() {
  const rows = state.services.map((service) => {
    const status = service.status ?? (service.connected ? 'connected' : 'not_connected');
    const actions = [];
    if (status === 'connected') {
      actions.push(button('Call', () => callFromRow(service.name), { kind: 'button-secondary call' }));
      if (service.linked) actions.push(button('Disconnect', () => disconnect(service.name), { kind: 'button-ghost disconnect' }));
    } else if (status === 'reauth_required' && !service.linked) {
      // The session's own provider: signing in again renews its tokens.
      actions.push(button('Sign in again', () => signIn(state.me?.provider), { kind: 'reconnect' }));
    } else {
      const text = status === 'reauth_required' ? 'Reconnect' : 'Connect';
      actions.push(button(text, () => location.assign(connectHref(service)), {
        kind: status === 'reauth_required' ? 'reconnect' : 'connect',
        'aria-label': `${text} ${service.name}`,
      }));
    }
    const provider = providerName(service.provider);
    return el('li', { class: 'row service', dataset: { service: service.name } },
      el('div', { class: 'row-main' },
        el('span', { class: 'row-title' }, service.name),
        el('span', { class: 'row-sub muted' },
          provider ? `via ${provider}` : 'courier’s own credentials',
          service.linked ? ' · linked account' : '')),
      el('span', { class: `status status-${status}` }, el('span', { class: 'dot', 'aria-hidden': 'true' }), (Object.hasOwn(STATUS_TEXT, status) ? STATUS_TEXT[status] : status)),
      el('div', { class: 'row-actions' }, actions));
  });
  $('services').replaceChildren(...(rows.length ? rows : [el('li', { class: 'row row-empty muted' }, 'No services are configured.')]));
  $('live-section').hidden = !state.services.some((s) => s.name === LIVE_SERVICE);

  const select = $('call-service');
  const chosen = select.value;
  select.replaceChildren(...state.services.map((s) => el('option', { value: s.name }, s.name)));
  if (state.services.some((s) => s.name === chosen)) select.value = chosen;
  updatePrefix();
}

async function disconnect(name) {
  const { status } = await api('DELETE', `/api/connections/${encodeURIComponent(name)}`);
  if (status === 204) notice(`${name} is disconnected.`, { kind: 'success' });
  else notice(`Disconnecting ${name} did not work (HTTP ${status || 'no answer'}).`, { kind: 'error' });
  await loadServices();
}

// ---------------------------------------------------------------------------------------------
// calling a service

function updatePrefix() {
  const service = $('call-service').value || '…';
  $('call-prefix').textContent = `/api/services/${service}/`;
  $('call-body-field').hidden = ['GET', 'DELETE'].includes($('call-method').value);
}

function callFromRow(name) {
  $('call-service').value = name;
  updatePrefix();
  const smooth = !matchMedia('(prefers-reduced-motion: reduce)').matches;
  callService()
    .then(() => $('answer').scrollIntoView({ block: 'nearest', behavior: smooth ? 'smooth' : 'auto' }))
    .catch(ignoreEnded);
}

function statusText(status) {
  const texts = { 200: 'OK', 201: 'Created', 204: 'No Content', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 408: 'Request Timeout', 429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };
  return texts[status] ?? '';
}

async function callService() {
  const name = $('call-service').value;
  if (!name) return;
  const method = $('call-method').value;
  const path = $('call-path').value.trim().replace(/^\/+/, '');
  const url = `/api/services/${encodeURIComponent(name)}/${path}`;
  const options = {};
  if (!['GET', 'DELETE'].includes(method)) {
    const text = $('call-body').value;
    let json = true;
    try { JSON.parse(text); } catch { json = false; }
    options.body = text;
    options.headers = { 'Content-Type': json ? 'application/json' : 'text/plain' };
  }
  const answer = $('answer');
  answer.setAttribute('aria-busy', 'true');
  $('call-submit').disabled = true;
  const started = performance.now();
  let result;
  try {
    result = await api(method, url, options);
  } catch (error) {
    if (error instanceof SessionEnded) return;
    throw error;
  } finally {
    $('call-submit').disabled = false;
    answer.removeAttribute('aria-busy');
  }
  const took = Math.round(performance.now() - started);
  const { status, body, headers } = result;
  const type = headers.get('content-type') ?? '';
  const parts = [
    el('p', { class: 'answer-line' },
      el('span', { class: `pill ${status >= 200 && status < 300 ? 'pill-ok' : 'pill-bad'}` }, status ? `${status} ${statusText(status)}`.trim() : 'No answer'),
      el('span', { class: 'muted' }, `${took} ms`)),
    el('code', { class: 'answer-url' }, `${method} ${url}`),
  ];
  const problem = type.includes('problem+json') && body && typeof body === 'object' ? body : null;
  if (problem) {
    const service = state.services.find((s) => s.name === name);
    let explain = (Object.hasOwn(PROBLEMS, problem.code ?? '') ? PROBLEMS[problem.code] : null) ?? problem.title ?? 'The call failed.';
    if (problem.code === 'connect_required' && service) {
      explain = `${name} needs your ${providerName(service.provider)} account. Connect it first.`;
    }
    const fix = (problem.code === 'connect_required' || (problem.code === 'reauth_required' && service?.linked))
      ? button(problem.code === 'connect_required' ? 'Connect' : 'Reconnect', () => location.assign(connectHref({ name, connect_url: problem.connect_url ?? service?.connect_url })))
      : null;
    parts.push(el('div', { class: 'answer-problem' }, el('p', {}, explain), fix));
    if (problem.code === 'connect_required' || problem.code === 'reauth_required') loadServices().catch(() => {});
  }
  let text;
  if (body === null || body === '') text = status === 0 ? 'courier did not answer.' : '(empty body)';
  else if (typeof body === 'string') text = body;
  else text = JSON.stringify(body, null, 2);
  parts.push(el('pre', { class: 'code answer-body', tabindex: '0', 'aria-label': 'Response body' }, text));
  answer.replaceChildren(...parts);
}

// ---------------------------------------------------------------------------------------------
// the live connection

let live = null; // the WebSocket, while it is connecting or open

function liveUrl() {
  // Same origin, so the browser sends courier's Origin and the session cookie with the
  // handshake; a WebSocket cannot send X-CSRF and needs none.
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/api/services/${LIVE_SERVICE}/ws`;
}

function liveState(name, text, code) {
  const node = $('live-state');
  node.className = `status status-live-${name}`;
  node.dataset.state = name;
  if (code === undefined) delete node.dataset.code;
  else node.dataset.code = String(code);
  node.replaceChildren(el('span', { class: 'dot', 'aria-hidden': 'true' }), text);
  const open = name === 'open';
  $('live-open').hidden = name !== 'closed';
  $('live-close').hidden = name === 'closed';
  $('live-input').disabled = !open;
  $('live-send').disabled = !open;
}

/** Adds a line to the log: `way` is "in", "out" or "note". Only the last 50 stay. */
function liveLog(way, text) {
  const log = $('live-log');
  const marks = { in: '←', out: '→', note: '·' };
  log.append(el('li', { class: `live-line live-${way}` },
    el('span', { class: 'live-mark', 'aria-hidden': 'true' }, marks[way]), el('span', {}, text)));
  while (log.children.length > 50) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

function openLive() {
  if (live) return;
  $('live-sub').textContent = '…';
  liveState('connecting', 'Connecting…');
  const socket = new WebSocket(liveUrl());
  socket.binaryType = 'arraybuffer';
  live = socket;
  socket.addEventListener('open', () => {
    liveState('open', 'Open');
    liveLog('note', 'Connected.');
  });
  socket.addEventListener('message', (event) => {
    if (typeof event.data !== 'string') {
      liveLog('in', `(${event.data.byteLength} bytes of binary)`);
      return;
    }
    // The service greets first with what it knows of the token courier sent for us.
    let hello = null;
    try { hello = JSON.parse(event.data)?.hello ?? null; } catch { /* an echo */ }
    if (hello && typeof hello === 'object') {
      const sub = typeof hello.token?.sub === 'string' ? hello.token.sub : 'someone unknown';
      $('live-sub').textContent = sub;
      liveLog('note', `The service sees you as ${sub} (${hello.authorization ?? 'no token'}).`);
      return;
    }
    liveLog('in', event.data);
  });
  // Before `open`, a refused handshake (no session, a service to connect first) is only a
  // 1006 here: the browser keeps the HTTP answer to itself.
  socket.addEventListener('close', (event) => {
    if (live === socket) live = null;
    const text = Object.hasOwn(LIVE_CLOSES, event.code) ? LIVE_CLOSES[event.code] : (event.reason || 'closed');
    liveState('closed', `Closed (${event.code}: ${text})`, event.code);
    liveLog('note', `Closed: ${event.code} ${text}.`);
    // courier ended the connection because the session ended (here or in another tab).
    if (event.code === 4401) sessionEnded();
  });
}

/** Closes the connection from this side; the `close` event updates the panel. */
function closeLive() {
  live?.close(1000, 'closed by the user');
}

function sendLive() {
  const input = $('live-input');
  if (!live || live.readyState !== WebSocket.OPEN || !input.value) return;
  live.send(input.value);
  liveLog('out', input.value);
  input.value = '';
  input.focus();
}

// ---------------------------------------------------------------------------------------------
// sessions

function deviceIcon(summary) {
  const phone = /android|iphone|ipad|ios|mobile/i.test(summary ?? '');
  const path = phone
    ? 'M8 2h8a2 2 0 012 2v16a2 2 0 01-2 2H8a2 2 0 01-2-2V4a2 2 0 012-2zm3 17h2'
    : 'M4 5h16a1 1 0 011 1v10a1 1 0 01-1 1H4a1 1 0 01-1-1V6a1 1 0 011-1zm4 15h8m-4-3v3';
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'device-icon');
  svg.setAttribute('aria-hidden', 'true');
  const shape = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  shape.setAttribute('d', path);
  shape.setAttribute('fill', 'none');
  shape.setAttribute('stroke', 'currentColor');
  shape.setAttribute('stroke-width', '1.8');
  shape.setAttribute('stroke-linecap', 'round');
  svg.append(shape);
  return svg;
}

async function loadSessions() {
  const list = $('sessions');
  const { status, body } = await api('GET', '/api/sessions');
  list.removeAttribute('aria-busy');
  if (status !== 200) {
    state.sessions = [];
    list.replaceChildren(el('li', { class: 'row row-empty muted' }, `Your sessions could not be loaded (${status === 404 ? 'this courier does not list them' : `HTTP ${status || 'no answer'}`}).`));
    $('sign-out-others').disabled = true;
    return;
  }
  // This device first, then the most recently active.
  state.sessions = [...(body.sessions ?? [])].sort((a, b) => (b.current - a.current)
    || String(b.last_seen_at ?? '').localeCompare(String(a.last_seen_at ?? '')));
  renderSessions();
}

function renderSessions() {
  const rows = state.sessions.map((session) => {
    const device = session.user_agent || 'Unknown device';
    const when = [
      'Signed in ', timeEl(session.created_at, ago(session.created_at)),
      ...(session.last_seen_at && !session.current ? [' · active ', timeEl(session.last_seen_at, ago(session.last_seen_at))] : []),
      ...(session.current ? [' · active now'] : []),
    ];
    return el('li', { class: `row session${session.current ? ' session-current' : ''}`, dataset: { sessionId: session.id, current: String(Boolean(session.current)) } },
      deviceIcon(device),
      el('div', { class: 'row-main' },
        el('span', { class: 'row-title' }, device,
          session.current ? el('span', { class: 'badge' }, 'This device') : null),
        el('span', { class: 'row-sub muted' }, `via ${providerName(session.provider) || 'unknown provider'} · `, ...when)),
      el('div', { class: 'row-actions' },
        session.current ? null : button('Sign out this device', () => endSession(session), {
          kind: 'button-ghost end-session',
          'aria-label': `Sign out ${device}, signed in ${ago(session.created_at)}`,
        })));
  });
  $('sessions').replaceChildren(...rows);
  const others = state.sessions.filter((s) => !s.current).length;
  $('sign-out-others').disabled = others === 0;
  $('sign-out-others').textContent = others ? `Sign out everywhere else (${others})` : 'Sign out everywhere else';
}

async function endSession(session) {
  const { status } = await api('DELETE', `/api/sessions/${encodeURIComponent(session.id)}`);
  if (status === 204) notice(`${session.user_agent || 'That device'} is signed out.`, { kind: 'success' });
  else if (status === 404) notice('That session had already ended.', { kind: 'info' });
  else notice(`Signing out that device did not work (HTTP ${status || 'no answer'}).`, { kind: 'error' });
  await loadSessions();
}

async function endOtherSessions() {
  const others = state.sessions.filter((s) => !s.current).length;
  const { status, body } = await api('DELETE', '/api/sessions', { allow401: true });
  if (status === 401 && body?.code === 'reauth_required') {
    $('sessions-reauth').hidden = false;
    $('reauth').focus();
    return;
  }
  if (status === 401) {
    sessionEnded();
    return;
  }
  $('sessions-reauth').hidden = true;
  if (status === 204) {
    notice(others === 1 ? 'Your other session is signed out.' : `Your ${others} other sessions are signed out.`, { kind: 'success' });
  } else {
    notice(`Signing out your other sessions did not work (HTTP ${status || 'no answer'}).`, { kind: 'error' });
  }
  await loadSessions();
}

// ---------------------------------------------------------------------------------------------
// start

/** Reads and removes the `login_error` / `connect_error` that courier appended to the URL. */
function takeErrors() {
  const params = new URLSearchParams(location.search);
  const found = {
    login: params.get('login_error'),
    connect: params.get('connect_error'),
    service: params.get('service'),
    params: new URLSearchParams(params),
  };
  if (found.login || found.connect) {
    for (const key of ['login_error', 'connect_error', 'service']) params.delete(key);
    const query = params.toString();
    history.replaceState(history.state, '', location.pathname + (query ? `?${query}` : '') + location.hash);
  }
  return found;
}

// What the URL says is shown only when it looks like a code or a name: anyone can make a link
// that carries a `login_error`, and the page must not repeat made-up sentences.
const code = (text) => (/^[a-z0-9_]{1,64}$/.test(text ?? '') ? text : 'unknown_error');

function errorMessage(errors) {
  if (errors.connect) {
    const service = /^[A-Za-z0-9._-]{1,64}$/.test(errors.service ?? '') ? errors.service : 'the service';
    errors = { ...errors, connect: code(errors.connect) };
    const text = (Object.hasOwn(CONNECT_ERRORS, errors.connect) ? CONNECT_ERRORS[errors.connect](service) : null) ?? `Connecting ${service} did not work (${errors.connect}). Please try again.`;
    return { text, kind: 'error' };
  }
  if (errors.login && !SILENT_ERRORS.has(errors.login)) {
    return { text: (Object.hasOwn(LOGIN_ERRORS, errors.login) ? LOGIN_ERRORS[errors.login] : null) ?? `Sign-in did not work (${code(errors.login)}). Please try again.`, kind: 'error' };
  }
  return null;
}

async function start() {
  const errors = takeErrors();
  const signedOut = sessionStorage.getItem(SIGNED_OUT);
  const providers = loadProviders();

  let me;
  try {
    me = await api('GET', '/api/me', { allow401: true });
  } catch {
    me = { status: 0 };
  }
  state.providers = await providers;

  if (me.status === 401) {
    if (!signedOut && trySilentSignIn(errors.params)) return;
    if (signedOut) {
      sessionStorage.removeItem(SIGNED_OUT);
      // Still no silent sign-in in this tab: the user chose to sign out.
      sessionStorage.setItem(SILENT_TRIED, 'signed out');
    }
    showSignedOut(errorMessage(errors) ?? (signedOut ? { text: 'You are signed out.', kind: 'success' } : null));
    return;
  }
  if (me.status !== 200) {
    $('unavailable-text').textContent = me.status
      ? `courier answered HTTP ${me.status}. Please try again in a moment.`
      : 'courier did not answer. Check your connection and try again.';
    view('unavailable');
    return;
  }

  sessionStorage.removeItem(SIGNED_OUT);
  state.me = me.body;
  renderMe();
  trackExpiry(me.body.session);
  view('signed-in');
  const message = errorMessage(errors);
  if (message) notice(message.text, message);
  // Back from a sign-in that was asked for somewhere on the page (e.g. #sessions-section).
  if (location.hash.length > 1) $(decodeURIComponent(location.hash.slice(1)))?.scrollIntoView();

  try {
    await Promise.all([loadServices(), loadSessions()]);
  } catch (error) {
    if (!(error instanceof SessionEnded)) throw error;
  }
}

function wire() {
  $('sign-out').addEventListener('click', signOut);
  $('retry').addEventListener('click', () => location.reload());
  // Ending the other sessions needs a sign-in under 10 minutes old: a fresh one, not the
  // provider's single sign-on (prompt=login), and max_age=0 so that courier checks it was.
  $('reauth').addEventListener('click', () => location.assign(loginUrl({ provider: state.me?.provider, prompt: 'login', maxAge: 0, returnTo: `${location.pathname}#sessions-section` })));
  $('sign-out-others').addEventListener('click', () => endOtherSessions().catch(ignoreEnded));
  $('notice').querySelector('.notice-close').addEventListener('click', () => notice(null));
  $('call-service').addEventListener('change', updatePrefix);
  $('call-method').addEventListener('change', updatePrefix);
  $('call-form').addEventListener('submit', (event) => {
    event.preventDefault();
    callService().catch(ignoreEnded);
  });
  $('live-open').addEventListener('click', openLive);
  $('live-close').addEventListener('click', closeLive);
  $('live-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sendLive();
  });
  // Back to this tab: refresh what may have changed elsewhere (and notice an ended session).
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.me && !ended) {
      Promise.all([loadServices(), loadSessions()]).catch(ignoreEnded);
    }
  });
}

function ignoreEnded(error) {
  if (!(error instanceof SessionEnded)) console.error(error);
}

wire();
start().catch(ignoreEnded);
