/// What every KVTier binary says it is: the release version (set here by hand at a release) and
/// `gitDescribe`, the commit it was built from (written before each build by BuildInfoPlugin).
public enum BuildInfo {
    public static let version = "0.2.0"

    /// "0.2.0 (d03999a-dirty)": what `--version` prints.
    public static var description: String { "\(version) (\(gitDescribe))" }
}
