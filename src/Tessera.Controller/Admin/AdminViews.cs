using Grpc.Core;
using Tessera.Controller.Store;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Admin;

/// <summary>What the admin services (Admin, Snapshots, Operations) share: one way to find a disk and to describe it.</summary>
internal static class AdminViews
{
    public static RpcException Error(StatusCode code, string message) => new(new Status(code, message));

    public static DiskRow FindDisk(ControllerStore store, string name)
    {
        if (string.IsNullOrEmpty(name)) throw Error(StatusCode.InvalidArgument, "a disk name is required");
        return store.GetDisk(name) ?? throw Error(StatusCode.NotFound, $"disk '{name}' does not exist");
    }

    public static DiskView DiskView(ControllerStore store, DiskRow d)
    {
        long allocated = store.CountAllocatedSegments(d.Id);
        var view = new DiskView
        {
            Id = d.Id,
            Name = d.Name,
            SizeBytes = (ulong)d.SizeBytes,
            SegmentSizeBytes = (uint)d.SegmentSizeBytes,
            SegmentCount = (ulong)d.SegmentCount,
            AllocatedSegments = (ulong)allocated,
            AllocatedBytes = (ulong)(allocated * d.SegmentSizeBytes),
            CreatedAt = d.CreatedAt,
        };
        foreach (var p in store.ListPresentations(d.Id)) view.Presentations.Add(new PresentationView { Host = p.Host, ReadOnly = p.ReadOnly });
        return view;
    }
}
