"""The alerter: turns health and failure events into alerts, and delivers them.

Rules (data, editable over the API) decide which conditions become alerts and where they
are sent; alerts are deduplicated while they stand and resolved when their condition
clears; every email and webhook is a row of an outbox of deliveries that a worker sends,
retries with back-off and records, so a restart loses none.
"""
