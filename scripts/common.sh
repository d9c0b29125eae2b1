# Helpers shared by scripts/run-example.sh and scripts/test.sh (sourced).

# The repository root, whatever the caller's working directory.
QRMS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\n==> %s\n' "$*"; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

# A short tag of this checkout's path: default work directories outside the
# checkout carry it, so that two checkouts (worktrees) never share one.
checkout_tag() { printf '%s' "$QRMS_ROOT" | cksum | cut -d' ' -f1; }

# apt_ensure PKG...: installs the Debian packages that are not installed yet.
# Runs `apt-get update` once, and only when something is missing.
QRMS_APT_UPDATED=0
apt_ensure() {
  local missing=() pkg
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "warning: no dpkg here; make sure these are installed: $*" >&2
    return 0
  fi
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ "$QRMS_APT_UPDATED" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    QRMS_APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# Puts the CUDA toolkit on PATH when nvcc is installed in its usual place
# but not on PATH.
cuda_on_path() {
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
}

QRMS_JOBS="${QRMS_JOBS:-$(nproc 2>/dev/null || echo 2)}"
