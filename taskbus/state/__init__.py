"""Redis as the task-state store: the client, the Lua scripts, and the read-only status reader.

Only `taskbus.state` and `taskbus.channel` import redis-py; every Redis failure leaves them as
`taskbus.errors.Unavailable`.
"""
