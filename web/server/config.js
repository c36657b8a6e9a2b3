// Server settings, all from the environment so the same image runs anywhere.

const DEFAULT_API_URL = 'http://127.0.0.1:8000';

function parsePort(value) {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`PORT must be an integer between 0 and 65535, got "${value}"`);
  }
  return port;
}

function parseApiUrl(value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`PIBLOOM_API_URL must be an absolute http(s) URL, got "${value}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`PIBLOOM_API_URL must use http or https, got "${value}"`);
  }
  return url.href.replace(/\/+$/, '');
}

/** Read the server's settings from `env` (process.env by default); throws on bad values. */
export function loadConfig(env = process.env) {
  return {
    port: parsePort(env.PORT ?? '3000'),
    host: env.HOST || '0.0.0.0',
    apiUrl: parseApiUrl(env.PIBLOOM_API_URL || DEFAULT_API_URL),
    // Injected by the proxy so the browser never holds the key.
    apiKey: env.PIBLOOM_API_KEY || '',
    // `json`: one line per request with the api's and nginx's field names; or a morgan format.
    logFormat: env.LOG_FORMAT || 'json',
  };
}
