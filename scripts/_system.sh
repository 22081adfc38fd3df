# Sourced by scripts/test and scripts/faults: system tools the black-hole tests and figures
# need (tests/support/blackhole.py). Installed from the Debian package only when missing and
# running as root with apt-get; otherwise those tests skip, saying why.
ensure_nftables() {
    command -v nft >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "==> no nft and not root with apt-get: the black-hole tests will skip" >&2
        return 0
    fi
    echo "==> installing nftables (Debian package) for the black-hole tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists: update only when the install needs them.
    if ! apt-get install -y -qq --no-install-recommends nftables >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq --no-install-recommends nftables >/dev/null 2>&1 ||
            echo "==> apt-get install nftables failed: the black-hole tests will skip" >&2
    fi
}
