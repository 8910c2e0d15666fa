using System.Text.Json;

namespace Tessera.Integration.Tests.Support;

/// <summary>What an agent's NBD server lists (NBD_OPT_LIST, through nbdinfo --list).</summary>
public static class Exports
{
    public static async Task<string[]> ListAsync(string serverUri)
    {
        var result = await Tools.RunOkAsync("nbdinfo", "--list", "--json", serverUri);
        return JsonDocument.Parse(result.Stdout).RootElement.GetProperty("exports").EnumerateArray()
            .Select(e => e.GetProperty("export-name").GetString()!).Order().ToArray();
    }

    /// <summary>
    /// A presentation reaches the agent through the controller, so it may appear a moment after the admin call
    /// returns; poll (bounded) instead of sleeping a fixed time.
    /// </summary>
    public static async Task WaitUntilListedAsync(string serverUri, params string[] names)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        string[] listed = [];
        while (DateTime.UtcNow < deadline)
        {
            var result = await Tools.RunAsync("nbdinfo", "--list", "--json", serverUri);
            if (result.ExitCode == 0)
            {
                listed = JsonDocument.Parse(result.Stdout).RootElement.GetProperty("exports").EnumerateArray()
                    .Select(e => e.GetProperty("export-name").GetString()!).ToArray();
                if (names.All(listed.Contains)) return;
            }
            await Task.Delay(200);
        }
        Assert.Fail($"{serverUri} did not list [{string.Join(", ", names)}] within 30 s; it lists [{string.Join(", ", listed)}]");
    }
}
