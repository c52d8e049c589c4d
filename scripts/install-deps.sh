#!/usr/bin/env bash
# Installs the Debian 12 packages zerolora builds and tests with. Safe to re-run.
set -euo pipefail
packages=(
  build-essential cmake pkg-config git
  libdnnl-dev                 # oneDNN: bf16/fp32 matmul
  libomp-dev                  # OpenMP runtime headers (GCC's libgomp comes with build-essential)
  libopenmpi-dev openmpi-bin  # MPI for ZeRO-3 across processes
  libsentencepiece-dev        # tokenizer.model
  nlohmann-json3-dev libcli11-dev
  libgtest-dev libbenchmark-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
