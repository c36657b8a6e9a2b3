// The Express app: security headers, logging, /healthz, the /api proxy and the built Vue bundle.

import fs from 'node:fs';
import path from 'node:path';
import compression from 'compression';
import express from 'express';
import helmet from 'helmet';
import { PAGE_CSP, notBuiltPage } from './errors.js';
import { apiProxy } from './proxy.js';
import { accessLog } from './accessLog.js';
import { requestId } from './requestId.js';

const YEAR = 365 * 24 * 60 * 60;

function securityHeaders() {
  return helmet({
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'self'"],
        baseUri: ["'self'"],
        scriptSrc: ["'self'"],
        styleSrc: ["'self'"],
        imgSrc: ["'self'", 'data:'],
        fontSrc: ["'self'"],
        connectSrc: ["'self'"],
        objectSrc: ["'none'"],
        frameAncestors: ["'none'"],
        formAction: ["'self'"],
      },
    },
    // HSTS belongs to whatever terminates TLS; this server often runs on plain HTTP in a LAN.
    strictTransportSecurity: false,
  });
}

function staticFiles(distDir) {
  return express.static(distDir, {
    index: false,
    setHeaders(res, filePath) {
      // Vite puts a content hash in every file name under assets/, so they never change.
      const hashed = filePath.startsWith(path.join(distDir, 'assets') + path.sep);
      res.setHeader('Cache-Control', hashed ? `public, max-age=${YEAR}, immutable` : 'no-cache');
    },
  });
}

function spaFallback(distDir) {
  const indexFile = path.join(distDir, 'index.html');
  return (req, res, next) => {
    if ((req.method !== 'GET' && req.method !== 'HEAD') || req.path.startsWith('/assets/')) return next();
    if (!req.accepts('html')) return next();
    if (!fs.existsSync(indexFile)) {
      res.status(503).type('html').set({ 'Cache-Control': 'no-store', 'Content-Security-Policy': PAGE_CSP });
      res.send(notBuiltPage());
      return;
    }
    res.set('Cache-Control', 'no-cache');
    res.sendFile(indexFile);
  };
}

/**
 * Build the app. `log` is a writable stream for the access log (null turns it off).
 */
export function createApp({ apiUrl, apiKey = '', distDir, logFormat = 'json', log = process.stdout }) {
  const app = express();
  app.disable('x-powered-by');
  // Behind nginx / a cluster ingress: take the client address from X-Forwarded-For of local hops only.
  app.set('trust proxy', 'loopback, linklocal, uniquelocal');
  app.use(requestId());

  if (log) {
    app.use(
      accessLog(logFormat, {
        stream: log,
        // Probes every few seconds would drown the log; failures are still logged.
        skip: (req, res) => req.path === '/healthz' && res.statusCode < 400,
      }),
    );
  }
  app.use(securityHeaders());

  app.get('/healthz', (req, res) => {
    res.set('Cache-Control', 'no-store').json({ status: 'ok' });
  });

  // Before compression: compressing would hold tokens back until a buffer fills.
  app.use('/api', apiProxy({ apiUrl, apiKey }));

  app.use(compression());
  app.use(staticFiles(distDir));
  app.use(spaFallback(distDir));

  app.use((req, res) => {
    res.status(404).type('text').set('Cache-Control', 'no-store').send('Not found');
  });
  return app;
}
