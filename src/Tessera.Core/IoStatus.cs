namespace Tessera.Core;

/// <summary>
/// The expected outcomes of an I/O or a table operation. Hot paths return these instead of throwing;
/// the NBD layer turns them into wire error codes in exactly one place.
/// </summary>
public enum IoStatus : byte
{
    Ok = 0,
    /// <summary>Out of range, bad flags, unknown command.</summary>
    InvalidArgument,
    /// <summary>Write to a read-only presentation.</summary>
    NotPermitted,
    /// <summary>Segment in the Error state or a container failed.</summary>
    IoError,
    /// <summary>The pool has no free physical segment.</summary>
    NoSpace,
    /// <summary>A reply cannot be expressed in the requested form (NBD DF read too large).</summary>
    Overflow,
    /// <summary>The operation is not supported here (for example FAST_ZERO that would write).</summary>
    NotSupported,
    /// <summary>The agent is stopping, its lease lapsed, or the disk was unpresented.</summary>
    Shutdown,
}
