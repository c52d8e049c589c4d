#!/usr/bin/env bash
# Prepares the GPU check for a session lent the device machine (see scripts/gpu-check.sh):
# builds the CUDA variant here (the device machine has nvcc but none of Debian's -dev packages),
# and packs into gpu-pack/ (ignored by git; the device tool's `carry` takes it along) the test
# and command binaries, the non-CUDA shared libraries they load that the device lacks, and an
# Open MPI runtime (mpirun, its plugins and help files, relocated by OPAL_PREFIX) for the
# multi-rank checks: the device has no MPI. The CUDA libraries are the device's own (its
# Python's nvidia/* packages). Prints the pack's size: everything that travels must stay under
# 64 MiB.
#   gpu-pack.sh [BUILD_DIR]     default build (configured with ZEROLORA_CUDA=ON)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
if ! command -v nvcc > /dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "gpu-pack: no nvcc here: the CUDA toolkit is needed to build the CUDA variant" >&2
  exit 1
fi
export PATH="$PATH:/usr/local/cuda/bin"
# Debian's linker writes RUNPATH, which the device's LD_LIBRARY_PATH overrides.
# The portable build (no -march=native: the device's CPU is another; a build folder configured
# native is refused rather than changed), and cuDNN's fused attention in it: without the
# frontend's headers the bf16 benchmark would time the reference attention kernel instead, so
# a build without it is refused here, before any device time. The CUDA architectures are the
# build's (by default CMakeLists.txt's, whose sm_90 code the H100/H200 runs): the pack is what
# users build.
if grep -q '^ZEROLORA_NATIVE:BOOL=ON' "$build/CMakeCache.txt" 2> /dev/null; then
  echo "gpu-pack: $build is configured with ZEROLORA_NATIVE=ON (-march=native), which may not" \
    "run on the device's CPU: give another build folder (gpu-pack.sh DIR)" >&2
  exit 1
fi
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DZEROLORA_CUDA=ON -DZEROLORA_BUILD_TESTS=ON \
  -DZEROLORA_BUILD_BENCH=ON > "$build/gpu-pack-configure.log"
if ! grep -q "CUDA backend: cuDNN fused attention" "$build/gpu-pack-configure.log"; then
  grep "CUDA backend" "$build/gpu-pack-configure.log" >&2
  echo "gpu-pack: this build has no cuDNN fused attention (run scripts/python-env.sh for the" \
    "frontend's headers, or set ZEROLORA_CUDNN_FRONTEND_INCLUDE)" >&2
  exit 1
fi
cmake --build "$build" -j"$(nproc)" --target zerolora_cli zerolora_cuda_tests zerolora_mpi_tests \
  bench_train_step bench_zero bench_kernels
rm -rf gpu-pack
mkdir -p gpu-pack/bin gpu-pack/lib
cp "$build/zerolora" "$build/tests/zerolora_cuda_tests" "$build/tests/zerolora_mpi_tests" \
  "$build/bench/bench_train_step" "$build/bench/bench_zero" "$build/bench/bench_kernels" gpu-pack/bin/
strip --strip-unneeded gpu-pack/bin/*
# Shared libraries: everything ldd names except the CUDA libraries (the device brings its own,
# matched to its driver) and the C runtime (the device's glibc is newer).
skip='^(libcuda|libcudart|libcublas|libcublasLt|libcudnn|libnccl|libnvrtc|libc|libm|libdl|libpthread|librt|ld-linux-x86-64|linux-vdso)\.so'
for binary in gpu-pack/bin/*; do
  ldd "$binary" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$path" "gpu-pack/lib/$name"
done
# Debian's Open MPI 4.1 under its own layout (usr/...), which OPAL_PREFIX relocates; PMIx's
# plugins are found through PMIX_MCA_mca_base_component_path (gpu-check.sh sets both). Checked
# here with the system's copies hidden (unshare -m + bind mounts): mpirun -np 3 of the MPI
# tests passes from the pack alone.
ompi=/usr/lib/x86_64-linux-gnu/openmpi
pmix=/usr/lib/x86_64-linux-gnu/pmix2
mkdir -p gpu-pack/lib/mpi/usr/bin gpu-pack/lib/mpi/usr/lib/x86_64-linux-gnu gpu-pack/lib/mpi/usr/share
cp -L "$(readlink -f "$(command -v mpirun)")" gpu-pack/lib/mpi/usr/bin/mpirun
cp -L /usr/bin/orted gpu-pack/lib/mpi/usr/bin/
cp -a "$ompi" "$pmix" gpu-pack/lib/mpi/usr/lib/x86_64-linux-gnu/
cp -a /usr/share/openmpi gpu-pack/lib/mpi/usr/share/
rm -rf gpu-pack/lib/mpi/usr/lib/x86_64-linux-gnu/openmpi/include
for binary in gpu-pack/lib/mpi/usr/bin/* $(find gpu-pack/lib/mpi -name '*.so*' -type f); do
  ldd "$binary" 2> /dev/null | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]] || [[ "$path" == "$ompi"/* ]] || [[ "$path" == "$pmix"/* ]]; then continue; fi
  [ -e "gpu-pack/lib/$name" ] || cp -L "$path" "gpu-pack/lib/$name"
done
find gpu-pack/lib -name '*.so*' -type f -exec strip --strip-unneeded {} + 2> /dev/null || true
# oneDNN alone is 40 MB: the libraries travel as one xz archive, which gpu-check.sh unpacks;
# the binaries as another (six statically linked executables with every sm_80/sm_90 kernel:
# 50 MB stripped, which with the libraries would pass the carry limit).
tar -C gpu-pack -cJf gpu-pack/lib.tar.xz lib
tar -C gpu-pack -cJf gpu-pack/bin.tar.xz bin
# What the pack was built from, printed by gpu-check.sh (a pack older than the tree tests old code).
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes'), packed $(date -u +%FT%TZ)" \
  > gpu-pack/REVISION
(ls -la gpu-pack/bin; tar -tvJf gpu-pack/lib.tar.xz) > gpu-pack/MANIFEST.txt
rm -rf gpu-pack/lib gpu-pack/bin
du -sh gpu-pack
size=$(du -sm gpu-pack | cut -f1)
# The working tree travels too (tracked and untracked files git does not ignore): 64 MiB in all.
tree=$(( ($(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2> /dev/null | tail -n 1 | cut -f1) + 1048575) / 1048576 ))
if [ $((size + tree)) -gt 62 ]; then
  echo "gpu-pack: $size MiB + the tree's $tree MiB is too much to carry (64 MiB in all)" >&2
  exit 1
fi
echo "gpu-pack: ready ($size MiB + the tree's $tree MiB); on the device: bash scripts/gpu-check.sh with carry [\"gpu-pack\"]"
