"""Settings, connections, key names, the event log and the consumer-group runner."""
