#!/usr/bin/env bash
# Command-line tools some tests need (no daemon): csh for csh payloads, gSOAP and a C++ compiler for the
# WSDL interoperability test, Chromium and its driver for the dashboard tests. `start` installs what is
# missing; `env`, `status` and `stop` have nothing to do.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# chromium + chromium-driver: the dashboard tests drive Debian's headless browser (nothing downloads one)
PACKAGES=(csh gsoap libgsoap-dev g++ chromium chromium-driver)

case "${1:-}" in
    start)
        require_root "installing test tools"
        apt_install "${PACKAGES[@]}"
        ;;
    status)
        missing=$(missing_packages "${PACKAGES[@]}")
        [ -z "$missing" ] || die "missing: $missing"
        ;;
    env | stop) ;;
    *) die "usage: $0 start|stop|status|env" ;;
esac
