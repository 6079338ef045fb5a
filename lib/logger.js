'use strict';
// The helper's log lines go to `opts.logger` when given, else to the console with the
// identifier as scope, like the TypeScript helper's scoped logger. Debug lines are only
// printed by the default logger when DEBUG includes "ignis-native-ws".

const LEVELS = ['debug', 'info', 'warn', 'error'];
/** The bit of each level, as src/dispatch.rs LogLevel::bit() has it. */
const LEVEL_BITS = { debug: 1, info: 2, warn: 4, error: 8 };

function createLogger(custom, scope) {
  if (custom) {
    // Levels the application's logger has no method for are dropped in Rust, unformatted.
    const logger = { levelBits: 0 };
    for (const level of LEVELS) {
      if (typeof custom[level] === 'function') {
        logger.levelBits |= LEVEL_BITS[level];
      }
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
    levelBits: LEVEL_BITS.info | LEVEL_BITS.warn | LEVEL_BITS.error | (debugEnabled ? LEVEL_BITS.debug : 0),
    debug: text => debugEnabled && console.debug(prefix, text),
    info: text => console.info(prefix, text),
    warn: text => console.warn(prefix, text),
    error: text => console.error(prefix, text),
  };
}

module.exports = { createLogger };
