// A real, certified OpenID provider (panva/oidc-provider) for tollgate's end-to-end
// test tests/it/oidc_e2e.rs. Listens on 127.0.0.1 (port from OIDC_PORT, default 0 =
// any free port) and prints one line `LISTENING http://127.0.0.1:PORT` when ready.
//
// client_credentials + RFC 8707 resource indicators + RFC 7662 introspection:
//   https://bi-api.company.com     JWT access tokens (RS256), analytics.read analytics.write
//   https://other-api.company.com  JWT access tokens (ES256), analytics.read (wrong audience)
//   https://opaque-api.company.com opaque access tokens, analytics.read
//   https://other-opaque-api.company.com  opaque, analytics.read (wrong audience)
// Clients (secrets from the environment, defaults for manual runs):
//   gateway-e2e   client_secret_basic, grant client_credentials
//   introspector  client_secret_basic, the only client allowed to introspect
//
// Usage: npm ci --prefix tests/e2e/oidc && node tests/e2e/oidc/provider.mjs

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const port = Number(process.env.OIDC_PORT ?? 0);
const gatewaySecret = process.env.GATEWAY_E2E_SECRET ?? 'gateway-e2e-s3cret';
const introspectorSecret = process.env.INTROSPECTOR_SECRET ?? 'introspector-s3cret';

// Fresh signing keys on every start, published at the provider's jwks_uri.
function signingJwk(type, options, kid, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
const jwks = {
  keys: [
    signingJwk('rsa', { modulusLength: 2048 }, 'e2e-rsa', 'RS256'),
    signingJwk('ec', { namedCurve: 'P-256' }, 'e2e-ec', 'ES256'),
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
  ],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client) => client.clientId === 'introspector',
    },
    resourceIndicators: {
      enabled: true,
      // client_credentials without `resource` gets no resource-server token.
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
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
