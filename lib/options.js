'use strict';
// Option parsing for WebSocketServerHelper: defaults in one place, and a clear error for
// every value the server cannot run with.

const { WebSocketDefaults } = require('./constants');

/** The explicit single-instance mode: `redisConnection: STANDALONE`. */
const STANDALONE = 'standalone';

const DEFAULT_HOST = '0.0.0.0';
const DEFAULT_PORT = 8080;
/** How long a connection waits for validateRoomFn, clientConnectedFn or messageHandler. */
const DEFAULT_CALLBACK_TIMEOUT = 15_000;
/** Durations travel to Rust as u32 milliseconds. */
const MAX_MS = 2 ** 31 - 1;
/** How long a TCP connection may take to send its complete upgrade request (slow-loris). */
const DEFAULT_UPGRADE_TIMEOUT = 10_000;
/** serverOptions.idleTimeout is in seconds; one day is more than any transport needs. */
const MAX_IDLE_TIMEOUT = 86_400;

class OptionError extends Error {
  constructor(name, expectation) {
    super(`[WebSocketServerHelper] Invalid option "${name}": ${expectation}`);
    this.name = 'OptionError';
    this.code = 'ERR_INVALID_OPTION';
  }
}

function integer(value, name, { min, max, fallback }) {
  if (value === undefined || value === null) {
    return fallback;
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new OptionError(name, `expected an integer from ${min} to ${max}, got ${String(value)}`);
  }
  return value;
}

function optionalFunction(value, name) {
  if (value !== undefined && value !== null && typeof value !== 'function') {
    throw new OptionError(name, `expected a function, got ${typeof value}`);
  }
  return value ?? undefined;
}

/** Origins compare as browsers send them: lower case, no path, no trailing slash. */
function parseAllowedOrigins(value) {
  if (value === undefined || value === null) {
    return [];
  }
  if (!Array.isArray(value) || value.some(origin => typeof origin !== 'string' || !origin)) {
    throw new OptionError('allowedOrigins', "expected an array of origins such as 'https://app.example.com'");
  }
  return value.map(origin => origin.trim().toLowerCase().replace(/\/+$/, ''));
}

/**
 * Validates the options and returns what the native server and the JS dispatcher need.
 * Throws an OptionError naming the first invalid option.
 */
function parseServerOptions(opts, { logLevels }) {
  const path = opts.path ?? WebSocketDefaults.PATH;
  if (typeof path !== 'string' || !path.startsWith('/') || /[\s?#]/.test(path)) {
    throw new OptionError('path', `expected a path such as '/ws', got ${JSON.stringify(path)}`);
  }
  const host = opts.host ?? DEFAULT_HOST;
  if (typeof host !== 'string' || host.length === 0) {
    throw new OptionError('host', 'expected a host name or IP address');
  }
  const defaultRooms = opts.defaultRooms ?? [WebSocketDefaults.ROOM, WebSocketDefaults.NOTIFICATION_ROOM];
  if (!Array.isArray(defaultRooms) || defaultRooms.some(room => typeof room !== 'string' || !room)) {
    throw new OptionError('defaultRooms', 'expected an array of non-empty strings');
  }
  if (typeof opts.authenticateFn !== 'function') {
    throw new OptionError('authenticateFn', 'a function is required');
  }
  const serverOptions = opts.serverOptions ?? {};
  if (typeof serverOptions !== 'object') {
    throw new OptionError('serverOptions', 'expected an object');
  }
  const authTimeout = integer(opts.authTimeout, 'authTimeout', {
    min: 1,
    max: Math.floor(MAX_MS / 3),
    fallback: WebSocketDefaults.AUTH_TIMEOUT,
  });
  const callbacks = {
    authenticateFn: opts.authenticateFn,
    validateRoomFn: optionalFunction(opts.validateRoomFn, 'validateRoomFn'),
    clientConnectedFn: optionalFunction(opts.clientConnectedFn, 'clientConnectedFn'),
    clientDisconnectedFn: optionalFunction(opts.clientDisconnectedFn, 'clientDisconnectedFn'),
    messageHandler: optionalFunction(opts.messageHandler, 'messageHandler'),
    handshakeFn: optionalFunction(opts.handshakeFn, 'handshakeFn'),
    outboundTransformer: optionalFunction(opts.outboundTransformer, 'outboundTransformer'),
    verifyUpgradeFn: optionalFunction(opts.verifyUpgradeFn, 'verifyUpgradeFn'),
  };
  // Not sent to Rust: the transformer runs in JS (lib/transforms.js).
  const encryptedBatchLimit = integer(opts.encryptedBatchLimit, 'encryptedBatchLimit', {
    min: 1,
    max: 1_000_000,
    fallback: WebSocketDefaults.ENCRYPTED_BATCH_LIMIT,
  });
  const native = {
    host,
    port: integer(opts.port, 'port', { min: 0, max: 65_535, fallback: DEFAULT_PORT }),
    path,
    defaultRooms,
    authTimeout,
    heartbeatInterval: integer(opts.heartbeatInterval, 'heartbeatInterval', {
      min: 1,
      max: MAX_MS,
      fallback: WebSocketDefaults.HEARTBEAT_INTERVAL,
    }),
    heartbeatTimeout: integer(opts.heartbeatTimeout, 'heartbeatTimeout', {
      min: 1,
      max: MAX_MS,
      fallback: WebSocketDefaults.HEARTBEAT_TIMEOUT,
    }),
    callbackTimeout: integer(opts.callbackTimeout, 'callbackTimeout', {
      min: 1,
      max: MAX_MS,
      fallback: DEFAULT_CALLBACK_TIMEOUT,
    }),
    upgradeTimeout: integer(opts.upgradeTimeout, 'upgradeTimeout', {
      min: 1,
      max: MAX_MS,
      fallback: DEFAULT_UPGRADE_TIMEOUT,
    }),
    allowedOrigins: parseAllowedOrigins(opts.allowedOrigins),
    hasVerifyUpgradeFn: Boolean(callbacks.verifyUpgradeFn),
    perMessageDeflate: Boolean(serverOptions.perMessageDeflate),
    idleTimeout: integer(serverOptions.idleTimeout, 'serverOptions.idleTimeout', {
      min: 0,
      max: MAX_IDLE_TIMEOUT,
      fallback: WebSocketDefaults.IDLE_TIMEOUT,
    }),
    sendPings: Boolean(serverOptions.sendPings ?? WebSocketDefaults.SEND_PINGS),
    maxPayloadLength: integer(serverOptions.maxPayloadLength, 'serverOptions.maxPayloadLength', {
      min: 1,
      max: 2 ** 32 - 1,
      fallback: WebSocketDefaults.MAX_PAYLOAD_LENGTH,
    }),
    backpressureLimit: integer(serverOptions.backpressureLimit, 'serverOptions.backpressureLimit', {
      min: 1,
      max: 2 ** 32 - 1,
      fallback: WebSocketDefaults.BACKPRESSURE_LIMIT,
    }),
    closeOnBackpressureLimit: Boolean(serverOptions.closeOnBackpressureLimit),
    hasValidateRoomFn: Boolean(callbacks.validateRoomFn),
    hasMessageHandler: Boolean(callbacks.messageHandler),
    hasClientConnectedFn: Boolean(callbacks.clientConnectedFn),
    requireEncryption: Boolean(opts.requireEncryption),
    hasHandshakeFn: Boolean(callbacks.handshakeFn),
    hasOutboundTransformer: Boolean(callbacks.outboundTransformer),
    logLevels,
  };
  return { native, callbacks, encryptedBatchLimit };
}

module.exports = {
  STANDALONE,
  DEFAULT_HOST,
  DEFAULT_PORT,
  DEFAULT_CALLBACK_TIMEOUT,
  DEFAULT_UPGRADE_TIMEOUT,
  OptionError,
  parseServerOptions,
};
