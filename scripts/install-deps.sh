#!/usr/bin/env bash
# Installs what Strata needs on a Debian machine (run as root); skips what is present.
# The CUDA toolkit is not a Debian package here: when /usr/local/cuda/bin/nvcc exists
# the CUDA back end is built, otherwise Strata builds for the CPU alone.
set -euo pipefail
packages=(build-essential cmake ninja-build ccache pkg-config
  libomp-dev libyaml-cpp-dev libhdf5-dev doctest-dev libfmt-dev libcli11-dev nlohmann-json3-dev zlib1g-dev libgloo-dev
  gnuplot-nox bible-kjv dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
