#!/usr/bin/env bash
# Builds the Debian package: target/debian/bgproxy_<version>-1_amd64.deb
# (under $CARGO_TARGET_DIR when set).
#
#   packaging/build-deb.sh                  # the release profile (fat LTO, ~10 min)
#   packaging/build-deb.sh --profile deb    # no fat LTO: a quicker optimised package
#   packaging/build-deb.sh --profile dev    # the debug binaries cargo test built (CI)
#
# Steps: build both binaries (bgproxy, and bgctl from crate bgproxy-control);
# have each write its man pages and completions from its own clap definition
# (`<bin> package-assets DIR`) into packaging/assets/; copy the units of
# systemd/ there with /usr/bin paths; check that packaging/assets/changelog
# names this version; then `cargo deb -p bgproxy --no-build` packs what
# proxy/Cargo.toml [package.metadata.deb] lists. packaging/assets/ is kept in
# git, so a bare `cargo deb -p bgproxy` packs the same files; run this script
# after changing a command line or a unit, and commit what it changed
# (tests/tests/packaging.rs fails until then). Other arguments go to cargo
# deb (e.g. --output DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
deb_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    *) deb_args+=("$1"); shift ;;
  esac
done

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "build-deb.sh: cargo-deb is missing; install it with: cargo install --locked cargo-deb" >&2
  exit 1
fi

target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# Cargo's directory of a profile: dev is "debug", every other its own name.
case "$profile" in
  dev) bin_dir="$target_dir/debug" ;;
  *) bin_dir="$target_dir/$profile" ;;
esac

# Not --locked: like cargo-deb's own build, a Cargo.lock behind Cargo.toml is
# brought up to date rather than failing the package.
if [ "$profile" = dev ]; then
  # CI's check of the package (.ci/run): the binaries `cargo test
  # --workspace` just built and tested, built the same way so nothing is
  # compiled again. cargo-deb warns that dev is not for releases: right.
  cargo build --workspace --all-targets
else
  # The same binaries cargo-deb would build (it takes bgctl from the workspace).
  cargo build --profile "$profile" -p bgproxy --bin bgproxy -p bgproxy-control --bin bgctl
fi

out=packaging/assets
rm -rf "$out/man" "$out/completions" "$out/systemd"
mkdir -p "$out/systemd"
"$bin_dir/bgproxy" package-assets "$out" >/dev/null
"$bin_dir/bgctl" package-assets "$out" >/dev/null

# The units as they are in systemd/, with the binaries where the package
# puts them. The state directory is the daemon's alone: 0700, as the
# postinst makes it (a no-op once the unit says so itself). The same rewrite
# is in tests/tests/packaging.rs, which checks the copies.
for unit in bgproxy.service bgproxy.socket; do
  if [ -f "systemd/$unit" ]; then
    sed -e 's#/usr/local/bin/#/usr/bin/#g' \
        -e 's#^StateDirectoryMode=.*#StateDirectoryMode=0700#' \
        "systemd/$unit" > "$out/systemd/$unit"
  fi
done
if grep -n '^[^#]*/usr/local' "$out"/systemd/*; then
  echo "build-deb.sh: a unit still runs something from /usr/local (above)" >&2
  exit 1
fi

version=$(cargo pkgid -p bgproxy | sed 's/.*[#@]//')
if ! head -1 "$out/changelog" | grep -qF "bgproxy ($version-1)"; then
  echo "build-deb.sh: $out/changelog does not start with version $version-1: add its entry" >&2
  exit 1
fi

cargo deb -p bgproxy --no-build --profile "$profile" "${deb_args[@]}"
