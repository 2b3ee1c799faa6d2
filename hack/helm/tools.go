//go:build tools

// Package tools pins the command this module builds, so that `go mod tidy`
// keeps its dependencies in go.sum. Build it by package path:
// `go build helm.sh/helm/v3/cmd/helm` (scripts/lib/helm.sh does).
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
