using System.Globalization;

namespace Tessera.Core;

/// <summary>Parses and formats human sizes: 512, 4KiB, 512MiB, 8GiB, 1TiB (also K/M/G/T and KB/MB/GB/TB as binary units).</summary>
public static class ByteSize
{
    private static readonly (string Suffix, long Factor)[] Units =
    [
        ("KIB", 1L << 10), ("MIB", 1L << 20), ("GIB", 1L << 30), ("TIB", 1L << 40), ("PIB", 1L << 50),
        ("KB", 1L << 10), ("MB", 1L << 20), ("GB", 1L << 30), ("TB", 1L << 40), ("PB", 1L << 50),
        ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30), ("T", 1L << 40), ("P", 1L << 50),
        ("B", 1),
    ];

    public static bool TryParse(string? text, out long bytes)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text)) return false;
        var t = text.Trim().ToUpperInvariant();
        long factor = 1;
        foreach (var (suffix, f) in Units)
        {
            if (t.EndsWith(suffix, StringComparison.Ordinal))
            {
                factor = f;
                t = t[..^suffix.Length].TrimEnd();
                break;
            }
        }
        if (!long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n < 0) return false;
        try { bytes = checked(n * factor); } catch (OverflowException) { return false; }
        return true;
    }

    public static long Parse(string text) =>
        TryParse(text, out var b) ? b : throw new FormatException($"'{text}' is not a size (examples: 4096, 512MiB, 8GiB, 1TiB)");

    public static string Format(long bytes)
    {
        string[] names = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        int i = 0;
        double v = bytes;
        while (Math.Abs(v) >= 1024 && i < names.Length - 1 && (i == 0 || v % 1 == 0 || Math.Abs(v) >= 1024)) { v /= 1024; i++; }
        return i == 0 ? $"{bytes} B" : v % 1 == 0 ? $"{v:0} {names[i]}" : $"{v:0.##} {names[i]}";
    }
}
