// The benchmark's application: the same callbacks for every implementation. Custom events
// from the load generator's driver are mapped to server-side sends.

// Work the echo handler does per message (the scaling scenario), in microseconds of wall
// time, so it costs the same on every runtime.
const HANDLER_WORK_MS = Number(process.env.BENCH_HANDLER_WORK_US ?? 0) / 1000;

function work() {
  const until = performance.now() + HANDLER_WORK_MS;
  while (performance.now() < until) {
    // busy
  }
}

function benchmarkCallbacks(getHelper) {
  return {
    authenticateFn: data => ({ userId: data.user }),
    validateRoomFn: ({ rooms }) => rooms,
    messageHandler: ({ clientId, message }) => {
      const helper = getHelper();
      const data = message.data;
      switch (message.event) {
        case 'echo':
          if (HANDLER_WORK_MS > 0) {
            work();
          }
          helper.sendToClient({ clientId, event: 'echo', data });
          break;
        case 'bench:broadcast':
          helper.broadcast({ event: 'tick', data });
          break;
        case 'bench:room':
          helper.sendToRoom({ room: data.room, event: 'tick', data });
          break;
        case 'bench:send':
          // No destination: delivered locally and published to Redis for the other instances.
          helper.send({ payload: { topic: 'tick', data } });
          break;
        case 'bench:client':
          helper.sendToClient({ clientId: data.to, event: 'tick', data });
          break;
        default:
          break;
      }
    },
  };
}

/** Prints the line run.mjs waits for. */
function ready(port) {
  console.log(`READY ${port} ${process.pid}`);
}

module.exports = { benchmarkCallbacks, ready };
