"""HTTP third-party copy (COPY with Source or a remote Destination)."""
