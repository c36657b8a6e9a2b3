// @vitest-environment node
// The Express server against a real upstream HTTP server standing in for the api on a loopback port.

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createApp } from '../server/app.js';
import { loadConfig } from '../server/config.js';

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${server.address().port}`)));
}

function close(server) {
  server.closeAllConnections?.();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** An upstream whose handler each test sets; it records what it received. */
function upstream() {
  const state = { handler: null, requests: [] };
  const server = http.createServer((req, res) => {
    state.requests.push({ method: req.method, url: req.url, headers: req.headers, req, res });
    state.handler(req, res);
  });
  return { server, state };
}

let dist;
let api;
let apiUrl;
let web;
let base;

beforeAll(async () => {
  dist = fs.mkdtempSync(path.join(os.tmpdir(), 'pibloom-dist-'));
  fs.mkdirSync(path.join(dist, 'assets'));
  fs.writeFileSync(path.join(dist, 'index.html'), '<!doctype html><title>piBLOOM</title><div id="app"></div>');
  fs.writeFileSync(path.join(dist, 'assets', 'index-abc123.js'), 'console.log(1)');
  fs.writeFileSync(path.join(dist, 'favicon.svg'), '<svg xmlns="http://www.w3.org/2000/svg"/>');

  api = upstream();
  apiUrl = await listen(api.server);
  web = http.createServer(createApp({ apiUrl, apiKey: 'sekret', distDir: dist, log: null }));
  base = await listen(web);
});

afterAll(async () => {
  await close(web);
  await close(api.server);
  fs.rmSync(dist, { recursive: true, force: true });
});

afterEach(() => {
  api.state.requests.length = 0;
});

describe('static files', () => {
  it('serves index.html for app routes without caching it', async () => {
    for (const url of ['/', '/chat/some-conversation']) {
      const res = await fetch(`${base}${url}`, { headers: { Accept: 'text/html' } });
      expect(res.status).toBe(200);
      expect(res.headers.get('cache-control')).toBe('no-cache');
      expect(await res.text()).toContain('<div id="app">');
    }
  });

  it('caches hashed assets for a year as immutable', async () => {
    const res = await fetch(`${base}/assets/index-abc123.js`);
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
    expect(res.headers.get('content-type')).toMatch(/javascript/);
  });

  it('revalidates unhashed files and answers 404 for missing assets', async () => {
    expect((await fetch(`${base}/favicon.svg`)).headers.get('cache-control')).toBe('no-cache');
    const missing = await fetch(`${base}/assets/index-old.js`, { headers: { Accept: '*/*' } });
    expect(missing.status).toBe(404);
  });

  it('sends security headers with a strict content security policy', async () => {
    const res = await fetch(`${base}/`);
    const csp = res.headers.get('content-security-policy');
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(csp).not.toContain('upgrade-insecure-requests');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    expect(res.headers.get('x-powered-by')).toBeNull();
  });

  it('answers its own health check', async () => {
    const res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok' });
  });

  it('explains a missing build instead of failing obscurely', async () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'pibloom-empty-'));
    const server = http.createServer(createApp({ apiUrl, distDir: empty, log: null }));
    const url = await listen(server);
    try {
      const res = await fetch(`${url}/`, { headers: { Accept: 'text/html' } });
      expect(res.status).toBe(503);
      expect(await res.text()).toContain('npm run build');
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
    } finally {
      await close(server);
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });
});

describe('the /api proxy', () => {
  it('strips /api, forwards the body and injects the api key', async () => {
    api.state.handler = (req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ echoed: JSON.parse(body) }));
      });
    };
    const res = await fetch(`${base}/api/v1/chat/completions?x=1`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [] }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ echoed: { model: 'm', messages: [] } });
    const seen = api.state.requests[0];
    expect(seen.method).toBe('POST');
    expect(seen.url).toBe('/v1/chat/completions?x=1');
    expect(seen.headers.authorization).toBe('Bearer sekret');
  });

  it('passes api errors through with their status and Retry-After', async () => {
    api.state.handler = (req, res) => {
      res.writeHead(503, { 'Content-Type': 'application/json', 'Retry-After': '4' });
      res.end(JSON.stringify({ error: { message: 'busy', type: 'overloaded' } }));
    };
    const res = await fetch(`${base}/api/v1/chat/completions`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('4');
    expect((await res.json()).error.message).toBe('busy');
  });

  it('streams server-sent events through as they are written, without buffering', async () => {
    let release;
    const released = new Promise((resolve) => (release = resolve));
    api.state.handler = async (req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write('data: {"n":1}\n\n');
      // The rest only comes after the client has seen the first event: a buffering proxy would hang here.
      await released;
      res.end('data: {"n":2}\n\ndata: [DONE]\n\n');
    };
    const res = await fetch(`${base}/api/v1/chat/completions`, { method: 'POST', body: '{}' });
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    expect(res.headers.get('content-encoding')).toBeNull();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const first = await reader.read();
    expect(first.value).toBe('data: {"n":1}\n\n');
    release();
    let rest = '';
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest += r.value;
    expect(rest).toBe('data: {"n":2}\n\ndata: [DONE]\n\n');
  });

  it('closes the upstream request when the browser aborts mid-stream', async () => {
    let upstreamClosed = false;
    api.state.handler = (req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write('data: {"n":1}\n\n');
      res.on('close', () => (upstreamClosed = true));
    };
    const controller = new AbortController();
    const res = await fetch(`${base}/api/v1/chat/completions`, { method: 'POST', body: '{}', signal: controller.signal });
    const reader = res.body.getReader();
    await reader.read();
    controller.abort();
    await vi.waitFor(() => expect(upstreamClosed).toBe(true), { timeout: 3000 });
  });

  it('closes the upstream request when the browser aborts before any response', async () => {
    let upstreamClosed = false;
    let received = false;
    // A queued request: the api has not answered at all yet.
    api.state.handler = (req, res) => {
      received = true;
      res.on('close', () => (upstreamClosed = true));
    };
    const controller = new AbortController();
    const pending = fetch(`${base}/api/v1/chat/completions`, { method: 'POST', body: '{}', signal: controller.signal });
    await vi.waitFor(() => expect(received).toBe(true));
    controller.abort();
    await expect(pending).rejects.toThrow();
    await vi.waitFor(() => expect(upstreamClosed).toBe(true), { timeout: 3000 });
  });

  it('answers 502 in JSON or HTML when the api is down', async () => {
    const down = http.createServer();
    const deadUrl = await listen(down);
    await close(down); // nothing listens there now
    const server = http.createServer(createApp({ apiUrl: deadUrl, distDir: dist, log: null }));
    const url = await listen(server);
    try {
      const json = await fetch(`${url}/api/v1/models`, { headers: { Accept: 'application/json' } });
      expect(json.status).toBe(502);
      const body = await json.json();
      expect(body.error.type).toBe('bad_gateway');
      expect(body.error.message).toMatch(/not reachable/);

      const page = await fetch(`${url}/api/docs`, { headers: { Accept: 'text/html' } });
      expect(page.status).toBe(502);
      expect(page.headers.get('content-type')).toMatch(/text\/html/);
      expect(await page.text()).toContain('The chat service is unavailable');
      // Its inline style is allowed by its own policy; nothing else is.
      expect(page.headers.get('content-security-policy')).toBe("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
    } finally {
      await close(server);
    }
  });
});

describe('loadConfig', () => {
  it('has working defaults', () => {
    expect(loadConfig({})).toMatchObject({ port: 3000, apiUrl: 'http://127.0.0.1:8000', apiKey: '' });
  });

  it('reads the environment', () => {
    const config = loadConfig({ PORT: '8081', PIBLOOM_API_URL: 'http://api:8000/', PIBLOOM_API_KEY: 'k' });
    expect(config).toMatchObject({ port: 8081, apiUrl: 'http://api:8000', apiKey: 'k' });
  });

  it('rejects bad values with a clear message', () => {
    expect(() => loadConfig({ PORT: 'eighty' })).toThrow(/PORT/);
    expect(() => loadConfig({ PIBLOOM_API_URL: 'api:8000' })).toThrow(/PIBLOOM_API_URL/);
    expect(() => loadConfig({ PIBLOOM_API_URL: 'ftp://api' })).toThrow(/http or https/);
  });
});
