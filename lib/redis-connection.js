'use strict';
// Reads where Redis is from what services already have: an Ignis RedisHelper /
// DefaultRedisHelper (its ioredis client's options), a Redis URL, a plain
// { host, port, username?, password?, db?, tls? } object, or a cluster { nodes: [...] }.
// Returns { url, tls? } or { nodes: [url, ...], tls? } for the native bridge; throws a clear
// Error. TLS follows ioredis' `tls` option (node's tls.connect options): `ca`, `cert`, `key`
// and `rejectUnauthorized` are used; the URLs then say rediss://.

function nodeUrl({ host = '127.0.0.1', port = 6379, username, password, db, tls }) {
  const auth =
    username || password ? `${encodeURIComponent(username ?? '')}:${encodeURIComponent(password ?? '')}@` : '';
  const database = db ? `/${Number(db)}` : '';
  return `${tls ? 'rediss' : 'redis'}://${auth}${host}:${Number(port)}${database}`;
}

/** PEM text from what node's tls options accept: a string, a Buffer, or an array of them. */
function pem(value, field, scope) {
  if (value === undefined || value === null) {
    return undefined;
  }
  if (Array.isArray(value)) {
    return value.map(item => pem(item, field, scope)).join('\n');
  }
  if (typeof value === 'string') {
    return value;
  }
  if (value instanceof Uint8Array) {
    return Buffer.from(value).toString('utf8');
  }
  throw new Error(`[${scope}] Invalid redis connection: tls.${field} must be PEM text (a string or Buffer)`);
}

function tlsOptions(tls, scope) {
  if (!tls) {
    return undefined;
  }
  const options = tls === true ? {} : tls;
  if ((options.cert === undefined) !== (options.key === undefined)) {
    throw new Error(`[${scope}] Invalid redis connection: tls.cert and tls.key go together`);
  }
  return {
    ca: pem(options.ca, 'ca', scope),
    cert: pem(options.cert, 'cert', scope),
    key: pem(options.key, 'key', scope),
    rejectUnauthorized: options.rejectUnauthorized !== false,
  };
}

function fromIoredis(client, scope) {
  if (client.isCluster) {
    const shared = client.options?.redisOptions ?? {};
    const nodes = (client.startupNodes ?? []).map(node =>
      typeof node === 'string' ? node : nodeUrl({ ...shared, ...node, db: undefined }),
    );
    return { nodes, tls: tlsOptions(shared.tls, scope) };
  }
  const options = client.options ?? {};
  return { url: nodeUrl(options), tls: tlsOptions(options.tls, scope) };
}

function parseRedisConnection(connection, scope) {
  if (typeof connection === 'string') {
    if (!/^rediss?:\/\//.test(connection)) {
      throw new Error(`[${scope}] Invalid redis connection: expected a redis:// URL, got ${JSON.stringify(connection)}`);
    }
    // rediss:// URLs verify the server against the bundled Mozilla roots; for a private CA
    // use the object form with tls.ca.
    return { url: connection };
  }
  if (typeof connection?.getClient === 'function') {
    return fromIoredis(connection.getClient(), scope);
  }
  if (Array.isArray(connection?.nodes)) {
    return {
      nodes: connection.nodes.map(node =>
        typeof node === 'string' ? node : nodeUrl({ ...connection, ...node, db: undefined }),
      ),
      tls: tlsOptions(connection.tls, scope),
    };
  }
  if (connection && typeof connection === 'object' && ('host' in connection || 'port' in connection)) {
    return { url: nodeUrl(connection), tls: tlsOptions(connection.tls, scope) };
  }
  throw new Error(
    `[${scope}] Invalid redis connection: expected a RedisHelper, a redis:// URL, { host, port, ... } or { nodes: [...] }`,
  );
}

module.exports = { parseRedisConnection };
