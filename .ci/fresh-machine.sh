#!/usr/bin/env bash
# The fresh-machine check: a pristine Debian 12 root (debootstrap --variant=minbase), a clean
# clone of this repository copied into it, and the README's two quick-start commands, then its
# Python package commands (pip install ., the example), run inside it exactly as written
# (chroot, as root, from a clean environment), as a new user would. It
# fails if any step needs something the scripts do not install, and prints how long each phase
# took. The root gets the host's network settings only (DNS, proxies, pip's and the system's
# trusted certificates): a machine of this site, with nothing installed.
# Needs root, debootstrap, and the Debian mirror and PyPI reachable.
# Usage: .ci/fresh-machine.sh [WORK_DIR]   (default: a new directory under /var/tmp)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d /var/tmp/zerolora-fresh.XXXXXX)}"
root="$work/root"
log="$work/fresh-machine.log"
[ "$(id -u)" -eq 0 ] || { echo "fresh-machine: needs root (debootstrap, chroot, mounts)" >&2; exit 1; }
command -v debootstrap > /dev/null || { echo "fresh-machine: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

phase_start=$SECONDS
phases=()
phase_done() {  # phase_done NAME: records the time since the previous phase
  phases+=("$(printf '%-52s %4d s' "$1" $((SECONDS - phase_start)))")
  echo "fresh-machine: $1 took $((SECONDS - phase_start)) s"
  phase_start=$SECONDS
}
report() {
  echo "fresh-machine: phases"
  for p in "${phases[@]}"; do echo "  $p"; done
}

# The Debian archive the host itself installs from (deb822 .sources first, then one-line lists).
mirror="$(awk '/^URIs:/ {uri = $2} /^Suites:/ && / bookworm( |$)/ {print uri; exit}' \
            /etc/apt/sources.list.d/*.sources 2> /dev/null || true)"
if [ -z "$mirror" ]; then
  mirror="$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2> /dev/null |
              awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' || true)"
fi
[ -n "$mirror" ] || { echo "fresh-machine: no Debian bookworm archive in the host's apt sources" >&2; exit 1; }

mounts=()
cleanup() {
  local status=$?
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2> /dev/null || true; done
  if grep -q " $root/" /proc/mounts; then
    echo "fresh-machine: something is still mounted under $root; leaving it in place" >&2
  elif [ -z "${KEEP_FRESH_ROOT:-}" ]; then
    rm -rf --one-file-system "$root"
  fi
  [ ${#phases[@]} -eq 0 ] || report
  exit $status
}
trap cleanup EXIT
mount_in_root() {  # mount_in_root TARGET mount-arguments...
  local target="$root/$1"
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounts+=("$target")
}

echo "fresh-machine: debootstrap --variant=minbase bookworm from $mirror into $root"
mkdir -p "$work"
debootstrap --variant=minbase bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log"; exit 1; }
phase_done "debootstrap a minbase Debian 12 root"

# The site's network settings, nothing else.
cp /etc/resolv.conf "$root/etc/resolv.conf"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
# Trusted certificates (a site may intercept TLS): installed as local CAs, which the root's own
# ca-certificates package adds to its bundle when the scripts install it.
mkdir -p "$root/usr/local/share/ca-certificates"
[ -f /etc/ssl/certs/ca-certificates.crt ] &&
  cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/site-trust.crt"
mount_in_root proc -t proc proc
mount_in_root sys --bind /sys
mount_in_root dev --bind /dev
mount_in_root dev/shm -t tmpfs tmpfs
environment=(HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL \
            PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_CERT PIP_DEFAULT_TIMEOUT SSL_CERT_FILE \
            REQUESTS_CA_BUNDLE; do
  [ -n "${!name:-}" ] && environment+=("$name=${!name}")
done

# A clean clone, where a user would put it.
git clone --quiet --no-hardlinks "$repo" "$root/root/zerolora"
phase_done "copy a clean clone into the root"

# The README's commands: the lines of the first sh block after each marker, run in order: the
# two quick-start commands, then the Python package's (pip install, the example).
readme_block() {  # readme_block MARKER
  awk -v marker="$1" 'index($0, marker) {found = 1; next}
                      found && /^```sh/ {inside = 1; next}
                      inside && /^```/ {exit}
                      inside && NF {print}' "$repo/README.md"
}
mapfile -t commands < <(readme_block "fresh-machine: the quick-start commands")
[ ${#commands[@]} -eq 2 ] || { echo "fresh-machine: expected the README's two quick-start commands, found ${#commands[@]}" >&2; exit 1; }
mapfile -t python_commands < <(readme_block "fresh-machine: the Python package commands")
[ ${#python_commands[@]} -ge 1 ] || { echo "fresh-machine: the README's Python package commands are missing" >&2; exit 1; }
commands+=("${python_commands[@]}")
for command in "${commands[@]}"; do
  echo "fresh-machine: running, in the root: $command"
  if ! chroot "$root" /usr/bin/env -i "${environment[@]}" /bin/bash -c "cd /root/zerolora && $command" 2>&1 |
       tee -a "$log"; then
    echo "fresh-machine: FAILED: $command" >&2
    exit 1
  fi
  phase_done "README: ${command%%#*}"
done
echo "fresh-machine: ok, the README's quick-start and Python package commands ran in a pristine Debian 12 root"
