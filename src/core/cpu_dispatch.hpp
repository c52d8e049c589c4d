// Fast kernels in a portable binary. The default build targets the x86-64 baseline, so that a
// binary built on one node runs on every node of a cluster; the few hand-written hot kernels
// (attention, the elementwise ops, dropout, AdamW, small matmuls) carry ZL_CPU_CLONES, which
// compiles each of them three times - for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the
// baseline - and the dynamic loader picks the best clone this CPU supports the first time it is
// called (function multiversioning: target_clones and an ifunc resolver). The helpers they call
// are inlined into each clone. oneDNN dispatches its GEMMs by itself.
// With -DZEROLORA_NATIVE=ON the whole build targets the build machine (-march=native) and the
// macro is empty.
#pragma once

#if defined(ZEROLORA_CPU_DISPATCH)
#define ZL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ZL_CPU_CLONES
#endif

// A helper of a cloned kernel, too large for the compiler to inline on its own: inlined into
// each clone anyway, so that it is compiled for that clone's instruction set (an out-of-line
// copy would be baseline code).
#define ZL_INLINE [[gnu::always_inline]] inline
