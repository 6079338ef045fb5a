'use strict';
// The helper's log lines go to `opts.logger` when given, else to the console with the
// identifier as scope, like the TypeScript helper's scoped logger. Debug lines are only
// printed by the default logger when DEBUG includes "ignis-native-ws".

const LEVELS = ['debug', 'info', 'warn', 'error'];

function createLogger(custom, scope) {
  if (custom) {
    const logger = {};
    for (const level of LEVELS) {
      logger[level] = text => {
        try {
          custom[level]?.(text);
        } catch {
          // A throwing logger must not break message handling.
        }
      };
    }
    return logger;
  }
  const debugEnabled = /\bignis-native-ws\b/.test(process.env.DEBUG ?? '');
  const prefix = `[${scope}]`;
  return {
    debug: text => debugEnabled && console.debug(prefix, text),
    info: text => console.info(prefix, text),
    warn: text => console.warn(prefix, text),
    error: text => console.error(prefix, text),
  };
}

module.exports = { createLogger };
