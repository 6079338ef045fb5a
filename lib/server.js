'use strict';
// WebSocketServerHelper: the API of @venizia/ignis-helpers' helper over the native server.
// Rust owns sockets, indexes, heartbeat and delivery; this class parses options, turns
// payloads into one JSON string per message, and hands callbacks to the dispatcher.

const { randomUUID } = require('node:crypto');

// The per-message calls are free functions on the server's handle (NativeServer.handle()):
// napi-rs class methods cost about half a microsecond more per call.
const binding = require('../binding.js');

const { NativeServer } = binding;
// sendToClient, once per reply, as plain Node-API functions (src/js/raw_calls.rs): to a
// client id, and to the sender of the message being handled, by its message slot.
const sendToClientNow = binding.rawSendToClient();
const sendToSenderNow = binding.rawSendToSender();
const { WebSocketChannels, WebSocketMessageTypes } = require('./constants');
const { CallbackDispatcher } = require('./dispatch');
const { createLogger } = require('./logger');
const { eventMessageText } = require('./message-text');
const { STANDALONE, parseServerOptions } = require('./options');
const { parseRedisConnection } = require('./redis-connection');
const { OutboundTransforms } = require('./transforms');

/** The TypeScript helper waits this long for Redis, with this error text. */
const DEFAULT_REDIS_READY_TIMEOUT = 30_000;

const SCOPE = 'WebSocketServerHelper';

function toText(data) {
  if (typeof data === 'string') {
    return data;
  }
  if (ArrayBuffer.isView(data)) {
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
  }
  if (data instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && data instanceof SharedArrayBuffer)) {
    return Buffer.from(data).toString('utf8');
  }
  return String(data);
}

class WebSocketServerHelper {
  /** `redisConnection: WebSocketServerHelper.STANDALONE` selects the single-instance mode. */
  static STANDALONE = STANDALONE;

  constructor(opts) {
    if (!opts?.redisConnection) {
      throw new Error(`[${SCOPE}] Invalid redis connection!`);
    }
    this.redis = opts.redisConnection === STANDALONE ? null : parseRedisConnection(opts.redisConnection, SCOPE);
    this.options = opts;
    this.identifier = opts.identifier;
    this.path = opts.path ?? '/ws';
    this.serverId = randomUUID();
    this.standalone = this.redis === null;
    this.logger = createLogger(opts.logger, opts.identifier ?? SCOPE);
    /** clientId -> metadata returned by authenticateFn, kept with identity intact. */
    this.metadata = new Map();
    this.native = null;
    /** The CallbackDispatcher running this server's callbacks. */
    this.dispatcher = null;
    /** `this.native.handle()`, which the per-message binding functions take. */
    this.handle = null;
    this.port = undefined;
  }

  /**
   * Validates the options, binds `host:port` and starts serving and the heartbeat sweep.
   * Rejects when an option is invalid or the address is taken.
   */
  async configure() {
    if (this.native) {
      return;
    }
    this.logger.info(`Configuring WebSocket Server | id: ${this.identifier}`);
    const { native: nativeOptions, callbacks, encryptedBatchLimit } = parseServerOptions(this.options, {
      logLevels: this.logger.levelBits,
    });
    const transforms = callbacks.outboundTransformer
      ? new OutboundTransforms({
          transformer: callbacks.outboundTransformer,
          batchLimit: encryptedBatchLimit,
          timeout: nativeOptions.callbackTimeout,
          logger: this.logger,
          clientOf: clientId => this.getClients({ id: clientId }),
          deliver: (clientId, text) => this.handle && binding.sendTransformed(this.handle, clientId, text),
        })
      : null;
    const redisReadyTimeout = this.options.redisReadyTimeout ?? DEFAULT_REDIS_READY_TIMEOUT;
    const dispatcher = new CallbackDispatcher({
      callbacks: { ...callbacks, redisStatusFn: this.options.redisStatusFn },
      logger: this.logger,
      metadata: this.metadata,
      callbackTimeout: nativeOptions.callbackTimeout,
      transforms,
    });
    const native = new NativeServer(
      { ...nativeOptions, redis: this.redis ?? undefined, serverId: this.serverId },
      dispatcher.dispatch,
    );
    const handle = native.handle();
    dispatcher.attach((token, failed, value) => binding.settle(handle, token, failed, value));
    this.port = native.listen();
    this.native = native;
    this.dispatcher = dispatcher;
    this.handle = handle;
    if (this.redis && !(await native.redisReady(redisReadyTimeout))) {
      await native.shutdown();
      this.native = null;
      this.handle = null;
      throw new Error(`Redis client did not become ready within ${redisReadyTimeout}ms`);
    }
    this.logger.info(
      `WebSocket Server READY | path: ${this.path} | address: ${nativeOptions.host}:${this.port} | mode: ${this.redis ? 'redis' : 'standalone'}`,
    );
  }

  /** 'standalone', 'connecting', 'ready', 'reconnecting' or 'closed'. */
  getRedisStatus() {
    if (!this.redis) {
      return STANDALONE;
    }
    return this.native?.redisStatus() ?? 'connecting';
  }

  /** Publishes an IRedisSocketMessage as the TypeScript helper builds it, field for field. */
  publishToRedis({ type, target, event, data, exclude }) {
    if (!this.native || !this.redis) {
      return;
    }
    const message = JSON.stringify({ serverId: this.serverId, type, target, event, data, exclude });
    let channel;
    switch (type) {
      case WebSocketMessageTypes.BROADCAST:
        channel = WebSocketChannels.BROADCAST;
        break;
      case WebSocketMessageTypes.ROOM:
        channel = WebSocketChannels.forRoom({ room: target });
        break;
      case WebSocketMessageTypes.CLIENT:
        channel = WebSocketChannels.forClient({ clientId: target });
        break;
      case WebSocketMessageTypes.USER:
        channel = WebSocketChannels.forUser({ userId: target });
        break;
      default:
        return;
    }
    binding.publish(this.handle, channel, message);
  }

  getPath() {
    return this.path;
  }

  /** The bound port, once configure() resolved. */
  getPort() {
    return this.port;
  }

  /**
   * Kept so Ignis' wiring keeps working: this server listens on its own port, so Bun has no
   * WebSocket traffic to hand over. A socket Bun upgrades anyway is closed with 1011 and a
   * reason that names the right port.
   */
  getBunWebSocketHandler() {
    const serverOptions = this.options.serverOptions ?? {};
    const refuse = socket => {
      this.logger.warn(`A WebSocket reached Bun's server; this helper serves port ${this.port} itself`);
      socket.close(1011, `Connect to port ${this.port}`);
    };
    return {
      open: refuse,
      message: () => {},
      close: () => {},
      drain: () => {},
      ...serverOptions,
    };
  }

  sendToClient({ clientId, event, data, doLog }) {
    // Anything but a string names no client, as in the TypeScript helper.
    if (this.handle && typeof clientId === 'string') {
      const text = eventMessageText(event, data);
      const { dispatcher } = this;
      if (clientId === dispatcher.replyClientId) {
        sendToSenderNow(this.handle, dispatcher.replySlot, text);
      } else {
        sendToClientNow(this.handle, clientId, text);
      }
    }
    if (doLog) {
      this.logger.info(`Message sent | id: ${clientId} | event: ${event} | data: ${JSON.stringify(data)}`);
    }
  }

  sendToUser({ userId, event, data }) {
    if (this.handle) {
      binding.sendToUser(this.handle, String(userId), eventMessageText(event, data));
    }
  }

  sendToRoom({ room, event, data, exclude }) {
    if (this.handle) {
      binding.sendToRoom(this.handle, room, eventMessageText(event, data), exclude?.length ? exclude : undefined);
    }
  }

  broadcast({ event, data, exclude }) {
    if (this.handle) {
      binding.broadcast(this.handle, eventMessageText(event, data), exclude?.length ? exclude : undefined);
    }
  }

  /**
   * The specification's routing table: local delivery, and the envelope to Redis on the
   * documented channel. In standalone mode there is no Redis, so a destination that is
   * neither a local client nor a local room reaches nobody.
   */
  send({ destination, payload, doLog, cb } = {}) {
    if (!payload) {
      return;
    }
    const { topic, data } = payload;
    if (!topic || data === undefined) {
      return;
    }
    if (!destination) {
      this.broadcast({ event: topic, data });
      this.publishToRedis({ type: WebSocketMessageTypes.BROADCAST, event: topic, data });
    } else if (this.handle && binding.hasClient(this.handle, destination)) {
      this.sendToClient({ clientId: destination, event: topic, data, doLog });
      this.publishToRedis({ type: WebSocketMessageTypes.CLIENT, target: destination, event: topic, data });
    } else if (this.handle && binding.hasRoom(this.handle, destination)) {
      this.sendToRoom({ room: destination, event: topic, data });
      this.publishToRedis({ type: WebSocketMessageTypes.ROOM, target: destination, event: topic, data });
    } else {
      // Could be a client or room on another instance.
      this.publishToRedis({ type: WebSocketMessageTypes.ROOM, target: destination, event: topic, data });
    }
    if (cb) {
      setTimeout(cb, 0);
    }
    if (doLog) {
      this.logger.info(
        `Message emitted | destination: ${destination ?? 'all'} | topic: ${topic} | data: ${JSON.stringify(data)}`,
      );
    }
  }

  joinRoom({ clientId, room }) {
    this.native?.joinRoom(clientId, room);
  }

  leaveRoom({ clientId, room }) {
    this.native?.leaveRoom(clientId, room);
  }

  /**
   * From now on messages to this client go through `outboundTransformer` (irreversible).
   * No-op for an unknown or already encrypted client.
   */
  enableClientEncryption({ clientId }) {
    this.native?.enableClientEncryption(clientId);
  }

  /** With `{ id }`: that client or undefined. Otherwise a Map of every client (a snapshot). */
  getClients(opts) {
    const { id } = opts ?? {};
    if (id) {
      const info = this.native?.client(id);
      return info ? this.toClient(info) : undefined;
    }
    const clients = new Map();
    for (const info of this.native?.clients() ?? []) {
      clients.set(info.id, this.toClient(info));
    }
    return clients;
  }

  getClientsByUser({ userId }) {
    return (this.native?.clientsByUser(String(userId)) ?? []).map(info => this.toClient(info));
  }

  getClientsByRoom({ room }) {
    return (this.native?.clientsByRoom(room) ?? []).map(info => this.toClient(info));
  }

  toClient(info) {
    return {
      id: info.id,
      userId: info.userId ?? undefined,
      socket: this.socketOf(info),
      state: info.state,
      rooms: new Set(info.rooms),
      backpressured: info.backpressured,
      droppedMessages: info.droppedMessages,
      encrypted: info.encrypted,
      connectedAt: info.connectedAt,
      lastActivity: info.lastActivity,
      metadata: this.metadata.get(info.id),
      serverPublicKey: info.serverPublicKey ?? undefined,
      salt: info.salt ?? undefined,
    };
  }

  /** An `IWebSocket` whose methods act on the real connection; topics are rooms here. */
  socketOf(info) {
    const helper = this;
    const clientId = info.id;
    return {
      data: { clientId },
      remoteAddress: info.remoteAddress,
      get readyState() {
        return helper.handle && binding.hasClient(helper.handle, clientId) ? 1 : 3;
      },
      send(data) {
        return helper.handle ? binding.socketSend(helper.handle, clientId, toText(data)) : 0;
      },
      getBufferedAmount() {
        return helper.native?.client(clientId)?.bufferedAmount ?? 0;
      },
      close(code = 1000, reason = '') {
        helper.native?.socketClose(clientId, code, reason);
      },
      subscribe(topic) {
        helper.joinRoom({ clientId, room: topic });
      },
      unsubscribe(topic) {
        helper.leaveRoom({ clientId, room: topic });
      },
      isSubscribed(topic) {
        return helper.native?.client(clientId)?.rooms.includes(topic) ?? false;
      },
      cork(callback) {
        callback(this);
      },
    };
  }

  /**
   * Closes every client with 1001 'Server shutting down', runs the disconnect callbacks,
   * clears the indexes and closes the listener. The process can exit afterwards.
   */
  async shutdown() {
    this.logger.info('Shutting down WebSocket server...');
    if (this.native) {
      await this.native.shutdown();
    }
    this.metadata.clear();
    this.logger.info('WebSocket server shutdown complete');
  }
}

module.exports = { WebSocketServerHelper, STANDALONE };
