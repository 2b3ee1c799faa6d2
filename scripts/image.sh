#!/usr/bin/env bash
# Builds the project's container images without Docker or a registry, and
# imports them into a containerd (the real node of scripts/local-cluster.sh).
#
#   scripts/image.sh build  [controller|node|pause]...   # default: all three
#   scripts/image.sh import [controller|node|pause]...   # into $BC_CONTAINERD_ADDRESS
#
# Each image is a folder tree (the binary, exactly the shared libraries
# `ldd` lists for it, /etc/passwd and /etc/group) turned into an OCI image
# layout by umoci and into an OCI archive by skopeo:
#
#   controller  docker.io/library/bitcoin-controller:latest   (manifests/controller.yaml)
#               the release bitcoin-controller, user 65532:65532, like the
#               Dockerfile's distroless/cc:nonroot image
#   node        docker.io/library/bitcoin-regtest-node:dev   (spec.image of test networks)
#               regtest-node behind `bitcoind`, `bitcoin-cli`, `getent` and
#               `bc-fault` (hack/regtest-node/src/bin/bitcoin-shim.rs), user 1000
#   pause       localhost/bc-pause:1   (the pod sandbox; hack/node-image/pause.c, static)
#
# Archives go to ${BC_IMAGE_DIR:-<target>/images}/<name>.oci.tar. `import`
# runs `ctr -n k8s.io images import` against the containerd socket in
# BC_CONTAINERD_ADDRESS (`local-cluster.sh env` prints it on the kubelet lane).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}"
IMAGE_DIR="${BC_IMAGE_DIR:-${TARGET_DIR}/images}"
CACHE_ROOT="${XDG_CACHE_HOME:-${HOME}/.cache}/bitcoin-controller"

# Images are read by other users (uid 65532, 1000): no umask of the caller
# (local-cluster.sh runs with 077) may leak into their files.
umask 022

IMAGE_CONTROLLER=docker.io/library/bitcoin-controller:latest
IMAGE_NODE=docker.io/library/bitcoin-regtest-node:dev
IMAGE_PAUSE=localhost/bc-pause:1

log() { echo "image: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

image_ref() {
	case "$1" in
	controller) echo "${IMAGE_CONTROLLER}" ;;
	node) echo "${IMAGE_NODE}" ;;
	pause) echo "${IMAGE_PAUSE}" ;;
	*) die "unknown image '$1' (controller, node, pause)" ;;
	esac
}

require_tools() {
	local tool missing=()
	for tool in "$@"; do
		command -v "${tool}" >/dev/null || missing+=("${tool}")
	done
	((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian: apt-get install ${missing[*]})"
}

# copy_with_libs <rootfs> <binary> <path in image>: the binary and every
# shared library ldd resolves for it (the dynamic loader included), each at
# the path ldd shows, so the loader finds them without an ld.so.cache.
copy_with_libs() {
	local rootfs="$1" binary="$2" dest="$3" lib
	install -D -m 0755 "${binary}" "${rootfs}${dest}"
	while read -r lib; do
		[[ -n "${lib}" ]] || continue
		mkdir -p "${rootfs}$(dirname "${lib}")"
		cp -L "${lib}" "${rootfs}${lib}"
	done < <(ldd "${binary}" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p')
}

# base_files <rootfs> <user> <uid>: /etc/passwd, /etc/group, /tmp.
base_files() {
	local rootfs="$1" user="$2" uid="$3"
	mkdir -p "${rootfs}/etc" "${rootfs}/tmp"
	chmod 1777 "${rootfs}/tmp"
	printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:/home/%s:/sbin/nologin\n' \
		"${user}" "${uid}" "${uid}" "${user}" "${user}" >"${rootfs}/etc/passwd"
	printf 'root:x:0:\n%s:x:%s:\n' "${user}" "${uid}" >"${rootfs}/etc/group"
	printf 'hosts: files dns\n' >"${rootfs}/etc/nsswitch.conf"
}

# pack <name> <rootfs> <umoci config flags>...: OCI layout -> OCI archive.
pack() {
	local name="$1" rootfs="$2" ref tag layout out
	shift 2
	ref="$(image_ref "${name}")"
	tag="${ref##*:}"
	layout="${IMAGE_DIR}/${name}.layout"
	out="${IMAGE_DIR}/${name}.oci.tar"
	rm -rf "${layout}" "${out}.tmp"
	umoci init --layout "${layout}"
	umoci new --image "${layout}:${tag}"
	umoci insert --image "${layout}:${tag}" "${rootfs}" /
	umoci config --image "${layout}:${tag}" --os linux --architecture amd64 \
		--config.env PATH=/usr/local/bin:/usr/bin:/bin "$@"
	skopeo copy --quiet "oci:${layout}:${tag}" "oci-archive:${out}.tmp:${tag}"
	mv "${out}.tmp" "${out}"
	rm -rf "${layout}"
	log "built ${ref} -> ${out} ($(du -h "${out}" | cut -f1))"
}

build_controller() {
	local rootfs="${IMAGE_DIR}/controller.rootfs"
	log "cargo build --release --bin bitcoin-controller"
	(cd "${REPO_ROOT}" && nice -n 10 cargo build -q --release --locked -p bitcoin-controller --bin bitcoin-controller)
	rm -rf "${rootfs}"
	copy_with_libs "${rootfs}" "${TARGET_DIR}/release/bitcoin-controller" /usr/local/bin/bitcoin-controller
	base_files "${rootfs}" nonroot 65532
	mkdir -p "${rootfs}/home/nonroot"
	chown 65532:65532 "${rootfs}/home/nonroot"
	pack controller "${rootfs}" --config.user 65532:65532 \
		--config.entrypoint /usr/local/bin/bitcoin-controller --config.workingdir /home/nonroot
	rm -rf "${rootfs}"
}

build_node() {
	local rootfs="${IMAGE_DIR}/node.rootfs" link
	log "cargo build --release -p regtest-node --bin bitcoin-shim"
	(cd "${REPO_ROOT}" && nice -n 10 cargo build -q --release --locked -p regtest-node --bin bitcoin-shim)
	rm -rf "${rootfs}"
	copy_with_libs "${rootfs}" "${TARGET_DIR}/release/bitcoin-shim" /usr/local/bin/bitcoin-shim
	for link in bitcoind bitcoin-cli getent bc-fault; do
		ln -s bitcoin-shim "${rootfs}/usr/local/bin/${link}"
	done
	base_files "${rootfs}" bitcoin 1000
	mkdir -p "${rootfs}/data" "${rootfs}/etc/bitcoin" "${rootfs}/home/bitcoin"
	chown 1000:1000 "${rootfs}/data" "${rootfs}/home/bitcoin"
	pack node "${rootfs}" --config.user 1000:1000 --config.entrypoint /usr/local/bin/bitcoind \
		--config.workingdir /home/bitcoin
	rm -rf "${rootfs}"
}

build_pause() {
	local rootfs="${IMAGE_DIR}/pause.rootfs" bin="${CACHE_ROOT}/pause/pause"
	if [[ ! -x "${bin}" || "${REPO_ROOT}/hack/node-image/pause.c" -nt "${bin}" ]]; then
		require_tools gcc
		mkdir -p "$(dirname "${bin}")"
		gcc -static -Os -Wall -o "${bin}.tmp" "${REPO_ROOT}/hack/node-image/pause.c" ||
			die "building the static pause failed (needs gcc and libc6-dev)"
		mv "${bin}.tmp" "${bin}"
	fi
	rm -rf "${rootfs}"
	install -D -m 0755 "${bin}" "${rootfs}/pause"
	pack pause "${rootfs}" --config.user 65535:65535 --config.entrypoint /pause
	rm -rf "${rootfs}"
}

cmd_build() {
	local name
	require_tools umoci skopeo ldd cargo
	mkdir -p "${IMAGE_DIR}"
	for name in "$@"; do
		image_ref "${name}" >/dev/null
		"build_${name}"
	done
}

cmd_import() {
	local name ref out address="${BC_CONTAINERD_ADDRESS:-}"
	require_tools ctr
	[[ -n "${address}" ]] || die "BC_CONTAINERD_ADDRESS is not set (eval \"\$(BC_NODE=kubelet scripts/local-cluster.sh env)\")"
	[[ -S "${address}" ]] || die "no containerd socket at ${address}"
	for name in "$@"; do
		ref="$(image_ref "${name}")"
		out="${IMAGE_DIR}/${name}.oci.tar"
		[[ -f "${out}" ]] || die "${out} is missing: run '$0 build ${name}' first"
		ctr --address "${address}" -n k8s.io images import --base-name "${ref%:*}" "${out}" >/dev/null
		ctr --address "${address}" -n k8s.io images ls -q name=="${ref}" | grep -qxF "${ref}" ||
			die "${ref} is not in containerd after the import"
		log "imported ${ref}"
	done
}

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	(($# > 0)) || set -- controller node pause
	case "${cmd}" in
	build) cmd_build "$@" ;;
	import) cmd_import "$@" ;;
	*) usage ;;
	esac
}

main "$@"
