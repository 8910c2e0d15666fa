using Microsoft.Win32.SafeHandles;

namespace Tessera.Core.Containers;

/// <summary>
/// A container whose bytes a server may send to a socket straight from the page cache (sendfile), without first
/// reading them into its own buffer.
///
/// The kernel does not copy such bytes when it sends them: the socket keeps references to the page-cache pages until
/// the client has received them, so the bytes a client gets are whatever those pages hold at that moment, which can
/// be after the read was counted as finished. That is only safe where a page can change in place through nothing but
/// writes of the disk that owns the unit (a client's read overlapping its own disk's write may see either, as NBD
/// allows). A unit handed to another disk must first leave the page cache: on a file where hole punching works,
/// <see cref="IStorageContainer.ZeroAsync"/> only ever punches (docs/architecture.md, "Zero-copy reads").
/// </summary>
public interface ISendFileSource
{
    /// <summary>The open file to send from, or false when this container cannot promise the rule above.</summary>
    bool TryGetSendFileHandle(out SafeFileHandle handle);
}
