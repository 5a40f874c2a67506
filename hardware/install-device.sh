#!/bin/sh
# Install the fedge device agent as a systemd service (Raspberry Pi OS, Debian, Ubuntu; aarch64
# or x86_64). Run as root on the board:
#
#   sudo sh install-device.sh --wheel fedge-0.1.0-py3-none-any.whl --id pi-007 --broker mqtts://coord.lan:8883
#
# It creates the system user `fedge`, a virtual environment in /opt/fedge/venv with
# fedge[device] from the wheel (or, with --fedge PATH, uses an installed fedge instead),
# /etc/fedge/device.toml (kept if it exists), /var/lib/fedge, and the unit
# /etc/systemd/system/fedge-device.service. It never deletes anything, and never changes what
# it finds: an existing folder keeps its owner and mode, and an existing unit that differs
# from the shipped one is kept (it says so, and how to compare).
# --root DIR installs into DIR instead of / (an image being built; the tests use a scratch
# root) and skips systemctl.
set -eu

ROOT=/ WHEEL= FEDGE= ID=pi-001 BROKER=mqtt://localhost:1883 PYTHON=python3
HERE=$(cd "$(dirname "$0")" && pwd)
usage() { echo "usage: $0 (--wheel FILE | --fedge PATH) [--id ID] [--broker URL] [--root DIR] [--python PY]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --wheel) WHEEL=$2; shift 2 ;;
    --fedge) FEDGE=$2; shift 2 ;;
    --id) ID=$2; shift 2 ;;
    --broker) BROKER=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
[ -n "$WHEEL$FEDGE" ] || usage
ROOT=${ROOT%/}
[ "$(id -u)" -eq 0 ] || { echo "run as root (it adds a system user and writes /etc)" >&2; exit 1; }

# 1. The dedicated user: no login, no home of its own beyond the state directory.
if ! grep -q '^fedge:' "$ROOT/etc/passwd" 2>/dev/null; then
  if [ -n "$ROOT" ]; then ROOTARG="--root $ROOT"; else ROOTARG=; fi
  # shellcheck disable=SC2086
  useradd $ROOTARG --system --user-group --home-dir /var/lib/fedge --no-create-home \
    --shell /usr/sbin/nologin --comment "fedge device agent" fedge
fi

# 2. The software: a venv with the device extra, unless an installed fedge was named.
if [ -z "$FEDGE" ]; then
  "$PYTHON" -m venv "$ROOT/opt/fedge/venv"
  "$ROOT/opt/fedge/venv/bin/pip" install --quiet "$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")[device]"
  FEDGE=/opt/fedge/venv/bin/fedge
  RUN_FEDGE=$ROOT$FEDGE
else
  RUN_FEDGE=$FEDGE
fi

# 3. Config (the user's once it exists) and state.
# A folder that exists is the operator's as it is: install -d would reset its owner and mode.
[ -d "$ROOT/etc/fedge" ] || install -d -m 0750 -o root -g "$(grep '^fedge:' "$ROOT/etc/group" | cut -d: -f3)" "$ROOT/etc/fedge"
if [ ! -e "$ROOT/etc/fedge/device.toml" ]; then
  "$RUN_FEDGE" device init --out "$ROOT/etc/fedge/device.toml" --id "$ID" --broker "$BROKER" \
    --data /var/lib/fedge/data.npz --state-dir /var/lib/fedge
  chgrp "$(grep '^fedge:' "$ROOT/etc/group" | cut -d: -f3)" "$ROOT/etc/fedge/device.toml"
  chmod 0640 "$ROOT/etc/fedge/device.toml"
fi
FEDGE_UID=$(grep '^fedge:' "$ROOT/etc/passwd" | cut -d: -f3)
[ -d "$ROOT/var/lib/fedge" ] || install -d -m 0700 -o "$FEDGE_UID" \
  -g "$(grep '^fedge:' "$ROOT/etc/group" | cut -d: -f3)" "$ROOT/var/lib/fedge"
if [ "$(stat -c %u "$ROOT/var/lib/fedge")" != "$FEDGE_UID" ]; then
  echo "kept $ROOT/var/lib/fedge as it is, but it is not owned by fedge: the agent cannot keep its state there" \
    "until you run: chown fedge: /var/lib/fedge" >&2
fi

# 4. The unit, pointing at the fedge just installed.
UNIT=$HERE/systemd/fedge-device.service
INSTALLED=$ROOT/etc/systemd/system/fedge-device.service
[ -d "$ROOT/etc/systemd/system" ] || install -d "$ROOT/etc/systemd/system"
if [ ! -e "$INSTALLED" ]; then
  sed "s#@FEDGE@#$FEDGE#" "$UNIT" > "$INSTALLED"
  chmod 0644 "$INSTALLED"
elif ! sed "s#@FEDGE@#$FEDGE#" "$UNIT" | cmp -s - "$INSTALLED"; then
  echo "kept $INSTALLED: it differs from the shipped unit (compare: sed 's#@FEDGE@#$FEDGE#' $UNIT | diff - $INSTALLED)" >&2
fi

if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
fi
cat <<DONE
installed. Next:
  1. edit $ROOT/etc/fedge/device.toml ([broker] credentials: fedge provision device --id $ID ...)
  2. copy the device's data to $ROOT/var/lib/fedge/data.npz (owner fedge)
  3. systemctl enable --now fedge-device; journalctl -u fedge-device -f
DONE
