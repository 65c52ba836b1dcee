#!/usr/bin/env bash
# Install the real programs the tests talk to (Debian packages), only those missing.
# Tests that need a program still missing after this skip with a message naming it.
set -u
declare -A need=(
  [curl]=curl
  [nghttp]=nghttp2-client
  [h2load]=nghttp2-client
  [nginx]=nginx-light
  [haproxy]=haproxy
  [redis-server]=redis-server   # tests/idempotency: RedisStore against a real server
  [go]=golang-go                # h2guard bench: the Go net/http driver (built with go build)
  [javac]=default-jdk-headless  # h2guard bench: the java.net.http and OkHttp drivers (javac, java)
  [node]=nodejs                 # h2guard bench: the Node.js http2 driver
  [chromium]=chromium           # h2guard bench: the HTML report test renders it headless
  [tinyproxy]=tinyproxy         # client: HTTP/2 through a forward proxy's CONNECT tunnel
)
missing=()
for bin in "${!need[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    missing+=("${need[$bin]}")
  fi
done
# tests/idempotency: PostgresStore against a real server (initdb, postgres; not on PATH)
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  missing+=(postgresql)
fi
# h2guard bench: the HTML report test renders text in headless Chromium; it needs a font
if [ ! -d /usr/share/fonts/truetype/dejavu ]; then
  missing+=(fonts-dejavu-core)
fi
# h2guard bench: the OkHttp driver compiles against Debian's jars (okhttp.jar needs okio.jar)
if [ ! -f /usr/share/java/okhttp.jar ] || [ ! -f /usr/share/java/okio.jar ]; then
  missing+=(libokhttp-java)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "peers: all present (curl, nghttp, h2load, nginx, haproxy, redis-server, postgresql," \
       "go, javac, node, libokhttp-java, chromium, fonts-dejavu-core, tinyproxy)"
  exit 0
fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "peers: installing $pkgs"
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $pkgs; then
  echo "peers: installed $pkgs"
else
  echo "!!! peers: could not install $pkgs (need root and apt): the tests that need them will SKIP" >&2
fi
exit 0
