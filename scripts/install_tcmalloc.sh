#!/usr/bin/env bash
# tcmalloc for the llm-tuning command (speed/allocator.py, docs/speed.md), by `make install`:
#   already installed -> nothing to do;
#   root with apt-get (Debian, Ubuntu) -> apt-get install libtcmalloc-minimal4;
#   apt-get without root -> apt-get download the same package and unpack its library into the virtual environment's
#     lib folder, where the llm-tuning command looks first;
#   otherwise -> say so: training runs on glibc's malloc.
# Never fails the install: tcmalloc changes speed and memory, never results.
set -uo pipefail
venv_lib="${1:?usage: install_tcmalloc.sh VENV_LIB_FOLDER}"
library=libtcmalloc_minimal.so.4
package=libtcmalloc-minimal4
fallback="training runs on glibc's malloc (docs/speed.md)"

if [ -e "$venv_lib/$library" ] || ldconfig -p 2>/dev/null | grep -q "$library"; then
    echo "tcmalloc: installed"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "skipping the tcmalloc install (no apt-get here): $fallback"
elif [ "$(id -u)" = 0 ]; then
    if apt-get install -y -q "$package" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$package" >/dev/null 2>&1; }; then
        echo "tcmalloc: installed $package with apt-get"
    else
        echo "tcmalloc: apt-get could not install $package: $fallback"
    fi
else
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    if (cd "$scratch" && apt-get download -q "$package" >/dev/null 2>&1 && dpkg-deb -x ./*.deb unpacked) &&
        found="$(find "$scratch/unpacked" -name "$library" | head -n 1)" && [ -n "$found" ] &&
        mkdir -p "$venv_lib" && cp -L "$found" "$venv_lib/$library.partial" && mv "$venv_lib/$library.partial" "$venv_lib/$library"; then
        echo "tcmalloc: unpacked $package into $venv_lib (apt-get download, no root needed)"
    else
        echo "skipping the tcmalloc install (not root, and apt-get download failed): $fallback"
    fi
fi
