// X-Request-ID: kept from the request when it looks like an id (nginx sets one), made here otherwise;
// sent back to the browser and forwarded to the api, so one id follows a request through every log.

import { randomUUID } from 'node:crypto';
import morgan from 'morgan';

// The same rule as nginx's map and the api: anything else (log injection, huge values) is replaced.
const VALID = /^[A-Za-z0-9._~:+/=-]{1,128}$/;

export function acceptOrNew(value) {
  return typeof value === 'string' && VALID.test(value) ? value : randomUUID().replaceAll('-', '');
}

export function requestId() {
  return (req, res, next) => {
    req.id = acceptOrNew(req.get('x-request-id'));
    res.set('X-Request-ID', req.id);
    next();
  };
}

// For text formats (LOG_FORMAT=combined...): accessLog.js appends it to each line.
morgan.token('request-id', (req) => req.id);
