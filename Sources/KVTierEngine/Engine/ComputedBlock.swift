import KVTierStore

/// A block the turn computes straight into HBM: one page per layer, reserved from the store when
/// the block's first computed slot is given out, written in place by the decoder, and adopted by
/// the store as the block's page when the block is saved (no copy into HBM).
///
/// Row r is history index `blockStart + r` and slot `firstSlot + r`. Rows below
/// `firstComputedRow` are reused from a stored block (the partial block this turn extends): they
/// are copied in at the block's first partial save or its seal. A page is in the store's page
/// format from the start (keys of row r at `r * rowBytes`, values at
/// `TieredStore.pageValuesOffset + r * rowBytes`): nothing moves when the block is sealed.
struct ComputedBlock {
    let blockStart: Int
    /// Rows the block may hold (its range's length when complete).
    let capacity: Int
    let firstSlot: Int
    let firstComputedRow: Int
    /// Rows given slots so far.
    var rows: Int
    /// False once a row was given out of order (a stored block reused between computed rows):
    /// the block's later rows then stay in the turn's `work` and it is saved by copy.
    var consecutive = true
    /// Per layer: the page and its bytes.
    var pages: [PageID]
    var bases: [UnsafeMutableRawPointer]
    /// Per layer: whether the block was sealed (its rows are final, the page handed to the store).
    var sealed: [Bool]
    /// Per layer: whether the reused rows were copied in (at the first partial save or the seal).
    var reusedCopied: [Bool]

    /// Slots of the computed rows given out so far.
    var computedSlots: Range<Int> { (firstSlot + firstComputedRow)..<(firstSlot + rows) }
}
