namespace PushKit.Delivery;

/// <summary>Raising the application's events so that one subscriber's failure reaches neither the others nor PushKit.</summary>
internal static class EventHandlers
{
    /// <summary>
    /// Calls each subscriber of <paramref name="handlers"/> in turn; an exception from one is passed to
    /// <paramref name="failed"/> (to be logged), and the next subscriber is still called.
    /// </summary>
    public static void RaiseEach<TArgs>(EventHandler<TArgs>? handlers, object sender, TArgs args, Action<Exception> failed)
    {
        if (handlers is null)
        {
            return;
        }

        foreach (var handler in handlers.GetInvocationList())
        {
            try
            {
                ((EventHandler<TArgs>)handler)(sender, args);
            }
            catch (Exception ex)
            {
                failed(ex);
            }
        }
    }
}
