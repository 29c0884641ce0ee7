/**
 * Express on ecdysis: the app is a request handler; ecdysis owns the socket.
 *
 *   node --import tsx examples/express.ts            then: kill -HUP <pid>
 */
import express from 'express';
import { createServer } from 'node:http';
import { Ecdysis } from 'ecdysis';
import { logLifecycle } from './lib/lifecycle-log.ts';

const ecdysis = await Ecdysis.create({ pidFile: process.env.PID_FILE });
logLifecycle(ecdysis, 'express');

const app = express();
app.get('/', (_req, res) => {
  res.set('x-generation', String(ecdysis.generation)).send(`express, generation ${ecdysis.generation}\n`);
});

const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(process.env.PORT ?? 8081) });
web.serve(createServer(app)); // instead of app.listen(): never let Express own the socket

await ecdysis.ready();
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000 });
