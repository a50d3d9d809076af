namespace PushKit.Server;

/// <summary>
/// The names of PushKit's server metrics, for the listeners that collect them (OpenTelemetry's <c>AddMeter</c>,
/// <c>dotnet-counters</c>). Every instrument is described in <c>docs/observability.md</c>.
/// </summary>
public static class PushKitMetrics
{
    /// <summary>
    /// The name of the server's <see cref="System.Diagnostics.Metrics.Meter"/>: <c>PushKit.Server</c>. The meter is made
    /// through the application's <see cref="System.Diagnostics.Metrics.IMeterFactory"/>.
    /// </summary>
    public const string MeterName = "PushKit.Server";
}
