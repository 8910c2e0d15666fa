namespace Tessera.Nbd;

/// <summary>
/// The ranges of a source (a file mapping, an open file) that one request's payload is sent from or written to, in
/// payload order; a range that continues the previous one in the same source is merged into it. Shared by
/// <see cref="NbdMappedRead"/> and <see cref="NbdSplicedWrite"/>; a plan object is reused from request to request.
/// </summary>
public abstract class NbdRangePlan<TSource> where TSource : class
{
    /// <summary>Most ranges one request may need; one that would need more takes the buffered path instead.</summary>
    public const int MaxRanges = 64;

    private readonly TSource?[] _sources = new TSource?[MaxRanges];
    private readonly long[] _offsets = new long[MaxRanges];
    private readonly int[] _lengths = new int[MaxRanges];

    public int Count { get; private set; }

    protected TSource Source(int i) => _sources[i]!;
    public long Offset(int i) => _offsets[i];
    public int Length(int i) => _lengths[i];

    /// <summary>Appends a range; false when the plan is full or <see cref="Acquire"/> refuses a new range's source.</summary>
    protected bool TryAddRange(TSource source, long offset, int length)
    {
        int last = Count - 1;
        if (last >= 0 && ReferenceEquals(_sources[last], source) && _offsets[last] + _lengths[last] == offset && _lengths[last] <= int.MaxValue - length)
        {
            _lengths[last] += length;
            return true;
        }
        if (Count == MaxRanges || !Acquire(source)) return false;
        _sources[Count] = source;
        _offsets[Count] = offset;
        _lengths[Count] = length;
        Count++;
        return true;
    }

    /// <summary>Called once per new range, before it is added: false refuses it (for example, a closed source).</summary>
    protected virtual bool Acquire(TSource source) => true;

    /// <summary>Called once per range when the plan is cleared.</summary>
    protected virtual void Release(TSource source) { }

    /// <summary>Drops the ranges (releasing their sources).</summary>
    public void Clear()
    {
        for (int i = 0; i < Count; i++)
        {
            Release(_sources[i]!);
            _sources[i] = null;
        }
        Count = 0;
    }
}
