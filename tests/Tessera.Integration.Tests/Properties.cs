// These tests start real processes that listen on loopback ports and drive external NBD clients; on a
// two-core machine running them one class at a time keeps every timing bound generous and results stable.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
