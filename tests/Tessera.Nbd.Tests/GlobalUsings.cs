global using Xunit;
global using Tessera.Nbd.Protocol;
global using Tessera.Nbd.Tests.Infrastructure;
