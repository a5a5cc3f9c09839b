package authn

import "net/http"

// Reason says why an upgrade was refused. The set is closed and bounded: it is
// used verbatim as the `reason` label of every metric, as the `reason` field of
// events, rejection bodies and close frames, and as the span `error.type`.
// ReasonNone is the value for an accepted upgrade.
type Reason uint8

// The reasons of DESIGN.md §5. Keep the order of reasonInfo in step.
const (
	ReasonNone Reason = iota
	ReasonMissingToken
	ReasonSourceDisabled
	ReasonMalformedAuthorization
	ReasonMalformedSubprotocol
	ReasonProtocolNotOffered
	ReasonAmbiguousToken
	ReasonTokenTooLarge
	ReasonMalformedToken
	ReasonAlgNotAllowed
	ReasonUnknownKey
	ReasonBadSignature
	ReasonExpired
	ReasonNotYetValid
	ReasonWrongIssuer
	ReasonWrongAudience
	ReasonMissingClaim
	ReasonOriginNotAllowed
	ReasonRateLimited
	ReasonConnectionLimit
	ReasonKeysUnavailable

	// NumReasons is the number of reasons, ReasonNone included; metrics use it
	// to precompute one label child per reason.
	NumReasons
)

// Stage is the step of the upgrade path that produced a reason.
type Stage uint8

// Stages in the order the upgrade path runs them.
const (
	StageNone Stage = iota
	StageExtract
	StageVerify
	StagePolicy
)

func (s Stage) String() string {
	switch s {
	case StageExtract:
		return "extract"
	case StageVerify:
		return "verify"
	case StagePolicy:
		return "policy"
	}
	return "none"
}

type reasonInfo struct {
	label  string
	stage  Stage
	status int
	// bearerError is the RFC 6750 §3.1 error code for WWW-Authenticate; empty
	// when the client sent no credential at all (§3.1: no error code then).
	bearerError string
	desc        string
	hint        string
}

var reasons = [NumReasons]reasonInfo{
	ReasonNone: {
		label:  "none",
		status: http.StatusSwitchingProtocols,
		desc:   "the upgrade was accepted",
	},
	ReasonMissingToken: {
		label:  "missing_token",
		stage:  StageExtract,
		status: http.StatusUnauthorized,
		desc:   "no credential was found in any enabled token source",
		hint:   "send the token as `Authorization: Bearer <jwt>` or, from a browser, as the subprotocol entry `bearer.<jwt>` next to `wsbroker.v1`; if the client does send it, a proxy in between is dropping it",
	},
	ReasonSourceDisabled: {
		label:       "source_disabled",
		stage:       StageExtract,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_request",
		desc:        "a credential was found only in a token source this server does not read",
		hint:        "move the token to an enabled source, or enable that source with --token-sources",
	},
	ReasonMalformedAuthorization: {
		label:       "malformed_authorization",
		stage:       StageExtract,
		status:      http.StatusBadRequest,
		bearerError: "invalid_request",
		desc:        "the Authorization header is not of the form `Bearer <token>`",
		hint:        "send exactly `Authorization: Bearer <jwt>` (no quotes, one header, scheme Bearer)",
	},
	ReasonMalformedSubprotocol: {
		label:       "malformed_subprotocol",
		stage:       StageExtract,
		status:      http.StatusBadRequest,
		bearerError: "invalid_request",
		desc:        "a token entry in Sec-WebSocket-Protocol is empty or cannot be decoded",
		hint:        "offer [\"wsbroker.v1\", \"bearer.<jwt>\"]; the pair form needs the token right after `access_token`",
	},
	ReasonProtocolNotOffered: {
		label:       "protocol_not_offered",
		stage:       StageExtract,
		status:      http.StatusBadRequest,
		bearerError: "invalid_request",
		desc:        "the token came as a subprotocol entry but no application protocol this server speaks was offered",
		hint:        "offer `wsbroker.v1` next to the token entry; a browser drops a connection whose server selects none of the offered protocols",
	},
	ReasonAmbiguousToken: {
		label:       "ambiguous_token",
		stage:       StageExtract,
		status:      http.StatusBadRequest,
		bearerError: "invalid_request",
		desc:        "different tokens were sent in different sources",
		hint:        "send one token, in one place (a stale cookie next to a fresh header is the usual cause)",
	},
	ReasonTokenTooLarge: {
		label:       "token_too_large",
		stage:       StageExtract,
		status:      http.StatusRequestHeaderFieldsTooLarge,
		bearerError: "invalid_request",
		desc:        "the token is larger than the configured limit",
		hint:        "keep claims small (put permissions in scopes, not lists), or raise --max-token-bytes",
	},
	ReasonMalformedToken: {
		label:       "malformed_token",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token is not a compact JWS (three base64url segments of JSON)",
		hint:        "send the raw JWT, not a quoted, URL-encoded or opaque token",
	},
	ReasonAlgNotAllowed: {
		label:       "alg_not_allowed",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token's signing algorithm is not in the allow-list",
		hint:        "sign with an algorithm listed in --jwt-algs that matches the configured key type (`none` is never accepted)",
	},
	ReasonUnknownKey: {
		label:       "unknown_key",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token's key id is not in the key set, even after a refresh",
		hint:        "check that the issuer's signing key is published in the JWKS the server reads (--jwks-url, --jwt-key-file)",
	},
	ReasonBadSignature: {
		label:       "bad_signature",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token's signature does not verify with the configured key",
		hint:        "the token was signed with another key or secret than the server has (check the secret file and the environment)",
	},
	ReasonExpired: {
		label:       "expired",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token's exp has passed",
		hint:        "fetch a fresh token before connecting; check the client's clock",
	},
	ReasonNotYetValid: {
		label:       "not_yet_valid",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token's nbf or iat is in the future",
		hint:        "the issuer's clock runs ahead of the server's; sync clocks or raise --jwt-leeway",
	},
	ReasonWrongIssuer: {
		label:       "wrong_issuer",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token's iss is not the configured issuer",
		hint:        "request the token from the issuer set in --jwt-issuer",
	},
	ReasonWrongAudience: {
		label:       "wrong_audience",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "the token's aud does not include the configured audience",
		hint:        "request a token for the audience set in --jwt-audience",
	},
	ReasonMissingClaim: {
		label:       "missing_claim",
		stage:       StageVerify,
		status:      http.StatusUnauthorized,
		bearerError: "invalid_token",
		desc:        "a required claim (sub, exp) is absent",
		hint:        "issue tokens with a subject and an expiry",
	},
	ReasonOriginNotAllowed: {
		label:       "origin_not_allowed",
		stage:       StagePolicy,
		status:      http.StatusForbidden,
		bearerError: "invalid_request",
		desc:        "the Origin header is not in the allow-list",
		hint:        "add the page's origin to --allowed-origins (cookie tokens always need it)",
	},
	ReasonRateLimited: {
		label:  "rate_limited",
		stage:  StagePolicy,
		status: http.StatusTooManyRequests,
		desc:   "too many failed attempts from this address",
		hint:   "fix the client's failures, then retry with backoff",
	},
	ReasonConnectionLimit: {
		label:  "connection_limit",
		stage:  StagePolicy,
		status: http.StatusTooManyRequests,
		desc:   "the subject (or the server) already holds the maximum number of connections",
		hint:   "close unused connections or share one per client",
	},
	ReasonKeysUnavailable: {
		label:  "keys_unavailable",
		stage:  StageVerify,
		status: http.StatusServiceUnavailable,
		desc:   "the key set could not be fetched and no key is cached: the server's fault, not the client's",
		hint:   "check that the broker reaches --jwks-url; clients should retry with backoff",
	},
}

// String returns the label value, e.g. "missing_token".
func (r Reason) String() string {
	if r >= NumReasons {
		return "unknown"
	}
	return reasons[r].label
}

// Stage returns the stage that produces r.
func (r Reason) Stage() Stage { return r.info().stage }

// Status returns the HTTP status of a handshake refused for r.
func (r Reason) Status() int { return r.info().status }

// BearerError returns the RFC 6750 error code for WWW-Authenticate, or "".
func (r Reason) BearerError() string { return r.info().bearerError }

// Description is a one-line statement of what happened.
func (r Reason) Description() string { return r.info().desc }

// Hint is a one-line statement of how to fix it.
func (r Reason) Hint() string { return r.info().hint }

func (r Reason) info() *reasonInfo {
	if r >= NumReasons {
		return &reasonInfo{label: "unknown", status: http.StatusInternalServerError}
	}
	return &reasons[r]
}

// ParseReason returns the reason with the given label.
func ParseReason(label string) (Reason, bool) {
	for i := range reasons {
		if reasons[i].label == label {
			return Reason(i), true
		}
	}
	return ReasonNone, false
}

// Reasons returns every reason but ReasonNone, in contract order.
func Reasons() []Reason {
	out := make([]Reason, 0, NumReasons-1)
	for r := ReasonMissingToken; r < NumReasons; r++ {
		out = append(out, r)
	}
	return out
}
