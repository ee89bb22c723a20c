"""Moving events from a transport into the store: the consumer loop, its cursor, counters.

May import: core, transports, store and settings.
"""
