"""The hosted-Canvas connector: tep beside a Canvas it reaches only through Canvas's REST API.

client.py (HTTP, retries and Canvas's rate limits), sync.py (Canvas -> tep's mirror),
commands.py (the outbox of changes the sweep decided, sent to Canvas), restore.py (restore
through Canvas), check.py (`tep canvas check`).
"""
