'use strict';
// WebSocketEmitter: publishes IRedisSocketMessage envelopes (serverId 'emitter') for every
// WebSocket server instance on the same Redis, from processes that serve no sockets.

const { NativeEmitter } = require('../binding.js');
const { WebSocketChannels, WebSocketMessageTypes } = require('./constants');
const { parseRedisConnection } = require('./redis-connection');

const SCOPE = 'WebSocketEmitter';
const EMITTER_SERVER_ID = 'emitter';
const DEFAULT_READY_TIMEOUT = 30_000;

class WebSocketEmitter {
  constructor(opts) {
    if (!opts?.redisConnection) {
      throw new Error(`[${SCOPE}] Invalid redis connection!`);
    }
    this.identifier = opts.identifier ?? SCOPE;
    this.serverId = EMITTER_SERVER_ID;
    this.readyTimeout = opts.redisReadyTimeout ?? DEFAULT_READY_TIMEOUT;
    this.native = new NativeEmitter(parseRedisConnection(opts.redisConnection, SCOPE));
  }

  /** Connects; rejects with the TypeScript helper's text if Redis is not ready in time. */
  async configure() {
    if (!(await this.native.configure(this.readyTimeout))) {
      throw new Error(`Redis client did not become ready within ${this.readyTimeout}ms`);
    }
  }

  async publish({ channel, type, target, event, data, exclude }) {
    const message = { serverId: EMITTER_SERVER_ID, type, target, event, data, exclude };
    await this.native.publish(channel, JSON.stringify(message));
  }

  toClient({ clientId, event, data }) {
    return this.publish({
      channel: WebSocketChannels.forClient({ clientId }),
      type: WebSocketMessageTypes.CLIENT,
      target: clientId,
      event,
      data,
    });
  }

  toUser({ userId, event, data }) {
    return this.publish({
      channel: WebSocketChannels.forUser({ userId }),
      type: WebSocketMessageTypes.USER,
      target: userId,
      event,
      data,
    });
  }

  toRoom({ room, event, data, exclude }) {
    return this.publish({
      channel: WebSocketChannels.forRoom({ room }),
      type: WebSocketMessageTypes.ROOM,
      target: room,
      event,
      data,
      exclude,
    });
  }

  broadcast({ event, data }) {
    return this.publish({ channel: WebSocketChannels.BROADCAST, type: WebSocketMessageTypes.BROADCAST, event, data });
  }

  /** Closes the Redis connection. Safe to call more than once. */
  async shutdown() {
    this.native.shutdown();
  }
}

module.exports = { WebSocketEmitter };
