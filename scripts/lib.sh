# Shared helpers for the scripts in this directory; sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/target/gm-build"          # everything generated lives under target/
NGINX_DEBIAN_TREE="$BUILD/nginx-debian" # Debian's nginx source, configured with its conf_flags
VENV="$BUILD/venv"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# The module .so for the nginx selected by NGINX_SOURCE_DIR/NGINX_BUILD_DIR (default: Debian's).
module_path() {
    echo "$ROOT/target/release/libngx_http_gateway_metrics_module.so"
}
