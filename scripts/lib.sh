# Shared by scripts/run and scripts/test: caches outside the clone, package installation and the
# services a fresh machine lacks. Sourced, not run.

LOOKIT_CACHE=${LOOKIT_CACHE:-/var/cache/lookit-local}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$LOOKIT_CACHE/target}
export npm_config_cache=${npm_config_cache:-$LOOKIT_CACHE/npm}
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
export PATH="$LOOKIT_CACHE/tools/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# The shared target dir serves every clone (CI clones anew each run): incremental artifacts are
# per checkout path and were never reused, yet they grew to 35 GB here and filled the disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# What running Lookit Local needs: the services it manages and what the desktop window links to.
RUN_PACKAGES=(
  ca-certificates curl git pkg-config build-essential libssl-dev
  postgresql rabbitmq-server docker.io
  libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

mkdir_cache() {
  $SUDO mkdir -p "$LOOKIT_CACHE" && $SUDO chown "$(id -u):$(id -g)" "$LOOKIT_CACHE"
}

# Fails, saying what to do, when the disk holding the caches has less than $1 GB free: a build
# that runs out of space midway fails with errors that name neither the disk nor the fix.
check_free_space() {
  local need_gb=$1 free_kb
  mkdir_cache || return 1
  free_kb=$(df -Pk "$LOOKIT_CACHE" | awk 'NR == 2 { print $4 }')
  if [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
    echo "only $((free_kb / 1024 / 1024)) GB free on the disk of $LOOKIT_CACHE; the builds and test images need about $need_gb GB." >&2
    echo "Free some space (the build cache can go: rm -rf $CARGO_TARGET_DIR), then run again." >&2
    return 1
  fi
}

# Builds ui/ into ui/dist unless dist is newer than every file of ui/. The panel crate embeds
# dist, so rewriting it (same content or not) recompiles the panel and relinks every binary:
# minutes for a release build.
build_ui() {
  local ui=$ROOT/ui
  if [ -f "$ui/dist/index.html" ] && [ -z "$(find "$ui" \( -path "$ui/node_modules" -o -path "$ui/dist" \) -prune -o -type f -newer "$ui/dist/index.html" -print -quit)" ]; then
    echo "ui/dist is up to date"
    return 0
  fi
  npm --prefix "$ui" run build
}

# Installs the Debian packages that are missing (all at once: one apt transaction).
install_packages() {
  mkdir_cache || return 1
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "all ${#@} packages present"; return 0; }
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq || return 1
  # No services are started by package scripts here (no systemd); we start our own instances.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >"$LOOKIT_CACHE/apt.log" 2>&1 || { tail -n 30 "$LOOKIT_CACHE/apt.log"; return 1; }
}

# Starts dockerd when no engine answers, and waits until it does.
start_dockerd() {
  docker info >/dev/null 2>&1 && { echo "docker engine answers"; return 0; }
  command -v dockerd >/dev/null || { echo "dockerd missing: apt-get install docker.io"; return 1; }
  echo "starting dockerd (log: $LOOKIT_CACHE/dockerd.log)"
  $SUDO sh -c "nohup dockerd >'$LOOKIT_CACHE/dockerd.log' 2>&1 &"
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$LOOKIT_CACHE/dockerd.log"; return 1; }
    sleep 0.5
  done
}

ensure_rust() {
  command -v cargo >/dev/null || { echo "Rust is missing: install it from rustup.rs"; return 1; }
  cargo --version
}

# npm ci with the lock file; reuses node_modules when the lock file did not change.
npm_ci() {
  local dir=$1
  local stamp="$dir/node_modules/.lookit-lock-hash"
  local hash; hash=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then echo "$dir: node_modules up to date"; return 0; fi
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error || return 1
  echo "$hash" > "$stamp"
}

# Python tools the tests use as real peers (an SMTP server, a property-based API tester), in a
# virtualenv of our own so the system Python stays untouched.
pip_tools() {
  local venv="$LOOKIT_CACHE/tools/venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || return 1
  "$venv/bin/pip" install -q aiosmtpd "moto[server]" celery schemathesis psycopg2-binary || return 1
  mkdir -p "$LOOKIT_CACHE/tools/bin"
  ln -sf "$venv/bin/python" "$LOOKIT_CACHE/tools/bin/lookit-test-python"
}

ensure_tauri_driver() {
  command -v tauri-driver >/dev/null && return 0
  cargo install --locked tauri-driver --root "$LOOKIT_CACHE/tools" -q
}

start_xvfb() {
  export DISPLAY=${LOOKIT_TEST_DISPLAY:-:99}
  export WEBKIT_DISABLE_COMPOSITING_MODE=1
  xdpyinfo >/dev/null 2>&1 && return 0
  # A server killed earlier leaves its lock and socket behind, and Xvfb refuses to start then.
  rm -f "/tmp/.X${DISPLAY#:}-lock" "/tmp/.X11-unix/X${DISPLAY#:}"
  Xvfb "$DISPLAY" -screen 0 1280x900x24 -nolisten tcp >"$LOOKIT_CACHE/xvfb.log" 2>&1 &
  XVFB_PID=$!
  local deadline=$((SECONDS + 20))
  until xdpyinfo >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$LOOKIT_CACHE/xvfb.log"; return 1; }
    sleep 0.2
  done
}
