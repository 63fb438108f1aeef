#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root):
#   bash run.sh demo   - install everything, build the namespace lab and show enforcement
#   bash run.sh test   - install everything and run the whole test suite
#   bash run.sh setup  - only install (system packages + .venv)
#   bash run.sh bench  - install, then run the benchmarks in bench/ (prints their figures)
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(python3 python3-venv python3-dev gcc nftables libnftables1 iproute2 conntrack curl procps openssl
              systemd util-linux passwd socat)  # systemd-analyze/-sysusers, setpriv, useradd (unit and
              # privilege tests); socat (a lab test talks to a server by hand)
# A real Samba AD DC for the lab, the demo and the directory tests (provisioned in namespaces,
# never as a host service), with the LDAP/Kerberos client tools the tests use against it.
AD_PACKAGES=(samba samba-ad-dc samba-ad-provision samba-dsdb-modules samba-vfs-modules samba-common-bin
             python3-samba winbind krb5-user krb5-config ldap-utils smbclient attr tdb-tools)

BENCH_PACKAGES=(hping3)

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

setup() {
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: run as root (network namespaces and nftables need it)" >&2; exit 2
  fi
  apt_install "${APT_PACKAGES[@]}" "${AD_PACKAGES[@]}"
  local py=python3
  if [ ! -x .venv/bin/python ]; then "$py" -m venv .venv; fi
  if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    touch .venv/.installed
  fi
}

case "${1:-}" in
  setup) setup ;;
  demo) setup; shift; exec .venv/bin/python -m userseg.lab.demo "$@" ;;
  test) setup; shift; exec .venv/bin/python -m pytest -q "$@" ;;
  bench)
    setup; apt_install "${BENCH_PACKAGES[@]}"
    .venv/bin/python -m bench.bench_reconcile
    .venv/bin/python -m bench.bench_packet_path
    .venv/bin/python -m bench.bench_directory
    .venv/bin/python -m bench.bench_service
    ;;
  *) echo "usage: bash run.sh demo|test|setup|bench" >&2; exit 2 ;;
esac
