'use strict';
// Reads where Redis is from what services already have: an Ignis RedisHelper /
// DefaultRedisHelper (its ioredis client's options), a Redis URL, a plain
// { host, port, username?, password?, db?, tls? } object, or a cluster { nodes: [...] }.
// Returns { url } or { nodes: [url, ...] } for the native bridge; throws a clear Error.

function nodeUrl({ host = '127.0.0.1', port = 6379, username, password, db, tls }, scope) {
  if (tls) {
    throw new Error(`[${scope}] TLS connections to Redis are not supported in this version yet`);
  }
  const auth =
    username || password ? `${encodeURIComponent(username ?? '')}:${encodeURIComponent(password ?? '')}@` : '';
  const database = db ? `/${Number(db)}` : '';
  return `redis://${auth}${host}:${Number(port)}${database}`;
}

function fromIoredis(client, scope) {
  if (client.isCluster) {
    const shared = client.options?.redisOptions ?? {};
    const nodes = (client.startupNodes ?? []).map(node =>
      typeof node === 'string' ? node : nodeUrl({ ...shared, ...node, db: undefined }, scope),
    );
    return { nodes };
  }
  return { url: nodeUrl(client.options ?? {}, scope) };
}

function parseRedisConnection(connection, scope) {
  if (typeof connection === 'string') {
    if (!/^rediss?:\/\//.test(connection)) {
      throw new Error(`[${scope}] Invalid redis connection: expected a redis:// URL, got ${JSON.stringify(connection)}`);
    }
    if (connection.startsWith('rediss://')) {
      throw new Error(`[${scope}] TLS connections to Redis are not supported in this version yet`);
    }
    return { url: connection };
  }
  if (typeof connection?.getClient === 'function') {
    return fromIoredis(connection.getClient(), scope);
  }
  if (Array.isArray(connection?.nodes)) {
    return {
      nodes: connection.nodes.map(node =>
        typeof node === 'string' ? node : nodeUrl({ ...connection, ...node, db: undefined }, scope),
      ),
    };
  }
  if (connection && typeof connection === 'object' && ('host' in connection || 'port' in connection)) {
    return { url: nodeUrl(connection, scope) };
  }
  throw new Error(
    `[${scope}] Invalid redis connection: expected a RedisHelper, a redis:// URL, { host, port, ... } or { nodes: [...] }`,
  );
}

module.exports = { parseRedisConnection };
