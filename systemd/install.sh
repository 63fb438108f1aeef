#!/usr/bin/env bash
# Install userseg as a systemd service (idempotent; run as root from a checkout).
#
#   systemd/install.sh                  install or upgrade on this machine
#   systemd/install.sh --root DIR --no-venv
#                                       lay the files out under DIR (packaging, tests)
#
# What goes where:
#   /opt/userseg/venv                          the package and its dependencies
#   /usr/bin/userseg -> /opt/userseg/venv/bin/userseg
#   /usr/local/lib/systemd/system/userseg.service
#   /usr/local/lib/sysusers.d/userseg.conf     the `userseg` system user
#   /usr/local/lib/tmpfiles.d/userseg.conf     /etc/userseg root:userseg 0750, /var/lib/userseg
#   /usr/local/share/doc/userseg/              README, example config, drop-in examples
#   /etc/userseg/userseg.toml                  the example config, only if none exists
#   /etc/credstore                             (0700) where LoadCredential= finds secrets
# An existing config is never overwritten.  systemd is reloaded only when it
# runs this machine (PID 1) and DIR is /.  Nothing is enabled or started.
set -euo pipefail

usage() {
  echo "usage: $0 [--root DIR] [--no-venv] [--python PYTHON]" >&2
  exit 2
}

ROOT=/
VENV=yes
PYTHON=/usr/bin/python3
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || usage; ROOT=$2; shift 2 ;;
    --no-venv) VENV=no; shift ;;
    --python) [ $# -ge 2 ] || usage; PYTHON=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage ;;
  esac
done

die() { echo "install.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (creates a system user and root-owned files)"
ROOT=$(realpath -m "$ROOT")
[ -d "$ROOT" ] || die "--root $ROOT: no such directory"
SRC=$(realpath "$(dirname "$0")/..")
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/userseg.service" ] || die "$SRC is not a userseg checkout"
r() { echo "${ROOT%/}$1"; }  # a target path under the root

VENV_DIR=/opt/userseg/venv
BIN_TARGET=$VENV_DIR/bin/userseg
UNIT_DIR=/usr/local/lib/systemd/system
DOC_DIR=/usr/local/share/doc/userseg

if [ "$VENV" = yes ]; then
  # A venv records its own absolute path: build it where it will run.
  [ "$ROOT" = / ] || die "--root needs --no-venv (a venv only works at the path it was built in)"
  "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PYTHON: Python >= 3.11 with venv needed (Debian: apt-get install python3-venv)"
  [ -x "$VENV_DIR/bin/python" ] || "$PYTHON" -m venv "$VENV_DIR"
  "$VENV_DIR/bin/pip" install --quiet --upgrade "$SRC"
  "$VENV_DIR/bin/python" -c 'import nftables' 2>/dev/null \
    || echo "install.sh: warning: libnftables is missing (Debian: apt-get install nftables libnftables1 conntrack)" >&2
fi

# The command on PATH; a file there that is not our link (a distribution
# package's binary) is left alone.
link=$(r /usr/bin/userseg)
if [ -e "$link" ] || [ -L "$link" ]; then
  [ -L "$link" ] && [ "$(readlink "$link")" = "$BIN_TARGET" ] \
    || die "$link exists and is not a link to $BIN_TARGET; remove it or install another way"
else
  mkdir -p "$(dirname "$link")"
  ln -s "$BIN_TARGET" "$link"
fi

install -D -m 0644 "$SRC/systemd/userseg.service" "$(r $UNIT_DIR/userseg.service)"
install -D -m 0644 "$SRC/systemd/userseg.sysusers.conf" "$(r /usr/local/lib/sysusers.d/userseg.conf)"
install -D -m 0644 "$SRC/systemd/userseg.tmpfiles.conf" "$(r /usr/local/lib/tmpfiles.d/userseg.conf)"
install -D -m 0644 "$SRC/README.md" "$(r $DOC_DIR/README.md)"
install -D -m 0644 "$SRC/config/userseg.toml" "$(r $DOC_DIR/userseg.toml.example)"
install -D -m 0644 -t "$(r $DOC_DIR/systemd)" "$SRC"/systemd/examples/*.conf

# The system user, then the directories it needs (tmpfiles resolves the
# user in the target root's /etc/passwd).
mkdir -p "$(r /etc)"
systemd-sysusers --root="$ROOT" "$(r /usr/local/lib/sysusers.d/userseg.conf)"
if [ ! -e "$(r /etc/userseg/userseg.toml)" ]; then
  install -D -m 0640 "$SRC/config/userseg.toml" "$(r /etc/userseg/userseg.toml)"
  echo "install.sh: installed the example config $(r /etc/userseg/userseg.toml): edit it before starting"
fi
systemd-tmpfiles --root="$ROOT" --create "$(r /usr/local/lib/tmpfiles.d/userseg.conf)"
[ -d "$(r /etc/credstore)" ] || install -d -m 0700 "$(r /etc/credstore)"

if [ "$ROOT" = / ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "install.sh: done.  Next: edit /etc/userseg/userseg.toml, \`userseg check-config\`, then"
echo "  systemctl enable --now userseg"
