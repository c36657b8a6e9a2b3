// @vitest-environment node
// X-Request-ID through the Express server: kept or made, returned, forwarded to the api, and logged.

import http from 'node:http';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../server/app.js';
import { acceptOrNew } from '../server/requestId.js';

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${server.address().port}`)));
}

function close(server) {
  server.closeAllConnections?.();
  return new Promise((resolve) => server.close(() => resolve()));
}

const HEX32 = /^[0-9a-f]{32}$/;
let api;
let seen;
let web;
let base;
let logged;

beforeAll(async () => {
  seen = [];
  // Stands in for the api: records the id it got and does not echo it, so the response header
  // the test sees is Express's own.
  api = http.createServer((req, res) => {
    seen.push(req.headers['x-request-id']);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end('{"ok":true}');
  });
  const apiUrl = await listen(api);
  logged = '';
  const log = new PassThrough();
  log.on('data', (chunk) => (logged += chunk));
  web = http.createServer(createApp({ apiUrl, distDir: '/nonexistent', log }));
  base = await listen(web);
});

afterAll(async () => {
  await close(web);
  await close(api);
});

describe('request ids', () => {
  it('keeps a well-formed id, forwards it to the api and returns it', async () => {
    const res = await fetch(`${base}/api/v1/models`, { headers: { 'X-Request-ID': 'nginx-0123abc' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-request-id')).toBe('nginx-0123abc');
    expect(seen.at(-1)).toBe('nginx-0123abc');
  });

  it('makes a fresh id when there is none, one per request', async () => {
    const first = (await fetch(`${base}/api/v1/models`)).headers.get('x-request-id');
    const second = (await fetch(`${base}/api/v1/models`)).headers.get('x-request-id');
    expect(first).toMatch(HEX32);
    expect(second).toMatch(HEX32);
    expect(first).not.toBe(second);
    expect(seen.slice(-2)).toEqual([first, second]);
  });

  it('replaces ids that could forge log lines or are too long', async () => {
    for (const hostile of ['a b', 'x'.repeat(129), 'id"><script>', 'ünïcode']) {
      expect(acceptOrNew(hostile)).toMatch(HEX32);
    }
    const res = await fetch(`${base}/api/v1/models`, { headers: { 'X-Request-ID': 'two words' } });
    const id = res.headers.get('x-request-id');
    expect(id).toMatch(HEX32);
    expect(seen.at(-1)).toBe(id);
  });

  it('writes one JSON access line per request, with the field names nginx and the api use', async () => {
    await fetch(`${base}/api/v1/models?token=secret`, { headers: { 'X-Request-ID': 'logged-id-42' } });
    const entries = logged
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line))
      .filter((entry) => entry.request_id === 'logged-id-42');
    expect(entries).toHaveLength(1);
    const [entry] = entries;
    expect(Object.keys(entry).sort()).toEqual(
      ['client', 'duration_ms', 'event', 'method', 'path', 'request_id', 'service', 'status', 'time'],
    );
    expect(entry).toMatchObject({ service: 'web', event: 'access', method: 'GET', path: '/api/v1/models', status: 200 });
    expect(entry.duration_ms).toBeGreaterThanOrEqual(0);
    expect(Number.isNaN(Date.parse(entry.time))).toBe(false);
    expect(logged).not.toContain('secret');
  });

  it('ends each text line with the id when LOG_FORMAT names a morgan format', async () => {
    let text = '';
    const log = new PassThrough();
    log.on('data', (chunk) => (text += chunk));
    const server = http.createServer(createApp({ apiUrl: `${base}/unused`, distDir: '/nonexistent', log, logFormat: 'combined' }));
    const url = await listen(server);
    try {
      await fetch(`${url}/healthz-missing`, { headers: { 'X-Request-ID': 'text-id-7' } });
      expect(text.trim().split('\n').some((l) => l.includes('/healthz-missing') && l.endsWith('text-id-7'))).toBe(true);
    } finally {
      await close(server);
    }
  });

  it('puts an id on its own error answers too', async () => {
    const down = http.createServer(createApp({ apiUrl: 'http://127.0.0.1:9', distDir: '/nonexistent', log: null }));
    const url = await listen(down);
    try {
      const res = await fetch(`${url}/api/v1/models`, { headers: { 'X-Request-ID': 'when-down-1' } });
      expect(res.status).toBe(502);
      expect(res.headers.get('x-request-id')).toBe('when-down-1');
    } finally {
      await close(down);
    }
  });
});
