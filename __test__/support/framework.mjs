// One spec file runs under both `node --test` and `bun test`.
const isBun = typeof globalThis.Bun !== 'undefined';
const runner = isBun ? await import('bun:test') : await import('node:test');

export const runtime = isBun ? 'bun' : 'node';
export const describe = runner.describe;
export const it = runner.it ?? runner.test;
export const before = isBun ? runner.beforeAll : runner.before;
export const after = isBun ? runner.afterAll : runner.after;
export const beforeEach = runner.beforeEach;
export const afterEach = runner.afterEach;
export { default as assert } from 'node:assert/strict';
