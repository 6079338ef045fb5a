'use strict';
// Runs the application's outboundTransformer for encrypted clients. Rust delivers every
// message to plain clients itself (one shared frame) and hands this side only the encrypted
// recipients of each message, in delivery order. Here:
// - one message's recipients have at most `batchLimit` transformer calls in flight
//   (encryptedBatchLimit), the rest start as earlier ones finish;
// - each client receives its messages in the order they were sent, whatever order the
//   transformer's Promises settle in: results wait for their client's earlier messages;
// - a throw or rejection drops that message for that client (logged); a call that has not
//   settled after `timeout` ms is given up the same way, so it cannot hold back the
//   client's later messages for longer than that.

const { errorText } = require('./dispatch');

class OutboundTransforms {
  /**
   * @param {object} opts
   * @param {Function} opts.transformer the application's outboundTransformer
   * @param {number} opts.batchLimit transformer calls in flight per message
   * @param {number} opts.timeout ms before a pending call is given up
   * @param {object} opts.logger { warn, error }
   * @param {(clientId: string) => object | undefined} opts.clientOf the IWebSocketClient, if connected
   * @param {(clientId: string, text: string) => void} opts.deliver sends the final JSON text
   */
  constructor({ transformer, batchLimit, timeout, logger, clientOf, deliver }) {
    this.transformer = transformer;
    this.batchLimit = batchLimit;
    this.timeout = timeout;
    this.logger = logger;
    this.clientOf = clientOf;
    this.deliver = deliver;
    /** clientId -> that client's messages not yet sent, oldest first. */
    this.pending = new Map();
  }

  /** `message` is `{ event, data }`; `clientIds` its encrypted recipients. */
  run(message, clientIds) {
    // Places in each client's line are taken now, in the order Rust delivered the messages.
    const slots = clientIds.map(clientId => {
      // `text` stays undefined when nothing is to be sent (dropped).
      const slot = { clientId, done: false, text: undefined };
      let line = this.pending.get(clientId);
      if (!line) {
        line = [];
        this.pending.set(clientId, line);
      }
      line.push(slot);
      return slot;
    });
    let next = 0;
    let inFlight = 0;
    const startMore = () => {
      while (next < slots.length && inFlight < this.batchLimit) {
        inFlight++;
        this.transform(slots[next++], message).then(() => {
          inFlight--;
          startMore();
        });
      }
    };
    startMore();
  }

  /** Resolves (never rejects) once the slot has its outcome. */
  transform(slot, { event, data }) {
    const { clientId } = slot;
    return new Promise(resolve => {
      const finish = text => {
        if (slot.done) {
          return;
        }
        clearTimeout(timer);
        this.complete(slot, text);
        resolve();
      };
      const timer = setTimeout(() => {
        this.logger.warn(`outboundTransformer did not settle in time | id: ${clientId}`);
        finish(undefined);
      }, this.timeout);
      // A hung transformer must not keep the process alive after shutdown.
      timer.unref?.();
      const client = this.clientOf(clientId);
      if (!client) {
        finish(undefined); // gone since: nothing to send
        return;
      }
      const fail = error => {
        this.logger.error(`Outbound transformer error | id: ${clientId} | error: ${errorText(error)}`);
        finish(undefined);
      };
      const encode = transformed => {
        try {
          finish(JSON.stringify(transformed ?? { event, data }));
        } catch (error) {
          fail(error);
        }
      };
      try {
        Promise.resolve(this.transformer({ client, event, data })).then(encode, fail);
      } catch (error) {
        fail(error);
      }
    });
  }

  /** Records an outcome and sends whatever is now at the head of the client's line. */
  complete(slot, text) {
    slot.done = true;
    slot.text = text;
    const line = this.pending.get(slot.clientId);
    while (line.length > 0 && line[0].done) {
      const { text: ready } = line.shift();
      if (ready !== undefined) {
        this.deliver(slot.clientId, ready);
      }
    }
    if (line.length === 0) {
      this.pending.delete(slot.clientId);
    }
  }
}

module.exports = { OutboundTransforms };
