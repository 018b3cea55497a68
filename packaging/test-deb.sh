#!/usr/bin/env bash
# The Debian package, installed for real on this machine (root), checked, and
# removed again so the machine is as it was: .ci/run calls it.
#
#   packaging/test-deb.sh [PATH.deb]     # without PATH: build-deb.sh --profile $BGPROXY_DEB_PROFILE
#
# BGPROXY_DEB_PROFILE: `deb` by default (optimised, no fat LTO); .ci/run
# sets `dev`, which packs the binaries `cargo test --workspace` just built
# (the package is what is tested here, not the optimiser).
#
# Checks after `dpkg -i`: both binaries (same version and commit), the units
# with /usr/bin paths (systemd-analyze verify), /etc/bgproxy/bgproxy.toml a
# conffile that `bgproxy --check` accepts (as root and as the bgproxy user),
# the man pages (man -l), the bash/zsh/fish completions, the bgproxy system
# user, /var/lib/bgproxy bgproxy:bgproxy 0700. Then `dpkg -r` keeps the
# conffile and the state, `dpkg --purge` removes the conffile and keeps the
# state and the user, a reinstall over them keeps the state; finally the
# documented `rm -rf /var/lib/bgproxy && deluser --system bgproxy`.
# It refuses to run where bgproxy is installed or its user or directories
# exist: it would not know what to leave behind.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-deb.sh: FAIL: $*" >&2; exit 1; }
# installed, config-files, not-installed, or nothing when dpkg never heard of it.
pkg_status() { dpkg-query -W -f='${db:Status-Status}' bgproxy 2>/dev/null || true; }
ok() { echo "test-deb.sh: ok: $*"; }

[ "$(id -u)" = 0 ] || fail "must run as root (it installs the package)"
case "$(pkg_status)" in
  ""|not-installed) ;;
  *) fail "bgproxy is known to dpkg here ($(pkg_status)); not touching it" ;;
esac
for path in /etc/bgproxy /var/lib/bgproxy /usr/bin/bgproxy /usr/bin/bgctl; do
  [ ! -e "$path" ] || fail "$path exists already; not touching it"
done
if getent passwd bgproxy >/dev/null || getent group bgproxy >/dev/null; then
  fail "a bgproxy user or group exists already; not touching it"
fi

# What the test needs: man-db for `man -l`, and the package's own
# dependency adduser (dpkg -i installs no dependencies; minimal images lack it).
export DEBIAN_FRONTEND=noninteractive
if ! command -v man >/dev/null 2>&1 || ! command -v adduser >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends man-db adduser >/dev/null
fi

deb=${1:-}
if [ -z "$deb" ]; then
  start=$(date +%s)
  packaging/build-deb.sh --profile "${BGPROXY_DEB_PROFILE:-deb}"
  echo "test-deb.sh: building the package took $(( $(date +%s) - start ))s"
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  version=$(cargo pkgid -p bgproxy | sed 's/.*[#@]//')
  deb="$target_dir/debian/bgproxy_${version}-1_$(dpkg --print-architecture).deb"
fi
[ -f "$deb" ] || fail "no package at $deb"

# The maintainer scripts: an upgrade never stops or restarts the service
# (prerm stops it only on remove), it reloads a running one (the in-place
# upgrade), once the debhelper part is in.
scripts=$(mktemp -d)
dpkg-deb -e "$deb" "$scripts"
# Every stop in prerm is under `if ... [ "$1" = remove ]` (the line above it).
stops=$(grep -c 'deb-systemd-invoke stop' "$scripts/prerm" || true)
on_remove=$(grep -B1 'deb-systemd-invoke stop' "$scripts/prerm" | grep -c '"$1" = remove' || true)
[ "$stops" -ge 1 ] || fail "prerm never stops the service (on remove it must)"
[ "$on_remove" = "$stops" ] || fail "prerm stops the service on an upgrade too: $(cat "$scripts/prerm")"
! grep -v '^\s*#' "$scripts/postinst" | grep -Eq '(invoke|systemctl).*(restart|stop|start)( |$)' ||
  fail "postinst restarts, stops or starts the service: $(grep -En '(invoke|systemctl).*(restart|stop|start)( |$)' "$scripts/postinst" | grep -v '^[0-9]*:\s*#')"
grep -q 'deb-systemd-invoke reload bgproxy.service' "$scripts/postinst" || fail "postinst does not reload a running service"
[ "$(grep -c '^#DEBHELPER#\|deb-systemd-helper update-state bgproxy.service' "$scripts/postinst")" = 1 ] ||
  fail "postinst holds the debhelper part $(grep -c 'deb-systemd-helper update-state bgproxy.service' "$scripts/postinst") times"
rm -rf "$scripts"
ok "maintainer scripts: prerm stops only on remove, postinst reloads a running service on upgrade (never restarts)"

# Leave the machine as it was, whatever happens below.
cleanup() {
  dpkg --purge bgproxy >/dev/null 2>&1 || true
  rm -rf /etc/bgproxy /var/lib/bgproxy
  if getent passwd bgproxy >/dev/null; then deluser --quiet --system bgproxy >/dev/null 2>&1 || userdel bgproxy; fi
  if getent group bgproxy >/dev/null; then groupdel bgproxy; fi
}
trap cleanup EXIT

# Docker's Debian images exclude /usr/share/man from dpkg; the pages are
# part of what is tested.
install_deb() { dpkg --path-include='/usr/share/man/*' --path-include='/usr/share/doc/*' -i "$deb"; }
install_deb

# Binaries: one version, one commit.
for bin in bgproxy bgctl; do
  [ -x "/usr/bin/$bin" ] || fail "/usr/bin/$bin missing"
done
v1=$(/usr/bin/bgproxy --version | sed 's/^bgproxy //')
v2=$(/usr/bin/bgctl --version | sed 's/^bgctl //')
[ "$v1" = "$v2" ] || fail "bgproxy --version ($v1) and bgctl --version ($v2) differ"
case "$v1" in *"(commit "*")") ;; *) fail "--version names no commit: $v1" ;; esac
ok "bgproxy and bgctl in /usr/bin, both $v1"

# The user and the state directory.
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd bgproxy) || fail "no bgproxy user"
[ "$uid" -lt 1000 ] || fail "bgproxy is not a system user (uid $uid)"
[ "$home" = /var/lib/bgproxy ] || fail "bgproxy's home is $home"
case "$shell" in */nologin|*/false) ;; *) fail "bgproxy may log in (shell $shell)" ;; esac
getent group bgproxy >/dev/null || fail "no bgproxy group"
[ "$(stat -c '%U:%G %a' /var/lib/bgproxy)" = "bgproxy:bgproxy 700" ] ||
  fail "/var/lib/bgproxy is $(stat -c '%U:%G %a' /var/lib/bgproxy), not bgproxy:bgproxy 700"
ok "system user bgproxy (uid $uid, $shell), /var/lib/bgproxy bgproxy:bgproxy 0700"

# The configuration: a conffile the daemon's user can read, accepted by --check.
conf=/etc/bgproxy/bgproxy.toml
dpkg-query -W -f='${Conffiles}\n' bgproxy | grep -q " $conf " || fail "$conf is not a conffile"
[ "$(stat -c '%U:%G %a' /etc/bgproxy)" = "root:bgproxy 750" ] || fail "/etc/bgproxy is $(stat -c '%U:%G %a' /etc/bgproxy)"
[ "$(stat -c '%U:%G %a' $conf)" = "root:bgproxy 640" ] || fail "$conf is $(stat -c '%U:%G %a' $conf)"
cmp -s "$conf" conf/bgproxy.toml || fail "$conf is not conf/bgproxy.toml"
grep -q '^path = "/var/lib/bgproxy/state.json"' "$conf" || fail "$conf keeps its state elsewhere than /var/lib/bgproxy"
/usr/bin/bgproxy --check --config "$conf"
runuser -u bgproxy -- /usr/bin/bgproxy --check --config "$conf" >/dev/null
ok "$conf: a conffile, root:bgproxy 0640, bgproxy --check accepts it (root and bgproxy)"

# The systemd units.
units=(/usr/lib/systemd/system/bgproxy.service)
[ -f systemd/bgproxy.socket ] && units+=(/usr/lib/systemd/system/bgproxy.socket)
for unit in "${units[@]}"; do
  [ -f "$unit" ] || fail "$unit missing"
  ! grep -n '^[^#]*/usr/local' "$unit" || fail "$unit runs something from /usr/local"
done
grep -q '^ExecStart=/usr/bin/bgproxy ' "${units[0]}" || fail "${units[0]}: ExecStart is not /usr/bin/bgproxy"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify "${units[@]}"
  ok "systemd-analyze verify ${units[*]}"
else
  ok "${units[*]} installed (no systemd-analyze here)"
fi

# Man pages: each renders, without a warning.
for page in /usr/share/man/man8/bgproxy.8.gz /usr/share/man/man1/bgctl.1.gz /usr/share/man/man1/bgctl-switch.1.gz; do
  [ -f "$page" ] || fail "$page missing"
  warnings=$(MANWIDTH=80 man -l "$page" 2>&1 >/dev/null)
  [ -z "$warnings" ] || fail "man -l $page: $warnings"
  MANWIDTH=80 man -l "$page" | grep -q 'SYNOPSIS' || fail "man -l $page: no SYNOPSIS"
done
pages=$(ls /usr/share/man/man1/bgctl*.1.gz /usr/share/man/man8/bgproxy*.8.gz | wc -l)
ok "man -l bgproxy(8), bgctl(1), bgctl-switch(1) ($pages pages in all)"

# Completions in the standard directories.
for bin in bgproxy bgctl; do
  for f in "/usr/share/bash-completion/completions/$bin" "/usr/share/zsh/vendor-completions/_$bin" \
           "/usr/share/fish/vendor_completions.d/$bin.fish"; do
    [ -s "$f" ] || fail "$f missing"
  done
  bash -c "source /usr/share/bash-completion/completions/$bin && complete -p $bin" >/dev/null ||
    fail "bash does not load the completion of $bin"
  if command -v zsh >/dev/null 2>&1; then zsh -n "/usr/share/zsh/vendor-completions/_$bin" || fail "zsh: _$bin"; fi
  if command -v fish >/dev/null 2>&1; then fish -n "/usr/share/fish/vendor_completions.d/$bin.fish" || fail "fish: $bin.fish"; fi
done
ok "bash, zsh and fish completions of both binaries"

# Remove: the binaries go, the conffile and the state stay.
echo '{"version": 1, "stand-in": "state kept across remove and purge"}' > /var/lib/bgproxy/test-state.json
chown bgproxy:bgproxy /var/lib/bgproxy/test-state.json
dpkg -r bgproxy
[ ! -e /usr/bin/bgproxy ] && [ ! -e /usr/bin/bgctl ] || fail "binaries left after dpkg -r"
[ -f "$conf" ] || fail "dpkg -r removed the conffile"
[ -f /var/lib/bgproxy/test-state.json ] || fail "dpkg -r removed the state"
ok "dpkg -r: binaries gone, $conf and /var/lib/bgproxy kept"

# Purge: the conffile goes, the state and its user stay.
dpkg --purge bgproxy
[ ! -e "$conf" ] || fail "dpkg --purge left $conf"
[ -f /var/lib/bgproxy/test-state.json ] || fail "dpkg --purge removed the state"
getent passwd bgproxy >/dev/null || fail "dpkg --purge removed the bgproxy user"
ok "dpkg --purge: $conf gone, /var/lib/bgproxy and the bgproxy user kept"

# Installing again over the kept state and user: the state is untouched.
install_deb >/dev/null
[ -f /var/lib/bgproxy/test-state.json ] || fail "reinstall removed the state"
[ "$(stat -c '%U:%G %a' /var/lib/bgproxy)" = "bgproxy:bgproxy 700" ] || fail "reinstall changed /var/lib/bgproxy"
[ "$(getent passwd bgproxy | cut -d: -f3)" = "$uid" ] || fail "reinstall made a new user"
dpkg --purge bgproxy >/dev/null
ok "reinstall over the kept state and user, purged again"

# What the README says to do to remove the rest.
rm -rf /var/lib/bgproxy && deluser --quiet --system bgproxy
getent group bgproxy >/dev/null && groupdel bgproxy
trap - EXIT
for path in /etc/bgproxy /var/lib/bgproxy /usr/bin/bgproxy /usr/bin/bgctl /usr/lib/systemd/system/bgproxy.service; do
  [ ! -e "$path" ] || fail "$path left behind"
done
! getent passwd bgproxy >/dev/null || fail "user bgproxy left behind"
! getent group bgproxy >/dev/null || fail "group bgproxy left behind"
case "$(pkg_status)" in
  ""|not-installed) ;;
  *) fail "dpkg still has bgproxy ($(pkg_status))" ;;
esac
ok "machine as it was: no package, files, user or group"
