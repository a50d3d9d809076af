namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>
/// Tests that watch process-wide state (<see cref="TaskScheduler.UnobservedTaskException"/>, the heap's size), or stall
/// the whole process, run alone, so that what they see is theirs and not another test's running beside them (nor theirs
/// another's).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GlobalEventsCollection
{
    public const string Name = "Watches process-wide events";
}
