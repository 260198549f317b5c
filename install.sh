#!/usr/bin/env bash
# Install cuecam on a Raspberry Pi (64-bit Raspberry Pi OS Bookworm): sudo ./install.sh [options]
#
# Idempotent: run it again after `git pull` or to repair an install. What it does:
#   1. refuses 32-bit systems (LiteRT has no armhf wheel) and anything but root;
#   2. apt: python3-picamera2 (libcamera), python3-gpiozero, python3-numpy, python3-yaml, python3-venv
#      (only the ones missing);
#   3. a venv in /opt/cuecam/venv made with --system-site-packages, so the apt picamera2, libcamera
#      and gpiozero are used, and cuecam with the rest of its dependencies from PyPI installed into it
#      with numpy pinned to Debian's (pip's numpy 2 breaks picamera2's simplejpeg);
#      and the accelerator's packages the board kind asks for: imx500-all on an AI Camera board
#      (*-aicam: the sensor's firmware, the model zoo in /usr/share/imx500-models), hailo-all on a
#      Hailo board (*-hailo: HailoRT, its PCIe driver, /usr/share/hailo-models);
#   4. the cuecam system user (groups video and gpio, and on a Coral board plugdev for the USB
#      accelerator or apex for the PCIe one, on a Hailo board hailo), /etc/cuecam (root:cuecam 0750, config and
#      token) and /var/lib/cuecam (cuecam 0750: OTA slots, audit log); nothing else is written at run time;
#   5. the firmware source in /opt/cuecam/src, the model files in /opt/cuecam/models, OTA slot a;
#   6. cuecam.service and cuecam-firstboot.service, enabled (on a Coral board with a drop-in,
#      cuecam.service.d/coral.conf, that adds the accelerator's group; on a Hailo board
#      cuecam.service.d/hailo.conf: group hailo and DeviceAllow=/dev/hailo0, with a udev rule,
#      60-cuecam-hailo.rules, that gives /dev/hailo0 to group hailo, mode 0660, instead of HailoRT's
#      world-writable default).
# The board's config and API token come from `cuecam provision` (see README, "Installing on a Raspberry Pi").
#
# Options:
#   --models DIR      model files to install (default: ../shared/models beside this checkout, if there)
#   --prefix DIR      where the venv, source and models go (default /opt/cuecam)
#   --root DIR        install into DIR as the file system root (staging an image, tests): no apt, no
#                     user, no systemctl; every path below is under DIR
#   --no-apt          do not run apt-get (the packages are already there)
#   --find-links DIR  pip installs only from the wheels in DIR (offline)
#   --board KIND      the board kind (rpi4, rpi5-coral-usb, ...; default: board.kind of /etc/cuecam/board.yaml):
#                     a Coral board's service user gets the accelerator's device group
#   --coral usb|pcie|none  the Coral accelerator, when the board kind does not say (PCIe: /dev/apex_0)
#   --units-only      only write the systemd units (and the accelerator drop-ins) under --root, then stop
#   --print-apt       print the apt packages this board needs (one line) and stop
set -euo pipefail

SRC="$(cd "$(dirname "$0")" && pwd)"
PREFIX=/opt/cuecam
ROOT=""
MODELS=""
APT=1
PIP_SOURCE=()
PYTHON=${CUECAM_SYSTEM_PYTHON:-/usr/bin/python3}
BOARD=""
CORAL=""
UNITS_ONLY=0
PRINT_APT=0

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS="${2:?--models needs a directory}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; APT=0; shift 2 ;;
    --no-apt) APT=0; shift ;;
    --find-links) PIP_SOURCE=(--no-index --find-links "$(realpath "${2:?--find-links needs a directory}")"); shift 2 ;;
    --board) BOARD="${2:?--board needs a board kind}"; shift 2 ;;
    --coral) CORAL="${2:?--coral needs usb, pcie or none}"; shift 2 ;;
    --units-only) UNITS_ONLY=1; shift ;;
    --print-apt) PRINT_APT=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ "$UNITS_ONLY" = 0 ] || [ -n "$ROOT" ] || die "--units-only needs --root DIR"

# The Coral accelerator's device group, only on a Coral board: the USB accelerator's udev rule
# gives its device to plugdev, the PCIe one's (/dev/apex_0, gasket driver) to apex.
if [ -z "$BOARD" ] && [ -f "$ROOT/etc/cuecam/board.yaml" ]; then
  BOARD="$(sed -n 's/^[[:space:]]*kind:[[:space:]]*\([a-z0-9-]*\).*/\1/p' "$ROOT/etc/cuecam/board.yaml" | head -n 1)"
fi
if [ -z "$CORAL" ]; then
  case "$BOARD" in
    *-coral-usb) CORAL=usb ;;
    *-coral-pcie) CORAL=pcie ;;
    *) CORAL=none ;;
  esac
fi
case "$CORAL" in
  usb) CORAL_GROUP=plugdev ;;
  pcie) CORAL_GROUP=apex ;;
  none) CORAL_GROUP="" ;;
  *) die "--coral must be usb, pcie or none, not $CORAL" ;;
esac

# The other accelerators, by board kind: the AI Camera (its sensor is a V4L2 subdevice: the
# camera's own device access covers it) and the Hailo AI Kit / HAT+ (/dev/hailo0).
case "$BOARD" in
  *-aicam) ACCEL=imx500; ACCEL_APT=imx500-all ;;
  *-hailo) ACCEL=hailo; ACCEL_APT=hailo-all ;;
  *) ACCEL=none; ACCEL_APT="" ;;
esac
BASE_APT="python3 python3-venv python3-pip python3-numpy python3-yaml python3-gpiozero python3-picamera2"
if [ "$PRINT_APT" = 1 ]; then
  echo "$BASE_APT${ACCEL_APT:+ $ACCEL_APT}"
  exit 0
fi

write_units() {
  UNITS="$ROOT/etc/systemd/system"
  install -d -m 0755 "$UNITS"
  for u in cuecam.service cuecam-firstboot.service; do
    install -m 0644 "$SRC/ota/systemd/$u" "$UNITS/$u"
  done
  if [ -n "$CORAL_GROUP" ]; then
    install -d -m 0755 "$UNITS/cuecam.service.d"
    printf '# written by install.sh: the Coral accelerator (%s) is reachable by group %s\n[Service]\nSupplementaryGroups=%s\n' \
      "$CORAL" "$CORAL_GROUP" "$CORAL_GROUP" > "$UNITS/cuecam.service.d/coral.conf"
    chmod 0644 "$UNITS/cuecam.service.d/coral.conf"
    say "Coral $CORAL: cuecam.service also runs with group $CORAL_GROUP"
  else
    rm -f "$UNITS/cuecam.service.d/coral.conf"
  fi
  if [ "$ACCEL" = hailo ]; then
    install -d -m 0755 "$UNITS/cuecam.service.d" "$ROOT/etc/udev/rules.d"
    printf '# written by install.sh: the Hailo AI Kit / AI HAT+ (/dev/hailo0) for the service\n[Service]\nSupplementaryGroups=hailo\nDeviceAllow=/dev/hailo0 rw\n' \
      > "$UNITS/cuecam.service.d/hailo.conf"
    printf '# written by install.sh: /dev/hailo0 for group hailo only (HailoRT'"'"'s own rule makes it 0666)\nSUBSYSTEM=="hailo_chardev", KERNEL=="hailo*", GROUP="hailo", MODE="0660"\n' \
      > "$ROOT/etc/udev/rules.d/60-cuecam-hailo.rules"
    chmod 0644 "$UNITS/cuecam.service.d/hailo.conf" "$ROOT/etc/udev/rules.d/60-cuecam-hailo.rules"
    say "Hailo: cuecam.service also runs with group hailo and may open /dev/hailo0"
  else
    rm -f "$UNITS/cuecam.service.d/hailo.conf" "$ROOT/etc/udev/rules.d/60-cuecam-hailo.rules"
  fi
  rmdir "$UNITS/cuecam.service.d" 2>/dev/null || true
}
if [ "$UNITS_ONLY" = 1 ]; then
  write_units
  exit 0
fi

# 1. 64-bit only: LiteRT (ai-edge-litert) ships aarch64 and x86_64 wheels, none for 32-bit ARM.
ARCH="${CUECAM_ARCH:-$(dpkg --print-architecture 2>/dev/null || uname -m)}"
case "$ARCH" in
  arm64|aarch64|amd64|x86_64) ;;
  armhf|armel|armv6l|armv7l|arm|i386|i686)
    die "this is a 32-bit system ($ARCH): LiteRT has no wheel for it, so cuecam cannot run here.
Flash the 64-bit Raspberry Pi OS (Bookworm, arm64) with Raspberry Pi Imager and run install.sh again." ;;
  *) die "unsupported architecture $ARCH (cuecam runs on arm64 Raspberry Pi OS)" ;;
esac
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run as root: sudo ./install.sh"
fi

# 2. apt packages (picamera2 is in the Raspberry Pi archive; plain Debian has no python3-picamera2)
if [ "$APT" = 1 ]; then
  want="${BASE_APT% python3-picamera2}"
  if apt-cache show python3-picamera2 >/dev/null 2>&1; then
    want="$want python3-picamera2"
  else
    say "warning: no python3-picamera2 in the apt sources (not Raspberry Pi OS?): Pi cameras will not work"
  fi
  if [ -n "$ACCEL_APT" ]; then
    apt-cache show "$ACCEL_APT" >/dev/null 2>&1 ||
      die "board $BOARD needs $ACCEL_APT, which is not in the apt sources: it is in the Raspberry Pi OS archive (Bookworm)"
    want="$want $ACCEL_APT"
  fi
  missing=""
  for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    say "apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
  fi
fi
NUMPY="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)" ||
  die "$PYTHON has no numpy: apt-get install python3-numpy (Raspberry Pi OS ships 1.24, which picamera2 needs)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than Python 3.11"

# 4. user and directories
ETC="$ROOT/etc/cuecam"
STATE="$ROOT/var/lib/cuecam"
DEST="$ROOT$PREFIX"
VENV="$DEST/venv"
if [ -z "$ROOT" ]; then
  getent group gpio >/dev/null || groupadd --system gpio
  if ! id cuecam >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/cuecam --no-create-home --shell /usr/sbin/nologin cuecam
    say "created the system user cuecam"
  fi
  usermod -a -G video,gpio cuecam
  for g in $CORAL_GROUP $([ "$ACCEL" = hailo ] && echo hailo); do
    getent group "$g" >/dev/null || groupadd --system "$g"
    usermod -a -G "$g" cuecam
  done
  install -d -m 0755 -o root -g root "$DEST"
  install -d -m 0750 -o root -g cuecam "$ETC"
  install -d -m 0750 -o cuecam -g cuecam "$STATE"
  as_cuecam() { runuser -u cuecam -- "$@"; }
else
  install -d -m 0755 "$DEST"
  install -d -m 0750 "$ETC" "$STATE"
  as_cuecam() { "$@"; }
fi

# 3. the venv, with the system packages visible and numpy pinned to Debian's
if [ -x "$VENV/bin/python" ] && ! grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
  say "$VENV does not see the system packages: making it again"
  rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
{ # the apt numpy (picamera2 needs numpy 1.x), and the wheel versions tested with it (make test-compat, test-pi)
  printf '# written by install.sh\nnumpy==%s\n' "$NUMPY"
  grep -v -i -E '^[[:space:]]*(#|$|numpy|tflite-runtime)' "$SRC/tests/bookworm-constraints.txt" || true
} > "$DEST/constraints.txt"
say "pip install cuecam into $VENV (numpy pinned to $NUMPY)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_SOURCE[@]}" \
  -c "$DEST/constraints.txt" "$SRC"
got="$("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
[ "$got" = "$NUMPY" ] || die "the venv has numpy $got, not the system's $NUMPY"

# 5. source tree (what an OTA slot holds, plus the docs), models, OTA slot a
"$VENV/bin/python" - "$SRC" "$DEST/src" <<'PY'
import shutil, sys
from pathlib import Path
from host_tools.ota_cli import tree_files
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
tmp = dst.with_name(dst.name + ".new")
shutil.rmtree(tmp, ignore_errors=True)
files = tree_files(src) | {n: src / n for n in ("README.md", "install.sh") if (src / n).is_file()}
files |= {p.relative_to(src).as_posix(): p for p in sorted((src / "docs").glob("*.md"))}
for rel, p in files.items():
    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(p, tmp / rel)
old = dst.with_name(dst.name + ".old")
shutil.rmtree(old, ignore_errors=True)
if dst.exists():
    dst.rename(old)
tmp.rename(dst)
shutil.rmtree(old, ignore_errors=True)
print(f"install.sh: {len(files)} source files in {dst}")
PY
if [ -z "$MODELS" ] && [ -d "$SRC/../shared/models" ]; then MODELS="$SRC/../shared/models"; fi
if [ -n "$MODELS" ]; then
  "$VENV/bin/python" -m firmware.models --manifest "$DEST/src/models/manifest.yaml" install --from "$MODELS" --to "$DEST/models"
  install -m 0644 "$DEST/src/models/manifest.yaml" "$DEST/models/manifest.yaml"
else
  say "warning: no model files given (--models DIR): copy them into $PREFIX/models before starting cuecam"
fi
VERSION="$("$VENV/bin/python" -c 'import firmware; print(firmware.__version__)')"
if [ ! -f "$STATE/ota/state.json" ]; then
  as_cuecam "$VENV/bin/python" -m ota.installer --root "$STATE/ota" init --source "$DEST/src" --version "$VERSION" >/dev/null
  say "OTA slot a = cuecam $VERSION in $STATE/ota"
fi

# 6. systemd units
write_units
if [ -z "$ROOT" ] && [ "$ACCEL" = hailo ] && command -v udevadm >/dev/null; then
  udevadm control --reload-rules && udevadm trigger --subsystem-match=hailo_chardev || true
fi
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable cuecam-firstboot.service cuecam.service
fi

say "cuecam $VERSION installed: venv $VENV (numpy $NUMPY), config $ETC, state $STATE"
if [ ! -f "$ETC/board.yaml" ]; then
  say "next: provision this board (cuecam provision --boot, then reboot) or write $ETC/board.yaml and"
  say "      $ETC/api-token (owner cuecam, mode 0600) with \`cuecam provision --out\`, then: systemctl start cuecam"
fi
