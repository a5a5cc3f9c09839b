// Package authn answers "who is this client, and if not, why not" for a
// WebSocket upgrade: it finds the token in the sources a handshake can carry
// it in (Authorization header, Sec-WebSocket-Protocol entry, query string,
// cookie), verifies it as a JWT, applies the origin policy, and names every
// failure with exactly one Reason.
//
// authn imports neither the broker nor telemetry: it returns results and the
// broker observes them. Extraction works on a Request filled from the
// gobwas/ws upgrader callbacks and does not allocate.
package authn
