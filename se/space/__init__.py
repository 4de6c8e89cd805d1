"""Space: shares, their accounting and quotas, and the SRR document (issue 15).

* :mod:`se.space.shares` — pure: the shares in force (an implicit one for the whole namespace
  when none are configured), which share a path belongs to, their SRR attributes.
* :mod:`se.space.accounting` — used bytes and file counts per share in the state database
  (SQLite, or PostgreSQL shared by several frontends), written through by every write path of
  the backend (se.storage.usage), quotas, reconciliation against the tree.
* :mod:`se.space.srr` — pure: the WLCG Storage Resource Reporting document (schema 4.2).
"""
