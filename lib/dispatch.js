'use strict';
// The JS end of the native dispatcher (src/dispatch.rs). Rust hands over a batch of calls
// as one JSON array; each runs the application's callback. Calls that finish synchronously
// are answered in the return value, Promises answer later through `settle`. This
// function never throws: a callback's throw or rejection becomes an error outcome that
// Rust logs and acts on (4003 for authentication, a log line otherwise).
//
// Custom messages need no answer. Their order per connection is kept here: while a
// messageHandler Promise of a connection is pending (at most callbackTimeout), that
// connection's later messages wait in a queue. The answer marks such messages DEFERRED and
// `settle` reports each when done, which lets Rust read more from that connection.
// Consecutive messages come as one flat row, `[MESSAGE, n, tokens..., slots..., events...,
// datas...]`; a slot is a small number Rust gave the sending connection, told once by a
// MESSAGE_SENDER row with the client's ids (cheaper for V8 than two id strings per message).

// Kinds, as src/dispatch.rs writes them.
const AUTHENTICATE = 1;
const VALIDATE_ROOMS = 2;
const CLIENT_CONNECTED = 3;
const MESSAGE = 4;
const CLIENT_DISCONNECTED = 5;
const DISCARD = 6;
const LOG = 7;
const REDIS_STATUS = 8;
const HANDSHAKE = 9;
const TRANSFORM = 10;
const VERIFY_UPGRADE = 11;
const MESSAGE_SENDER = 12;

// Answer row states, as src/dispatch.rs reads them.
const RESOLVED = 0;
const FAILED = 1;
const DEFERRED = 2;

function errorText(error) {
  if (error instanceof Error) {
    return error.message || error.name;
  }
  try {
    return typeof error === 'string' ? error : JSON.stringify(error) ?? String(error);
  } catch {
    return String(error);
  }
}

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function';
}

/**
 * The upgrade request as the application sees it (`IWebSocketUpgradeRequest`): what Rust sent
 * (`clientId`, `remoteAddress`, `url`, `headers` with lower-case names), plus `path` and
 * `query`, computed when first read (most authenticateFn never look).
 */
class UpgradeRequest {
  constructor({ clientId, remoteAddress, url, headers }) {
    this.clientId = clientId;
    this.remoteAddress = remoteAddress;
    this.url = url;
    this.headers = headers;
  }

  get path() {
    const queryStart = this.url.indexOf('?');
    return queryStart === -1 ? this.url : this.url.slice(0, queryStart);
  }

  get query() {
    const queryStart = this.url.indexOf('?');
    return Object.fromEntries(new URLSearchParams(queryStart === -1 ? '' : this.url.slice(queryStart + 1)));
  }

  toJSON() {
    return { ...this, path: this.path, query: this.query };
  }
}

function upgradeRequest(request) {
  return request ? new UpgradeRequest(request) : undefined;
}

/** verifyUpgradeFn's verdict as Rust reads it: 0 accepts, otherwise the HTTP status to refuse with. */
function upgradeVerdict(verdict) {
  if (verdict !== null && typeof verdict === 'object') {
    const { status } = verdict;
    return Number.isInteger(status) && status >= 400 && status <= 599 ? status : 403;
  }
  return verdict ? 0 : 403;
}

class CallbackDispatcher {
  /**
   * @param {object} opts
   * @param {object} opts.callbacks the application's callbacks (lib/options.js)
   * @param {object} opts.logger { debug, info, warn, error }, each (text) => void
   * @param {Map<string, unknown>} opts.metadata clientId -> metadata returned by authenticateFn
   * @param {number} opts.callbackTimeout ms a messageHandler Promise may hold its connection's later messages
   * @param {{ run(message: object, clientIds: string[]): void } | null} opts.transforms the outboundTransformer runner
   */
  constructor({ callbacks, logger, metadata, callbackTimeout, transforms = null }) {
    this.transforms = transforms;
    this.callbacks = callbacks;
    this.logger = logger;
    this.metadata = metadata;
    this.callbackTimeout = callbackTimeout;
    /** clientId -> messages waiting for that client's pending messageHandler Promise. */
    this.heldMessages = new Map();
    /**
     * Authentication token -> client id, for accepted authentications that returned metadata,
     * until Rust confirms the client (CLIENT_CONNECTED) or discards it (DISCARD).
     */
    this.pendingAuth = new Map();
    /** Message slot -> `{ clientId, userId }` of the connection that sends with it. */
    this.senders = [];
    /**
     * While messageHandler runs (its synchronous part), the id and message slot of the
     * message's sender: lib/server.js sends a reply to that id by the slot, which Rust maps
     * to the connection without reading and hashing the id. The slot is still the sender's
     * then (Rust reuses one only once JS is done with its messages).
     */
    this.replyClientId = undefined;
    this.replySlot = 0;
    /** (token, failed, valueText) => boolean: hands Rust a late outcome; set by `attach`. */
    this.settle = () => false;
    this.dispatch = this.dispatch.bind(this);
  }

  /** @param {(token: number, failed: boolean, value: string) => boolean} settle */
  attach(settle) {
    this.settle = settle;
  }

  dispatch(batch) {
    const answers = [];
    let calls;
    try {
      calls = JSON.parse(batch);
    } catch (error) {
      this.logger.error(`Unreadable callback batch | error: ${errorText(error)}`);
      return '[]';
    }
    for (const call of calls) {
      try {
        this.dispatchOne(call, answers);
      } catch (error) {
        // Only a bug of ours gets here; the caller then waits for its timeout.
        this.logger.error(`Callback dispatch failed | kind: ${call[0]} | error: ${errorText(error)}`);
      }
    }
    // Empty: nothing to answer, the common case for a batch of messages.
    return answers.length === 0 ? '' : JSON.stringify(answers);
  }

  dispatchOne(call, answers) {
    const [kind, token] = call;
    const { callbacks } = this;
    switch (kind) {
      case VERIFY_UPGRADE: {
        const [, , , request] = call;
        this.run(token, answers, () => callbacks.verifyUpgradeFn(upgradeRequest(request)), upgradeVerdict);
        return;
      }
      case AUTHENTICATE: {
        const [, , clientId, data, request] = call;
        this.run(token, answers, () => callbacks.authenticateFn(data ?? {}, upgradeRequest(request)), result => {
          if (!result) {
            return false;
          }
          // `keep`: JS holds metadata for this client. It is attached now, before Rust sends
          // `connected`, as the TypeScript helper has it on the client by then; Rust confirms
          // it (CLIENT_CONNECTED) or discards it if the client is not accepted after all.
          const keep = result.metadata !== undefined;
          if (keep) {
            this.pendingAuth.set(token, clientId);
            this.metadata.set(clientId, result.metadata);
          }
          const userId = result.userId === undefined || result.userId === null ? null : String(result.userId);
          return { userId, keep };
        });
        return;
      }
      case VALIDATE_ROOMS: {
        const [, , clientId, userId, rooms] = call;
        this.run(
          token,
          answers,
          () => callbacks.validateRoomFn({ clientId, userId: userId ?? undefined, rooms }),
          allowed => (Array.isArray(allowed) ? allowed.filter(room => typeof room === 'string') : []),
        );
        return;
      }
      case CLIENT_CONNECTED: {
        const [, , clientId, userId, authToken] = call;
        this.pendingAuth.delete(authToken);
        const metadata = this.metadata.get(clientId);
        if (!callbacks.clientConnectedFn) {
          answers.push([token, RESOLVED, null]);
          return;
        }
        this.run(token, answers, () => callbacks.clientConnectedFn({ clientId, userId: userId ?? undefined, metadata }), () => null);
        return;
      }
      case MESSAGE_SENDER: {
        const [, , slot, clientId, userId] = call;
        this.senders[slot] = { clientId, userId: userId ?? undefined };
        return;
      }
      case MESSAGE: {
        // [MESSAGE, n, tokens..., slots..., events..., datas...]
        const n = call[1];
        for (let i = 2; i < 2 + n; i++) {
          const slot = call[i + n];
          const sender = this.senders[slot];
          if (sender === undefined) {
            this.logger.error(`Message from an unknown slot ${slot} dropped`);
          } else {
            // A message of `event` then `data` only comes in its two parts (V8 builds the
            // object faster here than in JSON.parse), any other whole, with a null event.
            const event = call[i + 2 * n];
            const data = call[i + 3 * n];
            const message = event === null ? data : { event, data };
            this.message(call[i], slot, sender.clientId, sender.userId, message, answers);
          }
        }
        return;
      }
      case CLIENT_DISCONNECTED: {
        const [, , clientId, userId, slot] = call;
        this.metadata.delete(clientId);
        // Only if still this client's: Rust may already have given the slot to another.
        if (slot !== null && this.senders[slot]?.clientId === clientId) {
          this.senders[slot] = undefined;
        }
        this.notifyDisconnected(clientId, userId ?? undefined);
        return;
      }
      case DISCARD:
        this.discardAuthentication(call[2]);
        return;
      case LOG: {
        const [, , level, text] = call;
        this.logger[level](text);
        return;
      }
      case HANDSHAKE: {
        const [, , clientId, userId, data] = call;
        this.run(
          token,
          answers,
          () => callbacks.handshakeFn({ clientId, userId: userId ?? undefined, data: data ?? {} }),
          // Falsy rejects the client (4004); otherwise the keys the `connected` event carries.
          result =>
            result
              ? {
                  serverPublicKey: result.serverPublicKey == null ? null : String(result.serverPublicKey),
                  salt: result.salt == null ? null : String(result.salt),
                }
              : false,
        );
        return;
      }
      case TRANSFORM: {
        const [, , message, clientIds] = call;
        this.transforms?.run(message, clientIds);
        return;
      }
      case REDIS_STATUS: {
        const [, , status, detail] = call;
        this.notifyRedisStatus(status, detail ?? undefined);
        return;
      }
      default:
        this.logger.error(`Unknown callback kind ${kind}`);
    }
  }

  message(token, slot, clientId, userId, message, answers) {
    // Most applications' handlers are synchronous: then nothing is ever held, and the
    // lookup (hashing a 36-character id) is skipped.
    const held = this.heldMessages.size === 0 ? undefined : this.heldMessages.get(clientId);
    if (held) {
      held.push([token, slot, userId, message]);
      answers.push([token, DEFERRED, 0]);
    } else if (this.runMessage(token, slot, clientId, userId, message)) {
      this.heldMessages.set(clientId, []);
      answers.push([token, DEFERRED, 0]);
    }
  }

  /**
   * Runs messageHandler for one message. True when it returned a Promise: the client's later
   * messages are then held until it settles or callbackTimeout passes.
   */
  runMessage(token, slot, clientId, userId, message) {
    let result;
    // Restored after, not cleared: correct even if a handler's synchronous part ever ran
    // another's.
    const { replyClientId, replySlot } = this;
    this.replyClientId = clientId;
    this.replySlot = slot;
    try {
      result = this.callbacks.messageHandler({ clientId, userId: userId ?? undefined, message });
    } catch (error) {
      this.reportMessageError(clientId, error);
      return false;
    } finally {
      this.replyClientId = replyClientId;
      this.replySlot = replySlot;
    }
    if (!isThenable(result)) {
      return false;
    }
    let done = false;
    const finish = () => {
      if (done) {
        return;
      }
      done = true;
      clearTimeout(timer);
      this.settle(token, false, 'null');
      this.releaseHeld(clientId);
    };
    const timer = setTimeout(() => {
      this.logger.warn(`messageHandler did not settle in time | id: ${clientId}`);
      finish();
    }, this.callbackTimeout);
    // A handler that never settles must not keep the process alive after shutdown.
    timer.unref?.();
    Promise.resolve(result).then(finish, error => {
      this.reportMessageError(clientId, error);
      finish();
    });
    return true;
  }

  reportMessageError(clientId, error) {
    this.logger.error(`Message handler error | id: ${clientId} | error: ${errorText(error)}`);
  }

  /** Runs the messages held behind a settled handler, in order, until one is async again. */
  releaseHeld(clientId) {
    const held = this.heldMessages.get(clientId) ?? [];
    while (held.length > 0) {
      const [token, slot, userId, message] = held.shift();
      if (this.runMessage(token, slot, clientId, userId, message)) {
        return;
      }
      this.settle(token, false, 'null');
    }
    this.heldMessages.delete(clientId);
  }

  /** Runs one callback; answers now if it returned a value, later if a Promise. */
  run(token, answers, invoke, normalize) {
    let result;
    try {
      result = invoke();
    } catch (error) {
      answers.push([token, FAILED, errorText(error)]);
      return;
    }
    if (!isThenable(result)) {
      try {
        answers.push([token, RESOLVED, normalize(result)]);
      } catch (error) {
        answers.push([token, FAILED, errorText(error)]);
      }
      return;
    }
    Promise.resolve(result).then(
      value => {
        let answered;
        try {
          answered = this.settle(token, false, JSON.stringify(normalize(value)) ?? 'null');
        } catch (error) {
          answered = this.settle(token, true, errorText(error));
        }
        if (!answered) {
          // Nobody waits any more (timed out, client gone): drop what we kept for it.
          this.discardAuthentication(token);
        }
      },
      error => {
        this.settle(token, true, errorText(error));
      },
    );
  }

  /** Forgets the metadata an authentication attached to a client that was not accepted. */
  discardAuthentication(token) {
    const clientId = this.pendingAuth.get(token);
    if (clientId !== undefined) {
      this.pendingAuth.delete(token);
      this.metadata.delete(clientId);
    }
  }

  notifyRedisStatus(status, detail) {
    this.notify('redisStatusFn', { status, detail }, '');
  }

  notifyDisconnected(clientId, userId) {
    this.notify('clientDisconnectedFn', { clientId, userId }, ` | id: ${clientId}`);
  }

  /** Calls a callback nobody waits for; a throw or rejection is logged. */
  notify(name, argument, context) {
    const callback = this.callbacks[name];
    if (!callback) {
      return;
    }
    const report = error => this.logger.error(`${name} error${context} | error: ${errorText(error)}`);
    try {
      const result = callback(argument);
      if (isThenable(result)) {
        Promise.resolve(result).catch(report);
      }
    } catch (error) {
      report(error);
    }
  }
}

module.exports = { CallbackDispatcher, errorText };
