// What the browser gets when the api cannot be reached: JSON for the app, a small page for people.

const MESSAGE = 'The piBLOOM API is not reachable right now. It may be starting up or down; try again shortly.';

function page(status, title, text) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>${status} ${title} · piBLOOM</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; display: grid; place-items: center; min-height: 100vh; margin: 0; }
  main { max-width: 32rem; padding: 2rem; }
  h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
  p { opacity: .8; }
</style>
</head>
<body><main><h1>${title}</h1><p>${text}</p></main></body>
</html>
`;
}

// These pages carry their own inline style and nothing else: a policy of their own, not the app's.
export const PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

/** Answer 502 in the shape the client asked for (the OpenAI error body for API callers). */
export function sendBadGateway(req, res) {
  if (res.headersSent) {
    // The stream had started: all we can do is end it.
    res.destroy();
    return;
  }
  const style = req.accepts(['json', 'html']);
  res.status(502).set('Cache-Control', 'no-store');
  if (style === 'html') {
    res.type('html').set('Content-Security-Policy', PAGE_CSP).send(page(502, 'The chat service is unavailable', MESSAGE));
  } else {
    res.json({ error: { message: MESSAGE, type: 'bad_gateway', code: 'api_unreachable', param: null } });
  }
}

export function notBuiltPage() {
  return page(503, 'The web UI is not built', 'Run <code>npm run build</code> in web/ and restart the server.');
}
