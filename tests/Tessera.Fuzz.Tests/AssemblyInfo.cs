// The harnesses are process-wide (one NBD server, shared counters, ContainerRegistry.Shared), as under AFL++;
// tests that share them run one at a time.
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]
