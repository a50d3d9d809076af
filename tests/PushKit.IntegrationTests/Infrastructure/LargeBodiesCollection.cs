namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>
/// Tests that move tens of megabytes (31 MB request bodies, 40 one-megabyte messages, 20 concurrent 1 MB POSTs) run
/// alone: beside other tests, their allocations and collections stretched those tests' timings on a 2-core machine
/// (a POST taken for held because it took over 500 ms), and theirs were stretched in turn.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class LargeBodiesCollection
{
    public const string Name = "Moves tens of megabytes";
}
