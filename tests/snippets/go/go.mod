// The module tests/e2e/test_snippets.py builds the Go snippet of docs/consuming-tokens.md in (with main.go);
// azcore pinned, so the check is reproducible. Refresh with `go get <module>@<version> && go mod tidy` in a copy.
module graphcred.io/snippets

go 1.26.0

require github.com/Azure/azure-sdk-for-go/sdk/azcore v1.24.0

require (
	github.com/Azure/azure-sdk-for-go/sdk/internal v1.13.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)
