package main

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	"github.com/wsbroker/wsbroker/authn"
)

type tokenOptions struct {
	hmacSecretFile string
	keyFile        string
	alg            string
	sub, kid       string
	iss            string
	aud            []string
	ttl            time.Duration
	nbf            time.Duration
	channels       []string
	claims         []string
}

func newTokenCmd() *cobra.Command {
	o := &tokenOptions{}
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint a token for development and tests",
		Long: "Mint a signed JWT. With --jwt-hmac-secret-file it signs HS256 (or --alg HS384/HS512); " +
			"with --key-file (a PEM private key) RS256, ES256 or EdDSA by key type (or --alg).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := mintToken(o, time.Now())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	cmd.AddCommand(newTokenInspectCmd())
	f := cmd.Flags()
	f.StringVar(&o.hmacSecretFile, "jwt-hmac-secret-file", "", "HMAC secret file (same as serve's)")
	f.StringVar(&o.keyFile, "key-file", "", "PEM private key (RSA, EC or Ed25519)")
	f.StringVar(&o.alg, "alg", "", "signing algorithm (default: HS256, RS256, ES256 or EdDSA by key)")
	f.StringVar(&o.sub, "sub", "dev-user", "subject")
	f.StringVar(&o.kid, "kid", "", "key id header")
	f.StringVar(&o.iss, "iss", "", "issuer")
	f.StringSliceVar(&o.aud, "aud", nil, "audience (repeatable)")
	f.DurationVar(&o.ttl, "ttl", time.Hour, "lifetime; negative mints an expired token")
	f.DurationVar(&o.nbf, "nbf", 0, "not-before offset from now (positive: not yet valid)")
	f.StringSliceVar(&o.channels, "channels", []string{"*"}, "channel patterns of the channels claim")
	f.StringArrayVar(&o.claims, "claim", nil, "extra claim name=value (value parsed as JSON when it is JSON, else a string)")
	return cmd
}

func mintToken(o *tokenOptions, now time.Time) (string, error) {
	claims := jwt.MapClaims{
		"sub": o.sub,
		"iat": now.Unix(),
		"exp": now.Add(o.ttl).Unix(),
	}
	if o.sub == "" {
		delete(claims, "sub")
	}
	if o.nbf != 0 {
		claims["nbf"] = now.Add(o.nbf).Unix()
	}
	if o.iss != "" {
		claims["iss"] = o.iss
	}
	switch len(o.aud) {
	case 0:
	case 1:
		claims["aud"] = o.aud[0]
	default:
		claims["aud"] = o.aud
	}
	if len(o.channels) > 0 {
		claims["channels"] = o.channels
	}
	for _, c := range o.claims {
		name, val, ok := strings.Cut(c, "=")
		if !ok || name == "" {
			return "", fmt.Errorf("claim: %q is not name=value", c)
		}
		var v any
		if err := json.Unmarshal([]byte(val), &v); err != nil {
			v = val
		}
		claims[name] = v
	}
	var key any
	alg := o.alg
	switch {
	case o.hmacSecretFile != "" && o.keyFile != "":
		return "", errors.New("give --jwt-hmac-secret-file or --key-file, not both")
	case o.hmacSecretFile != "":
		secret, err := authn.LoadHMACSecret(o.hmacSecretFile)
		if err != nil {
			return "", err
		}
		key = secret
		if alg == "" {
			alg = "HS256"
		}
	case o.keyFile != "":
		raw, err := os.ReadFile(o.keyFile)
		if err != nil {
			return "", fmt.Errorf("key-file: %w", err)
		}
		k, def, err := parsePrivateKey(raw)
		if err != nil {
			return "", fmt.Errorf("key-file %s: %w", o.keyFile, err)
		}
		key = k
		if alg == "" {
			alg = def
		}
	default:
		return "", errors.New("no signing key: give --jwt-hmac-secret-file or --key-file")
	}
	return signToken(alg, o.kid, claims, key)
}

// signToken signs claims; it is shared by `token` and `serve --dev`.
func signToken(alg, kid string, claims jwt.Claims, key any) (string, error) {
	m := jwt.GetSigningMethod(alg)
	if m == nil || alg == "none" {
		return "", fmt.Errorf("alg: unknown or refused algorithm %q", alg)
	}
	t := jwt.NewWithClaims(m, claims)
	if kid != "" {
		t.Header["kid"] = kid
	}
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign %s: %w", alg, err)
	}
	return s, nil
}

func parsePrivateKey(raw []byte) (crypto.Signer, string, error) {
	if k, err := jwt.ParseRSAPrivateKeyFromPEM(raw); err == nil {
		return k, "RS256", nil
	}
	if k, err := jwt.ParseECPrivateKeyFromPEM(raw); err == nil {
		switch k.Curve.Params().BitSize {
		case 384:
			return k, "ES384", nil
		case 521:
			return k, "ES512", nil
		}
		return k, "ES256", nil
	}
	if k, err := jwt.ParseEdPrivateKeyFromPEM(raw); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, "EdDSA", nil
		}
	}
	return nil, "", errors.New("not a PEM RSA, EC or Ed25519 private key")
}

func devToken(secret []byte, o *serveOptions) (string, error) {
	now := time.Now()
	claims := jwt.MapClaims{
		"sub":      o.devTokenSub,
		"iat":      now.Unix(),
		"exp":      now.Add(o.devTokenTTL).Unix(),
		"channels": []string{"*"},
	}
	if o.issuer != "" {
		claims["iss"] = o.issuer
	}
	if o.audience != "" {
		claims["aud"] = o.audience
	}
	return signToken("HS256", "", claims, secret)
}
