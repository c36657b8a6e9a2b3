// Entry point: `node server/index.js` (PORT, PIBLOOM_API_URL, PIBLOOM_API_KEY, HOST, LOG_FORMAT).

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createApp } from './app.js';
import { loadConfig } from './config.js';

const distDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist');
// Open streams get this long to finish after SIGTERM before they are cut.
const DRAIN_MS = 10_000;

let config;
try {
  config = loadConfig();
} catch (err) {
  console.error(`piBLOOM web: ${err.message}`);
  process.exit(2);
}

const app = createApp({ ...config, distDir });
const server = app.listen(config.port, config.host, () => {
  const { port } = server.address();
  console.log(`piBLOOM web listening on http://${config.host}:${port} (api: ${config.apiUrl})`);
});
server.on('error', (err) => {
  console.error(`piBLOOM web: ${err.message}`);
  process.exit(1);
});

function shutdown(signal) {
  console.log(`piBLOOM web: ${signal}, closing`);
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => {
    server.closeAllConnections();
    process.exit(0);
  }, DRAIN_MS).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
