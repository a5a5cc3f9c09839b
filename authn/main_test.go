package authn

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: the JWKS
// cache (keyfunc) refreshes on goroutines of its own, which must end with
// the context the Verifier was given.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
