// Drives the Go snippet of docs/consuming-tokens.md for tests/e2e/test_snippets.py, which writes the snippet to
// graphcredtoken/credential.go in a copy of this module. One GetToken per line read from stdin; one line out:
// "token <sha256 of the token> <expiry, Unix seconds>" or "error <message>". The token itself is never printed.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"graphcred.io/snippets/graphcredtoken"
)

func main() {
	var cred azcore.TokenCredential = graphcredtoken.NewMountedTokenCredential(os.Args[1])
	options := policy.TokenRequestOptions{Scopes: []string{"https://graph.microsoft.com/.default"}}
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		token, err := cred.GetToken(context.Background(), options)
		if err != nil {
			fmt.Println("error", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Printf("token %x %d\n", sha256.Sum256([]byte(token.Token)), token.ExpiresOn.Unix())
	}
}
