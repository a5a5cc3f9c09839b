package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wsbroker/wsbroker/authn"
)

type inspectOptions struct {
	hmacSecretFile string
	keyFiles       []string
	jwksURL        string
	algs           string
	issuer         string
	audience       string
	leeway         time.Duration
	json           bool
	timeout        time.Duration
	now            func() time.Time
	httpClient     *http.Client
}

func newTokenInspectCmd() *cobra.Command {
	o := &inspectOptions{now: time.Now}
	cmd := &cobra.Command{
		Use:   "inspect TOKEN|-",
		Short: "Decode a token (without trusting it) and say what the server will think of it",
		Long: "Decode a JWT without verifying it and print its header and claims (never its signature). " +
			"Then check it the way `wsbroker serve` with the same flags would: expired? not yet valid? " +
			"algorithm allowed? key id known? issuer and audience as configured? With a key " +
			"(--jwt-hmac-secret-file, --jwt-key-file or --jwks-url) the token is verified for real and " +
			"the server's reason label printed.\n\nTOKEN - reads it from standard input. " +
			"Exit status 1 when the server would refuse the token.",
		Example: "  wsbroker token inspect \"$TOKEN\"\n" +
			"  wsbroker token inspect - --jwt-hmac-secret-file secret.txt --jwt-issuer https://id.example.com < tok.jwt",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := bindEnv(cmd, os.Getenv); err != nil {
				return err
			}
			tok := args[0]
			if tok == "-" {
				raw, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
				if err != nil {
					return fmt.Errorf("read token from stdin: %w", err)
				}
				tok = string(raw)
			}
			return runInspect(cmd.Context(), o, tok, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.hmacSecretFile, "jwt-hmac-secret-file", "", "as serve: HMAC secret file")
	f.StringArrayVar(&o.keyFiles, "jwt-key-file", nil, "as serve: PEM public key or JWKS JSON file (repeatable)")
	f.StringVar(&o.jwksURL, "jwks-url", "", "as serve: JWKS URL")
	f.StringVar(&o.algs, "jwt-algs", "", "as serve: allowed algorithms (default: those of the given keys)")
	f.StringVar(&o.issuer, "jwt-issuer", "", "as serve: required iss")
	f.StringVar(&o.audience, "jwt-audience", "", "as serve: required aud")
	f.DurationVar(&o.leeway, "jwt-leeway", 30*time.Second, "as serve: clock skew tolerated on exp, nbf and iat")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound on fetching --jwks-url")
	return cmd
}

// decodedToken is a JWT's header and claims, unverified.
type decodedToken struct {
	Header    map[string]any
	Claims    map[string]any
	HeaderRaw json.RawMessage
	ClaimsRaw json.RawMessage
	SigBytes  int
}

// decodeToken splits and decodes a compact JWS without verifying it.
func decodeToken(tok string) (*decodedToken, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%d segments separated by dots, want 3 (header.claims.signature)", len(parts))
	}
	d := &decodedToken{}
	for i, dst := range []*map[string]any{&d.Header, &d.Claims} {
		name := [2]string{"header", "claims"}[i]
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[i], "="))
		if err != nil {
			return nil, fmt.Errorf("%s segment is not base64url: %w", name, err)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(dst); err != nil {
			return nil, fmt.Errorf("%s segment is not a JSON object: %w", name, err)
		}
		if i == 0 {
			d.HeaderRaw = raw
		} else {
			d.ClaimsRaw = raw
		}
	}
	sig, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[2], "="))
	if err != nil {
		return nil, fmt.Errorf("signature segment is not base64url: %w", err)
	}
	d.SigBytes = len(sig)
	return d, nil
}

func (d *decodedToken) str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// numericDate returns a NumericDate claim and whether it is present and a
// number.
func (d *decodedToken) numericDate(k string) (time.Time, bool, bool) {
	v, ok := d.Claims[k]
	if !ok {
		return time.Time{}, false, true
	}
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, true, false
	}
	f, err := n.Float64()
	if err != nil {
		return time.Time{}, true, false
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)).UTC(), true, true
}

func (d *decodedToken) audiences() []string {
	switch v := d.Claims["aud"].(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, a := range v {
			if s, ok := a.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// tokenSummary describes a token in one line without printing it.
func tokenSummary(tok string, now time.Time) string {
	d, err := decodeToken(tok)
	if err != nil {
		return fmt.Sprintf("of %d bytes, not a JWT (%v); never printed", len(tok), err)
	}
	parts := []string{d.str(d.Header, "alg")}
	if kid := d.str(d.Header, "kid"); kid != "" {
		parts = append(parts, "kid "+kid)
	}
	if sub := d.str(d.Claims, "sub"); sub != "" {
		parts = append(parts, fmt.Sprintf("sub %q", sub))
	}
	if exp, present, ok := d.numericDate("exp"); present && ok {
		if left := exp.Sub(now); left > 0 {
			parts = append(parts, "expires in "+left.Round(time.Second).String())
		} else {
			parts = append(parts, "EXPIRED "+(-left).Round(time.Second).String()+" ago")
		}
	}
	return strings.Join(parts, ", ") + "; never printed"
}

// inspectCheck is one line of the verdict.
type inspectCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, fail, warn, skip
	Detail string `json:"detail"`
	// Reason is the server's reason when Status is fail.
	Reason string `json:"reason,omitempty"`
}

type inspectReport struct {
	Header         json.RawMessage `json:"header,omitempty"`
	Claims         json.RawMessage `json:"claims,omitempty"`
	SignatureBytes int             `json:"signature_bytes"`
	DecodeError    string          `json:"decode_error,omitempty"`
	Now            time.Time       `json:"now"`
	Checks         []inspectCheck  `json:"checks"`
	// Verified says whether Reason comes from a real verification with the
	// configured keys (true) or is predicted from the claims (false).
	Verified    bool   `json:"verified"`
	Reason      string `json:"reason"`
	Description string `json:"description,omitempty"`
	Hint        string `json:"hint,omitempty"`
	Detail      string `json:"detail,omitempty"`
}

func runInspect(ctx context.Context, o *inspectOptions, tok string, out io.Writer) error {
	tok = strings.TrimSpace(tok)
	tok = strings.TrimPrefix(tok, "Bearer ")
	now := time.Now
	if o.now != nil {
		now = o.now
	}
	rep := inspectReport{Now: now().UTC().Truncate(time.Second)}
	d, derr := decodeToken(tok)
	if derr != nil {
		rep.DecodeError = derr.Error()
		rep.Checks = append(rep.Checks, inspectCheck{Name: "format", Status: "fail", Detail: derr.Error(), Reason: authn.ReasonMalformedToken.String()})
	} else {
		rep.Header, rep.Claims, rep.SignatureBytes = indentJSON(d.HeaderRaw), indentJSON(d.ClaimsRaw), d.SigBytes
		rep.Checks = append(rep.Checks, inspectCheck{Name: "format", Status: "ok", Detail: "compact JWS: header, claims and a signature of " + fmt.Sprint(d.SigBytes) + " bytes"})
	}

	keysGiven := o.hmacSecretFile != "" || len(o.keyFiles) > 0 || o.jwksURL != ""
	algs, err := authn.ParseAlgs(o.algs)
	if err != nil {
		return err
	}
	var ver *authn.Verifier
	if keysGiven {
		vcfg := authn.VerifyConfig{
			Algs: algs, Issuer: o.issuer, Audience: o.audience, Leeway: o.leeway,
			KeyFiles: o.keyFiles, JWKSURL: o.jwksURL, Now: now, HTTPClient: o.httpClient,
		}
		if o.hmacSecretFile != "" {
			if vcfg.HMACSecret, err = authn.LoadHMACSecret(o.hmacSecretFile); err != nil {
				return err
			}
		}
		vctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if ver, err = authn.NewVerifier(vctx, vcfg); err != nil {
			return fmt.Errorf("load keys: %w", err)
		}
		algs = ver.Algs()
	}

	if d != nil {
		rep.Checks = append(rep.Checks, claimChecks(ctx, o, d, rep.Now, algs, keysGiven)...)
	}

	if ver != nil {
		_, vd := ver.Verify(ctx, []byte(tok))
		rep.Verified, rep.Reason, rep.Detail = true, vd.Reason.String(), vd.Detail
	} else {
		rep.Reason = authn.ReasonNone.String()
		for _, c := range rep.Checks {
			if c.Status == "fail" && c.Reason != "" {
				rep.Reason = c.Reason
				break
			}
		}
	}
	if r, ok := authn.ParseReason(rep.Reason); ok && r != authn.ReasonNone {
		rep.Description, rep.Hint = r.Description(), r.Hint()
	}

	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	} else if err := printInspect(out, &rep, keysGiven); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if rep.Reason != authn.ReasonNone.String() {
		return fmt.Errorf("the server would refuse this token: %s", rep.Reason)
	}
	return nil
}

// claimChecks predicts the verifier's decisions from the claims, in the
// order it makes them.
func claimChecks(ctx context.Context, o *inspectOptions, d *decodedToken, now time.Time, algs []string, keysGiven bool) []inspectCheck {
	var cs []inspectCheck
	add := func(name, status, reason, detail string, args ...any) {
		cs = append(cs, inspectCheck{Name: name, Status: status, Reason: reason, Detail: fmt.Sprintf(detail, args...)})
	}
	lw := o.leeway

	alg := d.str(d.Header, "alg")
	switch {
	case alg == "" || strings.EqualFold(alg, "none"):
		add("alg", "fail", authn.ReasonAlgNotAllowed.String(), "%q is never accepted", alg)
	case len(algs) == 0:
		add("alg", "skip", "", "%s: not checked (give --jwt-algs or a key to know the allow-list)", alg)
	case contains(algs, alg):
		add("alg", "ok", "", "%s is allowed (%s)", alg, strings.Join(algs, ", "))
	default:
		add("alg", "fail", authn.ReasonAlgNotAllowed.String(), "%s is not in the allow-list (%s)", alg, strings.Join(algs, ", "))
	}
	if crit, ok := d.Header["crit"]; ok {
		add("crit", "fail", authn.ReasonMalformedToken.String(), "header has crit %v: extensions this server does not understand make it refuse the token", crit)
	}

	cs = append(cs, kidCheck(ctx, o, d.str(d.Header, "kid"), keysGiven))

	exp, present, ok := d.numericDate("exp")
	switch {
	case !present:
		add("exp", "fail", authn.ReasonMissingClaim.String(), "absent: the server requires an expiry")
	case !ok:
		add("exp", "fail", authn.ReasonMalformedToken.String(), "not a number")
	case now.After(exp.Add(lw)):
		add("exp", "fail", authn.ReasonExpired.String(), "%s: expired %s ago (leeway %s)", exp.Format(time.RFC3339), now.Sub(exp).Round(time.Second), lw)
	case now.After(exp):
		add("exp", "warn", "", "%s: expired %s ago, still inside the leeway of %s", exp.Format(time.RFC3339), now.Sub(exp).Round(time.Second), lw)
	default:
		add("exp", "ok", "", "%s: expires in %s", exp.Format(time.RFC3339), exp.Sub(now).Round(time.Second))
	}
	for _, name := range []string{"nbf", "iat"} {
		t, present, ok := d.numericDate(name)
		switch {
		case !present:
			add(name, "ok", "", "absent")
		case !ok:
			add(name, "fail", authn.ReasonMalformedToken.String(), "not a number")
		case t.After(now.Add(lw)):
			add(name, "fail", authn.ReasonNotYetValid.String(), "%s: %s in the future (leeway %s): the issuer's clock runs ahead", t.Format(time.RFC3339), t.Sub(now).Round(time.Second), lw)
		default:
			add(name, "ok", "", "%s", t.Format(time.RFC3339))
		}
	}

	iss := d.str(d.Claims, "iss")
	switch {
	case o.issuer == "":
		add("iss", "skip", "", "%s: not checked (no --jwt-issuer)", quoteOrAbsent(iss))
	case iss == o.issuer:
		add("iss", "ok", "", "%q matches", iss)
	case iss == "":
		// golang-jwt reports a required but absent iss as a missing claim.
		add("iss", "fail", authn.ReasonMissingClaim.String(), "absent, but --jwt-issuer %q requires it", o.issuer)
	default:
		add("iss", "fail", authn.ReasonWrongIssuer.String(), "%s, want %q", quoteOrAbsent(iss), o.issuer)
	}
	auds := d.audiences()
	switch {
	case o.audience == "" && len(auds) == 0:
		add("aud", "skip", "", "absent: not checked (no --jwt-audience)")
	case o.audience == "":
		add("aud", "skip", "", "%q: not checked (no --jwt-audience)", auds)
	case contains(auds, o.audience):
		add("aud", "ok", "", "%q includes %q", auds, o.audience)
	case len(auds) == 0:
		// golang-jwt reports a required but absent aud as a missing claim.
		add("aud", "fail", authn.ReasonMissingClaim.String(), "absent, but --jwt-audience %q requires it", o.audience)
	default:
		add("aud", "fail", authn.ReasonWrongAudience.String(), "%q does not include %q", auds, o.audience)
	}
	if sub := d.str(d.Claims, "sub"); sub == "" {
		add("sub", "fail", authn.ReasonMissingClaim.String(), "absent: the server requires a subject")
	} else {
		add("sub", "ok", "", "%q", sub)
	}
	return cs
}

// kidCheck says whether the configured keys know the token's kid. Keys
// without a kid (the HMAC secret, a PEM file) verify any token of their
// family, as the server's verifier does.
func kidCheck(ctx context.Context, o *inspectOptions, kid string, keysGiven bool) inspectCheck {
	c := inspectCheck{Name: "kid"}
	if !keysGiven {
		c.Status, c.Detail = "skip", quoteOrAbsent(kid)+": not checked (no keys given)"
		return c
	}
	var kids []string
	kidless := o.hmacSecretFile != ""
	for _, path := range o.keyFiles {
		ks, hasKidless, err := kidsOfFile(path)
		if err != nil {
			c.Status, c.Detail = "warn", fmt.Sprintf("cannot list the kids of %s: %v", path, err)
			return c
		}
		kids = append(kids, ks...)
		kidless = kidless || hasKidless
	}
	if o.jwksURL != "" {
		ks, err := kidsOfURL(ctx, o, o.jwksURL)
		if err != nil {
			c.Status, c.Detail = "warn", fmt.Sprintf("cannot fetch %s: %v (the server would answer keys_unavailable without a cached key)", o.jwksURL, err)
			return c
		}
		kids = append(kids, ks...)
	}
	switch {
	case kid == "" && len(kids)+boolInt(kidless) > 0:
		c.Status, c.Detail = "ok", "no kid: every key of the algorithm's family is tried"
	case contains(kids, kid):
		c.Status, c.Detail = "ok", fmt.Sprintf("%q is in the key set", kid)
	case kidless:
		c.Status, c.Detail = "ok", fmt.Sprintf("%q is not in the key set, but keys without a kid (secret or PEM) are tried", kid)
	default:
		c.Status, c.Reason = "fail", authn.ReasonUnknownKey.String()
		c.Detail = fmt.Sprintf("%q is not among the known kids %q", kid, kids)
	}
	return c
}

func quoteOrAbsent(s string) string {
	if s == "" {
		return "absent"
	}
	return fmt.Sprintf("%q", s)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// jwksKids is the part of a JWKS document that names keys.
type jwksKids struct {
	Keys []struct {
		Kid string `json:"kid"`
		Kty string `json:"kty"`
	} `json:"keys"`
}

func kidsOfFile(path string) ([]string, bool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, false, fmt.Errorf("read: %w", err)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		// A PEM key has no kid.
		return nil, true, nil
	}
	return kidsOfJWKS(raw)
}

func kidsOfJWKS(raw []byte) ([]string, bool, error) {
	var set jwksKids
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, false, fmt.Errorf("JWKS: %w", err)
	}
	var kids []string
	kidless := false
	for _, k := range set.Keys {
		if k.Kty == "oct" {
			continue
		}
		if k.Kid == "" {
			kidless = true
			continue
		}
		kids = append(kids, k.Kid)
	}
	return kids, kidless, nil
}

func kidsOfURL(ctx context.Context, o *inspectOptions, u string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	client := o.httpClient
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch: %s", resp.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	kids, _, err := kidsOfJWKS(raw)
	return kids, err
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func indentJSON(raw []byte) json.RawMessage {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return nil
	}
	return b.Bytes()
}

func printInspect(w io.Writer, rep *inspectReport, keysGiven bool) error {
	var b strings.Builder
	if rep.DecodeError == "" {
		fmt.Fprintf(&b, "header:\n%s\n", indentBlock(string(rep.Header)))
		fmt.Fprintf(&b, "claims:\n%s\n", indentBlock(string(rep.Claims)))
		fmt.Fprintf(&b, "signature: %d bytes (not shown)\n\n", rep.SignatureBytes)
	} else {
		fmt.Fprintf(&b, "not a JWT: %s\n\n", rep.DecodeError)
	}
	fmt.Fprintf(&b, "checks at %s:\n", rep.Now.Format(time.RFC3339))
	for _, c := range rep.Checks {
		status := c.Status
		if c.Reason != "" {
			status += " (" + c.Reason + ")"
		}
		fmt.Fprintf(&b, "  %-7s %-26s %s\n", c.Name, status, c.Detail)
	}
	b.WriteString("\n")
	how := "predicted from the claims without keys: the signature was not checked"
	if rep.Verified {
		how = "verified with the given keys, as the server would"
	}
	if !keysGiven && rep.DecodeError != "" {
		how = "the token cannot be decoded"
	}
	if rep.Reason == authn.ReasonNone.String() {
		fmt.Fprintf(&b, "verdict: accepted (%s)\n", how)
	} else {
		fmt.Fprintf(&b, "verdict: %s (%s)\n", rep.Reason, how)
		if rep.Description != "" {
			fmt.Fprintf(&b, "  what: %s\n", rep.Description)
		}
		if rep.Detail != "" {
			fmt.Fprintf(&b, "  detail: %s\n", rep.Detail)
		}
		if rep.Hint != "" {
			fmt.Fprintf(&b, "  fix:  %s\n", rep.Hint)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func indentBlock(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n")
}
