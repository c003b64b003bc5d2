// Test OpenID Provider for courier's integration tests, built on node-oidc-provider v9.
//
// Configuration: JSON in env var OIDC_CONFIG (see README.md). Listens on 127.0.0.1 only and
// prints exactly one line `READY http://127.0.0.1:<port>` to stdout once it accepts requests.
// Everything else (provider notices, errors, request log) goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { inspect } from 'node:util';

import Provider, { errors, interactionPolicy } from 'oidc-provider';
// DPoP proofs at the registered token-exchange grant are checked with the provider's own helper.
import validateDpop, { checkDpopReplay } from 'oidc-provider/lib/helpers/validate_dpop.js';

// node-oidc-provider prints its "default X function called" notices with console.info, which
// writes to stdout. Keep stdout reserved for the READY line.
console.info = console.error;
console.log = console.error;

const log = (...args) => console.error('[oidc-provider]', ...args);

// ---------------------------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------------------------

// RFC 8693 token exchange, registered below: an access token of the client's user exchanged for
// one made for a resource server of `resource_servers` (named by `resource` or `audience`).
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

let input = {};
// OIDC_CONFIG_FILE names a JSON file (the dev stack's providers); OIDC_CONFIG holds the JSON.
const configText = process.env.OIDC_CONFIG_FILE
  ? fs.readFileSync(process.env.OIDC_CONFIG_FILE, 'utf8')
  : process.env.OIDC_CONFIG;
if (configText && configText.trim()) {
  try {
    input = JSON.parse(configText);
  } catch (err) {
    log('the provider configuration is not valid JSON:', err.message);
    process.exit(2);
  }
}

const num = (value, dflt) => (Number.isSafeInteger(value) && value >= 0 ? value : dflt);

const cfg = {
  port: num(input.port, 0),
  access_token_ttl: num(input.access_token_ttl, 3600),
  id_token_ttl: num(input.id_token_ttl, 3600),
  refresh_token_ttl: num(input.refresh_token_ttl, 86400),
  rotate_refresh_token: input.rotate_refresh_token ?? true,
  always_issue_refresh_token: input.always_issue_refresh_token ?? false,
  extra_scopes: input.extra_scopes ?? ['orders:read', 'calendar:read'],
  client_credentials_scopes: input.client_credentials_scopes ?? ['api:read', 'api:write'],
  conform_id_token_claims: input.conform_id_token_claims ?? false,
  keep_grant_on_revocation: input.keep_grant_on_revocation ?? false,
  cookie_keys: input.cookie_keys ?? ['courier-test-cookie-key-1', 'courier-test-cookie-key-0'],
  verbose: input.verbose ?? false,
  par: input.par ?? true,
  require_par: input.require_par ?? false,
  client_auth_signing_algs: input.client_auth_signing_algs,
  fapi: input.fapi ?? false,
  // false: no `claims` parameter, so `auth_time` comes only with max_age or prompt=login (as
  // with many providers); tests/blackbox/hardening.py's silent login needs that.
  claims_parameter: input.claims_parameter ?? true,
  clients: input.clients ?? [{
    client_id: 'courier',
    client_secret: 'courier-secret',
    // node-oidc-provider refuses a client with response_types but no redirect_uris, so the
    // default client gets a placeholder (overridable with the top-level `redirect_uris`).
    redirect_uris: input.redirect_uris ?? ['http://127.0.0.1/callback'],
    post_logout_redirect_uris: input.post_logout_redirect_uris ?? [],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials', TOKEN_EXCHANGE],
    response_types: ['code'],
  }],
  jwks: input.jwks,
  // RFC 8707 resource servers this provider issues tokens for: indicator -> { scope, audience }
  // (the space-separated scopes a token for it may carry; the audience of its tokens, by
  // default the indicator). Any other indicator is invalid_target. Token exchange finds them
  // by `resource` or by `audience` (the indicator).
  resource_servers: input.resource_servers ?? {},
  // true: a code exchange without `resource` gets a token for the one resource the login was
  // granted (features.resourceIndicators.useGrantedResource), which userinfo then refuses.
  use_granted_resource: input.use_granted_resource ?? false,
  // RFC 9449: demand a server nonce in every DPoP proof (the client must retry once with it).
  dpop_require_nonce: input.dpop_require_nonce ?? false,
};


// ---------------------------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------------------------

const htmlSafe = (value) => String(value ?? '')
  .replace(/&/g, '&amp;')
  .replace(/</g, '&lt;')
  .replace(/>/g, '&gt;')
  .replace(/"/g, '&quot;')
  .replace(/'/g, '&#39;');

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>${htmlSafe(title)}</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <style>
    body{font-family:sans-serif;margin:40px auto;max-width:360px}
    label,input,button{display:block;width:100%;margin-bottom:8px;box-sizing:border-box}
    input{padding:6px}button{padding:8px;cursor:pointer}.error{color:#b00020}
  </style>
</head>
<body>
${body}
</body>
</html>`;
}

function send(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

async function readBytes(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// ---------------------------------------------------------------------------------------------
// provider configuration
// ---------------------------------------------------------------------------------------------

// node-oidc-provider (following OIDC Core 11) silently drops `offline_access` from the
// authorization request unless `prompt` contains `consent` (its checkScope middleware runs before
// any configurable hook, so issueRefreshToken alone would never see the scope). Put it back: a
// never-prompting check at the front of the interaction policy re-adds it when the original
// request asked for it, the response_type returns a code and the client may refresh. The value
// then ends up in the stored interaction params, the grant, the code and the token response.
// The scope of each pushed authorization request as the client sent it, by its request_uri
// (node-oidc-provider drops `offline_access` from it before storing it; see buildPolicy).
const pushedScopes = new Map();

function buildPolicy() {
  const { base, Prompt, Check } = interactionPolicy;
  const policy = base();
  policy.add(new Prompt(
    { name: 'restore_offline_access', requestable: false },
    new Check('restore_offline_access', 'never prompts', (ctx) => {
      const { oidc } = ctx;
      if (oidc.route !== 'authorization') return Check.NO_NEED_TO_PROMPT;
      // A pushed request (PAR) lost `offline_access` when it was pushed: its scope as sent
      // was kept by `request_uri` (see `pushedScopes`).
      const requestedScope = ctx.query?.scope ?? pushedScopes.get(ctx.query?.request_uri);
      const requested = String(requestedScope ?? '').split(' ');
      const current = new Set((oidc.params.scope ?? '').split(' ').filter(Boolean));
      if (
        requested.includes('offline_access')
        && !current.has('offline_access')
        && String(oidc.params.response_type ?? '').split(' ').includes('code')
        && oidc.client.grantTypeAllowed('refresh_token')
      ) {
        current.add('offline_access');
        // keep the order of the original request
        const ordered = [...new Set(requested.filter((s) => current.has(s)))];
        for (const s of current) if (!ordered.includes(s)) ordered.push(s);
        oidc.params.scope = ordered.join(' ');
      }
      return Check.NO_NEED_TO_PROMPT;
    }),
  ), 0);
  return policy;
}

function buildConfiguration() {
  const scopes = [...new Set([
    'openid', 'profile', 'email', 'offline_access',
    ...cfg.extra_scopes,
    ...cfg.client_credentials_scopes,
  ])];

  return {
    clients: cfg.clients,
    jwks: signingJwks,

    cookies: {
      keys: cfg.cookie_keys,
      // Defaults are httpOnly + SameSite=Lax. node-oidc-provider only adds `Secure` when the
      // request itself is https (ctx.secure), so plain http on 127.0.0.1 works as is.
    },

    claims: {
      openid: ['sub'],
      profile: ['name', 'picture'],
      email: ['email', 'email_verified'],
    },
    scopes,

    // false: id_token also carries the scope-derived claims (name, email, picture, ...)
    conformIdTokenClaims: cfg.conform_id_token_claims,

    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            name: `User ${sub}`,
            email: `${sub}@example.test`,
            email_verified: true,
            picture: `https://example.test/${sub}.png`,
          };
        },
      };
    },

    ...(cfg.client_auth_signing_algs
      ? { enabledJWA: { clientAuthSigningAlgValues: cfg.client_auth_signing_algs } }
      : {}),

    features: {
      devInteractions: { enabled: false },
      fapi: cfg.fapi ? { enabled: true, profile: '2.0' } : { enabled: false },
      pushedAuthorizationRequests: {
        enabled: cfg.par,
        requirePushedAuthorizationRequests: cfg.require_par,
      },
      // Same rules as node-oidc-provider's defaults, spelled out to silence its notices:
      // confidential clients may introspect any token, public clients only their own; a client may
      // only revoke its own tokens.
      introspection: {
        enabled: true,
        allowedPolicy: (ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
      },
      revocation: {
        enabled: true,
        allowedPolicy(ctx, client, token) {
          if (token.clientId === client.clientId) return true;
          if (client.clientAuthMethod === 'none') return false;
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        },
      },
      userinfo: { enabled: true },
      // OpenID Connect Core §5.5: courier asks for `auth_time` as an essential ID-token claim,
      // which node-oidc-provider otherwise sends only with max_age or prompt=login.
      claimsParameter: { enabled: cfg.claims_parameter },
      // RFC 9449: tokens requested with a DPoP proof are bound to its key (cnf.jkt).
      dPoP: {
        enabled: true,
        nonceSecret: crypto.randomBytes(32),
        requireNonce: () => cfg.dpop_require_nonce,
      },
      // RFC 8707: tokens restricted to one resource server, opaque so that the demo API can
      // introspect them (their `aud` is the indicator).
      resourceIndicators: {
        enabled: true,
        useGrantedResource: async () => cfg.use_granted_resource,
        async getResourceServerInfo(ctx, indicator) {
          const server = cfg.resource_servers[indicator];
          if (!server) throw new errors.InvalidTarget();
          return {
            scope: server.scope ?? '',
            audience: server.audience ?? indicator,
            accessTokenFormat: 'opaque',
            accessTokenTTL: cfg.access_token_ttl,
          };
        },
      },
      backchannelLogout: { enabled: true },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          // `form` is `<form id="op.logoutForm" method="post" action=".../session/end/confirm">
          //   <input type="hidden" name="xsrf" value="..."/></form>`; buttons refer to it.
          ctx.type = 'html';
          ctx.body = page('Sign out', `
  <h1>Sign out from ${htmlSafe(ctx.host)}?</h1>
  ${form}
  <button id="logout-confirm" autofocus type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
  <button id="logout-cancel" type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<h1 id="logout-success">Sign-out successful</h1>');
        },
      },
    },

    pkce: {
      // node-oidc-provider's default only requires PKCE for public clients; courier's client is
      // confidential, so require it for everyone. v9 supports only S256.
      required: () => true,
    },

    interactions: {
      policy: buildPolicy(),
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },

    // Issue a refresh token whenever offline_access is in the code's scope (the client requested it
    // and, thanks to restore_offline_access above, without needing prompt=consent) and the client
    // may use the refresh_token grant; or for every code if `always_issue_refresh_token` is set.
    async issueRefreshToken(ctx, client, code) {
      if (!client.grantTypeAllowed('refresh_token')) return false;
      return cfg.always_issue_refresh_token || code.scopes.has('offline_access');
    },

    rotateRefreshToken: () => cfg.rotate_refresh_token,

    // node-oidc-provider destroys the whole grant (the user's consent) when a refresh token is
    // revoked, so that after a client's logout a `prompt=none` request ends in consent_required.
    // `keep_grant_on_revocation` keeps it, as providers that remember consent do.
    revokeGrantPolicy: (ctx) => !(cfg.keep_grant_on_revocation && ctx.oidc.route === 'revocation')
      && !(ctx.oidc.route === 'revocation' && ctx.oidc.entities.AccessToken),

    ttl: {
      AccessToken: cfg.access_token_ttl,
      ClientCredentials: cfg.access_token_ttl,
      IdToken: cfg.id_token_ttl,
      RefreshToken: cfg.refresh_token_ttl,
      AuthorizationCode: 60,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
    },

    clientBasedCORS: () => true,

    // node-oidc-provider protects its outgoing requests (backchannel logout, jwks_uri, ...)
    // against SSRF by refusing special-use addresses such as 127.0.0.0/8. In tests the RP runs
    // on 127.0.0.1, so drop that protecting dispatcher.
    fetch: (url, options) => {
      const { dispatcher, ...rest } = options;
      return globalThis.fetch(url, rest);
    },

    async renderError(ctx, out, error) {
      ctx.type = 'html';
      ctx.body = page('Error', `
  <h1>Error</h1>
  ${Object.entries(out).map(([k, v]) => `<p><strong>${htmlSafe(k)}</strong>: <span id="${htmlSafe(k)}">${htmlSafe(v)}</span></p>`).join('\n')}`);
      log('rendered error page', ctx.method, ctx.path, out, error?.error_detail ?? '');
    },
  };
}

// ---------------------------------------------------------------------------------------------
// RFC 8693 token exchange
// ---------------------------------------------------------------------------------------------

const list = (value) => (value === undefined ? [] : [].concat(value));

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be an access token');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are issued');
  }
  if (params.actor_token) throw new errors.InvalidRequest('delegation is not supported');
  const subject = await provider.AccessToken.find(String(params.subject_token ?? ''));
  if (!subject?.isValid || subject.clientId !== client.clientId) {
    throw new errors.InvalidGrant('the subject token is not active');
  }
  // A DPoP-bound subject token is exchanged only with a proof of its key; the new token is
  // bound to that key too.
  const dPoP = await validateDpop(provider, ctx);
  if (dPoP) await checkDpopReplay(provider, ctx, dPoP, client.clientId);
  if (subject.jkt && subject.jkt !== dPoP?.thumbprint) {
    throw new errors.InvalidGrant('the subject token is bound to another DPoP key');
  }
  const resources = list(params.resource);
  const audiences = list(params.audience);
  if (resources.length + audiences.length === 0 || resources.length > 1 || audiences.length > 1) {
    throw new errors.InvalidTarget('name one resource and/or one audience');
  }
  const indicator = resources[0] ?? audiences[0];
  const server = cfg.resource_servers[indicator];
  if (!server || (resources[0] && audiences[0] && (server.audience ?? indicator) !== audiences[0])) {
    throw new errors.InvalidTarget();
  }
  const at = new provider.AccessToken({
    accountId: subject.accountId,
    client,
    grantId: subject.grantId,
    gty: 'token_exchange',
    sid: subject.sid,
    sessionUid: subject.sessionUid,
    expiresWithSession: subject.expiresWithSession,
  });
  at.resourceServer = new provider.ResourceServer(indicator, {
    scope: server.scope ?? '',
    audience: server.audience ?? indicator,
    accessTokenFormat: 'opaque',
    accessTokenTTL: cfg.access_token_ttl,
  });
  const allowed = new Set((server.scope ?? '').split(' ').filter(Boolean));
  const requested = String(params.scope ?? '').split(' ').filter(Boolean);
  at.scope = requested.filter((s) => allowed.has(s)).join(' ') || undefined;
  if (dPoP) at.setThumbprint('jkt', dPoP.thumbprint);
  ctx.oidc.entity('AccessToken', at);
  const value = await at.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: at.tokenType,
    expires_in: at.expiration,
    scope: at.scope,
  };
}

// ---------------------------------------------------------------------------------------------
// interactions (login + consent in one step)
// ---------------------------------------------------------------------------------------------

function loginForm(uid, { login = '', error } = {}) {
  return page('Sign in', `
  <h1>Sign in</h1>
  ${error ? `<p class="error" id="error">${htmlSafe(error)}</p>` : ''}
  <form method="post" action="/interaction/${htmlSafe(uid)}/login" autocomplete="off">
    <label for="login">Login</label>
    <input id="login" name="login" type="text" value="${htmlSafe(login)}" autofocus>
    <label for="password">Password</label>
    <input id="password" name="password" type="password">
    <button id="submit" type="submit">Sign in</button>
  </form>`);
}

// Grants everything the authorization request asked for to `grant`: all requested (known) OIDC
// scopes, all requested claims (claims parameter) and, when the provider computed them for a
// consent prompt, the missing* details.
function grantEverything(grant, params, details = {}) {
  if (params.scope) grant.addOIDCScope(params.scope);
  if (params.claims) {
    try {
      const { userinfo, id_token: idToken } = JSON.parse(params.claims);
      const claims = [...Object.keys(userinfo ?? {}), ...Object.keys(idToken ?? {})];
      if (claims.length) grant.addOIDCClaims(claims);
    } catch { /* the provider already validated it */ }
  }
  // Every requested resource indicator with all of its scopes (the provider already refused
  // unknown ones with invalid_target).
  const resources = params.resource === undefined ? []
    : (Array.isArray(params.resource) ? params.resource : [params.resource]);
  for (const indicator of resources) {
    const server = cfg.resource_servers[indicator];
    if (server) grant.addResourceScope(indicator, server.scope ?? '');
  }
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
}

async function handleInteraction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    throw new errors.SessionNotFound('interaction uid does not match the interaction cookie');
  }
  const { prompt, params, session } = details;

  if (action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  if (action === undefined && req.method === 'GET') {
    if (prompt.name === 'consent') {
      // Already authenticated, only consent missing (e.g. second authorization in the same
      // session, new scopes): auto-grant and continue, like the example's /confirm route.
      let grant;
      if (details.grantId) {
        grant = await provider.Grant.find(details.grantId);
      }
      grant ??= new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      grantEverything(grant, params, prompt.details);
      const grantId = await grant.save();
      log(`interaction ${uid}: auto-consent for account=${session.accountId} client=${params.client_id}`);
      return provider.interactionFinished(req, res, { consent: { grantId } }, {
        mergeWithLastSubmission: true,
      });
    }
    // login (or anything else): show the form
    return send(res, 200, loginForm(uid, { login: prompt.details?.login_hint ?? '' }));
  }

  if (action === 'login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = (form.get('login') ?? '').trim();
    if (!login) {
      return send(res, 400, loginForm(uid, { error: 'Please enter a login name.' }));
    }

    // Login and consent in one step. The consent prompt's missing* details are not computed
    // while the login prompt is pending, so grant from the authorization request params.
    let grant;
    if (details.grantId && session?.accountId === login) {
      grant = await provider.Grant.find(details.grantId);
    }
    grant ??= new provider.Grant({ accountId: login, clientId: params.client_id });
    grantEverything(grant, params, prompt.details);
    const grantId = await grant.save();

    log(`interaction ${uid}: login account=${login} client=${params.client_id} scope="${params.scope ?? ''}"`);
    return provider.interactionFinished(req, res, {
      login: { accountId: login },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
  }

  return send(res, 405, page('Method not allowed', '<h1>Method not allowed</h1>'));
}

// ---------------------------------------------------------------------------------------------
// server
// ---------------------------------------------------------------------------------------------

let provider;
let callback;

const grantCounts = {};
// The provider's signing keys, kept so that the /__test/sign hook can sign with them. By
// default a fixed test key (jwks.json): generating an RSA key at every start now and then hangs
// OpenSSL under Node 20 on these machines (1 start in ~30 when many start at once).
const signingJwks = cfg.jwks ?? JSON.parse(fs.readFileSync(new URL('./jwks.json', import.meta.url), 'utf8'));
let tokenDelayMs = 0;

const server = http.createServer(async (req, res) => {
  const started = Date.now();
  if (cfg.verbose) {
    res.on('finish', () => {
      log(`${req.method} ${req.url} -> ${res.statusCode} ${res.getHeader('location') ?? ''} (${Date.now() - started}ms)`);
    });
  }

  if (!callback) {
    res.statusCode = 503;
    res.end('starting');
    return;
  }

  const url = new URL(req.url, 'http://127.0.0.1');
  // Test hooks: how many grants of each type succeeded, and a delay for the token endpoint.
  if (url.pathname === '/__test/grants') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(grantCounts));
    return;
  }
  if (url.pathname === '/__test/token-delay' && req.method === 'POST') {
    tokenDelayMs = Number(url.searchParams.get('ms') ?? 0);
    res.end('ok');
    return;
  }
  // Signs any JWT with the provider's own key: black-box tests forge logout tokens with it.
  if (url.pathname === '/__test/sign' && req.method === 'POST') {
    const { header = {}, claims } = JSON.parse((await readBytes(req)).toString('utf8'));
    // RS256 with the first key, or ES256 (header.alg) with the first P-256 key.
    const es256 = header.alg === 'ES256';
    const jwk = es256 ? signingJwks.keys.find((k) => k.kty === 'EC') : signingJwks.keys[0];
    const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const input = `${enc({ alg: 'RS256', kid: jwk.kid, ...header })}.${enc(claims)}`;
    const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
    const signature = crypto
      .sign('sha256', Buffer.from(input), es256 ? { key, dsaEncoding: 'ieee-p1363' } : key)
      .toString('base64url');
    res.end(`${input}.${signature}`);
    return;
  }
  if (url.pathname === '/token' && tokenDelayMs > 0) {
    await new Promise((resolve) => setTimeout(resolve, tokenDelayMs));
  }
  const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?\/?$/.exec(url.pathname);
  if (m) {
    const [, uid, action] = m;
    try {
      await handleInteraction(provider, req, res, uid, action);
    } catch (err) {
      const expected = err instanceof errors.SessionNotFound;
      log(`interaction ${req.method} ${url.pathname} failed:`, expected ? err.message : err);
      if (!res.headersSent) {
        send(res, expected ? 400 : 500, page('Error', `
  <h1>Error</h1>
  <p><strong>error</strong>: <span id="error">${expected ? 'invalid_request' : 'server_error'}</span></p>
  <p><strong>error_description</strong>: <span id="error_description">${htmlSafe(err.message)}</span></p>`));
      } else {
        res.end();
      }
    }
    return;
  }

  callback(req, res);
});

server.on('error', (err) => {
  log('http server error:', err);
  process.exit(1);
});

server.listen(cfg.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  try {
    provider = new Provider(issuer, buildConfiguration());
  } catch (err) {
    log('failed to construct Provider:', err);
    process.exit(1);
  }

  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route === 'pushed_authorization_request' && ctx.status === 201) {
      const requestUri = ctx.body.request_uri;
      pushedScopes.set(requestUri, ctx.oidc.body?.scope);
      setTimeout(() => pushedScopes.delete(requestUri), 120_000).unref();
    }
  });

  const errorEvents = [
    'authorization.error', 'grant.error', 'introspection.error', 'revocation.error',
    'userinfo.error', 'end_session.error', 'end_session_confirm.error',
    'end_session_success.error', 'jwks.error', 'discovery.error', 'backchannel.error',
  ];
  provider.on('server_error', (ctx, err) => log('server_error', ctx.method, ctx.path, err));
  for (const event of errorEvents) {
    provider.on(event, (ctx, err) => {
      log(event, ctx?.method ?? '', ctx?.path ?? '', `${err?.name ?? ''}: ${err?.message ?? inspect(err)}`,
        err?.error_description ? `(${err.error_description})` : '', err?.error_detail ? `detail=${err.error_detail}` : '');
    });
  }
  provider.on('grant.revoked', () => {
    grantCounts.revoked_grants = (grantCounts.revoked_grants ?? 0) + 1;
  });
  provider.on('grant.success', (ctx) => {
    const type = ctx.oidc?.params?.grant_type ?? 'unknown';
    grantCounts[type] = (grantCounts[type] ?? 0) + 1;
  });
  provider.on('backchannel.success', (ctx, client, accountId, sid) => {
    log(`backchannel logout delivered client=${client.clientId} sub=${accountId} sid=${sid}`);
  });

  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchange,
    new Set([
      'subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource',
      'scope', 'actor_token', 'actor_token_type',
    ]),
    new Set(['resource', 'audience']),
  );

  callback = provider.callback();
  process.stdout.write(`READY ${issuer}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
