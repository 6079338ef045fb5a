// Compiled with `tsc --noEmit` by `npm run lint`: the spec's typed usage must type-check.
import {
  type IWebSocketClient,
  type IWebSocketServerOptions,
  type TWebSocketAuthenticateFn,
  WebSocketChannels,
  WebSocketEmitter,
  WebSocketServerHelper,
} from '../../index';

interface AuthPayload extends Record<string, unknown> {
  type: string;
  token: string;
}
interface UserMetadata extends Record<string, unknown> {
  role: string;
  permissions: string[];
}

const authenticateFn: TWebSocketAuthenticateFn<AuthPayload, UserMetadata> = async (data, request) => {
  const session = request?.headers.cookie?.split('; ').find(cookie => cookie.startsWith('session='));
  if (!data.token && !session && request?.query.token === undefined) {
    return null;
  }
  return { userId: 'u', metadata: { role: 'admin', permissions: [] } };
};

const options: IWebSocketServerOptions<AuthPayload, UserMetadata> = {
  identifier: 'typed-ws',
  redisConnection: 'standalone',
  port: 0,
  authenticateFn,
  allowedOrigins: ['https://app.example.com'],
  upgradeTimeout: 5000,
  verifyUpgradeFn: async request => (request.remoteAddress.startsWith('10.') ? { status: 403 } : true),
  serverOptions: { perMessageDeflate: true, idleTimeout: 30, sendPings: true, backpressureLimit: 1 << 20 },
  clientConnectedFn: ({ metadata }) => {
    if (metadata?.role === 'admin') {
      console.log(metadata.permissions.length);
    }
  },
};

export async function main(): Promise<void> {
  const helper = new WebSocketServerHelper<AuthPayload, UserMetadata>(options);
  await helper.configure();
  const all: Map<string, IWebSocketClient<UserMetadata>> = helper.getClients();
  const one: IWebSocketClient<UserMetadata> | undefined = helper.getClients({ id: 'x' });
  console.log(all.size, one?.metadata?.role, helper.getPort(), WebSocketChannels.forRoom({ room: 'r' }));
  console.log(one?.droppedMessages, one?.socket.getBufferedAmount());
  helper.send({ destination: 'room', payload: { topic: 't', data: { n: 1 } }, cb: () => {} });
  await helper.shutdown();
}

export async function emit(): Promise<void> {
  const emitter = new WebSocketEmitter({ redisConnection: 'redis://127.0.0.1:6379' });
  await emitter.configure();
  await emitter.toRoom({ room: 'r', event: 'e', data: 1, exclude: ['c'] });
  await emitter.shutdown();
  const overTls = new WebSocketEmitter({
    redisConnection: { host: 'redis.internal', port: 6380, tls: { ca: new TextEncoder().encode('pem'), rejectUnauthorized: true } },
  });
  await overTls.shutdown();
  const cluster = new WebSocketEmitter({ redisConnection: { nodes: [{ host: 'a', port: 1 }], tls: true } });
  await cluster.shutdown();
}
