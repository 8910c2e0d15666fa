namespace Tessera.Controller.Store;

public sealed partial class ControllerStore
{
    /// <summary>
    /// The raw SQLite handle, for tests that hook every commit (the store crash-point test copies the files at each
    /// one). Not for production code: every mutation must go through the methods above, under their lock.
    /// </summary>
    internal SQLitePCL.sqlite3 RawHandle => _db.Handle!;
}
