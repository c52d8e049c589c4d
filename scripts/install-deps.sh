#!/usr/bin/env bash
# Installs the Debian 12 packages zerolora needs, each named explicitly: a fresh machine (a
# `debootstrap --variant=minbase` root) has none of them, and recommended packages are not
# installed. Safe to re-run: installs only what is missing. Uses sudo when not root.
#   install-deps.sh          what building and running zerolora needs
#   install-deps.sh --test   also what the tests need (GoogleTest, Python 3 with venv for the
#                            reference stack that scripts/python-env.sh installs, and its
#                            headers for the Python package)
#   install-deps.sh --python what `pip install .` of the Python package needs besides the above
set -euo pipefail
packages=(
  build-essential cmake pkg-config
  libdnnl-dev ocl-icd-opencl-dev  # oneDNN: bf16/fp32 matmul; its CMake config requires OpenCL
  libopenmpi-dev openmpi-bin      # MPI for ZeRO-3 across processes
  openssh-client                  # mpirun's launcher component needs an rsh agent to exist
  libsentencepiece-dev            # tokenizer.model
  libpcre2-dev libutf8proc-dev    # tokenizer.json: Unicode regex and normalisation
  nlohmann-json3-dev libcli11-dev
)
case "${1:-}" in
  "") ;;
  --test)
    packages+=(
      libgtest-dev
      python3 python3-venv  # the test scripts, and the virtual environment of the reference stack
      python3-dev           # the Python package's module (python/; also for `pip install .`)
      ca-certificates       # pip's downloads over https
      qemu-user             # the portable build's test on emulated older CPUs
    ) ;;
  --python)
    packages+=(python3 python3-venv python3-dev ca-certificates) ;;
  *) echo "usage: $0 [--test | --python]" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo > /dev/null || { echo "install-deps: run as root, or install sudo, to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
