'use strict';
// The constants of @venizia/ignis-helpers' WebSocket helper, value for value.

class WebSocketEvents {
  static AUTHENTICATE = 'authenticate';
  static CONNECTED = 'connected';
  static DISCONNECT = 'disconnect';
  static JOIN = 'join';
  static LEAVE = 'leave';
  static ERROR = 'error';
  static HEARTBEAT = 'heartbeat';
  static ENCRYPTED = 'encrypted';
  static SCHEME_SET = new Set([
    this.AUTHENTICATE,
    this.CONNECTED,
    this.DISCONNECT,
    this.JOIN,
    this.LEAVE,
    this.ERROR,
    this.HEARTBEAT,
    this.ENCRYPTED,
  ]);

  static isValid(input) {
    return this.SCHEME_SET.has(input);
  }
}

class WebSocketChannels {
  static BROADCAST = 'ws:broadcast';
  static ROOM_PREFIX = 'ws:room:';
  static CLIENT_PREFIX = 'ws:client:';
  static USER_PREFIX = 'ws:user:';

  static forRoom(opts) {
    return `${this.ROOM_PREFIX}${opts.room}`;
  }

  static forClient(opts) {
    return `${this.CLIENT_PREFIX}${opts.clientId}`;
  }

  static forUser(opts) {
    return `${this.USER_PREFIX}${opts.userId}`;
  }

  static forRoomPattern() {
    return `${this.ROOM_PREFIX}*`;
  }

  static forClientPattern() {
    return `${this.CLIENT_PREFIX}*`;
  }

  static forUserPattern() {
    return `${this.USER_PREFIX}*`;
  }
}

class WebSocketDefaults {
  static PATH = '/ws';
  static ROOM = 'ws-default';
  static NOTIFICATION_ROOM = 'ws-notification';
  static BROADCAST_TOPIC = 'ws:internal:broadcast';
  static MAX_PAYLOAD_LENGTH = 128 * 1024;
  static IDLE_TIMEOUT = 60;
  static BACKPRESSURE_LIMIT = 1024 * 1024;
  static SEND_PINGS = true;
  static PUBLISH_TO_SELF = false;
  static AUTH_TIMEOUT = 5_000;
  static HEARTBEAT_INTERVAL = 30_000;
  static HEARTBEAT_TIMEOUT = 90_000;
  static ENCRYPTED_BATCH_LIMIT = 10;
}

class WebSocketMessageTypes {
  static CLIENT = 'client';
  static USER = 'user';
  static ROOM = 'room';
  static BROADCAST = 'broadcast';
  static SCHEME_SET = new Set([this.CLIENT, this.USER, this.ROOM, this.BROADCAST]);

  static isValid(input) {
    return this.SCHEME_SET.has(input);
  }
}

class WebSocketClientStates {
  static UNAUTHORIZED = 'unauthorized';
  static AUTHENTICATING = 'authenticating';
  static AUTHENTICATED = 'authenticated';
  static DISCONNECTED = 'disconnected';
  static SCHEME_SET = new Set([
    this.UNAUTHORIZED,
    this.AUTHENTICATING,
    this.AUTHENTICATED,
    this.DISCONNECTED,
  ]);

  static isValid(input) {
    return this.SCHEME_SET.has(input);
  }
}

module.exports = {
  WebSocketEvents,
  WebSocketChannels,
  WebSocketDefaults,
  WebSocketMessageTypes,
  WebSocketClientStates,
};
