namespace Tessera.Simulation;

// Sequential write streams. Client writes are otherwise drawn at random offsets; a thin disk's sequential writer is what
// allocate-ahead and ahead-requests (docs/architecture.md) act on, so one write in 16 starts a stream: that agent's
// next 8-40 writes to the disk (other operations interleave, and the stream's writes overlap in time) each write the
// whole segment after the previous one, until the disk ends.
public sealed partial class Simulation
{
    private const int SectorsPerSegment = SegmentBytes / 512;
    private readonly Dictionary<(SimAgentNode Agent, string Disk), (long Next, int Left)> _writeStreams = new();

    /// <summary>Where a client write starts: the agent's stream on the disk if one is open, else <paramref name="first"/>, maybe opening one.</summary>
    private long StreamWriteStart(SimAgentNode agent, DiskModel disk, long first, ref int count, long sectors)
    {
        var key = (agent, disk.Name);
        if (_writeStreams.TryGetValue(key, out var stream) && stream.Left > 0 && stream.Next + SectorsPerSegment <= sectors)
        {
            count = SectorsPerSegment;
            _writeStreams[key] = (stream.Next + SectorsPerSegment, stream.Left - 1);
            return stream.Next;
        }
        _writeStreams.Remove(key);
        if (_r.Next(16) != 0 || sectors < 2 * SectorsPerSegment) return first;
        long start = _r.NextInt64(0, sectors / SectorsPerSegment - 1) * SectorsPerSegment;
        count = SectorsPerSegment;
        _writeStreams[key] = (start + SectorsPerSegment, _r.Next(8, 41));
        return start;
    }
}
