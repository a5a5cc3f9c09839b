// wsbroker.js: a dependency-free client for the wsbroker.v1 protocol.
//
// It connects with a token from a provider, subscribes, unsubscribes and
// publishes with promises settled by the server's ack (or error) frame,
// refreshes the token on the open connection before it expires, reconnects
// with exponential backoff and jitter, and surfaces the server's reason for
// every refusal (the close reason in the broker's `--reject-mode close`, the
// `reason` of error frames).
//
// Works in browsers and in any runtime with a WHATWG WebSocket (Node 22+,
// Deno, Bun). The token is never logged, never put in an error message and,
// with the default transport, never put in a URL.

/** The application subprotocol the broker speaks. */
export const PROTOCOL = "wsbroker.v1";

/** Connection states reported to onStateChange. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/**
 * An error the broker (or this client) reported. `reason` is the broker's
 * label (e.g. "expired", "source_disabled", "permission_denied") or one of
 * this client's own: "handshake_failed", "protocol_mismatch", "timeout",
 * "not_connected", "connection_closed", "token_provider_failed".
 */
export class WsBrokerError extends Error {
  constructor(reason, message, { code = 0, hint = "", cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "WsBrokerError";
    this.reason = reason;
    this.code = code;
    this.hint = hint;
  }
}

// Close codes of the broker: 4000 + the HTTP status of a refused upgrade in
// close mode, plus the codes of an open connection (broker/conn.go).
const CLOSE_TOKEN_EXPIRED = 4001;

/** Fix hints by reason, for the refusals a browser is most likely to meet. */
const HINTS = {
  missing_token: "send the token as the subprotocol entry bearer.<jwt> next to wsbroker.v1",
  source_disabled: "the server does not read the token where this client sends it: use transport \"subprotocol\" or enable the source on the server",
  expired: "the token provider returned an expired token; fetch a fresh one (and check the clock)",
  not_yet_valid: "the token is not valid yet: the issuer's clock runs ahead",
  origin_not_allowed: "add this page's origin to the broker's --allowed-origins",
  protocol_not_offered: "offer wsbroker.v1 next to the token entry",
  protocol_mismatch: "the server selected a subprotocol other than wsbroker.v1 (a proxy or a misconfigured server echoing the token entry?)",
  handshake_failed: "the upgrade was refused or the connection dropped; browsers cannot read why: run `wsbroker probe` or switch the broker to --reject-mode close",
  token_expired: "the token expired on the open connection before a refresh",
};

/**
 * Decodes the payload of a JWT without verifying it (verification is the
 * server's job). Returns null when the token is not a JWS.
 */
export function decodeJwtPayload(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4 !== 0) b64 += "=";
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

/** Milliseconds since the epoch at which token expires, or null. */
export function tokenExpiry(token) {
  const p = decodeJwtPayload(token);
  return p && typeof p.exp === "number" ? p.exp * 1000 : null;
}

/**
 * When to refresh a token, in ms from now: ~30 s or 10 % of its lifetime
 * before exp, whichever is earlier, but not before half of what is left has
 * passed (a token shorter than the margin refreshes half-way instead of at
 * once). Null when the token has no exp.
 */
export function refreshDelay(token, now, marginMs = 30000, fraction = 0.1) {
  const p = decodeJwtPayload(token);
  if (!p || typeof p.exp !== "number") return null;
  const exp = p.exp * 1000;
  const left = exp - now;
  if (left <= 0) return 0;
  const iat = typeof p.iat === "number" ? p.iat * 1000 : now;
  const lifetime = Math.max(exp - iat, left);
  const margin = Math.max(marginMs, lifetime * fraction);
  return Math.max(left - margin, left / 2);
}

/** Backoff delay for attempt n (0-based): exponential, capped, jittered. */
export function backoffDelay(n, { initialDelayMs = 500, maxDelayMs = 30000, factor = 2, jitter = 0.5 } = {}, random = Math.random) {
  const base = Math.min(maxDelayMs, initialDelayMs * Math.pow(factor, n));
  return Math.round(base * (1 - jitter * random()));
}

/** Is code a refused-upgrade close code of an authentication failure? */
function isAuthClose(code) {
  return code === CLOSE_TOKEN_EXPIRED || (code >= 4400 && code < 4500 && code !== 4429);
}

export class WsBrokerClient {
  /**
   * @param {object} opts
   * @param {string} opts.url ws:// or wss:// URL of the broker (e.g. wss://host/ws)
   * @param {() => Promise<string>|string} opts.getToken token provider; called
   *   before every connection attempt and before every refresh
   * @param {"subprotocol"|"query"|"cookie"} [opts.transport="subprotocol"]
   *   where the token goes: the Sec-WebSocket-Protocol entry bearer.<jwt>
   *   (the default, the only header a browser can set), the query parameter
   *   (the server must enable it; the token then lands in access logs), or
   *   nowhere (a cookie the browser sends by itself)
   * @param {string} [opts.queryParam="access_token"]
   * @param {(msg: {channel: string, offset: number, data: any}) => void} [opts.onMessage]
   * @param {(state: string, detail: object) => void} [opts.onStateChange]
   * @param {(err: WsBrokerError) => void} [opts.onError]
   * @param {object} [opts.reconnect] {enabled, initialDelayMs, maxDelayMs, factor, jitter, maxAttempts}
   * @param {object} [opts.refresh] {enabled, marginMs, fraction}
   * @param {number} [opts.requestTimeoutMs=10000]
   * @param {typeof WebSocket} [opts.WebSocket]
   */
  constructor(opts) {
    if (!opts || typeof opts.url !== "string") throw new TypeError("WsBrokerClient: url is required");
    if (typeof opts.getToken !== "function" && opts.transport !== "cookie") {
      throw new TypeError("WsBrokerClient: getToken is required");
    }
    const transport = opts.transport ?? "subprotocol";
    if (!["subprotocol", "query", "cookie"].includes(transport)) {
      throw new TypeError(`WsBrokerClient: unknown transport ${JSON.stringify(transport)}`);
    }
    this.url = opts.url;
    this.transport = transport;
    this.queryParam = opts.queryParam ?? "access_token";
    this.getToken = opts.getToken ?? (() => "");
    this.onMessage = opts.onMessage ?? (() => {});
    this.onStateChange = opts.onStateChange ?? (() => {});
    this.onError = opts.onError ?? (() => {});
    this.reconnectOpts = { enabled: true, initialDelayMs: 500, maxDelayMs: 30000, factor: 2, jitter: 0.5, maxAttempts: Infinity, ...opts.reconnect };
    this.refreshOpts = { enabled: true, marginMs: 30000, fraction: 0.1, ...opts.refresh };
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 10000;
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    this.now = opts.now ?? (() => Date.now());

    this.state = State.IDLE;
    this.ws = null;
    this.token = "";
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.channels = new Map(); // channel -> handler or null
    this.attempt = 0;
    this.stopped = false;
    this.lastError = null;
    this.reconnectTimer = null;
    this.refreshTimer = null;
    this.connectWaiters = [];
  }

  /**
   * Opens the connection. Resolves once the socket is open with wsbroker.v1
   * selected; rejects with a WsBrokerError when the first attempt fails and
   * no retry will follow. Later drops reconnect on their own.
   */
  connect() {
    this.stopped = false;
    if (this.state === State.OPEN) return Promise.resolve();
    const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.state === State.IDLE || this.state === State.CLOSED) {
      this.attempt = 0;
      this.#open();
    }
    return p;
  }

  /** Closes the connection for good; pending requests are rejected. */
  close(code = 1000, reason = "") {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    if (this.ws) {
      try {
        this.ws.close(code, reason);
      } catch {
        this.ws.close();
      }
    }
    this.#failPending(new WsBrokerError("not_connected", "the client was closed"));
    this.#settleConnect(new WsBrokerError("not_connected", "the client was closed"));
    this.#setState(State.CLOSED, { code, reason: "client_closed" });
  }

  /** Subscribes to channel; handler (optional) gets that channel's messages. */
  async subscribe(channel, handler = null, { since } = {}) {
    const msg = { type: "subscribe", channel };
    if (since !== undefined) msg.since = since;
    const ack = await this.#request(msg);
    this.channels.set(channel, handler);
    return ack;
  }

  /** Unsubscribes from channel. */
  async unsubscribe(channel) {
    this.channels.delete(channel);
    return this.#request({ type: "unsubscribe", channel });
  }

  /** Publishes data (any JSON value); resolves with the ack ({offset}). */
  publish(channel, data) {
    return this.#request({ type: "publish", channel, data });
  }

  /** Asks the provider for a token now and sends it as a refresh. */
  async refresh() {
    const token = await this.#token();
    await this.#request({ type: "refresh", token });
    this.token = token;
    this.#scheduleRefresh();
  }

  // --- internals -------------------------------------------------------

  #setState(state, detail = {}) {
    if (this.state === state && state !== State.RECONNECTING) return;
    this.state = state;
    try {
      this.onStateChange(state, detail);
    } catch {
      // A throwing callback must not break the client.
    }
  }

  #emitError(err) {
    this.lastError = err;
    try {
      this.onError(err);
    } catch {
      // ignore
    }
  }

  async #token() {
    try {
      const t = await this.getToken();
      return typeof t === "string" ? t : "";
    } catch (e) {
      throw new WsBrokerError("token_provider_failed", "the token provider failed", { cause: e });
    }
  }

  #settleConnect(err) {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) {
      if (err) w.reject(err);
      else w.resolve();
    }
  }

  async #open() {
    this.#setState(this.attempt === 0 ? State.CONNECTING : State.RECONNECTING, { attempt: this.attempt });
    let token = "";
    if (this.transport !== "cookie") {
      try {
        token = await this.#token();
      } catch (err) {
        this.#emitError(err);
        this.#scheduleReconnect(err);
        return;
      }
    }
    if (this.stopped) return;
    this.token = token;
    let url = this.url;
    const protocols = [PROTOCOL];
    if (this.transport === "subprotocol") {
      protocols.push("bearer." + token);
    } else if (this.transport === "query") {
      const u = new URL(url);
      u.searchParams.set(this.queryParam, token);
      url = u.toString();
    }
    let ws;
    try {
      ws = new this.WS(url, protocols);
    } catch (e) {
      // A SyntaxError here names the URL; do not echo it (it may hold the token).
      const err = new WsBrokerError("handshake_failed", "the WebSocket could not be created: " + (e && e.name), { cause: e });
      this.#emitError(err);
      this.#settleConnect(err);
      this.#setState(State.CLOSED, { reason: err.reason });
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      if (ws.protocol !== PROTOCOL) {
        const err = new WsBrokerError(
          "protocol_mismatch",
          `the server selected the subprotocol ${ws.protocol ? "<" + ws.protocol.length + " characters>" : "(none)"}, not ${PROTOCOL}`,
          { hint: HINTS.protocol_mismatch },
        );
        this.stopped = true;
        ws.close(1000);
        this.#emitError(err);
        this.#settleConnect(err);
        this.#setState(State.CLOSED, { reason: err.reason });
        return;
      }
      opened = true;
      this.#setState(State.OPEN, { attempt: this.attempt });
      this.#settleConnect(null);
      this.#scheduleRefresh();
      for (const [channel] of this.channels) {
        this.#request({ type: "subscribe", channel }).catch((err) => this.#emitError(err));
      }
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.#onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      clearTimeout(this.refreshTimer);
      if (this.stopped) return;
      const err = this.#closeError(ev, opened);
      this.#failPending(err);
      this.#emitError(err);
      if (opened && !isAuthClose(ev.code)) {
        // The connection worked: start the backoff over.
        this.attempt = 0;
      }
      this.#scheduleReconnect(err);
    };
    // onerror carries no detail in browsers; onclose follows and explains.
    ws.onerror = () => {};
  }

  #closeError(ev, opened) {
    const code = ev.code;
    let reason = ev.reason || "";
    let message;
    if (reason) {
      message = `the server closed the connection: ${reason} (${code})`;
    } else if (!opened) {
      reason = "handshake_failed";
      const exp = tokenExpiry(this.token);
      if (exp !== null && exp <= this.now()) {
        // The browser hides the HTTP answer; the token tells us anyway.
        reason = "expired";
        message = "the upgrade failed and the token has expired (detected by the client)";
      } else {
        message = `the upgrade failed (${code}); the browser does not expose the server's answer`;
      }
    } else {
      reason = "connection_closed";
      message = `the connection closed (${code})`;
    }
    return new WsBrokerError(reason, message, { code, hint: HINTS[reason] || "" });
  }

  async #scheduleReconnect(err) {
    const ro = this.reconnectOpts;
    let retry = ro.enabled && this.attempt + 1 < ro.maxAttempts;
    if (retry && (isAuthClose(err.code) || err.reason === "expired")) {
      // An authentication failure repeats itself with the same token: only
      // retry when the provider has a different one.
      let next = "";
      try {
        next = await this.#token();
      } catch {
        next = "";
      }
      retry = next !== "" && next !== this.token;
    }
    if (this.stopped) return;
    if (!retry) {
      this.#settleConnect(err);
      this.#setState(State.CLOSED, { reason: err.reason, code: err.code });
      return;
    }
    const delay = backoffDelay(this.attempt, ro);
    this.attempt++;
    this.#setState(State.RECONNECTING, { attempt: this.attempt, delayMs: delay, reason: err.reason });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      if (!this.stopped) this.#open();
    }, delay);
  }

  #scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    if (!this.refreshOpts.enabled || this.transport === "cookie") return;
    const delay = refreshDelay(this.token, this.now(), this.refreshOpts.marginMs, this.refreshOpts.fraction);
    if (delay === null) return;
    this.refreshTimer = setTimeout(() => this.#refreshTick(), delay);
  }

  async #refreshTick() {
    if (this.state !== State.OPEN) return;
    let token;
    try {
      token = await this.#token();
    } catch (err) {
      this.#emitError(err);
      this.refreshTimer = setTimeout(() => this.#refreshTick(), 5000);
      return;
    }
    const exp = tokenExpiry(token);
    if (token === this.token || (exp !== null && exp <= this.now())) {
      // The provider has nothing newer yet: ask again shortly, until exp.
      this.refreshTimer = setTimeout(() => this.#refreshTick(), 5000);
      return;
    }
    try {
      await this.#request({ type: "refresh", token });
      this.token = token;
    } catch (err) {
      this.#emitError(err);
    }
    this.#scheduleRefresh();
  }

  #request(msg) {
    const ws = this.ws;
    if (!ws || this.state !== State.OPEN || ws.readyState !== 1) {
      return Promise.reject(new WsBrokerError("not_connected", "the connection is not open"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new WsBrokerError("timeout", `no answer to ${msg.type} within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...msg, id }));
    });
  }

  #failPending(err) {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(id);
    }
  }

  #onFrame(data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      this.#emitError(new WsBrokerError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    switch (m.type) {
      case "ack": {
        const p = this.pending.get(m.id);
        if (p) {
          clearTimeout(p.timer);
          this.pending.delete(m.id);
          p.resolve(m);
        }
        return;
      }
      case "error": {
        const err = new WsBrokerError(m.reason || "error", m.message || "the server refused the request", { code: m.code, hint: HINTS[m.reason] || "" });
        const p = m.id !== undefined ? this.pending.get(m.id) : undefined;
        if (p) {
          clearTimeout(p.timer);
          this.pending.delete(m.id);
          p.reject(err);
        } else {
          this.#emitError(err);
        }
        return;
      }
      case "message": {
        const h = this.channels.get(m.channel);
        try {
          if (h) h(m);
          this.onMessage(m);
        } catch {
          // ignore handler errors
        }
        return;
      }
    }
  }
}
