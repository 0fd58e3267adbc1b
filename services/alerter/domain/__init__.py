"""Pure logic of alerting: events to conditions, rule matching, message texts, back-off."""
