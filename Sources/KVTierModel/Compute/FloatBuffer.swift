// Unsafe-pointer fence: owned scratch memory for the forward pass.

/// A growable, uninitialized-on-growth Float buffer owned by one decoder.
final class FloatBuffer {
    private(set) var pointer: UnsafeMutablePointer<Float>
    private(set) var capacity: Int

    init(_ capacity: Int = 0) {
        self.capacity = max(capacity, 1)
        self.pointer = .allocate(capacity: self.capacity)
    }

    deinit { pointer.deallocate() }

    /// Ensures room for `count` floats (contents are not kept) and returns the pointer.
    @discardableResult
    func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            pointer.deallocate()
            capacity = count
            pointer = .allocate(capacity: count)
        }
        return pointer
    }
}
