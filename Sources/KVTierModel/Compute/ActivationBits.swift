/// How finely the linear layers quantize their input activations where the weights are on the
/// quantized-activation path (AVX-512 VNNI CPUs; `WeightMatrix.takesQuantizedActivations`): per block of 32
/// values, to 16-bit integers (the default: the logits stay within the float reference's
/// tolerance) or to 8-bit ones, as llama.cpp's CPU kernels do (faster, with a measured drift:
/// docs/benchmarks.md). Other CPUs compute on F32 activations whatever this says.
public enum ActivationBits: Int, Sendable, CaseIterable {
    case eight = 8
    case sixteen = 16
}
