// Prints the gzip size of what the first page load fetches (index.html's scripts, styles and
// modulepreloads) and of every lazy chunk, from web/dist. Run after `npm run build`: `npm run size`.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const dist = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist');
const html = fs.readFileSync(path.join(dist, 'index.html'), 'utf8');
const gz = (file) => gzipSync(fs.readFileSync(path.join(dist, file)), { level: 9 }).length;
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;

const first = [...html.matchAll(/(?:src|href)="\/?(assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
const all = fs.readdirSync(path.join(dist, 'assets')).map((f) => `assets/${f}`).filter((f) => /\.(js|css)$/.test(f));
let total = gz('index.html');
console.log(`first load (gzip):`);
console.log(`  ${'index.html'.padEnd(48)} ${kb(gz('index.html'))}`);
for (const file of first) {
  total += gz(file);
  console.log(`  ${file.padEnd(48)} ${kb(gz(file))}`);
}
console.log(`  ${'total'.padEnd(48)} ${kb(total)}`);
const lazy = all.filter((f) => !first.includes(f));
if (lazy.length) {
  console.log('lazy chunks (gzip):');
  for (const file of lazy) console.log(`  ${file.padEnd(48)} ${kb(gz(file))}`);
}
