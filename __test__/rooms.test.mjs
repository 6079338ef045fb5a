import { assert, describe, it } from './support/framework.mjs';
import { authenticatedClient, sleep, serverPool, waitUntil } from './support/helpers.mjs';

const roomsOf = (server, id) => [...server.getClients({ id }).rooms].sort();

describe('rooms', () => {
  const start = serverPool();

  it('rejects every join without validateRoomFn, and logs why', async () => {
    const server = await start();
    const client = await authenticatedClient(server);
    client.send({ event: 'join', data: { rooms: ['lobby'] } });
    await server.log.waitFor('warn', 'no validateRoomFn configured');
    assert.deepEqual(roomsOf(server, client.id), [client.id, 'ws-default', 'ws-notification'].sort());
    client.close();
  });

  it('sanitises names, asks validateRoomFn, and joins the allowed subset only', async () => {
    const asked = [];
    const server = await start({
      validateRoomFn: opts => {
        asked.push(opts);
        // Returns a room that was not requested and an internal one: neither may be joined.
        return [...opts.rooms.filter(room => room.startsWith('public-')), 'secret', 'ws:room:x'];
      },
    });
    const client = await authenticatedClient(server, { token: 't', userId: 'bob' });
    const long = 'x'.repeat(257);
    client.send({
      event: 'join',
      data: { rooms: ['public-a', 'private-b', '', 'ws:room:evil', long, 42, 'public-c', 'x'.repeat(256)] },
    });
    await server.log.waitFor('info', 'Joined rooms');
    assert.deepEqual(asked, [
      { clientId: client.id, userId: 'bob', rooms: ['public-a', 'private-b', 'public-c', 'x'.repeat(256)] },
    ]);
    assert.deepEqual(roomsOf(server, client.id), [client.id, 'public-a', 'public-c', 'ws-default', 'ws-notification'].sort());
    assert.equal(server.getClientsByRoom({ room: 'secret' }).length, 0);
    client.close();
  });

  it('accepts an async validateRoomFn, and logs one that throws, rejects or never settles', async () => {
    let mode = 'async';
    const server = await start({
      callbackTimeout: 150,
      validateRoomFn: async ({ rooms }) => {
        if (mode === 'throw') {
          throw new Error('validator failed');
        }
        if (mode === 'hang') {
          return new Promise(() => {});
        }
        await sleep(10);
        return rooms;
      },
    });
    const client = await authenticatedClient(server);
    client.send({ event: 'join', data: { rooms: ['a'] } });
    await waitUntil(() => server.getClients({ id: client.id }).rooms.has('a'));
    mode = 'throw';
    client.send({ event: 'join', data: { rooms: ['b'] } });
    await server.log.waitFor('error', 'validator failed');
    mode = 'hang';
    client.send({ event: 'join', data: { rooms: ['c'] } });
    await server.log.waitFor('warn', 'validateRoomFn did not settle in time');
    assert.deepEqual(roomsOf(server, client.id), [client.id, 'a', 'ws-default', 'ws-notification'].sort());
    client.close();
  });

  it('ignores join and leave requests of the wrong shape, with a log line', async () => {
    const server = await start({ validateRoomFn: ({ rooms }) => rooms });
    const client = await authenticatedClient(server);
    for (const data of ['lobby', { rooms: 'lobby' }, [1], { rooms: { a: 1 } }]) {
      client.send({ event: 'join', data });
      client.send({ event: 'leave', data });
    }
    await server.log.waitFor('warn', 'Leave rejected');
    assert.ok(server.log.has('warn', 'Join rejected'));
    client.send({ event: 'join', data: { rooms: ['lobby'] } });
    await waitUntil(() => server.getClients({ id: client.id }).rooms.has('lobby'));
    client.close();
  });

  it('leaves only rooms the client is in, and removes empty rooms from the index', async () => {
    const server = await start({ validateRoomFn: ({ rooms }) => rooms });
    const a = await authenticatedClient(server);
    const b = await authenticatedClient(server);
    a.send({ event: 'join', data: { rooms: ['lobby', 'only-a'] } });
    b.send({ event: 'join', data: { rooms: ['lobby'] } });
    await waitUntil(() => server.getClientsByRoom({ room: 'lobby' }).length === 2);
    b.send({ event: 'leave', data: { rooms: ['only-a', 'lobby', 'never-joined'] } });
    await waitUntil(() => server.getClientsByRoom({ room: 'lobby' }).length === 1);
    assert.equal(server.getClientsByRoom({ room: 'only-a' }).length, 1);
    a.send({ event: 'leave', data: { rooms: ['only-a'] } });
    await waitUntil(() => server.getClientsByRoom({ room: 'only-a' }).length === 0);
    server.send({ destination: 'only-a', payload: { topic: 't', data: 1 } });
    assert.ok(await a.nothing(m => m.event === 't'), 'an emptied room is gone from the index');
    a.close();
    b.close();
  });

  it('joins and leaves programmatically with joinRoom / leaveRoom', async () => {
    const server = await start();
    const client = await authenticatedClient(server);
    server.joinRoom({ clientId: client.id, room: 'vip' });
    assert.deepEqual(server.getClientsByRoom({ room: 'vip' }).map(c => c.id), [client.id]);
    server.sendToRoom({ room: 'vip', event: 'welcome', data: 1 });
    assert.equal((await client.next('welcome')).data, 1);
    server.leaveRoom({ clientId: client.id, room: 'vip' });
    assert.deepEqual(server.getClientsByRoom({ room: 'vip' }), []);
    server.joinRoom({ clientId: 'no-such-client', room: 'vip' });
    assert.deepEqual(server.getClientsByRoom({ room: 'vip' }), []);
    client.close();
  });

  it('joins custom default rooms after authentication', async () => {
    const server = await start({ defaultRooms: ['general'] });
    const client = await authenticatedClient(server);
    assert.deepEqual(roomsOf(server, client.id), [client.id, 'general'].sort());
    client.close();
  });
});
