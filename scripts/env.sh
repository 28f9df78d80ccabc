# Shared set-up for the project's scripts (sourced, not run).
#
# Builds reuse one target directory outside the clone, so a fresh clone on a
# machine that built before does not rebuild RocksDB (about 20 minutes).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/phalanx/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Root runs apt-get directly; anyone else goes through sudo.
_apt() {
    if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get "$@"
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get "$@"
    fi
}

# RocksDB's bindings need clang/libclang (with clang's built-in headers) and
# a C++ compiler. Installed only when missing.
ensure_build_deps() {
    local missing=()
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
    command -v c++ >/dev/null || missing+=(g++)
    command -v clang >/dev/null || missing+=(clang)
    # The unversioned libclang.so and clang's stddef.h come with libclang-dev.
    if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 \
        || ! ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1; then
        missing+=(libclang-dev)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        _apt update -qq
        _apt install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Prometheus and promtool (Debian's prometheus package), for the
# observability test and `phalanx-testnet up --prometheus`.
ensure_prometheus() {
    if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
        echo "==> installing prometheus"
        _apt update -qq
        _apt install -y -qq --no-install-recommends prometheus >/dev/null
    fi
}

# The OpenRPC meta-schema and the JSON Schema meta-schema it refers to,
# from their npm packages (@open-rpc/meta-schema,
# @json-schema-tools/meta-schema), as plain JSON files for the test that
# validates `rpc.discover`'s document. Fetched once into the cache.
OPENRPC_META_SCHEMA_VERSION=1.14.9
JSON_SCHEMA_TOOLS_VERSION=1.8.0
export PHALANX_OPENRPC_SCHEMAS="${PHALANX_OPENRPC_SCHEMAS:-$HOME/.cache/phalanx/openrpc-$OPENRPC_META_SCHEMA_VERSION}"
ensure_openrpc_schemas() {
    local dir="$PHALANX_OPENRPC_SCHEMAS"
    if [ -s "$dir/openrpc.json" ] && [ -s "$dir/json-schema-tools.json" ]; then
        return
    fi
    if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
        echo "==> installing nodejs and npm (for the OpenRPC meta-schema)"
        _apt update -qq
        _apt install -y -qq nodejs npm >/dev/null
    fi
    echo "==> fetching the OpenRPC meta-schema"
    local tmp
    tmp="$(mktemp -d)"
    (
        cd "$tmp"
        npm pack --silent "@open-rpc/meta-schema@$OPENRPC_META_SCHEMA_VERSION" >/dev/null
        npm pack --silent "@json-schema-tools/meta-schema@$JSON_SCHEMA_TOOLS_VERSION" >/dev/null
        mkdir o j
        tar xzf open-rpc-meta-schema-*.tgz -C o
        tar xzf json-schema-tools-meta-schema-*.tgz -C j
        node -e 'process.stdout.write(JSON.stringify(require("./o/package").openrpcDocument))' > openrpc.json
        node -e 'process.stdout.write(JSON.stringify(require("./j/package").default))' > json-schema-tools.json
    )
    mkdir -p "$dir"
    mv "$tmp/openrpc.json" "$tmp/json-schema-tools.json" "$dir/"
    rm -rf "$tmp"
}
