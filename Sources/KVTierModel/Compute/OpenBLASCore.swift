import CKVTierKernels
import COpenBLAS

#if canImport(Glibc)
    import Glibc
#endif

/// Which kernels OpenBLAS runs its sgemm with, and the fix for a CPU it does not know.
///
/// Debian 12's OpenBLAS (0.3.21, built for every x86-64 core, chosen at load by CPU model) does
/// not know Sapphire Rapids and newer Xeons: it falls back to its Prescott (SSE3) kernels, and
/// sgemm runs at 26-34 GFLOP/s on a core that gives 195-198 with its SkylakeX (AVX-512)
/// kernels (docs/benchmarks.md, "OpenBLAS's core"). The choice is made when the library loads,
/// from `OPENBLAS_CORETYPE`, so the fix is to set it and start the process image again, before
/// anything else happens.
public enum OpenBLASCore {
    /// The kernel family OpenBLAS chose ("Prescott", "SkylakeX", ...).
    public static var name: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    /// OpenBLAS's AVX-512 families, lower-cased.
    static let avx512Cores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]

    /// The kernel family to ask for instead of `core`, or nil when `core` is as good as this CPU
    /// allows: "SkylakeX" when our own dispatch found AVX-512 (with the OS saving its state, and
    /// DQ, which OpenBLAS's SkylakeX kernels also use) and `core` is not an AVX-512 family.
    public static func better(than core: String) -> String? {
        guard kvt_cpu_level_detected() == Int32(KVT_CPU_AVX512), hasAVX512DQ,
            !avx512Cores.contains(core.lowercased())
        else { return nil }
        return "SkylakeX"
    }

    /// Whether OpenBLAS chose weaker kernels than this CPU runs.
    public static var isBelowTheCPU: Bool { better(than: name) != nil }

    /// Starts this process again with `OPENBLAS_CORETYPE=SkylakeX` when OpenBLAS chose kernels
    /// below the CPU, unless the operator set `OPENBLAS_CORETYPE` (respected as given) or this is
    /// already the second start. Returns (without exec) when nothing is to be done or exec fails.
    /// Call it first thing in `main`: nothing done before it survives.
    public static func restartWithTheCPUsKernelsIfNeeded() {
        guard getenv("OPENBLAS_CORETYPE") == nil, getenv("KVTIER_OPENBLAS_RESTARTED") == nil,
            let core = better(than: name)
        else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        setenv("KVTIER_OPENBLAS_RESTARTED", "1", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // exec failed (no /proc?): go on with the kernels OpenBLAS chose.
        unsetenv("OPENBLAS_CORETYPE")
    }

    private static var hasAVX512DQ: Bool { kvt_cpu_has_avx512dq() != 0 }
}
