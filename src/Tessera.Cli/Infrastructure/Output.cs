using System.CommandLine;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Spectre.Console;

namespace Tessera.Cli.Infrastructure;

/// <summary>
/// Writes results: Spectre tables for people, or JSON (snake_case names matching admin.proto, numbers as
/// numbers) with --json for scripts. The JSON field names are a contract; add fields, never rename.
/// </summary>
public static class Output
{
    public static readonly Option<bool> JsonOption = new("--json") { Description = "Print JSON (stable field names) instead of tables" };

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // "+00:00", not "\u002B00:00"; output is not embedded in HTML
    };

    private static readonly Lazy<IAnsiConsole> Terminal = new(() =>
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) });
        if (Console.IsOutputRedirected) console.Profile.Width = 200;
        return console;
    });

    /// <summary>The terminal, for live widgets such as progress bars.</summary>
    public static IAnsiConsole Screen => Terminal.Value;

    public static bool WantsJson(ParseResult parseResult) => parseResult.GetValue(JsonOption);

    public static void Json<T>(T value) => Console.Out.WriteLine(JsonSerializer.Serialize(value, JsonOptions));

    public static void Line(string text) => Console.Out.WriteLine(text);

    /// <summary>A table whose cells are plain text (never interpreted as Spectre markup).</summary>
    public static void Table(string[] headers, IEnumerable<string[]> rows, string? emptyMessage = null)
    {
        var list = rows.ToList();
        if (list.Count == 0 && emptyMessage is not null)
        {
            Line(emptyMessage);
            return;
        }
        var table = new Table().Border(TableBorder.Rounded);
        foreach (var header in headers) table.AddColumn(new TableColumn(Markup.Escape(header)));
        foreach (var row in list) table.AddRow(row.Select(cell => (Spectre.Console.Rendering.IRenderable)new Text(cell)).ToArray());
        Terminal.Value.Write(table);
    }

    /// <summary>Two columns of name/value pairs, for one object.</summary>
    public static void Properties(IEnumerable<(string Name, string Value)> properties)
    {
        var grid = new Grid().AddColumn(new GridColumn().NoWrap().PadRight(2)).AddColumn();
        foreach (var (name, value) in properties) grid.AddRow(new Text(name), new Text(value));
        Terminal.Value.Write(grid);
    }
}
