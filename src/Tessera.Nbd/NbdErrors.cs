using Tessera.Core;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

/// <summary>The one place that translates between <see cref="IoStatus"/> and NBD error numbers.</summary>
public static class NbdErrors
{
    public static uint ToErrno(IoStatus status) => status switch
    {
        IoStatus.Ok => NbdErrno.Ok,
        IoStatus.InvalidArgument => NbdErrno.EINVAL,
        IoStatus.NotPermitted => NbdErrno.EPERM,
        IoStatus.IoError => NbdErrno.EIO,
        IoStatus.NoSpace => NbdErrno.ENOSPC,
        IoStatus.Overflow => NbdErrno.EOVERFLOW,
        IoStatus.NotSupported => NbdErrno.ENOTSUP,
        IoStatus.Shutdown => NbdErrno.ESHUTDOWN,
        _ => NbdErrno.EIO,
    };

    /// <summary>The inverse, for the client side; errors the server may send that Tessera has no name for become IoError.</summary>
    public static IoStatus ToIoStatus(uint errno) => errno switch
    {
        NbdErrno.Ok => IoStatus.Ok,
        NbdErrno.EINVAL => IoStatus.InvalidArgument,
        NbdErrno.EPERM => IoStatus.NotPermitted,
        NbdErrno.ENOSPC => IoStatus.NoSpace,
        NbdErrno.EOVERFLOW => IoStatus.Overflow,
        NbdErrno.ENOTSUP => IoStatus.NotSupported,
        NbdErrno.ESHUTDOWN => IoStatus.Shutdown,
        _ => IoStatus.IoError,
    };
}
