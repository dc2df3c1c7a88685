#!/usr/bin/env bash
# Debian packages the tests use: dciodvfy (dicom3tools), storescu/dcmdump (dcmtk), Orthanc,
# pdftoppm (poppler-utils), openssl. Installs the missing ones when run as root with apt-get;
# otherwise names them (the tests that need them are then skipped, and say so).
# --require: exit non-zero if any is still missing (CI must not skip them).
set -euo pipefail

need=()
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v storescu >/dev/null || need+=(dcmtk)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
command -v pdftoppm >/dev/null || need+=(poppler-utils)
command -v openssl >/dev/null || need+=(openssl)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  # policy-rc.d keeps the packaged Orthanc service from starting: the tests run their own.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  exit 0
fi

echo "missing Debian packages: ${need[*]} (sudo apt-get install ${need[*]});" \
  "the tests that need them will be skipped" >&2
if [ "${1:-}" = "--require" ]; then exit 1; fi
