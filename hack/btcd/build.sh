#!/usr/bin/env bash
# Build btcd (a Go Bitcoin full node) from the Go module proxy into
# ~/.cache/bitcoin-controller/btcd-<version>/ and print the binary's path.
# Used by hack/regtest-node/tests/btcd_interop.rs (BTCD_BIN=$(hack/btcd/build.sh)).
# A no-op when the binary is already cached.
set -euo pipefail

VERSION="${BTCD_VERSION:-v0.24.2}"
DEST="${XDG_CACHE_HOME:-$HOME/.cache}/bitcoin-controller/btcd-${VERSION}"
BIN="${DEST}/btcd"

if [[ ! -x "${BIN}" ]]; then
    command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
    mkdir -p "${DEST}"
    echo "building btcd ${VERSION} into ${DEST} ..." >&2
    # `go install pkg@version` resolves btcd's own go.mod through the Go
    # module proxy; -trimpath keeps local paths out of the binary.
    GOBIN="${DEST}" CGO_ENABLED=0 go install -trimpath "github.com/btcsuite/btcd@${VERSION}" >&2
fi
echo "${BIN}"
