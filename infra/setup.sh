#!/usr/bin/env bash
# Set up a fresh Debian machine for labfleet: system packages (apt) and a virtualenv with
# everything installed (pip).  Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv/-dev: the virtualenv and C extensions; docker-compose: the compose client
# that validates docker-compose.yml in the tests
APT_PACKAGES=(python3 python3-venv python3-dev openssh-server openssh-client git make gcc libc6-dev chromium docker-compose)
# The emulated lab (infra/lab): QEMU, libvirt (daemon without systemd units), ser2net, the
# cross toolchains and kernel sources for lab kernels, pdudaemon's and libvirt-python's build deps.
APT_PACKAGES+=(qemu-system-x86 qemu-system-arm qemu-system-misc qemu-utils libvirt-daemon
  libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config libsystemd-dev ser2net
  gcc-aarch64-linux-gnu gcc-riscv64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross
  libc6-dev-riscv64-cross libc6-dev-armhf-cross linux-source busybox-static flex bison bc
  libelf-dev libssl-dev cpio xz-utils iproute2 e2fsprogs openssl util-linux mount procps
  python3-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PY:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.labfleet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "setup: installing labfleet and its dependencies into .venv"
  # pip's own exit status decides (PIPESTATUS); the filter only drops noise about
  # local index folders this machine may not have
  .venv/bin/pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/pip install -q -e '.[test]' 2>&1 | { grep -v "^WARNING: Location" || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "setup: pip install failed" >&2; exit 1; }
  .venv/bin/python -c "import labfleet.shared, labfleet.cli" 
  touch "$stamp"
fi
# The web UI's small JavaScript (htmx and its SSE extension) and the API page's Swagger UI
# come from the npm registry, copied into the gateway's static folder (not kept in the
# repository).
vendor=services/gateway/static/vendor
if [ ! -f "$vendor/htmx.min.js" ] || [ ! -f "$vendor/sse.js" ] \
   || [ ! -f "$vendor/swagger-ui-bundle.js" ] || [ ! -f "$vendor/swagger-ui.css" ]; then
  if command -v npm >/dev/null; then
    echo "setup: fetching htmx and Swagger UI for the web UI (npm)"
    npmdir=.venv/npm
    mkdir -p "$npmdir"
    npm install --prefix "$npmdir" --no-audit --no-fund --silent \
      htmx.org@2 htmx-ext-sse@2 swagger-ui-dist@5 >/dev/null
    cp "$npmdir/node_modules/htmx.org/dist/htmx.min.js" "$vendor/htmx.min.js"
    cp "$npmdir/node_modules/htmx-ext-sse/dist/sse.js" "$vendor/sse.js"
    cp "$npmdir/node_modules/swagger-ui-dist/swagger-ui-bundle.js" \
       "$npmdir/node_modules/swagger-ui-dist/swagger-ui.css" "$vendor/"
  else
    echo "setup: npm not found; the web UI works without live updates until htmx is installed" >&2
  fi
fi
echo "setup: ready (.venv/bin/labfleet)"
