using Microsoft.Extensions.Configuration;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>
/// The controller's web host reads no configuration from the directory it was started in and watches no file: the
/// defaults would have put an inotify watch on the working directory (every change there woke a thread and stat()ed
/// the file) and let a stray appsettings.json reconfigure Kestrel.
/// </summary>
public class HostConfigurationTests
{
    [Fact]
    public async Task The_web_host_watches_no_file_and_ignores_the_working_directory()
    {
        await using var cluster = await TestCluster.StartAsync();
        var root = (IConfigurationRoot)cluster.Host.HostConfiguration;
        var fileProviders = root.Providers.OfType<FileConfigurationProvider>().ToList();
        Assert.All(fileProviders, p => Assert.False(p.Source.ReloadOnChange, $"{p.Source.Path} is watched for changes"));
        Assert.Equal(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory),
            Path.TrimEndingDirectorySeparator(root[Microsoft.Extensions.Hosting.HostDefaults.ContentRootKey]!));
    }
}
