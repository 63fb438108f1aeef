"""HTTP side of userseg: the login push API (`push.py`), its bearer tokens and the server that runs it.

The admin web UI will live here too; everything in this package reads and
writes through the store or a Sink, never nft or LDAP directly.
"""
