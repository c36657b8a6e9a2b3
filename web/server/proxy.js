// The /api proxy: streams requests and responses (SSE included) to the api without buffering.

import { createProxyMiddleware } from 'http-proxy-middleware';
import { sendBadGateway } from './errors.js';

export function apiProxy({ apiUrl, apiKey }) {
  return createProxyMiddleware({
    target: apiUrl,
    changeOrigin: true,
    xfwd: true,
    on: {
      proxyReq(proxyReq, req, res) {
        if (apiKey) proxyReq.setHeader('Authorization', `Bearer ${apiKey}`);
        // The id this server checked or made (server/requestId.js), so the api logs the same one.
        if (req.id) proxyReq.setHeader('X-Request-ID', req.id);
        // A browser that aborts (the Stop button) must abort the upstream request too, even before the
        // api has sent headers, so the api sees the disconnect and stops generating.
        res.on('close', () => {
          if (!res.writableFinished) proxyReq.destroy();
        });
      },
      proxyRes(proxyRes) {
        if (String(proxyRes.headers['content-type'] || '').startsWith('text/event-stream')) {
          // Tell nginx (or any proxy in front) not to buffer the token stream.
          proxyRes.headers['x-accel-buffering'] = 'no';
          proxyRes.headers['cache-control'] = 'no-cache, no-transform';
        }
      },
      error(err, req, res) {
        // `res` is a socket for upgrade requests; those are not proxied here.
        if (typeof res.status === 'function') sendBadGateway(req, res);
        else res.destroy();
      },
    },
  });
}
