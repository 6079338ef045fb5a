'use strict';
// ignis-native-ws: the WebSocketServerHelper of @venizia/ignis-helpers, served by Rust.

const constants = require('./lib/constants');
const { WebSocketEmitter } = require('./lib/emitter');
const { WebSocketServerHelper, STANDALONE } = require('./lib/server');

module.exports = {
  WebSocketServerHelper,
  WebSocketEmitter,
  STANDALONE,
  ...constants,
};
