// A bore tunnel server on loopback (the protocol of bore 0.6, which the app's self-hosted
// provider speaks): JSON messages ended by a NUL byte on a control connection, one public port
// per client, and each public connection handed to the client over a new connection that
// `Accept`s it. Only for tests: no secret, no limits.

import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';

const HEARTBEAT_MS = 500;

/** Splits a socket's bytes into NUL-ended frames; `onFrame(text, rest)` gets each one. */
function frames(socket, onFrame) {
  let buffered = Buffer.alloc(0);
  const onData = (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    let end;
    while ((end = buffered.indexOf(0)) !== -1) {
      const frame = buffered.subarray(0, end).toString('utf8');
      buffered = buffered.subarray(end + 1);
      if (onFrame(frame, buffered) === 'stop') {
        socket.off('data', onData);
        return;
      }
    }
  };
  socket.on('data', onData);
}

function send(socket, message) {
  socket.write(Buffer.concat([Buffer.from(JSON.stringify(message)), Buffer.from([0])]));
}

export class BoreServer {
  constructor() {
    this.unclaimed = new Map();
    this.closers = [];
    this.control = createServer((socket) => this.onControl(socket));
  }

  /** Listens on a free loopback port; `address` is then `127.0.0.1:<port>`. */
  static async start() {
    const server = new BoreServer();
    await new Promise((resolve) => server.control.listen(0, '127.0.0.1', resolve));
    server.address = `127.0.0.1:${server.control.address().port}`;
    return server;
  }

  onControl(socket) {
    socket.on('error', () => {});
    frames(socket, (frame, rest) => {
      const message = JSON.parse(frame);
      if (message.Hello !== undefined) {
        this.openTunnel(socket);
        return 'continue';
      }
      if (message.Accept !== undefined) {
        const visitor = this.unclaimed.get(message.Accept);
        this.unclaimed.delete(message.Accept);
        if (!visitor) {
          socket.destroy();
          return 'stop';
        }
        // Bytes the client sent after its Accept already belong to the visitor.
        if (rest.length > 0) visitor.write(rest);
        socket.pipe(visitor).pipe(socket);
        visitor.resume();
        return 'stop';
      }
      return 'continue';
    });
  }

  openTunnel(control) {
    const tunnel = createServer((visitor) => {
      visitor.on('error', () => {});
      visitor.pause();
      const id = randomUUID();
      this.unclaimed.set(id, visitor);
      send(control, { Connection: id });
    });
    tunnel.listen(0, '127.0.0.1', () => send(control, { Hello: tunnel.address().port }));
    const heartbeat = setInterval(() => send(control, 'Heartbeat'), HEARTBEAT_MS);
    const close = () => {
      clearInterval(heartbeat);
      tunnel.close();
    };
    control.on('close', close);
    this.closers.push(() => {
      close();
      control.destroy();
    });
  }

  async close() {
    for (const close of this.closers) close();
    for (const visitor of this.unclaimed.values()) visitor.destroy();
    await new Promise((resolve) => this.control.close(resolve));
  }
}
