'use strict';
// ignis-native-ws: the WebSocketServerHelper of @venizia/ignis-helpers, served by Rust.

const constants = require('./lib/constants');
const { WebSocketServerHelper, STANDALONE } = require('./lib/server');

module.exports = {
  WebSocketServerHelper,
  STANDALONE,
  ...constants,
};
