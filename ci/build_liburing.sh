#!/bin/sh
# Builds liburing's static library into /usr/local for the wheel builds
# (cibuildwheel's before-all, in the manylinux and musllinux images, which
# either lack a liburing package or ship one without liburing.a). The engine
# links it statically (CMakeLists.txt, FASTECHO_WITH_URING), so wheels need
# no liburing on the user's machine. POSIX sh: Alpine's ash runs it too.
set -eu
VERSION="${LIBURING_VERSION:-2.9}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
curl -fsSL "https://github.com/axboe/liburing/archive/refs/tags/liburing-$VERSION.tar.gz" | tar xz
cd "liburing-liburing-$VERSION"
./configure --prefix=/usr/local
make -C src -j"$(nproc)" liburing.a
make -C src install
