// ESM entry: re-exports the CommonJS build so both module systems share one instance.
import cjs from './index.js';

export const {
  WebSocketServerHelper,
  WebSocketEmitter,
  STANDALONE,
  WebSocketEvents,
  WebSocketChannels,
  WebSocketDefaults,
  WebSocketMessageTypes,
  WebSocketClientStates,
} = cjs;
export default cjs;
