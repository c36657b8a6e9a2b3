// The access log: by default one JSON line per request with the field names nginx and the api use
// (time, service, event, request_id, method, path, status, duration_ms, client), so one request id
// finds a request in all three logs. LOG_FORMAT=combined (or another morgan format) for text.

import morgan from 'morgan';

/** morgan format function for the JSON line. The path has no query string: it may hold secrets. */
export function jsonLine(tokens, req, res) {
  // Until the last byte is sent, as nginx and the api measure (response-time stops at the headers).
  const ms = Number(tokens['total-time'](req, res));
  return JSON.stringify({
    time: new Date().toISOString(),
    service: 'web',
    event: 'access',
    request_id: req.id,
    method: req.method,
    path: (req.originalUrl || req.url).split('?')[0],
    status: res.headersSent ? res.statusCode : null,
    duration_ms: Number.isFinite(ms) ? Math.round(ms * 10) / 10 : null,
    client: req.ip,
  });
}

/** The morgan middleware for `format` (`json`, or a named morgan format with the request id appended). */
export function accessLog(format, options) {
  if (format === 'json') return morgan(jsonLine, options);
  const named = morgan[format];
  return morgan(typeof named === 'string' ? `${named} :request-id` : format, options);
}
