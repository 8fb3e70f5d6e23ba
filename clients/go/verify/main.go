// Command verify checks JWTs with go-oidc against the keys keyrelay serves on its JWKS
// mirror, and prints their claims.
//
//	verify -jwks http://keyrelay:50051/v1/jwks/acme/okta \
//	    -issuer https://acme.okta.com -audience api "$TOKEN"
//
// A valid token's claims are printed as one line of JSON and the exit status is 0; a refused
// token is explained on standard error and the exit status is 1. With no token argument,
// tokens are read from standard input, one per line, and checked with the same key set; the
// exit status is 1 if any was refused.
//
// It is built and tested with go-oidc 2.1.0 as Debian ships it (GOPATH mode, import path
// github.com/coreos/go-oidc); see tests/api/go.rs.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	oidc "github.com/coreos/go-oidc"
)

func main() {
	jwksURL := flag.String("jwks", "", "keyrelay's JWKS mirror: http://keyrelay:50051/v1/jwks/{tenant}/{provider}")
	issuer := flag.String("issuer", "", "the iss tokens must carry")
	audience := flag.String("audience", "", "an aud tokens must carry")
	flag.Parse()
	if *jwksURL == "" || *issuer == "" || *audience == "" || flag.NArg() > 1 {
		fmt.Fprintln(os.Stderr, "usage: verify -jwks URL -issuer ISS -audience AUD [TOKEN]")
		flag.PrintDefaults()
		os.Exit(2)
	}

	// One key set for the life of the process: it fetches the mirror for the first token and
	// keeps the keys as long as the mirror's Cache-Control says. A kid it does not hold makes
	// it fetch again only within 30 s of that (go-oidc 2.1.0).
	ctx := oidc.ClientContext(context.Background(), &http.Client{Timeout: 10 * time.Second})
	keys := oidc.NewRemoteKeySet(ctx, *jwksURL)
	verifier := oidc.NewVerifier(*issuer, keys, &oidc.Config{
		ClientID: *audience,
		// The algorithms your IdP signs with; asymmetric only, never HS256 or none.
		SupportedSigningAlgs: []string{oidc.RS256, oidc.PS256, oidc.ES256, oidc.ES384, "EdDSA"},
	})

	if flag.NArg() == 1 {
		if !check(ctx, verifier, flag.Arg(0)) {
			os.Exit(1)
		}
		return
	}
	allValid := true
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		if token := strings.TrimSpace(lines.Text()); token != "" {
			allValid = check(ctx, verifier, token) && allValid
		}
	}
	if err := lines.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "reading tokens:", err)
		os.Exit(1)
	}
	if !allValid {
		os.Exit(1)
	}
}

// check verifies token and prints its claims, or why it was refused; it reports whether the
// token is valid.
func check(ctx context.Context, verifier *oidc.IDTokenVerifier, token string) bool {
	verified, err := verifier.Verify(ctx, token)
	if err != nil {
		fmt.Fprintln(os.Stderr, "refused:", err)
		return false
	}
	var claims map[string]interface{}
	if err := verified.Claims(&claims); err != nil {
		fmt.Fprintln(os.Stderr, "refused:", err)
		return false
	}
	out, err := json.Marshal(claims)
	if err != nil {
		fmt.Fprintln(os.Stderr, "refused:", err)
		return false
	}
	fmt.Println(string(out))
	return true
}
