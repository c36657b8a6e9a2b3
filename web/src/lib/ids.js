export function newId() {
  // randomUUID needs a secure context too; fall back to a time + random id on plain http.
  if (globalThis.crypto?.randomUUID && globalThis.isSecureContext !== false) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}
