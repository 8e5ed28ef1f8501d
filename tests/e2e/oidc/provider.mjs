// A real, certified OpenID provider (panva/oidc-provider) for tollgate's end-to-end
// test tests/it/oidc_e2e.rs. Listens on 127.0.0.1 (port from OIDC_PORT, default 0 =
// any free port) and prints one line `LISTENING http://127.0.0.1:PORT` when ready.
//
// client_credentials + RFC 8707 resource indicators + RFC 7662 introspection:
//   https://bi-api.company.com     JWT access tokens (RS256), analytics.read analytics.write
//   https://other-api.company.com  JWT access tokens (ES256), analytics.read (wrong audience)
//   https://opaque-api.company.com opaque access tokens, analytics.read
//   https://other-opaque-api.company.com  opaque, analytics.read (wrong audience)
//   https://dashboard-api.company.com JWT access tokens (RS256) for browser sign-in,
//                                  analytics.read analytics.write; lifetime from
//                                  --login-access-token-ttl SECONDS (default 300)
// Clients (secrets from the environment, defaults for manual runs):
//   gateway-e2e   client_secret_basic, grant client_credentials
//   introspector  client_secret_basic, the only client allowed to introspect
//   tollgate-web  client_secret_basic (TOLLGATE_WEB_SECRET), authorization_code +
//                 refresh_token (PKCE): tollgate's browser sign-in as a confidential client
//   tollgate-spa  the same as a public client (token_endpoint_auth_method none)
// Both sign-in clients are "native" clients (RFC 8252 7.3: a loopback redirect URI matches
// on any port), so tollgate instances on any loopback port may use them; their redirect
// URIs are http://{127.0.0.1,localhost}/oauth2/callback plus every --redirect-uri URL
// given, their post-logout redirect URIs http://{127.0.0.1,localhost}/signed-out plus
// every --post-logout-uri URL.
// Every sign-in client gets a refresh token. The login page is oidc-provider's
// devInteractions page: any login name (it becomes `sub`) and any password.
//
// Usage: npm ci --prefix tests/e2e/oidc && node tests/e2e/oidc/provider.mjs \
//          [--login-access-token-ttl SECONDS] [--redirect-uri URL]... [--post-logout-uri URL]...

import { generateKeyPair, randomBytes } from 'node:crypto';
import http from 'node:http';
import { promisify } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const port = Number(process.env.OIDC_PORT ?? 0);
const gatewaySecret = process.env.GATEWAY_E2E_SECRET ?? 'gateway-e2e-s3cret';
const introspectorSecret = process.env.INTROSPECTOR_SECRET ?? 'introspector-s3cret';
const webSecret = process.env.TOLLGATE_WEB_SECRET ?? 'tollgate-web-s3cret';

function usage(msg) {
  process.stderr.write(`provider.mjs: ${msg}\n`);
  process.exit(2);
}

// Command line: --login-access-token-ttl N, --redirect-uri URL (repeatable),
// --post-logout-uri URL (repeatable).
const redirectUris = ['http://127.0.0.1/oauth2/callback', 'http://localhost/oauth2/callback'];
const postLogoutUris = ['http://127.0.0.1/signed-out', 'http://localhost/signed-out'];
let loginAccessTokenTtl = 300;
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[++i];
    if (value === undefined) usage(`${flag} needs a value`);
    switch (flag) {
      case '--login-access-token-ttl':
        loginAccessTokenTtl = Number(value);
        if (!Number.isInteger(loginAccessTokenTtl) || loginAccessTokenTtl < 1) {
          usage('--login-access-token-ttl must be a positive number of seconds');
        }
        break;
      case '--redirect-uri':
        redirectUris.push(value);
        break;
      case '--post-logout-uri':
        postLogoutUris.push(value);
        break;
      default:
        usage(`unknown flag ${flag}`);
    }
  }
}

// Fresh signing keys on every start, published at the provider's jwks_uri.
// Generated asynchronously, never with generateKeyPairSync: under load, Node 20's
// synchronous RSA key generation deadlocks about once in 60 starts (a garbage collection
// during the keygen runs ~KeyGenJob, which waits for a mutex its own thread holds; found
// with gdb on a provider that never printed LISTENING). 500 asynchronous starts on a
// machine with both cores busy never hung.
const generateKeyPairAsync = promisify(generateKeyPair);
async function signingJwk(type, options, kid, alg) {
  const { privateKey } = await generateKeyPairAsync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
const jwks = {
  keys: [
    await signingJwk('rsa', { modulusLength: 2048 }, 'e2e-rsa', 'RS256'),
    await signingJwk('ec', { namedCurve: 'P-256' }, 'e2e-ec', 'ES256'),
  ],
};

const RESOURCES = {
  'https://bi-api.company.com': {
    audience: 'https://bi-api.company.com',
    scope: 'analytics.read analytics.write',
    accessTokenFormat: 'jwt',
    accessTokenTTL: 300,
    jwt: { sign: { alg: 'RS256' } },
  },
  'https://other-api.company.com': {
    audience: 'https://other-api.company.com',
    scope: 'analytics.read',
    accessTokenFormat: 'jwt',
    accessTokenTTL: 300,
    jwt: { sign: { alg: 'ES256' } },
  },
  'https://opaque-api.company.com': {
    audience: 'https://opaque-api.company.com',
    scope: 'analytics.read',
    accessTokenFormat: 'opaque',
    accessTokenTTL: 300,
  },
  'https://other-opaque-api.company.com': {
    audience: 'https://other-opaque-api.company.com',
    scope: 'analytics.read',
    accessTokenFormat: 'opaque',
    accessTokenTTL: 300,
  },
  'https://dashboard-api.company.com': {
    audience: 'https://dashboard-api.company.com',
    scope: 'analytics.read analytics.write',
    accessTokenFormat: 'jwt',
    accessTokenTTL: loginAccessTokenTtl,
    jwt: { sign: { alg: 'RS256' } },
  },
};

// The browser sign-in clients (see the top of this file).
const signInClient = {
  application_type: 'native',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: redirectUris,
  post_logout_redirect_uris: postLogoutUris,
  scope: 'openid analytics.read analytics.write',
};

const configuration = {
  jwks,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  // Scopes the provider knows; a client's `scope` metadata is its allow-list of these.
  scopes: ['openid', 'analytics.read', 'analytics.write'],
  clients: [
    {
      client_id: 'gateway-e2e',
      client_secret: gatewaySecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'analytics.read analytics.write',
    },
    {
      client_id: 'introspector',
      client_secret: introspectorSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
    {
      ...signInClient,
      client_id: 'tollgate-web',
      client_secret: webSecret,
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      ...signInClient,
      client_id: 'tollgate-spa',
      token_endpoint_auth_method: 'none',
    },
  ],
  // A refresh token for every sign-in client (by default only with offline_access).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    // The sign-in and consent pages a person (or chromium) fills in.
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client) => client.clientId === 'introspector',
    },
    resourceIndicators: {
      enabled: true,
      // client_credentials without `resource` gets no resource-server token.
      defaultResource: async () => undefined,
      // A code or refresh token is exchanged for the resource it was granted for (the
      // authorization request names it with `resource`).
      useGrantedResource: async (ctx) => ['authorization_code', 'refresh_token']
        .includes(ctx.oidc.params?.grant_type),
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        const info = RESOURCES[resourceIndicator];
        if (!info) throw new errors.InvalidTarget();
        return info;
      },
    },
  },
};

const server = http.createServer();
server.listen(port, HOST, () => {
  const issuer = `http://${HOST}:${server.address().port}`;
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  process.stdout.write(`LISTENING ${issuer}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
// The test holds our stdin open for as long as it lives; when it closes (the test ended
// or died without killing us), so do we.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
