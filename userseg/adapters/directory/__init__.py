"""Active Directory adapter (ldap3): implements userseg.directory.model.DirectorySource.

Modules: connect (TLS, bind, failover, credentials, root DSE), reader (searches,
range retrieval, lookups), fullread (the full read over several connections), changes
(incremental reads), entries (raw values -> model, pure), decode (lean search-entry decoding),
watch (change notification), ldap (LdapDirectory, the facade).
Only this package imports ldap3.
"""

from userseg.adapters.directory.ldap import LdapDirectory

__all__ = ["LdapDirectory"]
