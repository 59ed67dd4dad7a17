// A real OAuth 2.0 provider for the introspection tests: node-oidc-provider, configured
// for the client credentials grant with OPAQUE access tokens, RFC 7662 introspection and
// RFC 7009 revocation. Test-only: in-memory storage, development signing keys, plain
// http on loopback.
//
//   node provider.mjs <port>     prints "listening <issuer>" once it accepts connections
//
// Clients (secrets are test fixtures, not credentials of anything):
//   app / app-secret                  obtains tokens (client_credentials) and revokes them
//   authz-sidecar / sidecar-secret    may introspect (client_secret_basic)
import Provider from 'oidc-provider';

const RESOURCE = 'https://api.example.test';
const RESOURCE_SCOPES = 'orders:read orders:write';
const ACCESS_TOKEN_SECONDS = 600;

function configuration() {
  return {
    clients: [
      {
        client_id: 'app',
        client_secret: 'app-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: RESOURCE_SCOPES,
      },
      {
        client_id: 'authz-sidecar',
        client_secret: 'sidecar-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
    ],
    scopes: ['openid', 'orders:read', 'orders:write'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A token request without `resource` still gets an audience: this one.
        defaultResource: async () => RESOURCE,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (indicator !== RESOURCE) {
            throw new Provider.errors.InvalidTarget();
          }
          // `opaque`: the token is a random handle only introspection can read.
          return { scope: RESOURCE_SCOPES, audience: RESOURCE, accessTokenFormat: 'opaque' };
        },
      },
    },
    // Shows up in the introspection response beside the standard members.
    extraTokenClaims: async () => ({ roles: ['reader', 'auditor'] }),
    ttl: { ClientCredentials: ACCESS_TOKEN_SECONDS },
  };
}

function main() {
  const port = Number.parseInt(process.argv[2] ?? '', 10);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error('usage: node provider.mjs <port>');
    process.exit(2);
  }
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration());
  const server = provider.listen(port, '127.0.0.1', () => {
    console.log(`listening ${issuer}`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
