// Types of ignis-native-ws: the types of @venizia/ignis-helpers' WebSocket helper under the
// same names, plus the options of the native listener (host, port, callbackTimeout, logger).

export type ValueOrPromise<T> = T | Promise<T>;
export type TNullable<T> = T | null | undefined;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

export declare class WebSocketEvents {
  static readonly AUTHENTICATE: 'authenticate';
  static readonly CONNECTED: 'connected';
  static readonly DISCONNECT: 'disconnect';
  static readonly JOIN: 'join';
  static readonly LEAVE: 'leave';
  static readonly ERROR: 'error';
  static readonly HEARTBEAT: 'heartbeat';
  static readonly ENCRYPTED: 'encrypted';
  static readonly SCHEME_SET: Set<string>;
  static isValid(input: string): boolean;
}

export declare class WebSocketChannels {
  static readonly BROADCAST: 'ws:broadcast';
  static readonly ROOM_PREFIX: 'ws:room:';
  static readonly CLIENT_PREFIX: 'ws:client:';
  static readonly USER_PREFIX: 'ws:user:';
  /** `'ws:room:{room}'` */
  static forRoom(opts: { room: string }): string;
  /** `'ws:client:{clientId}'` */
  static forClient(opts: { clientId: string }): string;
  /** `'ws:user:{userId}'` */
  static forUser(opts: { userId: string }): string;
  /** `'ws:room:*'` */
  static forRoomPattern(): string;
  /** `'ws:client:*'` */
  static forClientPattern(): string;
  /** `'ws:user:*'` */
  static forUserPattern(): string;
}

export declare class WebSocketDefaults {
  static readonly PATH: '/ws';
  static readonly ROOM: 'ws-default';
  static readonly NOTIFICATION_ROOM: 'ws-notification';
  static readonly BROADCAST_TOPIC: 'ws:internal:broadcast';
  static readonly MAX_PAYLOAD_LENGTH: number;
  static readonly IDLE_TIMEOUT: number;
  static readonly BACKPRESSURE_LIMIT: number;
  static readonly SEND_PINGS: true;
  static readonly PUBLISH_TO_SELF: false;
  static readonly AUTH_TIMEOUT: number;
  static readonly HEARTBEAT_INTERVAL: number;
  static readonly HEARTBEAT_TIMEOUT: number;
  static readonly ENCRYPTED_BATCH_LIMIT: number;
}

export declare class WebSocketMessageTypes {
  static readonly CLIENT: 'client';
  static readonly USER: 'user';
  static readonly ROOM: 'room';
  static readonly BROADCAST: 'broadcast';
  static readonly SCHEME_SET: Set<string>;
  static isValid(input: string): boolean;
}

export declare class WebSocketClientStates {
  static readonly UNAUTHORIZED: 'unauthorized';
  static readonly AUTHENTICATING: 'authenticating';
  static readonly AUTHENTICATED: 'authenticated';
  static readonly DISCONNECTED: 'disconnected';
  static readonly SCHEME_SET: Set<string>;
  static isValid(input: string): boolean;
}

/** `redisConnection: STANDALONE` runs one instance without Redis; `send()` is then local only. */
export declare const STANDALONE: 'standalone';

export type TWebSocketClientState = 'unauthorized' | 'authenticating' | 'authenticated' | 'disconnected';
export type TWebSocketEvent =
  | 'authenticate'
  | 'connected'
  | 'disconnect'
  | 'join'
  | 'leave'
  | 'error'
  | 'heartbeat'
  | 'encrypted';
export type TWebSocketMessageType = 'client' | 'user' | 'room' | 'broadcast';

// ---------------------------------------------------------------------------------------
// Wire protocol and client tracking
// ---------------------------------------------------------------------------------------

/** Client <-> Server message envelope. */
export interface IWebSocketMessage<DataType = unknown> {
  event: string;
  data?: DataType;
  id?: string;
}

/** Redis pub/sub envelope between instances (used by the Redis bridge). */
export interface IRedisSocketMessage<DataType = unknown> {
  serverId: string;
  type: TWebSocketMessageType;
  target?: string;
  event: string;
  data: DataType;
  exclude?: string[];
}

/**
 * A client's socket. Methods act on the real connection held by the native server:
 * `send` queues a text frame (returns bytes queued, -1 when queued under backpressure,
 * 0 when dropped or closed, as Bun does), `close` sends a real close frame. Topics map to
 * rooms: `subscribe(topic)` joins the room `topic`.
 */
export interface IWebSocket<T = unknown> {
  readonly data: T;
  /** `ip:port` of the peer. */
  readonly remoteAddress: string;
  /** 1 while the client is connected, 3 after. */
  readonly readyState: number;
  send(data: string | ArrayBufferView | ArrayBuffer | SharedArrayBuffer, compress?: boolean): number;
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  isSubscribed(topic: string): boolean;
  close(code?: number, reason?: string): void;
  /** Bytes queued for the client and not yet taken by the kernel. */
  getBufferedAmount(): number;
  cork(cb: (ws: IWebSocket<T>) => void): void;
}

/** Accepted and ignored: the native server listens on its own `host`/`port`. */
export interface IBunServer {
  readonly pendingWebSockets: number;
  publish(topic: string, data: string | ArrayBufferView | ArrayBuffer | SharedArrayBuffer, compress?: boolean): number;
}

/**
 * A snapshot of one client, as returned by `getClients()` and friends. `socket` acts on the
 * live connection; the other fields are copied at the time of the call.
 */
export interface IWebSocketClient<MetadataType extends Record<string, unknown> = Record<string, unknown>> {
  id: string;
  userId?: string;
  socket: IWebSocket;
  state: TWebSocketClientState;
  /** Joined rooms, including the default rooms and the client's own id. */
  rooms: Set<string>;
  /** True while the client's outbound queue is over `serverOptions.backpressureLimit`. */
  backpressured: boolean;
  /** Messages dropped because the client's queue was over `backpressureLimit` (not with `closeOnBackpressureLimit`), since it connected. */
  droppedMessages: number;
  encrypted: boolean;
  /** Milliseconds since the epoch. */
  connectedAt: number;
  /** Milliseconds since the epoch of the last message received. */
  lastActivity: number;
  /** The `metadata` authenticateFn returned, the same object. */
  metadata?: MetadataType;
  serverPublicKey?: string;
  salt?: string;
  /** Never set: the auth timer lives in Rust. */
  authTimer?: ReturnType<typeof setTimeout>;
}

export interface IWebSocketData<MetadataType extends Record<string, unknown> = Record<string, unknown>> {
  clientId: string;
  userId?: string;
  metadata?: MetadataType;
}

/** Transport settings (the TypeScript helper passed them to Bun). */
export interface IBunWebSocketConfig {
  /**
   * Negotiate permessage-deflate (RFC 7692) with clients that offer it, always without context
   * takeover (each message compressed on its own, so a room or broadcast message is compressed
   * once for all its recipients). Messages under 128 bytes go out uncompressed. Bun's object form
   * (`{ compress, decompress }`) counts as `true`. Default false.
   */
  perMessageDeflate?: boolean | Record<string, unknown>;
  /** Largest accepted message in bytes; a larger frame or message closes with 1009. Default 131072 (128 KB). */
  maxPayloadLength?: number;
  /**
   * Seconds a connection may send nothing at all (any frame counts, pongs included) before it is
   * closed with 1001 'Idle timeout'; `0` never. Default 60.
   */
  idleTimeout?: number;
  /** Bytes a client's outbound queue may hold before `backpressured` is set and further frames are dropped. Default 1048576 (1 MB). */
  backpressureLimit?: number;
  /** Close the client with 1008 'Backpressure limit exceeded' instead of dropping. Default false. */
  closeOnBackpressureLimit?: boolean;
  /** Ping connections silent for half of `idleTimeout`, so that live clients (which answer with a pong) stay open. Default true. */
  sendPings?: boolean;
  /** No meaning without Bun's publish; accepted and ignored. Default false. */
  publishToSelf?: boolean;
}

export interface IBunWebSocketHandler extends IBunWebSocketConfig {
  open: (socket: IWebSocket) => void;
  message: (socket: IWebSocket, message: string | Uint8Array) => void;
  close: (socket: IWebSocket, code: number, reason: string) => void;
  drain: (socket: IWebSocket) => void;
}

// ---------------------------------------------------------------------------------------
// Callbacks
// ---------------------------------------------------------------------------------------

/** The HTTP upgrade request a connection opened with. */
export interface IWebSocketUpgradeRequest {
  /** The id the client gets if the upgrade is accepted. */
  clientId: string;
  /** `ip:port` of the peer. */
  remoteAddress: string;
  /** The request target as sent: path and query. */
  url: string;
  path: string;
  /** The query string's parameters (the last one of a repeated name). */
  query: Record<string, string>;
  /** Header names in lower case; repeated headers joined with `, ` (cookies with `; `). */
  headers: Record<string, string>;
}

/**
 * Return `{ userId, metadata }` to accept, `null`/`false` to reject (close 4003). The second
 * argument is the connection's upgrade request (absent only if the server has lost it, which it
 * does not on the first attempt).
 */
export type TWebSocketAuthenticateFn<
  AuthDataType extends Record<string, unknown> = Record<string, unknown>,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> = (
  opts: AuthDataType,
  request?: IWebSocketUpgradeRequest,
) => ValueOrPromise<{ userId?: string; metadata?: MetadataType } | null | false>;

/**
 * Decides on an upgrade before the WebSocket opens: truthy accepts; `false`/`null`/`undefined`
 * refuses with HTTP 403; `{ status }` refuses with that status (400-599). A throw or rejection
 * refuses with 500, a Promise not settled within `callbackTimeout` with 503 (both logged).
 */
export type TWebSocketVerifyUpgradeFn = (
  request: IWebSocketUpgradeRequest,
) => ValueOrPromise<boolean | null | undefined | { status: number }>;

export type TWebSocketHandshakeFn<AuthDataType extends Record<string, unknown> = Record<string, unknown>> = (opts: {
  clientId: string;
  userId?: string;
  data: AuthDataType;
}) => ValueOrPromise<{ serverPublicKey: string; salt: string } | null | false>;

/** Return the subset of `rooms` the client may join. */
export type TWebSocketValidateRoomFn = (opts: {
  clientId: string;
  userId?: string;
  rooms: string[];
}) => ValueOrPromise<string[]>;

export type TWebSocketClientConnectedFn<MetadataType extends Record<string, unknown> = Record<string, unknown>> =
  (opts: { clientId: string; userId?: string; metadata?: MetadataType }) => ValueOrPromise<void>;

export type TWebSocketClientDisconnectedFn = (opts: { clientId: string; userId?: string }) => ValueOrPromise<void>;

export type TWebSocketMessageHandler = (opts: {
  clientId: string;
  userId?: string;
  message: IWebSocketMessage;
}) => ValueOrPromise<void>;

export type TWebSocketOutboundTransformer<
  DataType = unknown,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> = (opts: {
  client: IWebSocketClient<MetadataType>;
  event: string;
  data: DataType;
}) => ValueOrPromise<TNullable<{ event: string; data: DataType }>>;

/** PEM text, as node's `tls.connect` options take it. */
type TPem = string | Uint8Array | Array<string | Uint8Array>;

/**
 * TLS to Redis, the part of ioredis' `tls` option (node's `tls.connect` options) that is
 * used: `ca` replaces the bundled Mozilla roots, `cert` and `key` (together) are a client
 * certificate, `rejectUnauthorized: false` skips checking the server's certificate.
 */
export interface IRedisTlsOptions {
  ca?: TPem;
  cert?: TPem;
  key?: TPem;
  rejectUnauthorized?: boolean;
}

export type TRedisConnection =
  | typeof STANDALONE
  | { getClient(): unknown }
  | string
  | { host?: string; port?: number; username?: string; password?: string; db?: number; tls?: true | IRedisTlsOptions }
  | {
      nodes: Array<string | { host: string; port: number }>;
      username?: string;
      password?: string;
      tls?: true | IRedisTlsOptions;
    };

/** `'standalone'`, `'connecting'`, `'ready'`, `'reconnecting'` or `'closed'`. */
export type TWebSocketRedisStatus = 'standalone' | 'connecting' | 'ready' | 'reconnecting' | 'closed';

export type TWebSocketRedisStatusFn = (opts: { status: TWebSocketRedisStatus; detail?: string }) => ValueOrPromise<void>;

/** Where the helper's log lines go. Each method receives one finished line. */
export interface IWebSocketLogger {
  debug?(text: string): void;
  info?(text: string): void;
  warn?(text: string): void;
  error?(text: string): void;
}

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

export interface IWebSocketServerOptions<
  AuthDataType extends Record<string, unknown> = Record<string, unknown>,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> {
  /** Name of this server, used as the log scope. */
  identifier: string;
  /** URL path WebSocket upgrades must use; other paths get HTTP 404. Default `'/ws'`. */
  path?: string;
  /** Interface to listen on. Default `'0.0.0.0'`. */
  host?: string;
  /** Port to listen on; `0` picks a free one (see `getPort()`). Default `8080`. */
  port?: number;
  /**
   * Required. Where Redis is, for cross-instance messaging: an Ignis `RedisHelper` /
   * `DefaultRedisHelper` / `RedisClusterHelper` (host, port, username, password, db, tls, or
   * a cluster's nodes are read from its ioredis client), a `redis://` or `rediss://` URL,
   * `{ host, port, username?, password?, db?, tls? }` or `{ nodes: [{ host, port } | url, ...],
   * tls? }` for a cluster. `'standalone'` (`STANDALONE`) runs a single instance without Redis.
   */
  redisConnection: TRedisConnection;
  /** Milliseconds `configure()` waits for both Redis connections. Default `30000`. */
  redisReadyTimeout?: number;
  /** Called when the Redis bridge changes state (lost, restored). */
  redisStatusFn?: TWebSocketRedisStatusFn;
  /** Accepted and ignored: the native server owns its socket. */
  server?: IBunServer;
  /** Rooms joined after authentication, besides the client's own id. Default `['ws-default', 'ws-notification']`. */
  defaultRooms?: string[];
  /** Transport settings. */
  serverOptions?: IBunWebSocketConfig;
  /** Milliseconds to send `authenticate` before close 4001; `authenticateFn` gets three times this. Default `5000`. */
  authTimeout?: number;
  /** Milliseconds between heartbeat sweeps. Default `30000`. */
  heartbeatInterval?: number;
  /** Milliseconds of silence after which an authenticated client is closed with 4002. Default `90000`. */
  heartbeatTimeout?: number;
  /**
   * Milliseconds a connection waits for `validateRoomFn`, `clientConnectedFn` or
   * `messageHandler` to settle before it logs and handles its next message; also the bound of
   * one `outboundTransformer` call. Default `15000`.
   */
  callbackTimeout?: number;
  /** Transformer calls one room/broadcast message may have in flight. Default `10`. */
  encryptedBatchLimit?: number;
  /** Authentication also needs `handshakeFn` to succeed, else close 4004. Default `false`. */
  requireEncryption?: boolean;
  /** Where log lines go. Default: the console, with `[identifier]` as prefix; debug lines only with `DEBUG=ignis-native-ws`. */
  logger?: IWebSocketLogger;
  /** Required. Called with the `data` of the client's `authenticate` message. */
  authenticateFn: TWebSocketAuthenticateFn<AuthDataType, MetadataType>;
  /** Decides which requested rooms a client may join. Without it every join is rejected. */
  validateRoomFn?: TWebSocketValidateRoomFn;
  /** Called after `connected` was sent. */
  clientConnectedFn?: TWebSocketClientConnectedFn<MetadataType>;
  /** Called after a client's connection ended and it left every index. */
  clientDisconnectedFn?: TWebSocketClientDisconnectedFn;
  /** Called for every non-system event of an authenticated client, one at a time per connection. */
  messageHandler?: TWebSocketMessageHandler;
  /**
   * Runs for every message to an encrypted client (only those), in send order per client;
   * `null` sends the original. A throw, rejection or `callbackTimeout` drops that message
   * for that client.
   */
  outboundTransformer?: TWebSocketOutboundTransformer<unknown, MetadataType>;
  /** Runs for every upgrade request before the WebSocket opens; see `TWebSocketVerifyUpgradeFn`. */
  verifyUpgradeFn?: TWebSocketVerifyUpgradeFn;
  /**
   * Origins browser pages may connect from, such as `'https://app.example.com'` (compared without
   * case and trailing slash). Upgrades with another `Origin` header get HTTP 403; requests without
   * one (not from a browser page) are let through. Default: any origin.
   */
  allowedOrigins?: string[];
  /** Milliseconds a TCP connection may take to send its complete upgrade request; then it is dropped. Default `10000`. */
  upgradeTimeout?: number;
  /** With `requireEncryption`: key exchange after `authenticateFn`; its keys go in `connected`. */
  handshakeFn?: TWebSocketHandshakeFn<AuthDataType>;
}

// ---------------------------------------------------------------------------------------
// The server helper
// ---------------------------------------------------------------------------------------

export declare class WebSocketServerHelper<
  AuthDataType extends Record<string, unknown> = Record<string, unknown>,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> {
  static readonly STANDALONE: typeof STANDALONE;
  readonly identifier: string;
  /** A UUID identifying this instance. */
  readonly serverId: string;

  /** Throws `[WebSocketServerHelper] Invalid redis connection!` when `redisConnection` is missing. */
  constructor(opts: IWebSocketServerOptions<AuthDataType, MetadataType>);

  /**
   * Validates options, binds `host:port`, starts serving and the heartbeat sweep, and with
   * Redis waits until both connections are subscribed (rejects with
   * `Redis client did not become ready within 30000ms`).
   */
  configure(): Promise<void>;
  /** The Redis bridge's state, for honest health checks. */
  getRedisStatus(): TWebSocketRedisStatus;
  getPath(): string;
  /** The bound port after `configure()`. */
  getPort(): number | undefined;
  /** Kept for Ignis' wiring; the returned handler closes any socket Bun upgrades with 1011. */
  getBunWebSocketHandler(): IBunWebSocketHandler;

  getClients(): Map<string, IWebSocketClient<MetadataType>>;
  getClients(opts: { id: string }): IWebSocketClient<MetadataType> | undefined;
  getClients(opts?: { id?: string }):
    | IWebSocketClient<MetadataType>
    | Map<string, IWebSocketClient<MetadataType>>
    | undefined;
  getClientsByUser(opts: { userId: string }): IWebSocketClient<MetadataType>[];
  getClientsByRoom(opts: { room: string }): IWebSocketClient<MetadataType>[];

  joinRoom(opts: { clientId: string; room: string }): void;
  leaveRoom(opts: { clientId: string; room: string }): void;
  /** Irreversible: the client's messages go through `outboundTransformer` from now on. */
  enableClientEncryption(opts: { clientId: string }): void;

  sendToClient(opts: { clientId: string; event: string; data: unknown; doLog?: boolean }): void;
  sendToUser(opts: { userId: string; event: string; data: unknown }): void;
  sendToRoom(opts: { room: string; event: string; data: unknown; exclude?: string[] }): void;
  broadcast(opts: { event: string; data: unknown; exclude?: string[] }): void;
  /**
   * Routes by `destination` (omitted: broadcast; a local client; a local room; otherwise a
   * room elsewhere), delivers locally and publishes the envelope to Redis. Local only in
   * standalone mode.
   */
  send<T = unknown>(opts: { destination?: string; payload: { topic: string; data: T }; doLog?: boolean; cb?: () => void }): void;

  /** Closes every client with 1001, runs disconnect callbacks, stops listening. */
  shutdown(): Promise<void>;
}

// ---------------------------------------------------------------------------------------
// The emitter
// ---------------------------------------------------------------------------------------

export interface IWebSocketEmitterOptions {
  /** Default `'WebSocketEmitter'`. */
  identifier?: string;
  /** Required; the same forms as the server's, except `'standalone'`. */
  redisConnection: Exclude<TRedisConnection, typeof STANDALONE>;
  /** Milliseconds `configure()` waits for Redis. Default `30000`. */
  redisReadyTimeout?: number;
}

/** Publishes to every server instance on the same Redis, from any process. */
export declare class WebSocketEmitter {
  readonly identifier: string;
  /** Always `'emitter'`: no server skips its messages. */
  readonly serverId: 'emitter';
  /** Throws `[WebSocketEmitter] Invalid redis connection!` when `redisConnection` is missing. */
  constructor(opts: IWebSocketEmitterOptions);
  configure(): Promise<void>;
  /** Each resolves once Redis accepted the PUBLISH and rejects within 5 s when it cannot be reached. */
  toClient(opts: { clientId: string; event: string; data: unknown }): Promise<void>;
  toUser(opts: { userId: string; event: string; data: unknown }): Promise<void>;
  toRoom(opts: { room: string; event: string; data: unknown; exclude?: string[] }): Promise<void>;
  broadcast(opts: { event: string; data: unknown }): Promise<void>;
  /** Closes the connection; safe to call twice. */
  shutdown(): Promise<void>;
}
